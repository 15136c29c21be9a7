"""An exclusive hold on something only one process on this machine may use at a time (a portal account's session).

A ``flock`` on a private file: the kernel drops it when the process ends, however it ends, so a crashed run never
leaves a stale lock behind. The file holds the holder's pid and start time, nothing else.

The hold is the process's: every :class:`MachineLock` of one path in a process shares one open file, so a second
one in the same process (a channel opened again while an earlier one was never closed, as singer-sdk's connection
test does after a sync) is granted at once instead of waiting for its own process. A flock excludes a second open
of the same file even in the process that holds it, so without this sharing that second one waited out its whole
timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

POLL_SECONDS = 0.5
WAIT_FOR_OTHER_RUN_SECONDS = 900.0
"""How long a run waits for another run on this machine holding what it needs (a portal account's session, a
tenant's bulk export job) before it stops in one line."""

_HOLDS: dict[str, list[int]] = {}
"""The paths this process holds: ``[fd, holders]``."""
_HOLDS_LOCK = threading.Lock()


class MachineLock:
    """``acquire`` waits up to ``wait_seconds`` for another process holding it; ``release`` (the last holder's in
    this process, or the process's end) frees it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key = os.path.abspath(path)
        self.held = False

    def acquire(self, wait_seconds: float, on_wait: Callable[[int | None], None] | None = None) -> bool:
        """Take the lock; False when another process still held it after ``wait_seconds``. ``on_wait(pid)`` is
        called once, when the lock is found taken (pid: the holder's, when its file says so)."""
        if self.held:
            return True
        with _HOLDS_LOCK:
            hold = _HOLDS.get(self._key)
            if hold is not None:  # this process holds it already
                hold[1] += 1
                self.held = True
                return True
        self.held = self._take(wait_seconds, on_wait)
        return self.held

    def _take(self, wait_seconds: float, on_wait: Callable[[int | None], None] | None) -> bool:
        """Lock the file and count this holder (True), or False once ``wait_seconds`` have passed."""
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
                    with _HOLDS_LOCK:
                        hold = _HOLDS.get(self._key)
                        if hold is not None:  # another thread of this process got it first: share its hold
                            hold[1] += 1
                            os.close(fd)
                            return True
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
        with _HOLDS_LOCK:
            _HOLDS[self._key] = [fd, 1]
        return True

    def hold(self, wait_seconds: float, *, holding: str, why: str, log: logging.Logger) -> None:
        """Take the lock, waiting for another run that has it (logged once, with its pid), or raise one line.
        ``holding`` says what the other run does ("is signed in with this portal account"), ``why`` why this run
        must not go on beside it."""

        def waiting(pid: int | None) -> None:
            log.info("another run on this machine (pid %s) %s; waiting up to %d min for it to end",
                     pid or "unknown", holding, wait_seconds // 60)

        if not self.acquire(wait_seconds, waiting):
            from .errors import WellSkyError

            raise WellSkyError(
                f"another run on this machine still {holding} after {wait_seconds / 60:.0f} min: {why}; run again "
                "when it has ended"
            )

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with _HOLDS_LOCK:
            hold = _HOLDS.get(self._key)
            if hold is None:
                return
            hold[1] -= 1
            if hold[1] <= 0:
                del _HOLDS[self._key]
                os.close(hold[0])  # closing the file frees the flock

    def __del__(self) -> None:
        # a holder dropped without release (a channel never closed) must not keep the lock for the process's life
        self.release()


def _holder(fd: int) -> int | None:
    try:
        pid = json.loads(os.pread(fd, 256, 0) or b"{}").get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None
