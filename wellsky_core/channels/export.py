"""The ``export`` channel: WellSky's nightly CSV exports, from SFTP or from ``GET /exports`` signed URLs.

Files are named ``<entity>_<YYYYMMDDTHHMMSSZ>_<run>.csv``; the stamp is the newest ``updated_at`` in the file,
so files stamped before ``since`` are skipped unread. Files are read oldest first and the latest row per id
wins; records with ``updated_at >= since`` are yielded in (updated_at, id) order.

A night's file holds what changed since the previous night; the periodic full export (``..._<run>_full.csv``)
holds every record of the entity, so it is a complete view: a record known before and absent from the newest
full file read this run, and from every later file, is deleted (:mod:`wellsky_core.snapshot_deletions`). A
run that reads no new full file, or dead-letters any row, knows no deletion.

Where from: ``via="sftp"`` reads ``sftp_export_dir`` (host key pinned, see ``sftp.connect_sftp``);
``via="http"`` lists ``GET /exports`` with the tenant client and downloads each signed URL before it
expires — a 410 (expired) re-lists and retries with the fresh URL, and size and sha256 are verified when the
listing gives them. ``via="auto"`` (default) uses SFTP when ``sftp_host`` is set, otherwise HTTP.

Memory stays flat per file: HTTP downloads stream to a temporary file (verified before any row is used; cut
once longer than the listing's size, or than ``max_export_file_bytes`` when it gives none), and
rows are parsed one at a time with the ``csv`` module over a text stream. Cell rules (the export format):
empty = null, ``true``/``false`` booleans, nested objects and lists as one JSON document per cell; every row
is validated against the canonical model. A malformed row (wrong column count, bad JSON, a value the model
refuses) goes to the dead-letter file with the file name and row number (header = row 1); a file whose
header lacks required columns is dead-lettered whole.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import json
import logging
import re
import tempfile
import threading
import time
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, RemoteError, RequestDeadlineExceeded, ResponseTooLarge, WellSkyTransportError
from ..http.bodies import DownloadTooSlow, download_chunks, read_within
from ..models import ENTITIES
from ..normalize.validation import validated
from . import delivered_files
from .base import Channel, LatestVersions, stored_instant
from .windows import parse_instant

if TYPE_CHECKING:
    from .sftp import SftpConnection

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<entity>[a-z_]+)_(?P<stamp>\d{8}T\d{6}Z)_(?P<run>\d+)(?P<full>_full)?\.csv$")
MAX_RELISTS = 3
csv.field_size_limit(16 * 1024 * 1024)


def _nested_fields(model: type[BaseModel]) -> set[str]:
    """Fields whose cells hold JSON: lists and sub-models (optional or not)."""
    nested = set()
    for name, info in model.model_fields.items():
        ann = info.annotation
        candidates = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, type(int | None)) else (ann,)
        for c in candidates:
            if typing.get_origin(c) is list or (isinstance(c, type) and issubclass(c, BaseModel)):
                nested.add(name)
    return nested


def _stamp_epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


def _stamped_from(listing: list[dict[str, Any]], reach: float) -> list[dict[str, Any]]:
    """The files stamped at or after ``reach``: those that can hold a change from then on (a file's stamp is its
    newest ``updated_at``)."""
    return [f for f in listing if _stamp_epoch(f["stamp"]) >= reach]


EXPORTED = frozenset(name for name, spec in ENTITIES.items() if spec.modeled_rest and spec.sources is None)
"""The streams a nightly export carries."""


class ExportChannel(Channel):
    """Nightly CSV exports; unordered across files, so the tap bookmarks only after a full read."""

    name = "export"
    ordered = False
    memo_streams: ClassVar[frozenset[str]] = EXPORTED

    def __init__(self, *, via: str = "auto", **common: Any) -> None:
        """``via``: ``sftp``, ``http`` or ``auto``; ``common``: the base Channel's keyword arguments."""
        super().__init__(**common)
        if via == "auto":
            via = "sftp" if self.config.sftp_host else "http"
        if via not in ("sftp", "http"):
            raise ValueError("via must be 'auto', 'sftp' or 'http'")
        if via == "http" and self.client is None:
            raise ConfigError("base_url", "the export channel over HTTP needs the tenant API (or set sftp_host)")
        self.via = via
        self._sftp: SftpConnection | None = None
        self._sftp_lock = threading.RLock()
        """Streams sync in parallel on this one channel: one SFTP connection, used by one stream at a time."""
        self._http: httpx.Client | None = None
        self.files_read: list[str] = []
        self.relists = 0
        self.delivered = delivered_files.DeliveredLists(self.name)

    def supports(self, entity: str) -> bool:
        return entity in EXPORTED

    def load_memo(self, entity: str, previous: dict[str, Any] | None) -> None:
        self.delivered.load(entity, previous)

    def dump_memo(self, entity: str) -> dict[str, Any] | None:
        return self.delivered.dump(entity)

    def snapshot_view(self, entity: str) -> bool:
        return self.supports(entity)

    # -- listing --------------------------------------------------------------------------------------
    def _list(self) -> list[dict[str, Any]]:
        """``[{name, entity, stamp, size?, sha256?, url?}]`` sorted by name."""
        out = []
        if self.via == "sftp":
            from .sftp import connect_sftp, list_files

            with self._sftp_lock:
                if self._sftp is None:
                    self._sftp = connect_sftp(self.config)
            for attr in list_files(self._sftp[1], self.config.sftp_export_dir, ".csv", setting="sftp_export_dir"):
                out.append({"name": attr.filename, "size": attr.st_size})
        else:
            assert self.client is not None
            listing = self.client.get_json("/exports")
            if not isinstance(listing, list):
                raise RemoteError(200, "invalid_listing", "GET /exports did not return a list", url="/exports")
            out = [dict(item) for item in listing if isinstance(item, dict) and isinstance(item.get("name"), str)]
        files = []
        for item in out:
            m = _NAME.match(item["name"])
            if m is None:
                log.warning("export: skipping a file whose name is not <entity>_<stamp>_<run>.csv")
                continue
            files.append({**item, "entity": m["entity"], "stamp": m["stamp"], "run": int(m["run"]),
                          "full": bool(m["full"])})
        return sorted(files, key=lambda f: f["name"])

    # -- reading --------------------------------------------------------------------------------------
    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        """The newest version of each record in the files that may hold changes at/after ``since``, and the
        records the stream never got that only files it never delivered hold (a night's file made again later,
        with its old stamp; rows older than the bookmark in a new file), each in the newest version any file has.
        """
        if not self.supports(entity):
            raise ValueError(f"unknown entity {entity!r}")
        floor = since.timestamp() if since is not None else float("-inf")
        delivered = self.delivered.before.get(entity)
        view = self.views.get(entity)
        latest: LatestVersions | None = None
        try:
            with self._sftp_lock if self.via == "sftp" else contextlib.nullcontext():
                listing = [f for f in self._list() if f["entity"] == entity]
                digests = {f["name"]: delivered_files.file_digest(f["name"], None, f.get("size")) for f in listing}
                new = {n for n, d in digests.items() if delivered is not None and d not in delivered}
                reach = min([floor, *(_stamp_epoch(f["stamp"]) for f in listing if f["name"] in new)])
                if reach < floor and view is not None:  # an old night made again: not a view to compare with
                    view.incomplete("an export file older than the last sync arrived; deletions are known from the "
                                    "next complete view")
                checking = delivered is not None and since is not None  # late records can be looked for
                latest = self._read_files(entity, _stamped_from(listing, reach), view, sources=checking)
                late: list[dict[str, Any]] = []
                if checking:
                    assert since is not None
                    start = stored_instant(self.config.start_date) if self.config.start_date is not None else ""
                    fresh = self._late(latest, entity, since, start, listing, reach, new)
                    oldest = min(fresh.values(), default=None)
                    if oldest is not None and parse_instant(oldest).timestamp() < reach:
                        # a newer version of a late row may sit in a file stamped from that row on: read those too
                        reach = parse_instant(oldest).timestamp()
                        latest.close()
                        latest = self._read_files(entity, _stamped_from(listing, reach), view, sources=True)
                        fresh = self._late(latest, entity, since, start, listing, reach, new)
                    if fresh:
                        log.info("export: %s: %d record(s) arrived after newer changes were delivered; sent in "
                                 "their newest version", entity, len(fresh))
                        late = latest.newest_before(entity, fresh, stored_instant(since))
                self.delivered.after[entity] = {
                    digests[f["name"]] for f in listing
                    if _stamp_epoch(f["stamp"]) >= reach
                    or (digests[f["name"]] in delivered if delivered is not None else _stamp_epoch(f["stamp"]) < floor)
                }
            yield from latest.records(entity, since)
            yield from late
        finally:
            if latest is not None:
                latest.close()

    @staticmethod
    def _late(latest: LatestVersions, entity: str, since: datetime, start: str, listing: list[dict[str, Any]],
              reach: float, new: set[str]) -> dict[str, str]:
        """Records with a version older than ``since`` (and not before ``start_date``) in a file the stream never
        delivered: id -> that version's ``updated_at``. File numbers are those of the read from ``reach``."""
        files = _stamped_from(listing, reach)
        undelivered = {n for n, f in enumerate(files) if f["name"] in new}
        fresh, _ = latest.late(entity, stored_instant(since), start, undelivered)
        return fresh

    def _read_files(self, entity: str, files: list[dict[str, Any]], view: Any, *, sources: bool) -> LatestVersions:
        """The newest version of each record of ``files`` (read oldest first), and (``sources``) which file held
        each version; the snapshot view sees every record, placed before, in or after the newest full file."""
        latest = LatestVersions(sources=sources)  # on disk: constant memory however large the exports are
        try:
            full = max((f for f in files if f["full"]), key=lambda f: (f["run"], f["name"]), default=None)
            if view is not None and full is None:
                view.incomplete("no full export file since the last sync (night files hold changes only)")
            for file_no, info in enumerate(files):
                part = "before" if full is None or info["run"] < full["run"] else "view" if info is full else (
                    "after" if info["run"] > full["run"] else "before")
                for row_no, rec in self._rows(entity, info):
                    latest.offer(entity, rec, (file_no, row_no))
                    if view is not None:
                        view.see(rec, part)
                self.files_read.append(info["name"])
            if view is not None and full is not None:
                as_of = datetime.strptime(full["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
                view.complete(f"the full export file of run {full['run']}", as_of)
        except BaseException:
            latest.close()
            raise
        return latest

    def _rows(self, entity: str, info: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.via == "sftp":
            assert self._sftp is not None
            path = f"{self.config.sftp_export_dir.rstrip('/')}/{info['name']}"
            with self._sftp[1].open(path, "rb") as fh:
                fh.prefetch(info.get("size"))
                yield from self._parse(entity, info["name"], fh)
        else:
            with self._download(info) as fh:
                yield from self._parse(entity, info["name"], fh)

    def _download(self, info: dict[str, Any]) -> typing.IO[bytes]:
        """The file in a temporary spool, verified; re-lists on 410 (URL expired) up to MAX_RELISTS times."""
        if self._http is None:
            self._http = httpx.Client(timeout=self.config.timeout_seconds, verify=self.config.tls_verify())
        cap = self.config.max_export_file_bytes
        for _ in range(MAX_RELISTS + 1):
            url = info.get("url")
            if not url:
                raise RemoteError(200, "invalid_listing", f"export {info['name']} has no url", url="/exports")
            listed = info.get("size")
            if listed is not None and listed > cap:
                raise _too_large(info["name"], cap, f"is listed at {listed:,} bytes", url)
            spool = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller, closed by its `with`
            digest, size = hashlib.sha256(), 0
            try:
                with self._http.stream("GET", url) as response:
                    if response.status_code == 410:
                        spool.close()
                        self.relists += 1
                        fresh = {f["name"]: f for f in self._list()}
                        if info["name"] not in fresh:
                            raise RemoteError(404, "not_found", f"export {info['name']} disappeared", url=url)
                        info = fresh[info["name"]]
                        continue
                    if response.status_code != 200:
                        try:  # an error page is read within the same bounds as any answer
                            read_within(response, limit=self.config.max_response_bytes,
                                        deadline=time.monotonic() + self.config.request_deadline_seconds)
                        except (ResponseTooLarge, RequestDeadlineExceeded):
                            raise RemoteError(
                                response.status_code, None, "the export download was refused (its error page was "
                                "too large or too slow to read); check the client's access to /exports", url=url,
                            ) from None
                        raise RemoteError.from_response(
                            response, fix="the export download was refused; check the client's access to /exports"
                        )
                    for chunk in download_chunks(response, grace=self.config.request_deadline_seconds):
                        digest.update(chunk)
                        size += len(chunk)
                        if size > (cap if listed is None else listed):
                            break  # longer than listed, or than any file may be: never spool an endless body
                        spool.write(chunk)
            except httpx.HTTPError as exc:
                spool.close()
                raise WellSkyTransportError("export download failed", url=url, reason=type(exc).__name__) from None
            except DownloadTooSlow as exc:
                spool.close()
                raise WellSkyTransportError(f"export {info['name']}: {exc}", url=url, reason="too_slow") from None
            if listed is None and size > cap:
                spool.close()
                raise _too_large(info["name"], cap, "has no size in its listing and was still being sent", url)
            if info.get("size") is not None and size != info["size"]:
                spool.close()
                raise RemoteError(
                    200, "size_mismatch",
                    f"export {info['name']} is {'over ' if size > info['size'] else ''}{size} bytes, listing said "
                    f"{info['size']}", url=url,
                )
            if info.get("sha256") and digest.hexdigest() != info["sha256"]:
                spool.close()
                raise RemoteError(
                    200, "checksum_mismatch", f"export {info['name']} sha256 differs from listing", url=url
                )
            spool.seek(0)
            return spool
        raise RemoteError(410, "url_expired", f"export {info['name']} URL kept expiring after re-listing")

    def _parse(self, entity: str, name: str, fh: typing.IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
        model = ENTITIES[entity].model
        nested = _nested_fields(model)
        text = codecs.getreader("utf-8")(fh, errors="strict")
        reader = csv.reader(_lines(text))
        try:
            header = next(reader)
        except StopIteration:
            self.reject(entity, "empty file (no header row)", None, file=name, row=1)
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            self.reject(entity, f"unreadable header ({type(exc).__name__})", None, file=name, row=1)
            return
        # WellSky's export always writes every column a complete record has: a file without one is not an export
        required = {n for n, f in model.model_fields.items() if f.is_required()} | set(model.expected)
        missing = sorted(required - set(header))
        unknown = sorted(set(header) - set(model.model_fields))
        if missing or unknown or len(set(header)) != len(header):
            why = "header " + "; ".join(
                p
                for p in (
                    f"misses required column(s) {missing}" if missing else "",
                    f"has unknown column(s) {unknown}" if unknown else "",
                    "repeats a column" if len(set(header)) != len(header) else "",
                )
                if p
            )
            self.reject(entity, why, header, file=name, row=1)
            return
        row_no = 1
        while True:
            row_no += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                self.reject(entity, f"unreadable row ({type(exc).__name__})", None, file=name, row=row_no)
                return  # the stream position is unknown after a broken quote or bad bytes: stop this file
            if len(row) != len(header):
                self.reject(entity, f"row has {len(row)} cells, header has {len(header)}", row, file=name, row=row_no)
                continue
            try:
                rec = self._record(model, nested, header, row)
            except ValueError as exc:
                self.reject(entity, str(exc), row, file=name, row=row_no)
                continue
            yield row_no, rec

    @staticmethod
    def _record(model: type[BaseModel], nested: set[str], header: list[str], row: list[str]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for column, value in zip(header, row, strict=True):
            if value == "":
                data[column] = None
            elif column in nested:
                try:
                    data[column] = json.loads(value)
                except ValueError:
                    raise ValueError(f"column {column} is not valid JSON") from None
            else:
                data[column] = value
        for name, info in model.model_fields.items():  # an empty list cell means an empty list, not null
            if data.get(name) is None and name in nested and typing.get_origin(info.annotation) is list:
                data[name] = []
        try:  # an export is WellSky's own file: a value it wrote that fails the model is a broken row
            model.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "row"
            raise ValueError(f"column {where}: {err['type']}: {err['msg']}") from None
        entity = next(name for name, spec in ENTITIES.items() if spec.model is model)
        return validated(entity, data)  # empty expected columns become data-quality flags

    def close(self) -> None:
        if self._sftp is not None:
            from .sftp import close_sftp

            close_sftp(self._sftp)
            self._sftp = None
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._own_dead_letter:
            self.dead_letter.close()


def _too_large(name: str, cap: int, what: str, url: str) -> RemoteError:
    """A download past ``max_export_file_bytes``: it would only fill the disk under TMPDIR."""
    return RemoteError(
        200, "export_too_large",
        f"export {name} {what}: over max_export_file_bytes ({cap:,} bytes); raise max_export_file_bytes if the "
        "tenant's export files really are that large", url=url,
    )


def _lines(text: typing.TextIO) -> Iterator[str]:
    """Lines for the csv module, keeping line ends (quoted cells may span lines)."""
    while True:
        line = text.readline()
        if not line:
            return
        yield line
