"""Token bucket: requests are spaced to the configured rate, across threads."""

from __future__ import annotations

import math
import threading

import httpx
import pytest

from wellsky_core.config import WellSkyConfig
from wellsky_core.http import client as transport
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
    """4 threads x 10 acquisitions at 20/s, on a clock that stands still: every caller reserves its own slot, so
    the waits are exactly 0, 1/20, 2/20, ... 39/20 in arrival order, whatever the thread scheduling (no wall
    clock: a fast or a loaded machine gives the same answer)."""
    clock = FakeClock()
    waits: list[float] = []
    lock = threading.Lock()
    bucket = TokenBucket(20, burst=1, clock=clock, sleep=lambda s: None)

    def worker() -> None:
        for _ in range(10):
            wait = bucket.acquire()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == pytest.approx([i / 20 for i in range(40)])


def _stamps_of_requests(monkeypatch: pytest.MonkeyPatch, budget: float, requests: int) -> list[float]:
    """The fake-clock moments at which ``requests`` requests reach the wire through a client whose
    ``max_requests_per_second`` is ``budget`` (the client's own token bucket, on a fake clock)."""
    clock = FakeClock()

    def bucket(*args: object, **kwargs: object) -> TokenBucket:
        return TokenBucket(*args, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(transport, "TokenBucket", bucket)
    stamps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        stamps.append(clock.now)
        return httpx.Response(200, json={})

    cfg = WellSkyConfig.load(
        {
            "base_url": "https://tenant.example.test",
            "username": "u",
            "password": "p",
            "max_requests_per_second": budget,
        },
        env={},
    )
    client = transport.WellSkyClient(cfg, auth=httpx.Auth(), transport=httpx.MockTransport(handler))
    for _ in range(requests):
        client.get_json("/x")
    client.close()
    return stamps


def _busiest_second(stamps: list[float]) -> int:
    return max(sum(1 for s in stamps if t0 <= s < t0 + 1.0 - 1e-9) for t0 in stamps)


@pytest.mark.parametrize("budget", [100, 10, 33])
def test_the_client_paces_at_95_percent_of_its_budget(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    """Issue 29 bug 5: pacing at 100% of ``max_requests_per_second`` escaped the wall-clock test (it allowed
    2% over). On a fake clock the n-th request leaves exactly at n / (0.95 x budget) seconds: at 100 req/s the
    busiest second holds 95 requests, not 100 (95%: at 97% a loaded machine still overran, docs/benchmarks.md)."""
    assert transport.PACING_HEADROOM == 0.95
    stamps = _stamps_of_requests(monkeypatch, budget, 2 * budget + 5)
    assert _busiest_second(stamps) == math.ceil(budget * 0.95)  # 95 of 100, 10 of 10, 32 of 33
    assert stamps[-1] == pytest.approx((len(stamps) - 1) / (budget * 0.95))


def test_a_budget_of_zero_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(_stamps_of_requests(monkeypatch, 0, 50)) == {0.0}
