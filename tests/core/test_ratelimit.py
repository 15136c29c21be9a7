"""Request window: at most the budget in any window, the first second spent at once, across threads."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import httpx
import pytest

from wellsky_core.config import WellSkyConfig
from wellsky_core.http import client as transport
from wellsky_core.http.ratelimit import RequestWindow

from .loopback import Answer, loopback_client


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def take(window: RequestWindow) -> float:
    """Acquire a slot and go on the wire at once (what the transport reports through httpcore's trace)."""
    waited = window.acquire()
    window.sent()
    return waited


def test_the_first_limit_requests_go_at_once_then_each_waits_for_its_slot():
    clock = FakeClock()
    window = RequestWindow(10, 1.0, clock=clock, sleep=clock.sleep)
    assert [take(window) for _ in range(10)] == [0] * 10
    assert clock.now == 0
    assert take(window) == pytest.approx(1.0)  # the 11th takes the slot the 1st frees
    assert [take(window) for _ in range(9)] == [0] * 9  # the other 9 slots freed at the same moment
    assert take(window) == pytest.approx(1.0)


def test_an_idle_window_refills_but_never_beyond_the_limit():
    clock = FakeClock()
    window = RequestWindow(5, 1.0, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        take(window)
    clock.now += 0.4
    assert take(window) == pytest.approx(0.6)
    clock.now += 10  # idle for long: five at once again, not more
    assert sum(take(window) for _ in range(5)) == 0
    assert take(window) > 0


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
            wait = take(window)
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
    """The guarantee the window exists for, checked as the tenant counts: each request reaches the wire a random
    scheduling delay after its grant (up to 300 ms: a thread waiting for the GIL on a loaded 2-core machine),
    demand far above the budget, the tenant's seconds at any alignment. No second may hold more than 100.
    The control: the same delays with each slot counted from its grant (the window before the bench's socket
    meter saw 104 requests in one second at scale M) overrun, so this test can fail."""
    rng = random.Random(seed)

    def busiest_tenant_second(window: RequestWindow, *, counted_from_grant: bool) -> int:
        clock = FakeClock()
        window._clock, window._sleep = clock, clock.sleep
        arrivals: list[float] = []
        for _ in range(1000):
            if rng.random() < 0.3:
                clock.now += rng.random() * 0.01
            window.acquire()
            granted = clock.now
            arrivals.append(granted + (rng.random() * 0.3 if rng.random() < 0.2 else rng.random() * 0.01))
            clock.now = granted if counted_from_grant else arrivals[-1]
            window.sent()  # reported at the moment it reached the wire (or, the control, at its grant)
            clock.now = granted  # the next grant does not wait for this one's delay: other threads send
        return _busiest_second(arrivals)

    windowed = RequestWindow.for_budget(100, transport.PACING_HEADROOM)
    assert windowed is not None
    assert busiest_tenant_second(windowed, counted_from_grant=False) <= 100
    if seed == 0:  # the control: counted from the grant, the same shape of delays overruns
        controls = [RequestWindow.for_budget(100, transport.PACING_HEADROOM) for _ in range(10)]
        assert max(busiest_tenant_second(w, counted_from_grant=True) for w in controls if w) > 100


def _stamps_of_requests(monkeypatch: pytest.MonkeyPatch, budget: float, requests: int) -> list[float]:
    """The fake-clock moments at which ``requests`` requests reach the wire through a client whose
    ``max_requests_per_second`` is ``budget`` (the client's own request window, on a fake clock)."""
    clock = FakeClock()

    def for_budget(per_second: float | None, headroom: float, *, share: Any = None) -> RequestWindow | None:
        # one process alone, on a fake clock: the tenant share (real files, real clock) is test_tenant_share.py's
        return real_for_budget(per_second, headroom, slices=2, clock=clock, sleep=clock.sleep, share=None)

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


def test_a_real_connection_reports_each_request_on_the_wire() -> None:
    """Over a real loopback connection, httpcore's trace tells the window when each request's headers were
    written (the moment its slot counts from), and no grant is left waiting for a report."""
    with loopback_client() as client:
        window = client._limiter
        assert window is not None
        reports: list[str] = []
        real_sent = window.sent
        window.sent = lambda: (reports.append(threading.current_thread().name), real_sent())[1]  # type: ignore[method-assign]
        for _ in range(5):
            client.get_json("/x")
    assert len(reports) == 5
    assert window._pending() == []


def test_the_slot_is_taken_with_the_connection_held_just_before_the_headers_are_written() -> None:
    """A slot counts from the wire, so the time between its grant and the socket is a slot left unused: taken
    before the connection pool (its lock, a new connection, the GIL among 60 readers: 39 ms median, 150 ms p90
    at scale M), the client sent ~80 requests/s against a window of 95. Taken in httpcore's
    ``send_request_headers.started``, nothing but the write itself is between them."""
    with loopback_client() as client:
        window = client._limiter
        assert window is not None
        events: list[str] = []
        real_acquire, real_trace = window.acquire, client._trace
        window.acquire = lambda: (events.append("acquire"), real_acquire())[1]  # type: ignore[method-assign]
        client._trace = lambda event, info: (events.append(event), real_trace(event, info))[1]  # type: ignore[method-assign]
        for _ in range(3):
            client.get_json("/x")
    assert events.count("acquire") == 3
    assert events.index("connection.connect_tcp.complete") < events.index("acquire")
    for i, event in enumerate(events):
        if event == "acquire":
            assert events[i - 1] == "http11.send_request_headers.started"
            assert events[i + 1] == "http11.send_request_headers.complete"
    assert all(grant.sent.is_set() for grant in window._slots)


class _SlowAnswer(Answer):
    def do_GET(self) -> None:
        time.sleep(0.05)  # every reader's request in flight at once
        super().do_GET()


def test_every_reader_keeps_its_connection_between_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool keeps as many connections open as it may open (``pool_size``): with 16 kept (as before) and more
    readers than that, every request beyond the 16th in flight closed its connection after the answer and the
    next one opened a new one, a TCP and TLS handshake (two round trips to a real tenant) per page."""
    readers = 24
    with loopback_client(_SlowAnswer, max_requests_per_second=1000) as client:
        connects: list[str] = []
        real_trace = client._trace
        client._trace = lambda event, info: (  # type: ignore[method-assign]
            connects.append(event) if event == "connection.connect_tcp.started" else None,
            real_trace(event, info),
        )[1]
        barrier = threading.Barrier(readers)

        def read() -> None:
            for _ in range(4):
                barrier.wait()
                client.get_json("/x")

        threads = [threading.Thread(target=read) for _ in range(readers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert transport.pool_size(client.config) >= readers
    assert len(connects) <= readers, f"{len(connects)} connections opened for {readers} readers"
