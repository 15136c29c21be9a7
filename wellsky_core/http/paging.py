"""Following a paged listing to its end: one paginator per paging style, each with the one :class:`LoopGuard`.

- :class:`CursorPaginator` — ``{"data": [...], "next_cursor": "..."}`` (WellSky REST);
- :class:`NextLinkPaginator` — FHIR searchset Bundles and their ``link[relation=next]`` (origin-checked);
- :class:`PageNumberPaginator` — ``_page=N`` numbering with a total (Home Connect ``_search``): stops on the
  server's total, a short page or an empty one.

Each fetches through a caller-given function (the client's ``get_json`` or a POST read), so every page gets the
retry, auth and rate-limit treatment; counts pages in the metrics; and refuses a server that hands out a page
token it already gave (a cursor, a link, the same records again) with a ``RemoteError`` instead of looping.
The page size a request asks for is decided once, by :func:`page_limit`. The paginators know how pages are
linked, not what a resource looks like: the channel that owns an API constructs them with its field names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx

from ..errors import RemoteError
from ..metrics import Metrics

Query = Mapping[str, Any] | None
GetJson = Callable[[str | httpx.URL, Query], Any]


def page_limit(page_size: int, api_max: int | None = None) -> int:
    """How many records one page request asks for: the configured ``page_size``, capped by the API's maximum."""
    return max(1, min(page_size, api_max)) if api_max else max(1, page_size)


class LoopGuard:
    """Remembers the page tokens (cursors, next links, page contents) of one listing and refuses a repeat."""

    def __init__(self, path: str, code: str, what: str, *, fix: str = "") -> None:
        self._path = path
        self._code = code
        self._what = what
        self._fix = fix
        self._seen: set[str] = set()

    def check(self, token: str) -> None:
        if token in self._seen:
            fix = f"; {self._fix}" if self._fix else ""
            raise RemoteError(
                200, self._code, f"{self._path} returned the same {self._what} twice{fix}", url=self._path
            )
        self._seen.add(token)


def _shape_error(path: str, expected: str) -> RemoteError:
    return RemoteError(200, "unexpected_shape", f"{path} did not answer {expected}", url=path)


class CursorPaginator:
    """Pages linked by an opaque cursor in the body, sent back as a query parameter until it is null."""

    def __init__(
        self,
        get_json: GetJson,
        *,
        metrics: Metrics,
        page_size: int,
        api_max: int | None = None,
        data_field: str = "data",
        cursor_field: str = "next_cursor",
        cursor_param: str = "cursor",
        limit_param: str = "limit",
    ) -> None:
        self._get_json = get_json
        self._metrics = metrics
        self._limit = page_limit(page_size, api_max)
        self._data = data_field
        self._cursor = cursor_field
        self._cursor_param = cursor_param
        self._limit_param = limit_param

    def pages(self, path: str, params: Query = None) -> Iterator[list[dict[str, Any]]]:
        """Yield the items of each page; an explicit limit in ``params`` wins over the page size."""
        query = dict(params or {})
        query.setdefault(self._limit_param, self._limit)
        guard = LoopGuard(path, "cursor_loop", self._cursor)
        while True:
            body = self._get_json(path, query)
            if not isinstance(body, dict) or not isinstance(body.get(self._data), list):
                raise _shape_error(path, f'{{"{self._data}": [...], "{self._cursor}": ...}}')
            page: list[dict[str, Any]] = body[self._data]
            self._metrics.add_page(len(page))
            yield page
            cursor = body.get(self._cursor)
            if not cursor:
                return
            guard.check(str(cursor))
            query[self._cursor_param] = cursor


class NextLinkPaginator:
    """FHIR searchset Bundles, following ``link[relation=next]`` (resolved and origin-checked by ``resolve``)."""

    def __init__(self, get_json: GetJson, resolve: Callable[[str], httpx.URL], *, metrics: Metrics) -> None:
        self._get_json = get_json
        self._resolve = resolve
        self._metrics = metrics

    def pages(self, path: str, params: Query = None) -> Iterator[dict[str, Any]]:
        """Yield each Bundle until one has no next link."""
        target: str | httpx.URL = path
        query: dict[str, Any] | None = dict(params or {})
        guard = LoopGuard(path, "link_loop", "next link")
        while True:
            bundle = self._get_json(target, query or None)
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise _shape_error(path, "a FHIR Bundle")
            self._metrics.add_page(len(bundle.get("entry") or []))
            yield bundle
            links = bundle.get("link") or []
            nexts = (lk.get("url") for lk in links if isinstance(lk, dict) and lk.get("relation") == "next")
            next_link = next((url for url in nexts if url), None)
            if not next_link:
                return
            target = self._resolve(str(next_link))
            guard.check(str(target))
            query = None


class PageNumberPaginator:
    """Pages numbered from ``first_page``; stop on the server's total, on a short or empty page.

    ``fetch(page, count)`` returns the decoded answer, ``entries(body)`` its items (raising on a wrong shape),
    ``total(body)`` the server's record count (None when absent). A page holding exactly the records of an earlier
    one means the server ignores the page number: refused (``page_loop``), never followed forever.
    """

    def __init__(
        self,
        fetch: Callable[[int, int], Any],
        *,
        entries: Callable[[Any], list[Any]],
        total: Callable[[Any], int | None],
        metrics: Metrics,
        page_size: int,
        api_max: int | None = None,
        first_page: int = 0,
        loop_fix: str = "",
    ) -> None:
        self._fetch = fetch
        self._entries = entries
        self._total = total
        self._metrics = metrics
        self.count = page_limit(page_size, api_max)
        self._first = first_page
        self._loop_fix = loop_fix

    def pages(self, path: str) -> Iterator[list[Any]]:
        """Yield the items of each page (``path`` names the listing in errors)."""
        guard = LoopGuard(path, "page_loop", "page of records", fix=self._loop_fix)
        page, seen = self._first, 0
        while True:
            body = self._fetch(page, self.count)
            items = self._entries(body)
            self._metrics.add_page(len(items))
            if items:
                guard.check("\x1f".join(str(e.get("id")) if isinstance(e, dict) else "" for e in items))
            yield items
            seen += len(items)
            total = self._total(body)
            if not items or len(items) < self.count or (total is not None and seen >= total):
                return
            page += 1


__all__ = ["CursorPaginator", "LoopGuard", "NextLinkPaginator", "PageNumberPaginator", "page_limit"]
