"""Append-only JSON Lines files (dead letters, the audit trail): private, one flushed line per entry.

A killed process leaves a consistent prefix of whole lines; concurrent writers in one process take a lock.
The file is opened through ``private_files.open_private`` (0600, never through a symlink, a new parent 0700).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson

from .private_files import open_private


class JsonlAppender:
    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._fh: Any = None

    def append(self, entry: dict[str, Any]) -> None:
        """Write one entry (no-op without a path)."""
        if self.path is None:
            return
        line = orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            if self._fh is None:
                self._fh = open_private(self.path, "ab")
            self._fh.write(line)
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
