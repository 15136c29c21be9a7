"""Client-side token bucket: stay under a tenant's request limit instead of discovering it through 429s."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; thread-safe.

    A caller that finds the bucket empty *reserves* its token (the level goes negative) and sleeps outside the
    lock, so concurrent callers are spaced exactly ``1/rate`` apart in arrival order and nobody spins.
    ``rate`` of 0 or None disables limiting.
    """

    def __init__(
        self,
        rate: float | None,
        burst: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate < 0:
            raise ValueError("rate must be >= 0 (0 disables the limiter)")
        if burst < 1:
            raise ValueError("burst must be >= 1 token")
        self.rate = rate or 0.0
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._stamp = clock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens``, sleeping as long as needed; returns the seconds waited."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= tokens
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        if wait > 0:
            self._sleep(wait)
        return wait
