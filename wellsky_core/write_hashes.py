"""The write-hash ledger: what earlier runs wrote, so an identical record is skipped without a round trip.

(Not the authorization-unit ledger of ``scheduling.py``, which counts payer units booked in this run.)

Reverse-ETL tools diff against their previous sync instead of re-reading the destination for every record;
this is the same idea. Key: (tenant, stream, natural key or WellSky id); value: a hash of the canonical
record as last written successfully and its WellSky id. A record whose hash matches is reported
``unchanged`` without any request. Trade-off (why it is opt-in): an edit made in WellSky after our write is
not reverted by re-sending the same input; change the input, or delete the ledger, to force a comparison.
Hashes only: the ledger holds no patient data.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

from .idempotency import canonical_json


def record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(record).encode()).hexdigest()


class WriteHashLedger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS writes (tenant TEXT, stream TEXT, key TEXT, hash TEXT NOT NULL, "
            "wellsky_id TEXT, PRIMARY KEY (tenant, stream, key))"
        )

    @staticmethod
    def _key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()  # natural keys (MRNs) are identifiers: store a hash

    def lookup(self, tenant: str, stream: str, key: str) -> tuple[str, str | None] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT hash, wellsky_id FROM writes WHERE tenant = ? AND stream = ? AND key = ?",
                (tenant, stream, self._key(key)),
            ).fetchone()
        return (row[0], row[1]) if row else None

    def remember(self, tenant: str, stream: str, key: str, digest: str, wellsky_id: str | None) -> None:
        """Called only after WellSky confirmed the record (created, updated or found unchanged)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO writes VALUES (?, ?, ?, ?, ?)",
                (tenant, stream, self._key(key), digest, wellsky_id),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
