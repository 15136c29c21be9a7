"""GET /exports with signed expiring URLs, and signed webhook deliveries with retries (real HTTP, loopback)."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.waiting import wait_for
from wellsky_sandbox.testing import SandboxServer


@contextmanager
def login(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.base_url, timeout=30) as client:
        r = client.post("/sessions", json={"username": sandbox.username, "password": sandbox.password})
        assert r.status_code == 201
        yield client


def test_exports_listing_download_and_checksums(sandbox: SandboxServer) -> None:
    assert httpx.get(sandbox.base_url + "/exports").status_code == 401
    with login(sandbox) as client:
        listing = client.get("/exports").json()
        assert {f["entity"] for f in listing} >= {"patients", "appointments", "encounters"}
        patients = next(f for f in listing if f["entity"] == "patients")
        body = httpx.get(patients["url"]).content  # the signed URL needs no session
    assert len(body) == patients["size"] and hashlib.sha256(body).hexdigest() == patients["sha256"]
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    truth = {r["id"]: r for r in sandbox.truth("patients")}
    assert {r["id"] for r in rows} == set(truth)
    row = rows[0]
    rec = truth[row["id"]]
    assert json.loads(row["coverage"]) == rec["coverage"]
    assert (row["phone"] or None) == rec["phone"] and row["updated_at"] == rec["updated_at"]


def test_signed_url_tampering_and_expiry(sandbox: SandboxServer) -> None:
    with login(sandbox) as client:
        url = client.get("/exports").json()[0]["url"]
        base, _, query = url.partition("?")
        params = dict(p.split("=") for p in query.split("&"))
        forged = dict(params, expires=str(int(params["expires"]) + 3600))
        r = httpx.get(base, params=forged)
        assert r.status_code == 403 and r.json()["error"] == "invalid_signature"
        other = base.rsplit("/", 1)[0] + "/encounters_20261031T235849Z_0001.csv"
        assert httpx.get(other, params=params).status_code in (403, 404)
        assert httpx.get(base, params=dict(params, signature="0" * 64)).status_code == 403
        assert httpx.get(base).status_code == 403
        settings = sandbox.control("POST", "/_sandbox/exports", json={"url_ttl_seconds": 4})
        assert settings == {"url_ttl_seconds": 4.0, "full_every": 7}
        short = client.get("/exports").json()[0]["url"]
    assert httpx.get(short).status_code == 200  # 4 s of slack: a loaded CI machine is slow, not wrong
    expires = int(dict(p.split("=") for p in short.partition("?")[2].split("&"))["expires"])
    r = wait_for(
        lambda: (got := httpx.get(short)).status_code != 200 and got,
        timeout=max(0.0, expires - time.time()) + 15,
        interval=0.2,
        what="the signed URL to expire",
    )
    assert time.time() >= expires, "refused before its expiry"
    assert r.status_code == 410 and r.json()["error"] == "url_expired"


def test_advance_produces_a_new_night(sandbox: SandboxServer) -> None:
    with login(sandbox) as client:
        first = {f["name"] for f in client.get("/exports").json()}
        assert {f["name"] for f in client.get("/exports").json()} == first  # no change, no new night
        sandbox.advance(count=40, seed=5)
        second = client.get("/exports").json()
    new = [f for f in second if f["name"] not in first]
    assert new and all(f["name"].endswith("_0002.csv") for f in new)
    changed = sum(len(list(csv.DictReader(io.StringIO(httpx.get(f["url"]).text)))) for f in new)
    assert changed >= 40


class Receiver:
    """A tiny independent webhook endpoint: records requests, fails the first ``fail_first`` with 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 500 if len(outer.requests) <= outer.fail_first else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            assert time.monotonic() < deadline, f"only {len(self.requests)} of {n} webhook requests arrived"
            time.sleep(0.05)


