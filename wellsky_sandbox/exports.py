"""Nightly CSV exports: files on SFTP (``/outbound/exports``) and over HTTP with HMAC-signed, expiring URLs.

Every export run ("night") writes one CSV per entity that changed since the previous run (the first run: one
per entity, everything), named ``<entity>_<YYYYMMDDTHHMMSSZ>_<run>.csv`` where the stamp is the newest
``updated_at`` in the run — names of one entity sort by time. A run happens when a client lists the exports
and the tenant changed since the last run, so ``/_sandbox/advance`` followed by a listing yields new files;
files already written never change; rows stream to disk (flat memory). Every ``full_every``-th run (default 7:
a weekly full export, as agencies schedule it; ``POST /_sandbox/exports {"full_every": n}``, 0 = never) also
writes one ``<entity>_<YYYYMMDDTHHMMSSZ>_<run>_full.csv`` per entity with every record the tenant has then, so a
record deleted since (``/_sandbox/advance`` deletes some) is absent from it. The
state lives in the tenant's SQLite file (``feed_files``,
``feed_emitted``), so a restart keeps it.

CSV format (RFC 4180, UTF-8, header row, ``\\r\\n`` line ends, as the ``csv`` module writes by default):

- one column per logical field, in the order of ``EXPORT_COLUMNS``; field names are WellSky's export names,
  which are the logical (canonical) ones;
- ``null`` is an empty cell; booleans are ``true``/``false``; dates and timestamps ISO 8601 (timestamps in
  UTC with ``Z``); numbers as written by ``str()``;
- nested values (objects and lists: ``address``, ``coverage``, ``diagnoses``, ``vitals``, ``goals``,
  ``service_codes`` ...) are one compact JSON document in their cell (a list stays a list, ``[]`` when empty).

HTTP: ``GET /exports`` (same authentication as the REST API: session cookie or bearer token) lists
``[{name, entity, size, sha256, created_at, url}]``; ``url`` is ``/exports/files/{name}?expires=<unix>&
signature=<hex hmac-sha256(key, "<name>:<expires>")>``, valid for ``url_ttl_seconds`` (default 300, set with
``POST /_sandbox/exports {"url_ttl_seconds": n}``). Expired -> 410 ``url_expired``; bad signature -> 403
``invalid_signature``. Files stream from disk in chunks (constant memory).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from .generator import FIELDS
from .hl7 import feeds_for, public, stamp

if TYPE_CHECKING:
    from .hl7 import BatchFeeds
    from .tenant import Tenant

DEFAULT_URL_TTL_SECONDS = 300.0
DEFAULT_FULL_EVERY = 7
EXPORT_COLUMNS: dict[str, tuple[str, ...]] = FIELDS
_NAME = re.compile(r"^[a-z_]+_\d{8}T\d{6}Z_\d{4}(_full)?\.csv$")


def cell(value: Any) -> str:
    """One CSV cell per the flattening rules in the module docstring."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


