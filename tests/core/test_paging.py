"""Cursor and Bundle paging against a small scripted server on loopback (real HTTP): what is followed, what is
sent, and every way a server can break paging (loops, wrong shapes, links to other hosts).

Fast enough to be the mutation-testing selection for paging (scripts/mutate).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from wellsky_core.channels.fhir import fhir_bundles
from wellsky_core.channels.rest import rest_pages
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import RemoteError
from wellsky_core.http.client import WellSkyClient


class Scripted:
    """Answers ``GET <path>?<query>`` from a table keyed by (path, cursor or page), and records each request."""

    def __init__(self) -> None:
        self.pages: dict[tuple[str, str | None], Any] = {}
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                scripted.requests.append((url.path, query))
                key = (query.get("cursor") or query.get("page") or [None])[0]
                body = json.dumps(scripted.pages.get((url.path, key), {"error": "not_found"})).encode()
                self.send_response(200 if (url.path, key) in scripted.pages else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Scripted]:
    scripted = Scripted()
    thread = threading.Thread(target=scripted.server.serve_forever, daemon=True)
    thread.start()
    yield scripted
    scripted.server.shutdown()
    scripted.server.server_close()


def _client(server: Scripted, **extra: Any) -> WellSkyClient:
    config = WellSkyConfig.load(
        {"base_url": server.base_url, "username": "u", "password": "p", "max_requests_per_second": 0, **extra},
        env={},
    )
    return WellSkyClient(config, auth=httpx.Auth())


def test_cursor_pages_are_followed_until_the_cursor_is_null(server):
    server.pages[("/patients", None)] = {"data": [{"id": 1}, {"id": 2}], "next_cursor": "c2"}
    server.pages[("/patients", "c2")] = {"data": [{"id": 3}], "next_cursor": "c3"}
    server.pages[("/patients", "c3")] = {"data": [], "next_cursor": None}
    with _client(server, page_size=2) as client:
        pages = list(rest_pages(client, "/patients", {"updated_since": "2026-01-01T00:00:00Z"}))
        assert client.metrics.snapshot()["pages"] == 3
    assert pages == [[{"id": 1}, {"id": 2}], [{"id": 3}], []]
    sent = [q for _, q in server.requests]
    assert sent[0] == {"updated_since": ["2026-01-01T00:00:00Z"], "limit": ["2"]}
    assert sent[1] == {"updated_since": ["2026-01-01T00:00:00Z"], "limit": ["2"], "cursor": ["c2"]}
    assert sent[2]["cursor"] == ["c3"] and len(sent) == 3


def test_an_explicit_limit_wins_and_an_empty_cursor_ends(server):
    server.pages[("/visits", None)] = {"data": [{"id": 1}], "next_cursor": ""}
    with _client(server) as client:
        assert list(rest_pages(client, "/visits", {"limit": 7})) == [[{"id": 1}]]
    assert server.requests == [("/visits", {"limit": ["7"]})]


def test_default_limit_is_the_configured_page_size(server):
    server.pages[("/visits", None)] = {"data": [], "next_cursor": None}
    with _client(server) as client:
        list(rest_pages(client, "/visits"))
    assert server.requests == [("/visits", {"limit": [str(WellSkyConfig.model_fields["page_size"].default)]})]


def test_a_repeated_cursor_is_a_loop_not_an_endless_sync(server):
    server.pages[("/patients", None)] = {"data": [{"id": 1}], "next_cursor": "same"}
    server.pages[("/patients", "same")] = {"data": [{"id": 2}], "next_cursor": "same"}
    with _client(server) as client, pytest.raises(RemoteError) as exc:
        list(rest_pages(client, "/patients"))
    assert str(exc.value) == (
        "WellSky returned 200 from /patients [cursor_loop]: /patients returned the same next_cursor twice"
    )
    assert len(server.requests) == 2


def test_distinct_cursors_are_followed_to_the_end(server):
    server.pages[("/p", None)] = {"data": [1], "next_cursor": "a"}
    server.pages[("/p", "a")] = {"data": [2], "next_cursor": "b"}
    server.pages[("/p", "b")] = {"data": [3], "next_cursor": None}
    with _client(server) as client:
        assert list(rest_pages(client, "/p")) == [[1], [2], [3]]


@pytest.mark.parametrize(
    "body",
    [[{"id": 1}], {"data": {"id": 1}, "next_cursor": None}, {"next_cursor": None}, {"data": None}],
)
def test_a_page_of_the_wrong_shape_is_refused(server, body):
    server.pages[("/patients", None)] = body
    with _client(server) as client, pytest.raises(RemoteError) as exc:
        list(rest_pages(client, "/patients"))
    assert str(exc.value) == (
        'WellSky returned 200 from /patients [unexpected_shape]: /patients did not answer {"data": [...], '
        '"next_cursor": ...}'
    )


def _bundle(entries: list[int], next_url: str | None = None, **extra: Any) -> dict[str, Any]:
    links = [{"relation": "self", "url": "/fhir/Patient?self"}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"id": str(i)}} for i in entries],
        "link": links,
        **extra,
    }


def test_bundles_follow_relative_and_absolute_next_links(server):
    server.pages[("/fhir/Patient", None)] = _bundle([1, 2], "/fhir/Patient?page=2")
    server.pages[("/fhir/Patient", "2")] = _bundle([3], f"{server.base_url}/fhir/Patient?page=3")
    server.pages[("/fhir/Patient", "3")] = _bundle([4])
    with _client(server) as client:
        bundles = list(fhir_bundles(client, "/fhir/Patient", {"_count": 2}))
        assert client.metrics.snapshot()["pages"] == 3
    assert [[e["resource"]["id"] for e in b["entry"]] for b in bundles] == [["1", "2"], ["3"], ["4"]]
    assert [q for _, q in server.requests] == [{"_count": ["2"]}, {"page": ["2"]}, {"page": ["3"]}]


def test_a_bundle_without_entries_or_links_ends_paging(server):
    server.pages[("/fhir/Coverage", None)] = {"resourceType": "Bundle", "type": "searchset"}
    with _client(server) as client:
        assert len(list(fhir_bundles(client, "/fhir/Coverage"))) == 1
        assert client.metrics.snapshot()["pages"] == 1


def test_next_links_without_url_or_of_another_relation_are_not_followed(server):
    bundle = _bundle([1])
    bundle["link"] += [{"relation": "next"}, {"relation": "previous", "url": "/fhir/Patient?page=0"}]
    server.pages[("/fhir/Patient", None)] = bundle
    with _client(server) as client:
        assert len(list(fhir_bundles(client, "/fhir/Patient"))) == 1
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "link",
    ["http://evil.example/fhir/Patient?page=2", "https://127.0.0.1/fhir/Patient?page=2", "http://127.0.0.1:1/x"],
)
def test_a_next_link_to_another_origin_is_refused_before_any_request(server, link):
    server.pages[("/fhir/Patient", None)] = _bundle([1], link)
    with _client(server) as client, pytest.raises(RemoteError) as exc:
        list(fhir_bundles(client, "/fhir/Patient"))
    assert exc.value.code == "foreign_next_link" and "another host" in str(exc.value)
    assert "page=2" not in str(exc.value), "the refused URL is named without its query"
    assert len(server.requests) == 1


def test_a_repeated_next_link_is_a_loop(server):
    server.pages[("/fhir/Patient", None)] = _bundle([1], "/fhir/Patient?page=2")
    server.pages[("/fhir/Patient", "2")] = _bundle([2], "/fhir/Patient?page=3")
    server.pages[("/fhir/Patient", "3")] = _bundle([3], "/fhir/Patient?page=2")
    with _client(server) as client, pytest.raises(RemoteError) as exc:
        list(fhir_bundles(client, "/fhir/Patient"))
    assert str(exc.value) == (
        "WellSky returned 200 from /fhir/Patient [link_loop]: /fhir/Patient returned the same next link twice"
    )
    assert len(server.requests) == 3


@pytest.mark.parametrize("body", [{"resourceType": "OperationOutcome"}, [1, 2], {"entry": []}])
def test_something_other_than_a_bundle_is_refused(server, body):
    server.pages[("/fhir/Patient", None)] = body
    with _client(server) as client, pytest.raises(RemoteError) as exc:
        list(fhir_bundles(client, "/fhir/Patient"))
    assert str(exc.value) == (
        "WellSky returned 200 from /fhir/Patient [unexpected_shape]: /fhir/Patient did not answer a FHIR Bundle"
    )
