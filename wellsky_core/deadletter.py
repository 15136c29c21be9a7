"""The dead-letter file: everything that could not be read or written, with the reason, so nothing is lost.

One JSON object per line: ``{"at", "stage", "stream", "reason", "context", "payload"}``. The payload is the
original record or raw message exactly as received: the file holds patient data by design, so it is created
with owner-only permissions and its *contents* never go to logs — only counts and reasons do.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson


class DeadLetter:
    """Append-only JSONL sink shared by the tap (unreadable inputs) and the target (refused writes)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._fh: Any = None

    def write(
        self, *, stage: str, stream: str | None, reason: str, payload: Any, context: dict[str, Any] | None = None
    ) -> None:
        """Record one rejected item. ``reason`` must be PHI-free: it is also counted and logged."""
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "stage": stage,
            "stream": stream,
            "reason": reason,
            "context": context or {},
            "payload": payload,
        }
        line = orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            self.counts[f"{stage}:{stream or '-'}"] += 1
            if self.path is None:
                return
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._fh = os.fdopen(fd, "ab")
            self._fh.write(line)
            self._fh.flush()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        p = Path(path)
        if not p.exists():
            return []
        return [orjson.loads(line) for line in p.read_bytes().splitlines() if line.strip()]
