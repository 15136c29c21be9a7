"""WAN-like conditions: latency (with jitter) on every request, and a soft request-rate limit that counts overruns.

A real tenant is across the internet (100-300 ms per request) and asks for at most N requests/s without
throttling (Home Connect documents 100 req/s). On loopback with no latency the sandbox itself is the
bottleneck, which measures the wrong thing; with ``--latency 150ms`` the winner is the client that keeps the
request budget full. The delay is an ``asyncio.sleep`` so the server keeps serving concurrent requests
concurrently. The control API (``/_sandbox/...``) is the test harness, not the vendor: no delay, not counted.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

CONTROL_PREFIX = "/_sandbox/"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def parse_duration(text: str | float | int | None) -> float:
    """``"150ms"``, ``"0.15s"`` or a number of seconds -> seconds (>= 0)."""
    if text is None or text == "":
        return 0.0
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(text)
        if not match:
            raise ValueError(f"duration {text!r} must look like 150ms or 0.15s")
        seconds = float(match.group(1)) / (1000.0 if match.group(2) == "ms" else 1.0)
    if seconds < 0:
        raise ValueError(f"duration {text!r} must not be negative")
    return seconds


@dataclass(frozen=True)
class WanPlan:
    """Per-request delay drawn uniformly from ``latency ± jitter`` (never below 0); seeded, so runs repeat."""

    latency_seconds: float = 0.0
    jitter_seconds: float = 0.0
    seed: int = 11

    @classmethod
    def parse(cls, latency: str | float | None, jitter: str | float | None = None, seed: int = 11) -> WanPlan:
        """``jitter`` defaults to a fifth of the latency (150ms -> 120..180 ms)."""
        base = parse_duration(latency)
        spread = base / 5 if jitter is None else parse_duration(jitter)
        return cls(latency_seconds=base, jitter_seconds=spread, seed=seed)

    @property
    def active(self) -> bool:
        return self.latency_seconds > 0 or self.jitter_seconds > 0


class RateMeter:
    """A soft limit of ``limit`` requests per (monotonic) second: every request is answered, overruns counted.

    ``limit`` 0 means no limit is asked for (requests and the peak are still counted). Thread-safe: the SFTP
    server and test threads may read it while the event loop counts.
    """

    def __init__(self, limit: int = 0) -> None:
        if limit < 0:
            raise ValueError("the soft rate limit must be >= 0 requests/s (0: none)")
        self.limit = limit
        self._lock = threading.Lock()
        self._second = 0
        self._in_second = 0
        self.requests = 0
        self.overruns = 0
        self.peak_per_second = 0
        self.in_flight = 0
        self.peak_in_flight = 0  # requests held at once: proof that latency does not serialize the server

    def count(self) -> None:
        now = int(time.monotonic())
        with self._lock:
            self.requests += 1
            if now != self._second:
                self._second, self._in_second = now, 0
            self._in_second += 1
            self.peak_per_second = max(self.peak_per_second, self._in_second)
            if self.limit and self._in_second > self.limit:
                self.overruns += 1

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "overruns": self.overruns,
                "peak_per_second": self.peak_per_second,
                "limit_per_second": self.limit,
                "peak_in_flight": self.peak_in_flight,
            }


class WanMiddleware:
    """Outermost ASGI layer: count the request against the soft limit, then delay it (without blocking)."""

    def __init__(self, app: ASGIApp, plan: WanPlan, meter: RateMeter) -> None:
        self.app = app
        self.plan = plan
        self.meter = meter
        self._rng = random.Random(plan.seed)

    def delay(self) -> float:
        plan = self.plan
        if not plan.active:
            return 0.0
        return max(0.0, plan.latency_seconds + self._rng.uniform(-plan.jitter_seconds, plan.jitter_seconds))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(CONTROL_PREFIX):
            self.meter.count()
            self.meter.enter()
            try:
                wait = self.delay()
                if wait:
                    await asyncio.sleep(wait)
                await self.app(scope, receive, send)
            finally:
                self.meter.leave()
            return
        await self.app(scope, receive, send)
