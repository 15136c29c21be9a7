"""The write audit trail: one JSON line per write decision, with no patient data in it.

Fields: time, stream, action, WellSky id, idempotency key, a hash of the natural key (so runs can be
correlated without holding MRNs), error code. Appends are flushed per line so a killed run leaves a
consistent prefix.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson


class AuditLog:
    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._fh: Any = None

    def record(
        self,
        *,
        stream: str,
        action: str,
        wellsky_id: str | None,
        idempotency_key: str | None,
        key_hash: str | None,
        code: str | None = None,
        line: int | None = None,
    ) -> None:
        if self.path is None:
            return
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "stream": stream,
            "action": action,
            "wellsky_id": wellsky_id,
            "idempotency_key": idempotency_key,
            "key_hash": key_hash,
            "code": code,
            "input_line": line,
        }
        data = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
            self._fh.write(data)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        p = Path(path)
        return [orjson.loads(x) for x in p.read_bytes().splitlines() if x.strip()] if p.exists() else []
