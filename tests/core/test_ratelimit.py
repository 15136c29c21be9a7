"""Request window: at most the budget in any window, the first second spent at once, across threads."""

from __future__ import annotations

import math
import random
import threading

import httpx
import pytest

from wellsky_core.config import WellSkyConfig
from wellsky_core.http import client as transport
from wellsky_core.http.ratelimit import RequestWindow


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_first_limit_requests_go_at_once_then_each_waits_for_its_slot():
    clock = FakeClock()
    window = RequestWindow(10, 1.0, clock=clock, sleep=clock.sleep)
    assert [window.acquire() for _ in range(10)] == [0] * 10
    assert clock.now == 0
    assert window.acquire() == pytest.approx(1.0)  # the 11th takes the slot the 1st frees
    assert [window.acquire() for _ in range(9)] == [0] * 9  # the other 9 slots freed at the same moment
    assert window.acquire() == pytest.approx(1.0)


def test_an_idle_window_refills_but_never_beyond_the_limit():
    clock = FakeClock()
    window = RequestWindow(5, 1.0, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        window.acquire()
    clock.now += 0.4
    assert window.acquire() == pytest.approx(0.6)
    clock.now += 10  # idle for long: five at once again, not more
    assert sum(window.acquire() for _ in range(5)) == 0
    assert window.acquire() > 0


def test_no_budget_means_no_window_and_invalid_arguments_are_refused():
    assert RequestWindow.for_budget(0, 0.95) is None
    assert RequestWindow.for_budget(None, 0.95) is None
    with pytest.raises(ValueError):
        RequestWindow(0)
    with pytest.raises(ValueError):
        RequestWindow(5, 0)
    with pytest.raises(ValueError):
        RequestWindow.for_budget(10, 1.5)


def test_threads_share_the_window_in_arrival_order():
    """4 threads x 10 acquisitions, 20 per second, on a clock that stands still: every caller reserves its own
    slot, so the waits are 20 x 0 s, then 20 x 1 s, whatever the thread scheduling (no wall clock)."""
    clock = FakeClock()
    waits: list[float] = []
    lock = threading.Lock()
    window = RequestWindow(20, 1.0, clock=clock, sleep=lambda s: None)

    def worker() -> None:
        for _ in range(10):
            wait = window.acquire()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == pytest.approx([0.0] * 20 + [1.0] * 20)


@pytest.mark.parametrize("seed", range(20))
def test_no_tenant_second_holds_more_than_the_budget_under_scheduling_delays(seed: int) -> None:
    """The guarantee the window exists for, checked as the tenant counts: requests arrive at their slot plus a
    scheduling delay (up to 50 ms, random), demand far above the budget, and the tenant's seconds start at a
    random offset. No second may hold more than 100. With a plain 1 s window (no headroom) the same delays
    overrun, so this test can fail."""
    rng = random.Random(seed)

    def busiest_tenant_second(window: RequestWindow) -> int:
        clock = FakeClock()
        window._clock, window._sleep = clock, clock.sleep
        arrivals: list[float] = []
        for _ in range(1000):
            if rng.random() < 0.3:
                clock.now += rng.random() * 0.01
            window.acquire()
            arrivals.append(clock.now + rng.random() * 0.05)
        offset = rng.random()
        seconds: dict[int, int] = {}
        for a in arrivals:
            seconds[math.floor(a + offset)] = seconds.get(math.floor(a + offset), 0) + 1
        return max(seconds.values())

    windowed = RequestWindow.for_budget(100, transport.PACING_HEADROOM)
    assert windowed is not None
    assert busiest_tenant_second(windowed) <= 100
    if seed == 0:  # the control: without the headroom the same shape of delays overruns
        assert max(busiest_tenant_second(RequestWindow(100, 1.0)) for _ in range(20)) > 100


def _stamps_of_requests(monkeypatch: pytest.MonkeyPatch, budget: float, requests: int) -> list[float]:
    """The fake-clock moments at which ``requests`` requests reach the wire through a client whose
    ``max_requests_per_second`` is ``budget`` (the client's own request window, on a fake clock)."""
    clock = FakeClock()

    def for_budget(per_second: float | None, headroom: float) -> RequestWindow | None:
        return real_for_budget(per_second, headroom, slices=2, clock=clock, sleep=clock.sleep)

    real_for_budget = RequestWindow.for_budget
    monkeypatch.setattr(transport.RequestWindow, "for_budget", staticmethod(for_budget))
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
def test_the_client_spends_half_its_budget_at_once_then_sustains_95_percent(
    monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """Issue 29 bug 5 and issue 27: the client's own window on a fake clock (no wall time). Half the budget leaves
    at once and the other half one half-window later (a sync's first second is not trickled out); each later
    request takes the slot freed a window before: 95% of the budget on average, and no 1 s span ever holds
    more than the budget (95%: at 97% a loaded machine overran, docs/benchmarks.md)."""
    assert transport.PACING_HEADROOM == 0.95
    stamps = _stamps_of_requests(monkeypatch, budget, 3 * budget + 5)
    half = budget // 2
    window = half / (budget * 0.95)
    assert stamps == pytest.approx([(i // half) * window for i in range(len(stamps))])
    assert _busiest_second(stamps) <= budget
    assert sum(1 for s in stamps if s < 0.6) >= 2 * half  # the first second's worth within 0.6 s


def test_a_budget_of_zero_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(_stamps_of_requests(monkeypatch, 0, 50)) == {0.0}
