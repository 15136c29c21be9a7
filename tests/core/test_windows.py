"""In-stream windows (``wellsky_core/channels/windows.py``) against real sandbox tenants: a large stream read as
``updated_at`` windows in parallel is exactly the tenant's truth, in (updated_at, id) order; a small one is one
request; a window that fails mid-stream leaves a state from which the next run delivers the rest exactly."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from wellsky_core.channels import windows
from wellsky_core.config import TapConfig, WellSkyConfig
from wellsky_core.connection import Connection
from wellsky_core.errors import RemoteError, WellSkyError
from wellsky_core.read_loop import StreamRead
from wellsky_sandbox.testing import SandboxServer

from ..fhir_only import comparable

ENTITY = "appointments"  # the largest stream


def _config(sb: SandboxServer, page_size: int, **extra: Any) -> WellSkyConfig:
    return TapConfig.load(  # the tap's settings (max_parallel_streams) included
        {
            "base_url": sb.base_url,
            "auth_method": "oauth_client_credentials",
            "client_id": sb.client_id,
            "client_secret": sb.client_secret,
            "product": sb.product,
            "page_size": page_size,
            "max_requests_per_second": 0,
            **extra,
        },
        env={},
    )


class WindowRequests:
    """Counts list requests that carry an upper bound (a window other than the first)."""

    def __init__(self) -> None:
        self.bounded = 0
        self.total = 0
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> None:
        query = str(request.url.query, "ascii") if isinstance(request.url.query, bytes) else str(request.url.query)
        if request.url.path.endswith(("/appointments", "/Appointment", "/practitioners", "/Practitioner")):
            with self._lock:
                self.total += 1
                self.bounded += "updated_before" in query or "_lastUpdated=lt" in query


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> WindowRequests:
    counter = WindowRequests()
    original = httpx.Client.__init__

    def init(self: httpx.Client, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.event_hooks["request"].append(counter)

    monkeypatch.setattr(httpx.Client, "__init__", init)
    return counter


@pytest.mark.parametrize("source", ["api", "fhir"])
def test_windowed_stream_equals_truth_in_order(
    source: str, sandbox_factory: Callable[..., SandboxServer], hook: WindowRequests, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = sandbox_factory(scale=80, sftp_port=None, latency="20ms")  # reads slow enough for windows to split
    monkeypatch.setattr(windows, "MIN_PAGES_TO_SPLIT", 1)  # split from the first page: not a matter of timing
    with closing(Connection(_config(sb, page_size=20, source=source))) as conn:
        got = list(conn.channel(ENTITY).iter_records(ENTITY, None))
    assert hook.bounded >= 2, "a stream of many pages is read as windows"
    keys = [(r["updated_at"], r["id"]) for r in got]
    assert keys == sorted(keys), "windows are emitted in (updated_at, id) order"
    assert len(keys) == len(set(keys)), "no record twice across windows"
    truth = sb.truth(ENTITY)
    if source == "api":
        assert sorted(got, key=lambda r: r["id"]) == sorted(truth, key=lambda r: r["id"])
    else:
        assert sorted(comparable(ENTITY, r)["id"] for r in got) == sorted(r["id"] for r in truth)


def test_spool_read_in_chunks_smaller_than_a_record_keeps_every_record(
    sandbox_factory: Callable[..., SandboxServer], hook: WindowRequests, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emitter reads a window's spool a bounded chunk at a time (memory flat at any scale); a chunk that ends
    inside a record is completed to the record's end, never split or dropped."""
    sb = sandbox_factory(scale=80, sftp_port=None, latency="20ms")
    monkeypatch.setattr(windows, "MIN_PAGES_TO_SPLIT", 1)
    monkeypatch.setattr(windows, "EMIT_CHUNK_BYTES", 37)  # shorter than any record: every read ends mid-line
    with closing(Connection(_config(sb, page_size=20))) as conn:
        got = list(conn.channel(ENTITY).iter_records(ENTITY, None))
    assert hook.bounded >= 2, "read as windows"
    assert sorted(got, key=lambda r: r["id"]) == sorted(sb.truth(ENTITY), key=lambda r: r["id"])
    keys = [(r["updated_at"], r["id"]) for r in got]
    assert keys == sorted(keys)


def test_small_stream_is_one_request_and_no_window(
    sandbox_factory: Callable[..., SandboxServer], hook: WindowRequests
) -> None:
    sb = sandbox_factory(scale=40, sftp_port=None)
    with closing(Connection(_config(sb, page_size=1000))) as conn:
        got = list(conn.channel("practitioners").iter_records("practitioners", None))
    requests, bounded = hook.total, hook.bounded
    assert len(got) == len(sb.truth("practitioners")) and requests == 1 and bounded == 0


