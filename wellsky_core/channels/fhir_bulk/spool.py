"""The local side of a bulk export: the job directory (``job.json``) and the on-disk SQLite spool of resources.

Both hold PHI (full Patient resources), so they live in the tenant's private state directory
(``fhir_bulk_job_dir``, default ``<private_state_dir>/fhir-bulk``) and go through ``private_files``: the
directories 0700, ``job.json``, the spool and its ``-wal``/``-shm`` 0600, never opened through a symlink.
:func:`prune` drops jobs nobody resumed within a day and never follows a symlink (a symlinked root is refused).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ...private_files import private_dir, private_sqlite, read_no_follow, write_private

if TYPE_CHECKING:
    from ...config import WellSkyConfig

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
SPOOL_FILE = "spool-v2.sqlite"
STALE_AFTER_SECONDS = 86_400
"""A job directory untouched this long is dropped: its server job expired long ago."""


def job_root(config: WellSkyConfig) -> Path:
    """The private directory holding every bulk job of this tenant (created 0700; a symlink is refused)."""
    if config.fhir_bulk_job_dir:
        return private_dir(config.fhir_bulk_job_dir)
    return private_dir(config.private_state_dir() / "fhir-bulk")


def prune(root: Path) -> None:
    """Drop job directories nobody resumed within a day; symlinks are neither followed nor removed through."""
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):  # a symlinked root (lstat does not follow): never walk it
        return
    cutoff = time.time() - STALE_AFTER_SECONDS
    with os.scandir(root) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                continue


def _read_no_follow(path: Path) -> bytes | None:
    """A job file's bytes, refusing a symlink (a planted job file must not point us elsewhere); None if absent."""
    try:
        return read_no_follow(path)
    except OSError:
        log.warning("ignoring a bulk job file that is a symbolic link or unreadable")
        return None


class Spool:
    """The downloaded resources of one job, on disk: ``(type, id) -> body``, children indexed by parent.

    Shared by the download threads (one lock): each row remembers its file, so a file that fails halfway is
    removed row by row and a file counts only once it is listed in ``files``.
    """

    def __init__(self, path: Path) -> None:
        self.lock = threading.Lock()
        self.path = path
        self._readers = threading.local()  # streams read in parallel: one read connection per thread
        self._all_readers: list[sqlite3.Connection] = []
        self.db = private_sqlite(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS res (type TEXT, id TEXT, parent TEXT, file TEXT, body BLOB, "
            "PRIMARY KEY (type, id))"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS res_parent ON res (parent, type)")
        self.db.execute("CREATE INDEX IF NOT EXISTS res_file ON res (file)")
        self.db.execute("CREATE TABLE IF NOT EXISTS files (url TEXT PRIMARY KEY, type TEXT, lines INTEGER)")

    def done_files(self) -> set[str]:
        with self.lock:
            return {row[0] for row in self.db.execute("SELECT url FROM files")}

    def put(self, url: str, rows: list[tuple[str, str, str | None, bytes]]) -> None:
        with self.lock:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO res VALUES (?, ?, ?, ?, ?)", [(t, i, p, url, b) for t, i, p, b in rows]
            )
            self.db.execute("COMMIT")

    def commit_file(self, url: str, kind: str, lines: int) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", (url, kind, lines))

    def discard_file(self, url: str) -> None:
        """Forget the rows of a file that did not download completely."""
        with self.lock:
            self.db.execute("DELETE FROM res WHERE file = ?", (url,))

    def discard_unfinished(self) -> None:
        """After a kill: rows of files that never completed go, finished files stay."""
        with self.lock:
            self.db.execute("DELETE FROM res WHERE file NOT IN (SELECT url FROM files)")

    def clear(self) -> None:
        with self.lock:
            self.db.execute("DELETE FROM res")
            self.db.execute("DELETE FROM files")

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._readers.conn = conn
            with self.lock:
                self._all_readers.append(conn)
        return conn

    def of_type(self, kind: str) -> Iterator[dict[str, Any]]:
        for (body,) in self._reader().execute("SELECT body FROM res WHERE type = ? ORDER BY id", (kind,)):
            yield orjson.loads(body)

    def children(self, *parents: str) -> dict[str, list[dict[str, Any]]]:
        """The children filed under any of ``parents`` (its literal reference, or its identifier keys)."""
        kids: dict[str, list[dict[str, Any]]] = {}
        seen: set[tuple[str, str]] = set()
        for parent in parents:
            query = "SELECT type, id, body FROM res WHERE parent = ? ORDER BY id"
            for kind, rid, body in self._reader().execute(query, (parent,)):
                if (kind, rid) not in seen:
                    seen.add((kind, rid))
                    kids.setdefault(kind, []).append(orjson.loads(body))
        return kids

    def get(self, ref: str) -> dict[str, Any] | None:
        kind, _, rid = ref.partition("/")
        row = self._reader().execute("SELECT body FROM res WHERE type = ? AND id = ?", (kind, rid)).fetchone()
        return orjson.loads(row[0]) if row else None

    def close(self) -> None:
        with self.lock:
            for conn in self._all_readers:
                conn.close()
            self._all_readers.clear()
        self.db.close()


class ByRef(Mapping[str, Any]):
    """``"Goal/<id>" -> resource`` looked up in the spool on demand (what the normalizer's ``_include`` map gives)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def __getitem__(self, ref: str) -> Any:
        found = self.spool.get(ref)
        if found is None:
            raise KeyError(ref)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class ExportJob:
    """One ``$export`` and its private job directory (``job.json`` + the spool).

    ``dead`` marks a job no later run can resume (the server refused or lost it for good): its spool is wiped
    when the channel closes, even after a failure. Any other failure keeps it for the next run to resume.
    """

    def __init__(self, directory: Path, kickoff: dict[str, Any]) -> None:
        self.dir = private_dir(directory)
        self.kickoff = kickoff
        self.state: dict[str, Any] = {"kickoff": kickoff}
        self.dead = False
        saved_bytes = _read_no_follow(self.dir / JOB_FILE)
        if saved_bytes is not None:
            try:
                saved = orjson.loads(saved_bytes)
                if isinstance(saved, dict) and saved.get("kickoff") == kickoff:
                    self.state = saved
            except orjson.JSONDecodeError:
                log.warning("ignoring an unreadable bulk job file in %s", self.dir)
        self.spool = Spool(self.dir / SPOOL_FILE)
        self.entities_left: set[str] = set(kickoff["entities"])

    def save(self) -> None:
        write_private(self.dir / JOB_FILE, orjson.dumps(self.state))

    def forget_server_job(self) -> None:
        """The server's job is gone: drop its status URL, manifest and spooled files."""
        self.state.update(status_url=None, manifest=None)
        self.spool.clear()
        self.save()

    @property
    def transaction_time(self) -> datetime | None:
        value = (self.state.get("manifest") or {}).get("transactionTime")
        if not isinstance(value, str):
            return None
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def remove(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir, ignore_errors=True)
