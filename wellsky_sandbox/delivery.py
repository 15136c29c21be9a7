"""The sandbox's outbound delivery worker: a due-time queue drained by one on-demand thread.

Both ways the emulated tenant pushes to subscribers (the modeled signed webhooks and Home Connect's
subscriptions) schedule deliveries and retries here; each hub only says how one delivery is sent and logged.
"""

from __future__ import annotations

import heapq
import threading
import time
from typing import Any

IDLE_EXIT_SECONDS = 2.0
"""The worker exits after this long with nothing queued and restarts on the next job: no thread outlives a test."""


class DeliveryQueue:
    """Jobs run at their due time, in order, by one worker thread started on demand."""

    thread_name = "sandbox-deliveries"

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, dict[str, Any]]] = []  # (due, tiebreak, job)
        self._cond = threading.Condition()
        self._counter = 0
        self._worker: threading.Thread | None = None

    def _deliver(self, job: dict[str, Any]) -> None:
        raise NotImplementedError

    def _schedule(self, job: dict[str, Any], delay: float) -> None:
        with self._cond:
            self._counter += 1
            heapq.heappush(self._queue, (time.monotonic() + delay, self._counter, job))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, daemon=True, name=self.thread_name)
                self._worker.start()
            self._cond.notify()

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._queue and self._queue[0][0] <= now:
                        _, _, job = heapq.heappop(self._queue)
                        break
                    if not self._queue and now - idle_since > IDLE_EXIT_SECONDS:
                        self._worker = None
                        return  # restarted on the next job
                    wait = self._queue[0][0] - now if self._queue else IDLE_EXIT_SECONDS
                    self._cond.wait(timeout=max(0.01, min(wait, IDLE_EXIT_SECONDS)))
            self._deliver(job)
            idle_since = time.monotonic()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)
