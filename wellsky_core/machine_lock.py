"""An exclusive hold on something only one process on this machine may use at a time (a portal account's session).

A ``flock`` on a private file: the kernel drops it when the process ends, however it ends, so a crashed run never
leaves a stale lock behind. The file holds the holder's pid and start time, nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

POLL_SECONDS = 0.5


class MachineLock:
    """``acquire`` waits up to ``wait_seconds`` for the current holder; ``release`` (or the process's end) frees it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_seconds: float, on_wait: Callable[[int | None], None] | None = None) -> bool:
        """Take the lock; False when another process still held it after ``wait_seconds``. ``on_wait(pid)`` is
        called once, when the lock is found taken (pid: the holder's, when its file says so)."""
        if self._fd is not None:
            return True
        from .private_files import private_dir

        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait_seconds
        told = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told and on_wait is not None:
                        on_wait(_holder(fd))
                        told = True
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        return False
                    time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            started = datetime.now(UTC).isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": started}).encode(), 0)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file frees the flock

    def __del__(self) -> None:
        # a holder dropped without release (a channel never closed) must not keep the lock for the process's life
        self.release()


def _holder(fd: int) -> int | None:
    try:
        pid = json.loads(os.pread(fd, 256, 0) or b"{}").get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None
