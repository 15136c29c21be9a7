"""The tenant's database: logical records, idempotency keys, audit log and settings in one SQLite file.

A real file (WAL mode) so a restarted sandbox keeps every record, write and key — the reliability suite
stops and starts the server mid-sync. All access goes through one connection owned by the server's
event-loop thread (plus short-lived read connections for other threads), which keeps SQLite simple and fast.
"""

from __future__ import annotations

import base64
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from .generator import DATA_END, ENTITIES, Generator, iso, parse_iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    entity TEXT NOT NULL,
    id TEXT NOT NULL,
    updated_at INTEGER NOT NULL,          -- epoch seconds, the replication key
    patient_id TEXT,
    natural_key TEXT,                     -- patients.mrn / appointments.external_id
    body BLOB NOT NULL,                   -- logical record, JSON
    PRIMARY KEY (entity, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_time ON records (entity, updated_at, id);
-- lookups by patient or natural key also sort by (updated_at, id): index both, or SQLite scans the entity
CREATE INDEX IF NOT EXISTS records_by_patient_time ON records (entity, patient_id, updated_at, id);
CREATE INDEX IF NOT EXISTS records_by_natural_time ON records (entity, natural_key, updated_at, id);
DROP INDEX IF EXISTS records_by_patient;
DROP INDEX IF EXISTS records_by_natural;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    response BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    principal TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    entity TEXT,
    record_id TEXT,
    action TEXT NOT NULL,                 -- created / updated / replayed / rejected
    status INTEGER NOT NULL,
    idempotency_key TEXT,
    detail TEXT
);
"""

_RECORD_INDEXES = [ln.rstrip(";") for ln in SCHEMA.splitlines() if ln.startswith("CREATE INDEX IF NOT EXISTS records_")]
SEED_CACHE_KIB = 256 * 1024
"""SQLite page cache while seeding (the default 2 MB made an L tenant's inserts thrash the disk for many minutes)."""
_NATURAL = {"patients": "mrn", "appointments": "external_id"}


def encode_cursor(updated_at: int, rec_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([updated_at, rec_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Raises ValueError on anything that is not a cursor this server issued."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        ts, rec_id = orjson.loads(base64.urlsafe_b64decode(padded))
    except Exception as exc:
        raise ValueError("cursor is not valid; pass next_cursor from the previous page unchanged") from exc
    if not isinstance(ts, int) or not isinstance(rec_id, str):
        raise ValueError("cursor is not valid; pass next_cursor from the previous page unchanged")
    return ts, rec_id


def epoch(value: str) -> int:
    return int(parse_iso(value).timestamp())


class Store:
    """One tenant's SQLite database."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()
        self._clock = 0

    # -- lifecycle ------------------------------------------------------------------------------------
    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def meta_json(self, key: str) -> Any:
        return orjson.loads(self.meta(key) or "{}")

    def set_meta_json(self, key: str, value: Any) -> None:
        self.set_meta(key, orjson.dumps(value).decode())

    def is_seeded(self) -> bool:
        return self.meta("seeded") is not None

    def seed(self, product: str, patients: int, seed: int) -> dict[str, int]:
        """Fill an empty database deterministically; a no-op on an already seeded file."""
        if self.is_seeded():
            existing = (self.meta("product"), self.meta("patients"), self.meta("seed"))
            if existing != (product, str(patients), str(seed)):
                raise ValueError(
                    f"data dir already holds a tenant (product={existing[0]}, scale={existing[1]}, "
                    f"seed={existing[2]}); use another --data-dir or the same settings"
                )
            return self.counts()
        gen = Generator(product, seed)
        rows = (
            (e, r["id"], epoch(r["updated_at"]), r.get("patient_id"), r.get(_NATURAL.get(e, "")), orjson.dumps(r))
            for e, r in gen.generate(patients)
        )
        with self.lock:
            self.db.execute("PRAGMA synchronous=OFF")
            self.db.execute(f"PRAGMA cache_size=-{SEED_CACHE_KIB}")
            self.db.execute("BEGIN")
            for create in _RECORD_INDEXES:  # built once, sorted, after the rows: not row by row at random
                self.db.execute(f"DROP INDEX IF EXISTS {create.split()[5]}")
            while True:
                batch = [row for _, row in zip(range(20_000), rows, strict=False)]
                if not batch:
                    break
                self.db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", batch)
            for key, value in (
                ("product", product),
                ("patients", str(patients)),
                ("seed", str(seed)),
                ("id_counters", orjson.dumps(gen.ids.counters).decode()),
                ("seeded", iso(DATA_END)),
            ):
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
            for create in _RECORD_INDEXES:
                self.db.execute(create)
            self.db.execute("COMMIT")
            self.db.execute("PRAGMA cache_size=-2000")  # SQLite's default again
            self.db.execute("PRAGMA synchronous=NORMAL")
        return self.counts()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- reads ----------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT entity, count(*) FROM records GROUP BY entity").fetchall()
        found = dict(rows)
        return {e: found.get(e, 0) for e in ENTITIES}

    def page(
        self,
        entity: str,
        *,
        since: int | None,
        cursor: tuple[int, str] | None,
        limit: int,
        filters: dict[str, str] | None = None,
        before: int | None = None,
    ) -> tuple[list[dict[str, Any]], tuple[int, str] | None]:
        """Records ordered by (updated_at, id) after ``cursor``, at/after ``since`` and before ``before``;
        returns the next cursor."""
        sql = "SELECT updated_at, id, body FROM records WHERE entity = ?"
        args: list[Any] = [entity]
        if since is not None:
            sql += " AND updated_at >= ?"
            args.append(since)
        if before is not None:
            sql += " AND updated_at < ?"
            args.append(before)
        if cursor is not None:
            sql += " AND (updated_at, id) > (?, ?)"
            args.extend(cursor)
        for column, value in (filters or {}).items():
            sql += f" AND {column} = ?"
            args.append(value)
        sql += " ORDER BY updated_at, id LIMIT ?"
        args.append(limit + 1)
        with self.lock:
            rows = self.db.execute(sql, args).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        records = [orjson.loads(body) for _, _, body in rows]
        nxt = (rows[-1][0], rows[-1][1]) if more and rows else None
        return records, nxt

    def iter_all(self, entity: str, since: int | None = None) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            records, cursor = self.page(entity, since=since, cursor=cursor, limit=5000)
            yield from records
            if cursor is None:
                return

    def get(self, entity: str, rec_id: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute("SELECT body FROM records WHERE entity = ? AND id = ?", (entity, rec_id)).fetchone()
        return orjson.loads(row[0]) if row else None

    def find(self, entity: str, *, patient_id: str | None = None, natural_key: str | None = None) -> list[dict]:
        sql, args = "SELECT body FROM records WHERE entity = ?", [entity]
        if patient_id is not None:
            sql += " AND patient_id = ?"
            args.append(patient_id)
        if natural_key is not None:
            sql += " AND natural_key = ?"
            args.append(natural_key)
        with self.lock:
            rows = self.db.execute(sql + " ORDER BY updated_at, id", args).fetchall()  # index order
        return [orjson.loads(r[0]) for r in rows]

    # -- writes ---------------------------------------------------------------------------------------
    def now(self) -> str:
        """A fresh updated_at: wall clock, but never behind the data already stored (whole seconds)."""
        with self.lock:
            if not self._clock:
                row = self.db.execute("SELECT max(updated_at) FROM records").fetchone()
                self._clock = int(row[0] or DATA_END.timestamp())
            self._clock = max(self._clock, int(time.time()))
            return iso(datetime.fromtimestamp(self._clock, UTC))

    def tick(self) -> None:
        """Move the change clock one second forward, so a later batch of changes sorts after this one."""
        with self.lock:
            self.now()
            self._clock += 1

    def mint_id(self, entity: str) -> str:
        from .generator import IdMinter

        with self.lock:
            counters = orjson.loads(self.meta("id_counters", "{}") or "{}")
            minter = IdMinter(self.meta("product") or "home_health", int(self.meta("seed") or 0), counters)
            new_id = minter.next(entity)
            self.set_meta("id_counters", orjson.dumps(minter.counters).decode())
            return new_id

    def put(self, entity: str, rec: dict[str, Any]) -> None:
        """Insert or replace a logical record (caller sets updated_at)."""
        with self.lock:
            self.db.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?)",
                (
                    entity,
                    rec["id"],
                    epoch(rec["updated_at"]),
                    rec.get("patient_id"),
                    rec.get(_NATURAL.get(entity, "")),
                    orjson.dumps(rec),
                ),
            )

    def delete(self, entity: str, rec_id: str) -> None:
        """Remove a logical record (a care log deleted as entered in error); truth no longer has it."""
        with self.lock:
            self.db.execute("DELETE FROM records WHERE entity = ? AND id = ?", (entity, rec_id))

    def put_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        with self.lock:
            self.db.execute("BEGIN")
            try:
                for entity, rec in items:
                    self.put(entity, rec)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def transaction(self) -> _Tx:
        return _Tx(self)

    # -- idempotency and audit -----------------------------------------------------------------------
    def idempotent_result(self, key: str) -> tuple[str, int, bytes] | None:
        with self.lock:
            row = self.db.execute(
                "SELECT request_hash, status, response FROM idempotency WHERE key = ?", (key,)
            ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def remember(self, key: str, request_hash: str, status: int, response: bytes) -> None:
        with self.lock:
            self.db.execute(
                "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?)",
                (key, request_hash, status, response, time.time()),
            )

    def audit(self, **entry: Any) -> None:
        cols = (
            "at",
            "principal",
            "method",
            "path",
            "entity",
            "record_id",
            "action",
            "status",
            "idempotency_key",
            "detail",
        )
        with self.lock:
            self.db.execute(
                f"INSERT INTO audit ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [entry.get(c) for c in cols],
            )

    def audit_log(self, after: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
        with self.lock:
            cur = self.db.execute("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class _Tx:
    """``with store.transaction():`` groups writes atomically (a crash leaves none of them)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> Store:
        self.store.lock.acquire()
        self.store.db.execute("BEGIN")
        return self.store

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self.store.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.store.lock.release()
