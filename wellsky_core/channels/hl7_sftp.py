"""The ``hl7_sftp`` channel: HL7 v2 batch files dropped on an SFTP server -> patients, appointments, encounters.

Connection: ``sftp.connect_sftp`` (shared with the export channel; host key pinned, see there).

Reading: every ``*.hl7`` file of ``sftp_hl7_dir`` whose mtime is at or after ``since`` (a file cannot hold a
change newer than the moment it was written) is downloaded, split into messages and normalized; the latest
version of each record wins (by ``updated_at``, then file and message order), and records with
``updated_at >= since`` are yielded in (updated_at, id) order. One pass over the files serves all three
entities. A message that does not parse goes to the dead-letter file with the file name, message index
(1-based) and reason; the rest of the file is still read. ``last_file`` / ``last_mtime`` expose the newest file
processed (a file bookmark). With ``sftp_after_read`` = ``archive`` (to ``archive_dir``) or ``delete``, a file
is moved or removed by the run after the one that read it, once its input state shows the records were delivered
(``_after_read``). A full sync under ``archive`` reads the archive too: it is part of what the server holds.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import orjson
import paramiko

from ..errors import ConfigError, NormalizationError
from ..normalize.hl7 import Hl7Options, Unsupported, iter_messages, normalize_records
from ..private_files import account_slug, read_no_follow, write_private
from . import delivered_files
from .base import Channel, LatestVersions, stored_instant
from .sftp import SftpConnection, close_sftp, connect_sftp, list_files
from .windows import parse_instant

log = logging.getLogger(__name__)

HL7_ENTITIES = ("patients", "appointments", "encounters")
_DONE = {"archive": "archived", "delete": "deleted"}
MAX_PASSES = 4
"""Most scans one stream's read may take to reach every file it has not delivered (files dropped in during the
read are left to the next run)."""


@dataclass
class _Pass:
    """One scan of the inbox: the newest version of each record it read, and which files it listed and read."""

    cache: LatestVersions
    floor: float
    with_archive: bool = False
    listing: dict[str, tuple[float | None, bytes]] = field(default_factory=dict)
    """Every inbox file listed: path -> (mtime, :func:`delivered_files.file_digest`)."""
    read: set[str] = field(default_factory=set)
    sources: list[str] = field(default_factory=list)
    """The path of each file number (a version's ``rank[0]``), archived files included."""


class Hl7SftpChannel(Channel):
    """HL7 v2 files on SFTP; unordered across files, so the tap bookmarks only after a full read."""

    name = "hl7_sftp"
    ordered = False
    memo_streams: ClassVar[frozenset[str]] = frozenset(HL7_ENTITIES)

    def __init__(self, *, archive_dir: str = "/archive", **common: Any) -> None:
        """``archive_dir``: where ``sftp_after_read=archive`` moves read files; ``common``: the base Channel's."""
        super().__init__(**common)
        self.archive_dir = archive_dir
        self._conn: SftpConnection | None = None
        self._pass: _Pass | None = None
        self._retired: list[LatestVersions] = []
        """Caches a lower-floor scan replaced: another stream's thread may still be reading one (closed at close)."""
        self.delivered = delivered_files.DeliveredLists(self.name)
        self._lock = threading.RLock()
        """Streams sync in parallel on this one channel: one connection and one scan at a time."""
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

    # -- the files each stream delivered (its memo) ---------------------------------------------------------
    def load_memo(self, entity: str, previous: dict[str, Any] | None) -> None:
        self.delivered.load(entity, previous)

    def dump_memo(self, entity: str) -> dict[str, Any] | None:
        return self.delivered.dump(entity)

    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        if not self.supports(entity):
            raise ValueError(f"the hl7_sftp channel does not carry {entity}; use it for {', '.join(HL7_ENTITIES)}")
        floor = since.timestamp() if since is not None else float("-inf")
        start = self.config.start_date
        proven = floor if since is not None and (start is None or since > start) else float("-inf")
        memo = self.delivered.before.get(entity)
        # a full sync is everything the server still holds: under archive, files earlier runs moved out of the inbox
        # too (a full refresh read the inbox only, and silently lacked every record only archived files held)
        whole = since is None and self.config.sftp_after_read == "archive"
        with self._lock:  # the first stream scans; the others wait for it and read the same cache
            if since is None and self.config.sftp_after_read == "delete" and self._pass is None:  # said once a run
                log.warning("hl7_sftp: a full sync under sftp_after_read=delete holds only the files still in %s: "
                            "the records of files earlier runs deleted cannot be read again", self.config.sftp_hl7_dir)
            self._delivered_before[entity] = min(self._delivered_before.get(entity, proven), proven)
            if self._pass is None or floor < self._pass.floor or (whole and not self._pass.with_archive):
                self._scan(floor, with_archive=whole or (self._pass is not None and self._pass.with_archive))
            late: list[dict[str, Any]] = []
            held: set[str] = set()
            if memo is not None:
                late, held = self._late_records(entity, since, memo)
            scan = self._pass
            assert scan is not None
            self.delivered.after[entity] = self._delivered_after(scan, memo, floor, held)
        yield from scan.cache.records(entity, since)
        yield from late

    def _late_records(
        self, entity: str, since: datetime | None, memo: set[bytes]
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """The records of ``entity`` from files the stream never delivered whose version is older than ``since``
        (a late file, or a late message in a new one), each in the newest version any file holds; and the files
        holding such records that could not be checked (``sftp_after_read=delete``), kept out of the memo.

        A late version may be older than one delivered before: emitting it would undo that one downstream. So
        every file that could hold a newer version (mtime at or after the late version, a file cannot hold a
        change newer than its writing) is read, the archive too, and the newest version found is sent."""
        mode = self.config.sftp_after_read
        cut = stored_instant(since) if since is not None else None
        low = stored_instant(self.config.start_date) if self.config.start_date is not None else ""
        for _ in range(MAX_PASSES):
            scan = self._pass
            assert scan is not None
            unread = [m for path, (m, digest) in scan.listing.items()
                      if path not in scan.read and digest not in memo and m is not None]
            if unread:  # a file dropped in late with its old times kept
                self._scan(min(unread))
                continue
            if cut is None:
                return [], set()
            undelivered = {no for no, path in enumerate(scan.sources)
                           if path in scan.listing and scan.listing[path][1] not in memo}  # not archived either
            fresh, holding = scan.cache.late(entity, cut, low, undelivered)
            if not fresh:
                return [], set()
            oldest = parse_instant(min(fresh.values())).timestamp()
            if oldest < scan.floor or (mode == "archive" and not scan.with_archive):
                self._scan(min(oldest, scan.floor), with_archive=mode == "archive")
                continue
            if mode == "delete":
                carriers = {scan.sources[no] for no in holding}
                log.warning("hl7_sftp: %s: %d record(s) arrived after newer changes were delivered, in %d file(s) "
                            "left in the inbox: not sent, because sftp_after_read=delete removed the files that "
                            "show whether a newer version was delivered. With keep or archive the files this check "
                            "needs stay readable; switching now sends these, checked against the files still there",
                            entity, len(fresh), len(carriers))
                self.skipped[f"{entity} arrived late, not checkable (sftp_after_read=delete)"] += len(fresh)
                return [], carriers
            log.info("hl7_sftp: %s: %d record(s) arrived after newer changes were delivered; sent in their newest "
                     "version", entity, len(fresh))
            return scan.cache.newest_before(entity, fresh, cut), set()
        scan = self._pass
        assert scan is not None
        # files kept arriving with old times while the read went on: every file not delivered before waits for the
        # next run (its records from the bookmark on were sent; older ones are looked at then)
        pending = {path for path, (_, digest) in scan.listing.items() if digest not in memo}
        log.warning("hl7_sftp: %s: files kept arriving with old times during the read; %d are left to the next run",
                    entity, len(pending))
        return [], pending

    @staticmethod
    def _delivered_after(scan: _Pass, memo: set[bytes] | None, floor: float, held: set[str]) -> set[bytes]:
        """The files the stream has delivered once this run's records are committed: those read now, those
        delivered before, and (before the stream had a list) those older than its bookmark, as the mtime rule
        took them; never a file whose records were held back."""
        delivered = set()
        for path, (mtime, digest) in scan.listing.items():
            if path in held:
                continue
            if path in scan.read or (digest in memo if memo is not None else mtime is not None and mtime < floor):
                delivered.add(digest)
        return delivered

    def _scan(self, floor: float, *, with_archive: bool = False) -> None:
        """Read every file that may hold changes at/after ``floor`` (and every file the archive holds, when
        ``with_archive``); keep the newest version per record, and where each version came from."""
        cache = LatestVersions(sources=True)  # on disk: the newest version of each record, constant memory
        scan = _Pass(cache, floor, with_archive)
        directory = self.config.sftp_hl7_dir
        options = self.options
        listed = [(directory, attr) for attr in list_files(self.sftp, directory, ".hl7", setting="sftp_hl7_dir")]
        if with_archive:
            listed += [(self.archive_dir, attr) for attr in self._archived()]
        for file_no, (folder, attr) in enumerate(listed):
            path = posixpath.join(folder, attr.filename)
            scan.sources.append(path)
            inbox = folder == directory
            if inbox:
                scan.listing[path] = (attr.st_mtime, delivered_files.file_digest(attr.filename, attr.st_mtime,
                                                                                 attr.st_size))
            if attr.st_mtime is not None and attr.st_mtime < floor:
                continue
            with self.sftp.open(path, "rb") as fh:
                # paramiko pulls a prefetched block only as it is read (the SSH window bounds the rest), so the file
                # streams through at prefetch speed and is cut into messages as it arrives, never held whole
                fh.prefetch(attr.st_size)
                messages = iter_messages(iter(lambda fh=fh: fh.read(READ_BYTES), b""))
                for index, message in enumerate(messages, start=1):
                    self.messages_read += inbox
                    try:
                        records = normalize_records(message, options)
                    except Unsupported as exc:  # a message type no stream carries: counted, not an error
                        self.skipped[exc.message_type] += inbox
                        continue
                    except NormalizationError as exc:
                        if not inbox:  # set aside when the file was first read
                            continue
                        entity = exc.entity if exc.entity in HL7_ENTITIES else None
                        self.reject(entity, exc, message, file=attr.filename, message_index=index)
                        continue
                    for entity, rec in records:
                        cache.offer(entity, rec, (file_no, index))
            if not inbox:
                continue
            scan.read.add(path)
            self._read[path] = attr.st_mtime
            self.files_read += 1
            if self.last_file is None or attr.filename >= self.last_file:
                self.last_file, self.last_mtime = attr.filename, attr.st_mtime
        if self.dead_letter.total:
            log.warning("hl7_sftp: %d message(s) dead-lettered", self.dead_letter.total)
        if self.skipped:
            log.info("hl7_sftp: skipped message types no stream carries: %s", dict(self.skipped))
        if self._pass is not None:
            self._retired.append(self._pass.cache)
        self._pass = scan

    def _archived(self) -> list[paramiko.SFTPAttributes]:
        """The archive's HL7 files (none when it does not exist yet: nothing was archived)."""
        try:
            return list_files(self.sftp, self.archive_dir, ".hl7", setting="sftp_after_read")
        except ConfigError:
            return []

    def bookmark(self) -> dict[str, Any]:
        """The newest file read: ``{"file": name, "mtime": unix seconds}``."""
        return {"file": self.last_file, "mtime": self.last_mtime}

    def _after_read(self) -> None:
        """Move or delete (``sftp_after_read``) the files an earlier run read whose records were delivered: those
        in every HL7 stream's list of delivered files (or, for a stream without one yet, older than its
        bookmark). Both come from the input state, which an orchestrator stores only once the target has committed
        what came before it. A file this run read waits for the next run's state to cover it: moved when the run
        that read it closed, a SIGTERM mid-run, a failing stream or a target that died after the tap had removed the
        only copy of records nobody kept. Only files a run read whole are ever moved (listed under ``hl7-read/`` in
        the state directory)."""
        mode = self.config.sftp_after_read
        if mode == "keep" or self._conn is None:
            return
        earlier = self._files_read_before()
        if earlier is None:
            return
        routed = [e for e in HL7_ENTITIES if self.config.source_for(e) == self.name] or list(self._delivered_before)
        unread = [e for e in routed if e not in self._delivered_before]
        listing = self._pass.listing if self._pass is not None else {}  # the last scan's: the newest
        waiting = {path: mtime for path, mtime in earlier.items() if path in listing and listing[path][0] == mtime}
        if unread:  # their input states are unknown: a file may hold their undelivered records
            log.info("hl7_sftp: no file %s: %s not read in this run", _DONE[mode], ", ".join(unread))
            settled = []
        else:
            settled = [path for path, mtime in waiting.items() if all(self._delivered(e, path, mtime) for e in routed)]
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

    def _delivered(self, entity: str, path: str, mtime: float | None) -> bool:
        """Whether the input state proves ``entity``'s records in ``path`` were delivered: the file is in the
        stream's list of delivered files, or (before the stream had one) older than its bookmark and not read in
        this run, as the mtime rule took it."""
        memo = self.delivered.before.get(entity)
        if memo is not None:
            listed = self._pass.listing.get(path) if self._pass is not None else None
            return listed is not None and listed[1] in memo
        return path not in self._read and mtime is not None and mtime < self._delivered_before[entity]

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
            for held in (*self._retired, *([self._pass.cache] if self._pass is not None else [])):
                held.close()
            self._pass, self._retired = None, []


READ_BYTES = 1024 * 1024
"""How much of an HL7 file is taken at a time: a batch file of any size is never held whole."""
