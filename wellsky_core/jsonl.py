"""Append-only JSON Lines files (dead letters, the audit trail): private, one flushed line per entry.

A killed process leaves a consistent prefix of whole lines; concurrent writers in one process take a lock.
The file is opened through ``private_files.open_private`` (0600, never through a symlink, a new parent 0700).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import orjson

from .errors import LocalWriteFailed
from .private_files import UnsafePathError, open_private


class JsonlAppender:
    setting = "its path"
    """The setting that names the file (in the error when it cannot be written)."""
    keeps = "an entry"
    """What one line keeps, for that error."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._fh: Any = None

    def append(self, entry: dict[str, Any]) -> None:
        """Write one entry (no-op without a path), whole or not at all.

        The line goes to the file descriptor in one or more ``os.write`` calls, never through a buffer: a full
        volume once left a buffered half line that the next entry continued, and a buffer that could not be
        flushed raised again at close. A failed write is cut back to the last whole line and raised as
        :class:`~wellsky_core.errors.LocalWriteFailed` naming the setting: what the line was to keep must not be
        passed over as if it had been kept."""
        if self.path is None:
            return
        line = orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            start = written = None
            try:
                if self._fh is None:
                    self._fh = open_private(self.path, "ab")
                fd = self._fh.fileno()
                start, written = os.lseek(fd, 0, os.SEEK_END), 0
                view = memoryview(line)
                while written < len(line):
                    written += os.write(fd, view[written:])
            except UnsafePathError:
                raise  # a planted link or a non-file: its own refusal says so
            except OSError as exc:
                if start is not None and written:
                    self._cut(start, written)
                raise LocalWriteFailed.writing(f"{self.keeps} to {self.path}", self.setting, exc) from None

    def _cut(self, start: int, written: int) -> None:
        """Drop the part of a line a failed write left, unless another writer appended after it."""
        fd = self._fh.fileno()
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size == start + written:
                os.ftruncate(fd, start)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                with contextlib.suppress(OSError):  # nothing is buffered: every line went out with os.write
                    self._fh.close()
                self._fh = None

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        p = Path(path)
        return [orjson.loads(x) for x in p.read_bytes().splitlines() if x.strip()] if p.exists() else []
