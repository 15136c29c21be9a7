"""The ``hl7_sftp`` channel: HL7 v2 batch files dropped on an SFTP server -> patients, appointments, encounters.

Connection: ``sftp.connect_sftp`` (shared with the export channel; host key pinned, see there).

Reading: every ``*.hl7`` file of ``sftp_hl7_dir`` whose mtime is at or after ``since`` (a file cannot hold a
change newer than the moment it was written) is downloaded, split into messages and normalized; the latest
version of each record wins (by ``updated_at``, then file and message order), and records with
``updated_at >= since`` are yielded in (updated_at, id) order. One pass over the files serves all three
entities. A message that does not parse goes to the dead-letter file with the file name, message index
(1-based) and reason; the rest of the file is still read. ``last_file`` / ``last_mtime`` expose the newest file
processed (a file bookmark). With ``sftp_after_read`` = ``archive`` (to ``archive_dir``) or ``delete``, the
files read are moved or removed on :meth:`close` — after the sync used them, never before.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import paramiko

from ..errors import NormalizationError
from ..normalize.hl7 import Hl7Options, Unsupported, iter_messages, normalize_records
from ..private_files import account_slug, read_no_follow, write_private
from .base import Channel, LatestVersions
from .sftp import SftpConnection, close_sftp, connect_sftp, list_files

log = logging.getLogger(__name__)

HL7_ENTITIES = ("patients", "appointments", "encounters")
_DONE = {"archive": "archived", "delete": "deleted"}

class Hl7SftpChannel(Channel):
    """HL7 v2 files on SFTP; unordered across files, so the tap bookmarks only after a full read."""

    name = "hl7_sftp"
    ordered = False

    def __init__(self, *, archive_dir: str = "/archive", **common: Any) -> None:
        """``archive_dir``: where ``sftp_after_read=archive`` moves read files; ``common``: the base Channel's."""
        super().__init__(**common)
        self.archive_dir = archive_dir
        self._conn: SftpConnection | None = None
        self._cache: LatestVersions | None = None
        self._cache_since: float | None = None
        self._retired: list[LatestVersions] = []
        """Caches a lower-floor scan replaced: another stream's thread may still be reading one (closed at close)."""
        self._lock = threading.RLock()
        """Streams sync in parallel on this one channel: one connection and one scan at a time."""
        self._listed: dict[str, float | None] = {}
        """Every file a scan listed, with its mtime now."""
        self._read: dict[str, float | None] = {}
        """The files this run read whole, with their mtime then: ``sftp_after_read`` may move them in a later run."""
        self._delivered_before: dict[str, float] = {}
        """Per stream read in this run, the file mtime below which an earlier run delivered everything (its
        bookmark from the input state); -inf when none proves it (a first run, a start_date)."""
        self.last_file: str | None = None
        self.last_mtime: int | None = None
        self.files_read = 0
        self.messages_read = 0

    @property
    def options(self) -> Hl7Options:
        """The tenant's HL7 reading rules (``hl7_timezone``, ``hl7_mrn_authorities``)."""
        return Hl7Options(timezone=self.config.hl7_timezone, mrn_authorities=tuple(self.config.hl7_mrn_authorities))

    @classmethod
    def offers(cls, entity: str, product: str | None) -> bool:
        return entity in HL7_ENTITIES

    def supports(self, entity: str) -> bool:
        return entity in HL7_ENTITIES

    @property
    def sftp(self) -> paramiko.SFTPClient:
        with self._lock:
            if self._conn is None:
                self._conn = connect_sftp(self.config)
            return self._conn[1]

    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        if not self.supports(entity):
            raise ValueError(f"the hl7_sftp channel does not carry {entity}; use it for {', '.join(HL7_ENTITIES)}")
        floor = since.timestamp() if since is not None else float("-inf")
        start = self.config.start_date
        proven = floor if since is not None and (start is None or since > start) else float("-inf")
        with self._lock:  # the first stream scans; the others wait for it and read the same cache
            self._delivered_before[entity] = min(self._delivered_before.get(entity, proven), proven)
            if self._cache is None or self._cache_since is None or floor < self._cache_since:
                self._scan(floor)
            cache = self._cache
        assert cache is not None
        yield from cache.records(entity, since)

    def _scan(self, floor: float) -> None:
        """Read every file that may hold changes at/after ``floor``; keep the newest version per record."""
        cache = LatestVersions()  # on disk: the newest version of each record, constant memory
        directory = self.config.sftp_hl7_dir
        options = self.options
        for file_no, attr in enumerate(list_files(self.sftp, directory, ".hl7", setting="sftp_hl7_dir")):
            path = posixpath.join(directory, attr.filename)
            self._listed[path] = attr.st_mtime
            if attr.st_mtime is not None and attr.st_mtime < floor:
                continue
            with self.sftp.open(path, "rb") as fh:
                # paramiko pulls a prefetched block only as it is read (the SSH window bounds the rest), so the file
                # streams through at prefetch speed and is cut into messages as it arrives, never held whole
                fh.prefetch(attr.st_size)
                messages = iter_messages(iter(lambda fh=fh: fh.read(READ_BYTES), b""))
                for index, message in enumerate(messages, start=1):
                    self.messages_read += 1
                    try:
                        records = normalize_records(message, options)
                    except Unsupported as exc:  # a message type no stream carries: counted, not an error
                        self.skipped[exc.message_type] += 1
                        continue
                    except NormalizationError as exc:
                        entity = exc.entity if exc.entity in HL7_ENTITIES else None
                        self.reject(entity, exc, message, file=attr.filename, message_index=index)
                        continue
                    for entity, rec in records:
                        cache.offer(entity, rec, (file_no, index))
            self._read[path] = attr.st_mtime
            self.files_read += 1
            if self.last_file is None or attr.filename >= self.last_file:
                self.last_file, self.last_mtime = attr.filename, attr.st_mtime
        if self.dead_letter.total:
            log.warning("hl7_sftp: %d message(s) dead-lettered", self.dead_letter.total)
        if self.skipped:
            log.info("hl7_sftp: skipped message types no stream carries: %s", dict(self.skipped))
        if self._cache is not None:
            self._retired.append(self._cache)
        self._cache, self._cache_since = cache, floor

    def bookmark(self) -> dict[str, Any]:
        """The newest file read: ``{"file": name, "mtime": unix seconds}``."""
        return {"file": self.last_file, "mtime": self.last_mtime}

    def _after_read(self) -> None:
        """Move or delete (``sftp_after_read``) the files an earlier run read whose records were delivered: those
        older than the bookmark every HL7 stream started from. That bookmark is the input state, which an
        orchestrator stores only once the target has committed what came before it. A file this run read waits
        for the next run's state to cover it: moved when the run that read it closed, a SIGTERM mid-run, a failing
        stream or a target that died after the tap had removed the only copy of records nobody kept. Only files a
        run read whole are ever moved (listed under ``hl7-read/`` in the state directory): a late file with an old
        mtime, which no scan reads, stays where a person can find it."""
        mode = self.config.sftp_after_read
        if mode == "keep" or self._conn is None:
            return
        earlier = self._files_read_before()
        if earlier is None:
            return
        routed = [e for e in HL7_ENTITIES if self.config.source_for(e) == self.name] or list(self._delivered_before)
        unread = [e for e in routed if e not in self._delivered_before]
        if unread:  # their bookmarks are unknown: a file may hold their undelivered records
            log.info("hl7_sftp: no file %s: %s not read in this run", _DONE[mode], ", ".join(unread))
            cut = float("-inf")
        else:
            cut = min((self._delivered_before[e] for e in routed), default=float("-inf"))
        waiting = {path: mtime for path, mtime in earlier.items() if self._listed.get(path, "gone") == mtime}
        settled = [path for path, mtime in waiting.items() if path not in self._read and mtime is not None
                   and mtime < cut]
        for path in settled:
            try:
                if mode == "delete":
                    self.sftp.remove(path)
                else:
                    self.sftp.rename(path, posixpath.join(self.archive_dir, posixpath.basename(path)))
                del waiting[path]
            except OSError as exc:
                log.warning("hl7_sftp: could not %s %s (%s)", mode, posixpath.basename(path), type(exc).__name__)
        if settled:
            moved = len(settled) - sum(path in waiting for path in settled)
            log.info("hl7_sftp: %d file(s) delivered by an earlier run %s", moved, _DONE[mode])
        self._keep_files_read({**waiting, **self._read})

    def _read_files_path(self) -> Path:
        """Where the files read and not yet moved are listed: private, per SFTP account and directory."""
        where = f"sftp://{self.config.sftp_host}:{self.config.sftp_port}{self.config.sftp_hl7_dir}"
        slug = account_slug(where, self.config.sftp_username)
        return self.config.private_state_path() / "hl7-read" / f"{slug}.json"

    def _files_read_before(self) -> dict[str, float | None] | None:
        """The files earlier runs read whole and did not move, with their mtime then; None when the list cannot
        be read (every file then stays in place: nothing is moved on a guess)."""
        try:
            raw = read_no_follow(self._read_files_path())
            kept = orjson.loads(raw) if raw is not None else {}
        except (OSError, orjson.JSONDecodeError):
            log.warning("hl7_sftp: the list of files read is unreadable; no file is %s in this run",
                        _DONE[self.config.sftp_after_read])
            return None
        if not isinstance(kept, dict):
            return None
        return {str(k): v if isinstance(v, int | float) else None for k, v in kept.items()}

    def _keep_files_read(self, files: dict[str, float | None]) -> None:
        try:
            write_private(self._read_files_path(), orjson.dumps(files))
        except OSError as exc:  # the files stay in place: no loss, only no move
            log.warning("hl7_sftp: could not keep the list of files read (%s); they stay in place",
                        exc.strerror or type(exc).__name__)

    def close(self) -> None:
        try:
            self._after_read()
        finally:
            close_sftp(self._conn)
            self._conn = None
            if self._own_dead_letter:
                self.dead_letter.close()
            for held in (*self._retired, *([self._cache] if self._cache is not None else [])):
                held.close()
            self._cache, self._retired = None, []


READ_BYTES = 1024 * 1024
"""How much of an HL7 file is taken at a time: a batch file of any size is never held whole."""