def _all_pages(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    """Every record of a list endpoint, following ``next_cursor``."""
    records: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        page = client.get(path, params=params)
        assert page.status_code == 200, page.text
        records += page.json()["data"]
        if not page.json()["next_cursor"]:
            return records
        params["cursor"] = page.json()["next_cursor"]


def _settled(sandbox: SandboxServer, receiver: Receiver) -> list[dict[str, Any]] | None:
    """The delivery log once the queue is empty and every request the receiver saw is logged (else None)."""
    state = sandbox.control("GET", "/_sandbox/webhooks/deliveries")
    done = state["pending"] == 0 and len(state["deliveries"]) == len(receiver.requests)
    return state["deliveries"] if done else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.httpd.shutdown()


def test_webhook_events_are_signed_and_filtered(sandbox: SandboxServer, receiver: Receiver) -> None:
    with login(sandbox) as client:
        assert client.post("/webhooks", json={"url": "ftp://x"}).status_code == 400
        sub = client.post("/webhooks", json={"url": receiver.url, "events": ["appointment.*", "encounter.updated"]})
        assert sub.status_code == 201
        secret, wid = sub.json()["secret"], sub.json()["id"]
        assert all("secret" not in s for s in client.get("/webhooks").json()["data"])
        result = sandbox.advance(count=40, seed=2)
    expected = result["by_entity"].get("appointments", 0) + result["by_entity"].get("encounters", 0)
    assert expected > 0
    receiver.wait(expected)
    settled = wait_for(lambda: _settled(sandbox, receiver), what="the sandbox's webhook queue to drain")
    assert len(receiver.requests) == len(settled) == expected  # patients/authorizations not subscribed
    # an event carries the record exactly as the API serves it (the product's native shape, home health: visitId);
    # the truth oracle is canonical now (data_quality, fields this tenant does not hold), which no API serves
    with login(sandbox) as client:
        served = {r["visitId"]: r for r in _all_pages(client, "/appointments")}
    assert served.keys() == {r["id"] for r in sandbox.truth("appointments")}
    compared = 0
    for headers, body in receiver.requests:
        t, v1 = (p.split("=", 1)[1] for p in headers["x-wellsky-signature"].split(","))
        assert hmac.compare_digest(v1, hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest())
        assert abs(int(t) - time.time()) < 30
        event = json.loads(body)
        assert set(event) == {"id", "type", "occurred_at", "entity", "record"}
        if event["entity"] == "appointments":
            assert event["record"] == served[event["record"]["visitId"]]
            compared += 1
    assert compared == result["by_entity"]["appointments"] > 0
    with login(sandbox) as client:
        assert client.delete(f"/webhooks/{wid}").status_code == 204
        assert client.delete(f"/webhooks/{wid}").status_code == 404
    sandbox.advance(count=10, seed=9)  # events are queued synchronously by the change, so nothing is in flight
    assert sandbox.control("GET", "/_sandbox/webhooks/deliveries")["pending"] == 0
    assert len(receiver.requests) == expected


def test_failed_deliveries_are_retried_with_backoff(sandbox: SandboxServer) -> None:
    rx = Receiver(fail_first=2)
    try:
        with login(sandbox) as client:
            client.post("/webhooks", json={"url": rx.url, "events": ["patient.*"]})
            r = client.post(
                "/patients", json={"name": {"first": "Test", "last": "Hook"}, "birthDate": "1950-01-02", "gender": "F"}
            )
            assert r.status_code == 201, r.text
        rx.wait(3)
        ids = {json.loads(body)["id"] for _, body in rx.requests}
        assert len(ids) == 1  # one event, three attempts
        attempts = [h["x-wellsky-delivery-attempt"] for h, _ in rx.requests]
        assert attempts == ["1", "2", "3"]
        log = wait_for(
            lambda: (d := sandbox.control("GET", "/_sandbox/webhooks/deliveries")["deliveries"]) and len(d) == 3 and d,
            what="three logged delivery attempts",
        )
        assert [(d["attempt"], d["status_code"], d["delivered"]) for d in log] == [
            (1, 500, False),
            (2, 500, False),
            (3, 200, True),
        ]
    finally:
        rx.httpd.shutdown()


def test_core_receiver_stores_verified_events_and_replays(sandbox: SandboxServer, tmp_path: Any) -> None:
    from wellsky_core.webhooks import EventStore, WebhookReceiver, sign_header_for_tests

    store = EventStore(tmp_path / "events.sqlite")
    probe = WebhookReceiver(store, "placeholder")  # learn a free port, then bind it with the real secret
    probe.stop()
    with login(sandbox) as client:
        secret = client.post("/webhooks", json={"url": probe.url, "events": ["*"]}).json()["secret"]
    rx = WebhookReceiver(store, secret, port=probe.port).start()
    try:
        result = sandbox.advance(count=20, seed=6)
        expected = sum(result["by_entity"].get(e, 0) for e in ("appointments", "encounters", "authorizations"))
        deadline = time.monotonic() + 15
        while store.count() < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        events = list(store.iter_events(0))
        assert len(events) == expected and [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        assert list(store.iter_events(events[-2]["seq"])) == events[-1:]
        body = json.dumps({"id": "evt_forged", "type": "patient.updated", "record": {}}).encode()
        now = int(time.time())
        forged = httpx.post(
            rx.url, content=body, headers={"X-WellSky-Signature": sign_header_for_tests("wrong", now, body)}
        )
        stale = httpx.post(
            rx.url, content=body, headers={"X-WellSky-Signature": sign_header_for_tests(secret, now - 3600, body)}
        )
        assert forged.status_code == 401 and stale.status_code == 401 and "away from now" in stale.json()["message"]
        good = sign_header_for_tests(secret, now, body)
        first = httpx.post(rx.url, content=body, headers={"X-WellSky-Signature": good}).json()
        again = httpx.post(rx.url, content=body, headers={"X-WellSky-Signature": good}).json()
        assert first["duplicate"] is False and again == {"seq": first["seq"], "duplicate": True}
        assert store.count() == expected + 1 and rx.rejected == 2
    finally:
        rx.stop()
    reopened = EventStore(tmp_path / "events.sqlite")  # durable across a restart
    assert reopened.count() == expected + 1