class ExportFeed:
    """Materializes nightly CSV exports of one tenant under ``root/outbound/exports``."""

    feed = "exports"

    def __init__(self, feeds: BatchFeeds) -> None:
        self.feeds = feeds
        self.dir = feeds.root / "outbound" / "exports"
        fdb = feeds.fdb
        with fdb.lock:
            key = fdb.meta("exports:signing_key")
            if key is None:
                key = secrets.token_hex(32)
                fdb.set_meta("exports:signing_key", key)
        self._key = bytes.fromhex(key)
        self.url_ttl_seconds = DEFAULT_URL_TTL_SECONDS
        self.full_every = DEFAULT_FULL_EVERY

    def refresh(self) -> list[str]:
        """Run one "night" if anything changed since the last one; returns the new file names."""
        fdb = self.feeds.fdb
        self.dir.mkdir(parents=True, exist_ok=True)
        with fdb.lock:
            run = int(fdb.meta("feed:exports:seq") or 0) + 1
            mark = int(fdb.meta("feed:exports:watermark") or -1)
            changes = fdb.changes(self.feed, tuple(EXPORT_COLUMNS))
            if mark >= 0:
                changes = iter(list(changes))  # small delta: read fully before writing emission rows
            open_files: dict[str, tuple[Any, Any, Path, int]] = {}
            newest = ""
            emitted: list[tuple[str, dict[str, Any]]] = []
            try:
                for entity, rec, _ in changes:
                    if entity not in open_files:
                        tmp = self.dir / f".{entity}.run{run}.tmp"
                        fh = open(tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed below
                        writer = csv.writer(fh)
                        writer.writerow(EXPORT_COLUMNS[entity])
                        open_files[entity] = (fh, writer, tmp, 0)
                    fh, writer, tmp, n = open_files[entity]
                    writer.writerow([cell(rec.get(c)) for c in EXPORT_COLUMNS[entity]])
                    open_files[entity] = (fh, writer, tmp, n + 1)
                    if rec["updated_at"] != newest:  # ordered by updated_at: only the last second is kept
                        newest, emitted = rec["updated_at"], []
                    emitted.append((entity, rec))
            finally:
                for fh, *_ in open_files.values():
                    fh.close()
            if not open_files:
                return []
            if self.full_every and run % self.full_every == 0:
                self._write_full(run, open_files)
            names = []
            fdb.db.execute("BEGIN IMMEDIATE")
            try:
                for key, (_, _, tmp, n) in open_files.items():
                    entity, _, full = key.partition(":")
                    name = f"{entity}_{stamp(newest)}_{run:04d}{'_full' if full else ''}.csv"
                    os.replace(tmp, self.dir / name)
                    fdb.add_file(self.feed, name, entity, self.dir / name, n)
                    names.append(name)
                for entity, rec in emitted:  # the watermark second may still get new changes
                    fdb.emitted(self.feed, entity, rec)
                top = int(_epoch(newest))
                fdb.set_meta("feed:exports:watermark", str(max(mark, top)))
                fdb.set_meta("feed:exports:seq", str(run))
                fdb.db.execute("COMMIT")
            except BaseException:
                fdb.db.execute("ROLLBACK")
                raise
            return sorted(names)

    def deliver_late(self, entity: str, rows: list[dict[str, Any]]) -> str:
        """A night's file made again later, as support does after a failed export: named with its own (older)
        stamp, the newest ``updated_at`` of ``rows``, and the next run number. Returns the file name."""
        fdb = self.feeds.fdb
        self.dir.mkdir(parents=True, exist_ok=True)
        with fdb.lock:
            run = int(fdb.meta("feed:exports:seq") or 0) + 1
            newest = max(r["updated_at"] for r in rows)
            name = f"{entity}_{stamp(newest)}_{run:04d}.csv"
            tmp = self.dir / f".{name}.tmp"
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(EXPORT_COLUMNS[entity])
                for rec in sorted(rows, key=lambda r: (r["updated_at"], r["id"])):
                    writer.writerow([cell(rec.get(c)) for c in EXPORT_COLUMNS[entity]])
            os.replace(tmp, self.dir / name)
            fdb.db.execute("BEGIN IMMEDIATE")
            try:
                fdb.add_file(self.feed, name, entity, self.dir / name, len(rows))
                fdb.set_meta("feed:exports:seq", str(run))
                fdb.db.execute("COMMIT")
            except BaseException:
                fdb.db.execute("ROLLBACK")
                raise
        return name

    def _write_full(self, run: int, open_files: dict[str, tuple[Any, Any, Path, int]]) -> None:
        """Every entity's whole current content, one file each (keyed ``<entity>:full`` among the run's files)."""
        fdb = self.feeds.fdb
        for entity, columns in EXPORT_COLUMNS.items():
            tmp = self.dir / f".{entity}.run{run}.full.tmp"
            n = 0
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(columns)
                cur = fdb.db.execute("SELECT body FROM records WHERE entity = ? ORDER BY updated_at, id", (entity,))
                while rows := cur.fetchmany(2000):
                    for (body,) in rows:
                        rec = public(orjson.loads(body))
                        writer.writerow([cell(rec.get(c)) for c in columns])
                        n += 1
            open_files[f"{entity}:full"] = (None, None, tmp, n)

    # -- signed URLs ----------------------------------------------------------------------------------
    def sign(self, name: str, expires: int) -> str:
        return hmac.new(self._key, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, name: str, now: float | None = None) -> str:
        expires = int((now or time.time()) + self.url_ttl_seconds)
        return f"/exports/files/{name}?expires={expires}&signature={self.sign(name, expires)}"

    def listing(self, base_url: str) -> list[dict[str, Any]]:
        return [
            {
                "name": f["name"],
                "entity": f["entity"],
                "size": f["size"],
                "sha256": f["sha256"],
                "created_at": f["created_at"],
                "url": base_url.rstrip("/") + self.url(f["name"]),
            }
            for f in self.feeds.fdb.files(self.feed)
        ]


def _epoch(iso_value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso_value.replace("Z", "+00:00")).timestamp()


def write_csv_bytes(entity: str, records: list[dict[str, Any]]) -> bytes:
    """An export file's bytes for ``records`` (used by tests to build expected output)."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(EXPORT_COLUMNS[entity])
    for rec in records:
        writer.writerow([cell(rec.get(c)) for c in EXPORT_COLUMNS[entity]])
    return buf.getvalue().encode()


_Setting = tuple[str, Callable[[Any], bool], Callable[[Any], Any], str]
"""A control setting: the feed attribute it sets, whether a value is valid, how it is stored, the refusal."""


def routes(tenant: Tenant) -> list[BaseRoute]:
    """``GET /exports``, ``GET /exports/files/{name}``, ``POST /_sandbox/exports``, ``POST /_sandbox/hl7`` (late
    HL7 deliveries) and SFTP key registration."""
    from .app import Api, ORJSONResponse, error

    api = Api(tenant)

    async def list_exports(request: Request) -> Response:
        _, rotated = api.authenticate(request)
        feeds = feeds_for(tenant)
        await run_in_threadpool(feeds.refresh)
        base = str(request.base_url)
        return api.with_cookie(ORJSONResponse(feeds.exports.listing(base)), rotated)

    async def download(request: Request) -> Response:
        name = request.path_params["name"]
        feed = feeds_for(tenant).exports
        q = request.query_params
        if not _NAME.match(name):
            return error(404, "not_found", "no export file with that name; list them with GET /exports")
        try:
            expires = int(q.get("expires", ""))
        except ValueError:
            return error(403, "invalid_signature", "expires and signature are required; use the url from GET /exports")
        given = q.get("signature", "")
        if not hmac.compare_digest(given, feed.sign(name, expires)):
            return error(403, "invalid_signature", "signature does not match; use the url from GET /exports unchanged")
        if expires < time.time():
            return error(410, "url_expired", "this download URL has expired; list GET /exports again for a fresh one")
        path = feed.dir / name
        known = {f["name"] for f in feed.feeds.fdb.files(feed.feed)}
        if name not in known or not path.exists():
            return error(404, "not_found", "export file no longer available; list GET /exports again")
        return FileResponse(path, media_type="text/csv", filename=name)  # streamed in 64 KiB chunks

    def settings_route(feed_of: Callable[[], Any], usage: str, fields: dict[str, _Setting]) -> Callable[..., Any]:
        """A ``POST /_sandbox/...`` handler: each field of the body checked, then set on the feed, in body order of
        ``fields``; the answer is every field's value now."""

        async def handler(request: Request) -> Response:
            body = await api.json_body(request)
            feed = feed_of()
            if not isinstance(body, dict):
                return error(400, "invalid_request", usage)
            for key, (attribute, valid, cast, problem) in fields.items():
                if key in body:
                    if not valid(body[key]):
                        return error(400, "invalid_request", problem)
                    setattr(feed, attribute, cast(body[key]))
            return ORJSONResponse({key: getattr(feed, attribute) for key, (attribute, *_) in fields.items()})

        return handler

    settings = settings_route(
        lambda: feeds_for(tenant).exports, 'body must be {"url_ttl_seconds": n} or {"full_every": n}', {
            "url_ttl_seconds": ("url_ttl_seconds", lambda v: isinstance(v, int | float) and v > 0, float,
                                "url_ttl_seconds must be a positive number"),
            "full_every": ("full_every", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, int,
                           "full_every must be a whole number of runs (0 = never)"),
        },
    )
    # {"late": share, "keep_times": bool}: the share of HL7 changes an outage queues until the next refresh, and
    # whether their late file keeps the messages' time as its mtime (Hl7Feed.late)
    hl7_settings = settings_route(
        lambda: feeds_for(tenant).hl7, 'body must be {"late": share} and/or {"keep_times": true|false}', {
            "late": ("late", lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1, float,
                     "late must be a share from 0 to 1"),
            "keep_times": ("late_keep_times", lambda v: isinstance(v, bool), bool, "keep_times must be true or false"),
        },
    )

    async def add_key(request: Request) -> Response:
        body = await api.json_body(request)
        from .sftp import add_authorized_key

        if not isinstance(body, dict) or not isinstance(body.get("public_key"), str):
            return error(400, "invalid_request", 'body must be {"public_key": "ssh-ed25519 AAAA..."}')
        try:
            add_authorized_key(tenant, body["public_key"], body.get("username"))
        except ValueError as exc:
            return error(400, "invalid_public_key", str(exc))
        return ORJSONResponse({"registered": True}, status_code=201)

    return [
        Route("/exports", list_exports, methods=["GET"]),
        Route("/exports/files/{name}", download, methods=["GET"]),
        Route("/_sandbox/exports", settings, methods=["POST"]),
        Route("/_sandbox/hl7", hl7_settings, methods=["POST"]),
        Route("/_sandbox/sftp/authorized-keys", add_key, methods=["POST"]),
    ]


__all__ = ["EXPORT_COLUMNS", "ExportFeed", "cell", "routes", "write_csv_bytes"]
