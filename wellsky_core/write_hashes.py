"""The write-hash ledger: what earlier runs wrote, so an identical record is skipped without a round trip.

(Not the authorization-unit ledger of ``scheduling.py``, which counts payer units booked in this run.)

Reverse-ETL tools diff against their previous sync instead of re-reading the destination for every record;
this is the same idea. Key: (tenant, stream, natural key or WellSky id); value: a hash of the canonical
record as last written successfully and its WellSky id. A record whose hash matches is reported
``unchanged`` without any request. Trade-off (why it is opt-in): an edit made in WellSky after our write is
not reverted by re-sending the same input; change the input, or delete the ledger, to force a comparison.

Keyed hashes only (issue 24): the natural key (``n:last|first|dob`` or an MRN) and the record are stored as
HMAC-SHA256 with the per-tenant secret that also keys the audit's ``key_hash``, so whoever holds the file
cannot confirm a guessed name and birth date. A ledger of the older unkeyed format is emptied on open. The
file is a private SQLite database (0600, its ``-wal``/``-shm`` too, never through a symlink).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from pathlib import Path
from typing import Any

from .idempotency import canonical_json
from .private_files import private_sqlite

LEDGER_FORMAT = 2
"""``PRAGMA user_version`` of a keyed ledger; 0 (older files) held unkeyed SHA-256 and is cleared."""


def keyed_hash(secret: bytes, value: str) -> str:
    """HMAC-SHA256 of ``value`` under the tenant's secret: the one keyed hash of identifiers we store."""
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()


class WriteHashLedger:
    def __init__(self, path: str | Path, secret: bytes) -> None:
        if not secret:
            raise ValueError("the write ledger needs the tenant's key-hash secret")
        self.path = Path(path)
        self._secret = secret
        self._lock = threading.Lock()
        self._db = private_sqlite(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        if self._db.execute("PRAGMA user_version").fetchone()[0] != LEDGER_FORMAT:
            self._db.execute("DROP TABLE IF EXISTS writes")  # unkeyed hashes of natural keys: guessable
            self._db.execute(f"PRAGMA user_version = {LEDGER_FORMAT}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS writes (tenant TEXT, stream TEXT, key TEXT, hash TEXT NOT NULL, "
            "wellsky_id TEXT, PRIMARY KEY (tenant, stream, key))"
        )

    def _key(self, key: str) -> str:
        return keyed_hash(self._secret, key)  # natural keys (names, birth dates, MRNs) are identifiers

    def digest(self, record: dict[str, Any]) -> str:
        """The keyed hash of a canonical record (what ``remember`` stores and ``lookup`` answers)."""
        return keyed_hash(self._secret, canonical_json(record))

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
