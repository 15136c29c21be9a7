"""Thread-safe counters of what the transport did, so runs can be compared with the server's own counters."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Metrics:
    """Requests, retries by reason, pages, records, bytes, re-authentications and rate-limit waits.

    One instance is shared by every thread of a connector run; all updates take a lock, so the counts are
    exact (the fault-injection tests compare them with the sandbox's counters one for one).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0
        self._retries: Counter[str] = Counter()
        self._pages = 0
        self._records = 0
        self._bytes = 0
        self._reauths = 0
        self._rate_limit_wait = 0.0

    def add_request(self) -> None:
        with self._lock:
            self._requests += 1

    def add_retry(self, reason: str) -> None:
        """Count one retry; ``reason`` is a status ("503") or an error kind ("connection", "malformed")."""
        with self._lock:
            self._retries[reason] += 1

    def add_page(self, records: int) -> None:
        with self._lock:
            self._pages += 1
            self._records += records

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self._bytes += count

    def add_reauth(self) -> None:
        with self._lock:
            self._reauths += 1

    def add_rate_limit_wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            self._rate_limit_wait += seconds

    @property
    def retries(self) -> dict[str, int]:
        with self._lock:
            return dict(self._retries)

    @property
    def reauths(self) -> int:
        with self._lock:
            return self._reauths

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of every counter (JSON-ready)."""
        with self._lock:
            return {
                "requests": self._requests,
                "retries": sum(self._retries.values()),
                "retries_by_reason": dict(self._retries),
                "pages": self._pages,
                "records": self._records,
                "bytes": self._bytes,
                "reauths": self._reauths,
                "rate_limit_wait_seconds": round(self._rate_limit_wait, 6),
            }