@pytest.mark.parametrize("source", ["api", "fhir"])
def test_window_failing_mid_stream_resumes_exactly_from_the_state(
    source: str, sandbox_factory: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = sandbox_factory(scale=80, sftp_port=None, latency="20ms")  # reads slow enough for windows to split
    monkeypatch.setattr(windows, "MIN_PAGES_TO_SPLIT", 1)  # split at once from the first page: 2+ windows for sure
    config = _config(sb, page_size=20, source=source, max_retries=0)
    fetched: list[datetime | None] = []
    started: list[Any] = []
    original = windows.WindowedRead._pages

    def failing_pages(self: windows.WindowedRead, window: Any) -> Iterator[list[dict[str, Any]]]:
        started.append(window)
        if len(started) == 2:  # the 2nd window to start (never the first) fails: its retries exhausted
            fetched.append(window.lo)
            raise RemoteError(503, "unavailable", "injected: the window's page failed")
        return original(self, window)

    monkeypatch.setattr(windows.WindowedRead, "_pages", failing_pages)
    state: dict[str, Any] = {}
    delivered: list[dict[str, Any]] = []
    with closing(Connection(config)) as conn:
        read = StreamRead(conn, ENTITY, incremental=True, state=state)
        with pytest.raises(RemoteError, match="injected"):
            for record in read.records():
                delivered.append(record)
        checkpoint, _ = read.checkpoint()
    assert fetched, "the fault fired"
    bookmark = checkpoint["replication_key_value"]
    keys = [(r["updated_at"], r["id"]) for r in delivered]
    assert keys == sorted(keys) and bookmark == delivered[-1]["updated_at"]
    # everything before the failed window was emitted; nothing of it or after it
    lo = fetched[0]
    assert lo is not None and windows.parse_instant(bookmark) < lo

    monkeypatch.setattr(windows.WindowedRead, "_pages", original)
    with closing(Connection(config)) as conn:
        second = list(StreamRead(conn, ENTITY, incremental=True, state=checkpoint).records())
    assert all(r["updated_at"] >= bookmark for r in second)
    ids = {r["id"] for r in delivered} | {r["id"] for r in second}
    assert ids == {r["id"] for r in sb.truth(ENTITY)}
    repeated = {r["id"] for r in delivered} & {r["id"] for r in second}
    assert all(r["updated_at"] == bookmark for r in delivered if r["id"] in repeated), "only the boundary repeats"


class PeakReaders(windows._Readers):
    """The process's window-reader count, remembering its peak."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0

    def enter(self) -> None:
        super().enter()
        self.peak = max(self.peak, self.alive)

    def try_enter(self, cap: int) -> bool:
        took = super().try_enter(cap)
        self.peak = max(self.peak, self.alive)
        return took


@pytest.mark.parametrize("streams", [1, 4], ids=["no-room-to-borrow", "borrows-finished-streams-readers"])
def test_a_stream_left_alone_borrows_readers_up_to_the_process_cap(
    streams: int, sandbox_factory: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a sync's tail one large stream is left: it borrows the readers finished streams no longer use (beyond
    its ``max_windows_per_stream``), never past what the connection pool was sized for, and gives them back; the
    records stay exactly the truth, in order."""
    sb = sandbox_factory(scale=80, sftp_port=None, latency="20ms")
    monkeypatch.setattr(windows, "MIN_PAGES_TO_SPLIT", 1)
    # one window to start with: the stream's second reader is idle at once and splits it, so the borrowing
    # does not hang on which of two planned windows happens to finish first
    monkeypatch.setattr(windows, "plan", lambda *args, **kwargs: [])
    readers = PeakReaders()
    monkeypatch.setattr(windows, "READERS", readers)
    config = _config(sb, page_size=20, max_windows_per_stream=2, max_parallel_streams=streams)
    cap = windows.readers_cap(config)
    with closing(Connection(config)) as conn:
        got = list(conn.channel(ENTITY).iter_records(ENTITY, None))
    assert cap == (2 if streams == 1 else 4)
    if streams == 1:
        assert readers.peak == 2, f"peak {readers.peak} readers: nothing to borrow"
    else:  # its 2 own readers, then borrowed ones, never past the cap (how many: a matter of timing)
        assert 2 < readers.peak <= cap, f"peak {readers.peak} readers, cap {cap}"
    assert readers.alive == 0, "every reader gone when the stream is read"
    keys = [(r["updated_at"], r["id"]) for r in got]
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    assert sorted(got, key=lambda r: r["id"]) == sorted(sb.truth(ENTITY), key=lambda r: r["id"])


def test_the_first_plan_is_as_wide_as_the_estimate_not_as_the_streams_own_readers() -> None:
    """A large stream's windows are planned from its first page up to ``MAX_WINDOWS``: the ones beyond its own
    readers go to borrowed readers at once (planned 8 wide, a sync's largest stream ended on a 17-page chain)."""
    first = datetime(2026, 1, 1, tzinfo=UTC)
    bounds = windows.plan(first, first + timedelta(days=1), 100, 100, first + timedelta(days=365))
    assert len(bounds) == windows.MAX_WINDOWS - 1
    assert bounds == sorted(set(bounds)) and bounds[0] > first + timedelta(days=1)


def test_finished_windows_do_not_count_against_the_open_window_cap(
    sandbox_factory: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``MAX_WINDOWS`` caps the windows open at once: counting every window a stream ever had stopped its splits
    for good once it had had that many, and its last window was then read serially at the sync's tail."""
    sb = sandbox_factory(scale=80, sftp_port=None, latency="20ms")
    monkeypatch.setattr(windows, "MAX_WINDOWS", 2)
    monkeypatch.setattr(windows, "MIN_PAGES_TO_SPLIT", 1)
    monkeypatch.setattr(windows, "plan", lambda *args, **kwargs: [])
    made: list[int] = []
    open_at_split: list[int] = []
    real_window, real_split = windows.WindowedRead._window, windows.WindowedRead._split

    def window(self: windows.WindowedRead, *args: Any, **kwargs: Any) -> Any:
        made.append(1)
        return real_window(self, *args, **kwargs)

    def split(self: windows.WindowedRead) -> Any:
        new = real_split(self)
        if new is not None:
            open_at_split.append(sum(not w.done for w in self.windows))
        return new

    monkeypatch.setattr(windows.WindowedRead, "_window", window)
    monkeypatch.setattr(windows.WindowedRead, "_split", split)
    config = _config(sb, page_size=10, max_windows_per_stream=2, max_parallel_streams=1)
    with closing(Connection(config)) as conn:
        got = list(conn.channel(ENTITY).iter_records(ENTITY, None))
    assert len(made) > 3, f"{len(made)} windows: splits stopped after the cap was reached once"
    assert max(open_at_split) <= 2, f"{max(open_at_split)} windows open at once, cap 2"
    keys = [(r["updated_at"], r["id"]) for r in got]
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    assert sorted(got, key=lambda r: r["id"]) == sorted(sb.truth(ENTITY), key=lambda r: r["id"])


def test_an_idle_reader_frees_its_place_while_another_reader_of_its_stream_reads(
    sandbox_factory: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream with nothing to split keeps one reader, not four idle ones: the others leave and the process's
    readers are free for a stream still wide open (before, they waited until the stream ended, and a sync's
    largest stream could not borrow them)."""
    sb = sandbox_factory(scale=80, sftp_port=None, latency="20ms")
    monkeypatch.setattr(windows, "plan", lambda *args, **kwargs: [])  # one window
    monkeypatch.setattr(windows, "MIN_PAGES_TO_SPLIT", 10**9)  # that is never split
    readers = PeakReaders()
    monkeypatch.setattr(windows, "READERS", readers)
    alive: list[int] = []
    real_run = windows.WindowedRead._run

    def run(self: windows.WindowedRead, window: Any) -> None:
        pages = self._pages
        self._pages = lambda w: (alive.append(readers.alive) or page for page in pages(w))  # type: ignore[method-assign]
        real_run(self, window)

    monkeypatch.setattr(windows.WindowedRead, "_run", run)
    config = _config(sb, page_size=10, max_windows_per_stream=4, max_parallel_streams=1)
    with closing(Connection(config)) as conn:
        got = list(conn.channel(ENTITY).iter_records(ENTITY, None))
    assert readers.peak == 4, "the stream's own readers all started"
    assert len(alive) > 5 and alive[-3:] == [1, 1, 1], f"readers alive while the one window was read: {alive}"
    assert readers.alive == 0
    assert sorted(got, key=lambda r: r["id"]) == sorted(sb.truth(ENTITY), key=lambda r: r["id"])


class _WakesLate(threading.Condition):
    """The emitter's wait times out just as the stream's last reader finishes: the reader marks the window done
    and notifies while the emitter, its wait already timed out, waits to take the lock back."""

    def __init__(self, read: windows.WindowedRead) -> None:
        super().__init__()
        self.read = read
        self.late = 0

    def wait(self, timeout: float | None = None) -> bool:
        if threading.current_thread().name.startswith("wellsky-window") or timeout is None:
            return super().wait(timeout)
        saved = self._release_save()  # type: ignore[attr-defined]
        try:
            for thread in list(self.read._threads):
                thread.join(10)  # the readers read everything, mark it done, notify nobody, and end
        finally:
            self._acquire_restore(saved)  # type: ignore[attr-defined]
        self.late += 1
        return False  # as a timed-out wait returns


def test_a_wait_that_times_out_as_the_last_reader_finishes_is_not_taken_for_dead_readers(
    sandbox_factory: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emitter waits for a window in 1 s steps and, after a step with no news and no reader alive, calls the
    readers gone. A step that timed out while the last reader was finishing (done set, then the thread ended)
    took the finished window for a dead one: "the window readers stopped before the stream was read", an
    internal error in about 1 sync in 15 with two runs sharing a tenant's budget. It looks again first."""
    sb = sandbox_factory(scale=80, sftp_port=None)
    monkeypatch.setattr(windows, "plan", lambda *args, **kwargs: [])  # one window
    monkeypatch.setattr(windows, "MIN_PAGES_TO_SPLIT", 10**9)  # never split
    conds: list[_WakesLate] = []
    real_init = windows.WindowedRead.__init__

    def init(self: windows.WindowedRead, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self._cond = _WakesLate(self)
        conds.append(self._cond)

    monkeypatch.setattr(windows.WindowedRead, "__init__", init)
    config = _config(sb, page_size=10, max_windows_per_stream=2, max_parallel_streams=1)
    with closing(Connection(config)) as conn:
        got = list(conn.channel(ENTITY).iter_records(ENTITY, None))
    assert conds and conds[0].late >= 1, "the emitter's wait was made to time out as the readers finished"
    assert sorted(got, key=lambda r: r["id"]) == sorted(sb.truth(ENTITY), key=lambda r: r["id"])


class _OtherStreams:
    """Another windowed read of the process, as the budget sees it: only its pages left."""

    def __init__(self, pages_left: float) -> None:
        self.pages_left = pages_left


def test_under_a_budget_a_stream_splits_only_while_its_pages_would_outlast_the_budget(
    sandbox_factory: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the rest of the process still has far more pages than the budget sends in the time this stream needs,
    a window split only adds a partial last page (a request): the stream is read in one window. Once the rest is
    done (its pages left drop to 0), the stream's busy reader splits and borrows at once (``_widen``), so its last
    pages are not read serially. The records are exactly the truth, in order, either way."""
    sb = sandbox_factory(scale=80, sftp_port=None, latency="20ms")
    others = _OtherStreams(10_000)  # 10,000 pages at 50 requests/s: 200 s of budget still to run elsewhere
    monkeypatch.setattr(windows, "_OPEN", {others})
    bounded: list[bool] = []  # each appointments request, in order: did it carry an upper bound (a window)?

    def finish_the_others_after_four_pages(request: httpx.Request) -> None:
        if request.url.path.endswith("/appointments"):
            bounded.append("updated_before" in str(request.url))
            if len(bounded) == 4:
                others.pages_left = 0.0

    config = _config(sb, page_size=10, max_windows_per_stream=4, max_parallel_streams=2, max_requests_per_second=50)
    with closing(Connection(config)) as conn:
        conn.client._http.event_hooks["request"].append(finish_the_others_after_four_pages)
        got = list(conn.channel(ENTITY).iter_records(ENTITY, None))
    truth = sorted(sb.truth(ENTITY), key=lambda r: (r["updated_at"], r["id"]))
    assert len(truth) > 100, "enough pages for the split to matter"
    assert [(r["updated_at"], r["id"]) for r in got] == [(r["updated_at"], r["id"]) for r in truth]
    assert bounded[:4] == [False] * 4, f"windows while the budget had far more to send elsewhere: {bounded[:4]}"
    assert any(bounded[4:]), "the stream widened once the rest of the process was done"


def test_a_tenant_that_ignores_a_windows_lower_bound_stops_the_stream_in_one_actionable_line(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    """A hostile or broken tenant that answers ``updated_since=<window start>&updated_before=...`` from the
    beginning sends records earlier windows already read, out of order: the stream stops with an error naming
    the setting that reads it serially, after every record before the bad window, with none twice. Before, the
    SDK's sort check failed with "unexpected InvalidStreamSortException" and nothing on why."""
    sb = sandbox_factory(scale=80, sftp_port=None)

    def ignore_the_lower_bound(request: httpx.Request) -> None:
        query = [(k, v) for k, v in request.url.params.multi_items()]
        if any(k == "updated_before" for k, _ in query):
            request.url = request.url.copy_with(params=[(k, v) for k, v in query if k != "updated_since"])

    config = _config(sb, page_size=10, max_windows_per_stream=4, max_parallel_streams=1)
    got: list[dict[str, Any]] = []
    with closing(Connection(config)) as conn:
        conn.client._http.event_hooks["request"].append(ignore_the_lower_bound)
        with pytest.raises(WellSkyError, match=r"ignores the lower bound.*max_windows_per_stream: 1"):
            for record in conn.channel(ENTITY).iter_records(ENTITY, None):
                got.append(record)
    keys = [(r["updated_at"], r["id"]) for r in got]
    assert got and keys == sorted(keys) and len(keys) == len(set(keys)), "in order, none twice, up to the bad window"
