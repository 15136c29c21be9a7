"""Token bucket: requests are spaced to the configured rate, across threads."""

from __future__ import annotations

import threading
import time

import pytest

from wellsky_core.http.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_bucket_spaces_requests_at_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(10, burst=1, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(11)]
    assert waits[0] == 0
    assert clock.now == pytest.approx(1.0)


def test_burst_is_spent_first_then_refills():
    clock = FakeClock()
    bucket = TokenBucket(5, burst=5, clock=clock, sleep=clock.sleep)
    assert sum(bucket.acquire() for _ in range(5)) == 0
    assert bucket.acquire() == pytest.approx(0.2)
    clock.now += 10  # idle: refills, but never beyond the burst
    assert sum(bucket.acquire() for _ in range(5)) == 0
    assert bucket.acquire() > 0


def test_disabled_bucket_never_waits():
    bucket = TokenBucket(0)
    assert not bucket.enabled
    assert all(bucket.acquire() == 0 for _ in range(1000))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        TokenBucket(-1)
    with pytest.raises(ValueError):
        TokenBucket(5, burst=0)


def test_threads_share_the_rate():
    """4 threads x 10 acquisitions at 20/s: the measured rate stays at or under 20/s."""
    bucket = TokenBucket(20, burst=1)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            bucket.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    assert len(stamps) == 40
    assert elapsed >= 39 / 20 * 0.95
    stamps.sort()
    worst_window = max(sum(1 for s in stamps if t0 <= s < t0 + 1.0) for t0 in stamps)
    assert worst_window <= 21
