"""Deletions from channels that see a complete view: the one home of "a record that was there is gone".

A channel whose read of a stream can be a complete view of the tenant (a full, non-``_since`` bulk export, a
full export file, a finished Kinnser portal walk, the Home Connect locations list) feeds a :class:`SnapshotView`
with every record it reads. At the end of the stream the read loop (both faces) asks :class:`SnapshotDeletions`
what the last run knew and this run no longer finds, and emits each such key once with ``_sdc_deleted_at``.

Rules (docs/deletions.md):

- only a view the channel declared complete (:meth:`SnapshotView.complete`) may produce deletions; a ``_since``
  export, a partial export file, a dead-lettered input, a failed or interrupted read, or a walk that skipped an
  office never does (its keys are still remembered: a key once seen exists or existed);
- a first sync (no previous keys), keys held on another machine (the state moved without its key store), a
  changed ``start_date`` or an implausible view (empty, or missing most of what was known) produce none, and say
  why in the run-end line ``<stream>: deletions: ...``;
- deleted are the keys known before, or seen this run in data older than the view, that are neither in the view
  nor in data newer than it (an export file after the full one): such a key is never called deleted.

Where the known keys live: in the stream's state (``snapshot_keys``) up to :data:`STATE_LIMIT` keys, else in a
private SQLite file (0600 in the tenant's 0700 state directory) that the state names by a generation id, a count
and a digest. Only keys and the record's client id are kept, never logged.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from .models import DELETED_AT, ENTITIES, Deletable

if TYPE_CHECKING:
    from .config import WellSkyConfig

log = logging.getLogger("wellsky_core.deletions")

SNAPSHOT_KEY = "snapshot_keys"
VERSION = 1
STATE_LIMIT = 1000
"""Most keys kept in the stream state itself; a larger set goes to the private key store."""
MAX_DELETED_SHARE = 0.5
"""A view that lacks more than this share of the known keys (and more than a handful) is not trusted."""
STORE_FILE = "snapshot_keys.sqlite"
KEEP_GENERATIONS = 6
"""Key sets kept per stream in the store: the current one and a few older ones (a state not yet saved, another
face's state for the same tenant)."""

Part = Literal["view", "before", "after"]


def can_carry_deletions(stream: str) -> bool:
    """Whether the stream's schema has ``_sdc_deleted_at`` and a deletion (key, client, nulls) fits it."""
    spec = ENTITIES.get(stream)
    return spec is not None and issubclass(spec.model, Deletable)


def _has_client(stream: str) -> bool:
    spec = ENTITIES.get(stream)
    return spec is not None and "patient_id" in spec.model.model_fields


def stamp_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tombstone(stream: str, key: str, client: str | None, observed: datetime, **extra: Any) -> dict[str, Any]:
    """A record the server no longer has, in the Singer convention targets understand (``_sdc_deleted_at``):
    its key, its client where the stream has one, and every other field null."""
    stamp = stamp_of(observed)
    record: dict[str, Any] = {"id": key}
    if _has_client(stream):
        record["patient_id"] = client
    record.update(extra)
    record.update({"data_quality": [], "updated_at": stamp, DELETED_AT: stamp})
    return record


@dataclass
class SnapshotView:
    """What one run of one stream saw, fed by the channel; complete only when the channel says so."""

    stream: str
    floor: str = ""
    """``start_date`` as a bookmark string: records updated before it are outside the synced range."""
    known: dict[str, str | None] = field(default_factory=dict)
    in_view: set[str] = field(default_factory=set)
    before: set[str] = field(default_factory=set)
    after: set[str] = field(default_factory=set)
    view_id: str | None = None
    as_of: datetime | None = None
    not_complete: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def see(self, record: dict[str, Any], part: Part = "view") -> None:
        """One record read this run: in the complete view, or in data older or newer than it."""
        key = record.get("id")
        if not isinstance(key, str) or not key or record.get(DELETED_AT):
            return
        client = record.get("patient_id") if _has_client(self.stream) else None
        with self._lock:
            (self.in_view if part == "view" else self.after if part == "after" else self.before).add(key)
            if not self.floor or str(record.get("updated_at") or "") >= self.floor:
                self.known[key] = str(client) if client is not None else None

    def complete(self, view_id: str, as_of: datetime) -> None:
        """The channel read the whole view (``view_id``: a PHI-free name; ``as_of``: when it was taken)."""
        self.view_id, self.as_of = view_id, as_of

    def incomplete(self, reason: str) -> None:
        """This run's read is not a complete view (the first reason is kept, PHI-free)."""
        with self._lock:
            self.not_complete = self.not_complete or reason


class KeyStore:
    """The private SQLite store of large key sets, one generation per saved view."""

    def __init__(self, config: WellSkyConfig) -> None:
        self.path = config.private_state_dir() / STORE_FILE

    def _open(self) -> Any:
        from .private_files import private_sqlite

        db = private_sqlite(self.path, timeout=30)
        db.execute("CREATE TABLE IF NOT EXISTS generations (gen TEXT PRIMARY KEY, scope TEXT, count INTEGER, "
                    "digest TEXT, created_at TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS keys (gen TEXT, key TEXT, client TEXT, PRIMARY KEY (gen, key))")
        return db

    def load(self, gen: str, count: int, digest: str) -> dict[str, str | None] | None:
        """The key set of ``gen``, or None when this machine does not hold it (or holds another one)."""
        if not self.path.exists():
            return None
        db = self._open()
        try:
            row = db.execute("SELECT count, digest FROM generations WHERE gen = ?", (gen,)).fetchone()
            if row is None or row[0] != count or row[1] != digest:
                return None
            keys = {k: c for k, c in db.execute("SELECT key, client FROM keys WHERE gen = ?", (gen,))}
        finally:
            db.close()
        return keys if len(keys) == count and _digest(keys) == digest else None

    def save(self, scope: str, keys: dict[str, str | None]) -> tuple[str, str]:
        """Store ``keys`` as a new generation of ``scope`` (older ones pruned); returns (gen, digest)."""
        gen, digest = uuid.uuid4().hex, _digest(keys)
        db = self._open()
        try:
            with db:
                db.execute("INSERT INTO generations VALUES (?, ?, ?, ?, ?)",
                           (gen, scope, len(keys), digest, stamp_of(datetime.now(UTC))))
                db.executemany("INSERT INTO keys VALUES (?, ?, ?)", ((gen, k, c) for k, c in keys.items()))
                old = [r[0] for r in db.execute(
                    "SELECT gen FROM generations WHERE scope = ? ORDER BY created_at DESC, rowid DESC LIMIT -1 "
                    "OFFSET ?", (scope, KEEP_GENERATIONS))]
                for stale in old:
                    db.execute("DELETE FROM keys WHERE gen = ?", (stale,))
                    db.execute("DELETE FROM generations WHERE gen = ?", (stale,))
        finally:
            db.close()
        return gen, digest


def _digest(keys: dict[str, str | None]) -> str:
    digest = hashlib.sha256()
    for key in sorted(keys):
        digest.update(key.encode() + b"\x00" + (keys[key] or "").encode() + b"\x01")
    return digest.hexdigest()[:32]


class SnapshotDeletions:
    """One stream's comparison of this run's view with the keys known before, for the read loop."""

    def __init__(self, config: WellSkyConfig, stream: str, state: MutableMapping[str, Any]) -> None:
        self.config = config
        self.stream = stream
        self.state = state
        start = config.start_date
        self.floor = stamp_of(start) if start is not None else ""
        self.scope = "|".join((str(config.product), config.source_for(stream), stream, self.floor))
        self.emitted = 0
        self.outcome = ""
        self.every_days = 0
        """Days between the complete views the read loop schedules (0: none scheduled; the run-end line then
        names no date)."""

    def view(self) -> SnapshotView:
        return SnapshotView(self.stream, floor=self.floor)

    def _previous(self) -> tuple[dict[str, str | None] | None, str | None, str]:
        """(keys known before, the last compared view's id, why they are unknown: '' when known)."""
        entry = self.state.get(SNAPSHOT_KEY)
        if not isinstance(entry, dict) or entry.get("v") != VERSION:
            return None, None, ("first view of this stream (no keys from an earlier sync): deletions can be known "
                                "from the next complete view")
        if entry.get("scope") != self.scope:
            return None, None, "the previous keys were taken for another start_date or source; starting over"
        last_view = entry.get("view") if isinstance(entry.get("view"), str) else None
        if isinstance(entry.get("keys"), dict):
            return {str(k): (str(c) if c is not None else None) for k, c in entry["keys"].items()}, last_view, ""
        gen, count, digest = entry.get("store"), entry.get("count"), entry.get("digest")
        if isinstance(gen, str) and isinstance(count, int) and isinstance(digest, str):
            keys = KeyStore(self.config).load(gen, count, digest)
            if keys is not None:
                return keys, last_view, ""
        return None, None, ("cannot know this run: the previous keys are not in this machine's private key store "
                            f"({STORE_FILE} under the state directory; the state came from elsewhere); "
                            "starting over from this view")

    def finish(self, view: SnapshotView) -> Iterator[dict[str, Any]]:
        """Deletions to emit (each once), then the state updated with the keys known now; logs the outcome."""
        previous, last_view, unknown = self._previous()
        complete = view.view_id is not None and view.as_of is not None and view.not_complete is None
        deleted: dict[str, str | None] = {}
        if not complete:
            self.outcome = f"none known this run: {view.not_complete or 'this read is not a complete view'}"
            if self.every_days > 0:
                self.outcome += f"; the next complete view is due {self.next_full_view()}"
        elif previous is None:
            self.outcome = f"none known this run: {unknown}"
        elif view.view_id == last_view:
            self.outcome = f"none known this run: no complete view newer than the last sync's ({view.view_id})"
        else:
            candidates = {**previous, **{k: view.known.get(k) for k in view.before if k in view.known}}
            gone = {k: c for k, c in candidates.items() if k not in view.in_view and k not in view.after}
            if gone and not view.in_view:
                self.outcome = (f"none known this run: the complete view ({view.view_id}) is empty while "
                                f"{len(candidates)} records were known; not trusted")
            elif len(gone) > 10 and len(gone) > MAX_DELETED_SHARE * len(candidates):
                self.outcome = (f"none known this run: the complete view ({view.view_id}) lacks {len(gone)} of "
                                f"{len(candidates)} known records; a view missing most records is not trusted")
            else:
                deleted = gone
                self.outcome = f"{len(gone)} emitted (compared with {view.view_id})"
        as_of = view.as_of or datetime.now(UTC)  # set whenever there are deletions (a complete view)
        for key, client in sorted(deleted.items()):
            self.emitted += 1
            yield tombstone(self.stream, key, client, as_of)
        known = dict(previous or {})
        known.update(view.known)
        for key in deleted:
            known.pop(key, None)
        entry = self.state.get(SNAPSHOT_KEY)
        previous_at = entry.get("view_at") if previous is not None and isinstance(entry, dict) else None
        self._save(known, view.view_id if complete else last_view,
                   stamp_of(view.as_of) if complete and view.as_of else previous_at)
        log.info("%s: deletions: %s", self.stream, self.outcome)

    def _last_full_view(self) -> datetime | None:
        entry = self.state.get(SNAPSHOT_KEY)
        taken = entry.get("view_at") if isinstance(entry, dict) else None
        try:
            return datetime.fromisoformat(str(taken).replace("Z", "+00:00")) if taken else None
        except ValueError:
            return None

    def full_view_due(self) -> bool:
        """Whether ``every_days`` (0: never) have passed since the last complete view (or none was taken)."""
        if self.every_days <= 0:
            return False
        last = self._last_full_view()
        return last is None or datetime.now(UTC) - last >= timedelta(days=self.every_days)

    def next_full_view(self) -> str:
        """When the next complete view will be read (the run-end line says when deletions become known)."""
        last = self._last_full_view()
        if last is None:
            return "at the next sync"
        return "at the first sync after " + stamp_of(last + timedelta(days=self.every_days))

    def _save(self, keys: dict[str, str | None], view_id: str | None, view_at: str | None) -> None:
        entry: dict[str, Any] = {"v": VERSION, "scope": self.scope, "view": view_id, "view_at": view_at,
                                 "count": len(keys)}
        if len(keys) <= STATE_LIMIT:
            entry["keys"] = dict(sorted(keys.items()))
        else:
            gen, digest = KeyStore(self.config).save(self.scope, keys)
            entry.update(store=gen, digest=digest)
        self.state[SNAPSHOT_KEY] = entry
