"""Following a paged listing to its end: REST cursors and FHIR Bundle ``next`` links.

Both loops fetch through the client's ``get_json`` (so every page gets the retry, auth and rate-limit
treatment, and a page retried or re-fetched after a re-login is neither lost nor repeated), count pages in
the metrics, and share one :class:`LoopGuard`: a server that hands out a page token it already gave is
stopped with a ``RemoteError`` instead of looping forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx

from .errors import RemoteError
from .metrics import Metrics

GetJson = Callable[[str | httpx.URL, Mapping[str, Any] | None], Any]


class LoopGuard:
    """Remembers the page tokens (cursors, next links) of one listing and refuses a repeat."""

    def __init__(self, path: str, code: str, what: str) -> None:
        self._path = path
        self._code = code
        self._what = what
        self._seen: set[str] = set()

    def check(self, token: str) -> None:
        if token in self._seen:
            raise RemoteError(200, self._code, f"{self._path} returned the same {self._what} twice", url=self._path)
        self._seen.add(token)


def iter_cursor_pages(
    get_json: GetJson, path: str, params: Mapping[str, Any] | None, *, page_size: int, metrics: Metrics
) -> Iterator[list[dict[str, Any]]]:
    """Yield ``data`` of each REST page, following ``next_cursor`` until it is null."""
    query = dict(params or {})
    query.setdefault("limit", page_size)
    guard = LoopGuard(path, "cursor_loop", "next_cursor")
    while True:
        body = get_json(path, query)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise RemoteError(
                200, "unexpected_shape", f'{path} did not answer {{"data": [...], "next_cursor": ...}}', url=path
            )
        page: list[dict[str, Any]] = body["data"]
        metrics.add_page(len(page))
        yield page
        cursor = body.get("next_cursor")
        if not cursor:
            return
        guard.check(str(cursor))
        query["cursor"] = cursor


def iter_bundles(
    get_json: GetJson,
    resolve_link: Callable[[str], httpx.URL],
    path: str,
    params: Mapping[str, Any] | None,
    *,
    metrics: Metrics,
) -> Iterator[dict[str, Any]]:
    """Yield each FHIR searchset Bundle, following ``link[relation=next]`` (resolved and origin-checked by
    ``resolve_link``) until there is none."""
    target: str | httpx.URL = path
    query: dict[str, Any] | None = dict(params or {})
    guard = LoopGuard(path, "link_loop", "next link")
    while True:
        bundle = get_json(target, query or None)
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise RemoteError(200, "unexpected_shape", f"{path} did not answer a FHIR Bundle", url=path)
        metrics.add_page(len(bundle.get("entry") or []))
        yield bundle
        links = bundle.get("link") or []
        next_link = next((lk.get("url") for lk in links if lk.get("relation") == "next" and lk.get("url")), None)
        if not next_link:
            return
        target = resolve_link(str(next_link))
        guard.check(str(target))
        query = None
