"""``wellsky_core/waits.py``: a parallel Singer sync's gate opens exactly while a stream's read waits.

Opening it around every record handed the lock between the stream threads once per record. These tests pin
both sides: records already in memory pass without the gate opening, every wait (a page, a window reader's
spool, the network) opens it, and the read loop's own code, the stream's state included, runs with it held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest

from wellsky_core import waits
from wellsky_core.channels import windows
from wellsky_core.connection import Connection
from wellsky_core.read_loop import StreamRead
from wellsky_sandbox.testing import SandboxServer

from .test_windows import ENTITY, _config


class Gate:
    """A consumer's gate as the tap's is: held by the consuming thread except while a wait lets it go."""

    def __init__(self) -> None:
        self.held = True
        self.opened = 0
        self.taken: list[bool] = []
        self.stop_on_take = False

    def release(self) -> None:
        assert self.held, "let go twice"
        self.held = False
        self.opened += 1

    def take(self, may_stop: bool) -> None:
        assert not self.held, "taken twice"
        self.held = True
        self.taken.append(may_stop)
        if may_stop and self.stop_on_take:
            raise KeyboardInterrupt("stopping")


def test_records_in_memory_pass_without_opening_the_gate_and_each_page_is_awaited_with_it_open() -> None:
    gate = Gate()
    fetched_open: list[bool] = []

    def pages() -> Iterator[list[int]]:
        for page in ([1, 2, 3], [4, 5], [6]):
            fetched_open.append(not gate.held)  # the network: the gate must be open
            yield page

    seen: list[tuple[int, bool]] = []
    with waits.consumer(gate.release, gate.take):
        for item in waits.draw(waits.flatten(pages())):
            seen.append((item, gate.held))
    assert [i for i, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert all(held for _, held in seen), "every record is handed over with the gate held"
    assert fetched_open == [True, True, True]
    # 3 pages + the end of the pages; per record (the old gate) it would have been 7
    assert gate.opened == 4 and gate.taken == [True] * 4


def test_a_source_that_does_not_say_what_is_in_memory_is_awaited_for_every_item() -> None:
    gate = Gate()
    with waits.consumer(gate.release, gate.take):
        assert list(waits.draw(iter([1, 2, 3]))) == [1, 2, 3]
    assert gate.opened == 4  # each item and the end: nothing is known to be in memory


def test_a_wait_nested_in_a_wait_opens_the_gate_once_and_a_failed_wait_never_stops_on_top_of_its_error() -> None:
    gate = Gate()
    gate.stop_on_take = True
    with waits.consumer(gate.release, gate.take):
        with pytest.raises(ValueError, match="the read's own error"), waits.waiting():
            with waits.waiting():  # e.g. a window's wait inside the read loop's
                assert not gate.held
            assert not gate.held, "the inner wait must not take the gate back"
            raise ValueError("the read's own error")
        assert gate.held and gate.taken == [False]
        with pytest.raises(KeyboardInterrupt, match="stopping"), waits.waiting():
            pass  # a wait that ended normally: the consumer may stop the read here
    assert gate.opened == 2


def test_without_a_consumer_every_call_is_a_no_op_and_a_consumer_is_per_thread() -> None:
    assert list(waits.draw(waits.flatten([[1], [2, 3]]))) == [1, 2, 3]
    with waits.waiting():
        pass
    gate = Gate()
    other: list[int] = []
    with waits.consumer(gate.release, gate.take):
        thread = threading.Thread(target=lambda: other.extend(waits.draw(waits.flatten([[1, 2], [3]]))))
        thread.start()
        thread.join()
    assert other == [1, 2, 3] and gate.opened == 0, "another thread's waits are not this consumer's"


def test_a_spent_page_count_does_not_outlive_its_source() -> None:
    """A stream read stopped mid-page leaves no "still in memory" behind for the next read on the thread."""
    gate = Gate()
    with waits.consumer(gate.release, gate.take):
        first = waits.draw(waits.flatten([[1, 2, 3]]))
        assert next(first) == 1
        first.close()
        assert list(waits.draw(iter([7]))) == [7]
    assert gate.opened == 3  # the first page, then the plain source's item and its end


@pytest.mark.parametrize(("source", "filtered"), [("api", False), ("fhir", False), ("api", True)])
def test_a_windowed_read_sends_no_request_and_waits_for_no_reader_with_the_gate_held(
    source: str, filtered: bool, sandbox_factory: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real read loop over a real windowed stream, consumed as the tap's stream thread consumes it: every
    request the consuming thread sends is sent with the gate open, the state is written with it held, and the
    gate opens about once per page, not once per record. ``filtered``: a layer between the window emitter and
    the read loop drops every other record, so a pull "from memory" can run past the spool's end: the emitter's
    own wait must open the gate then."""
    sb = sandbox_factory(scale=80, sftp_port=None, latency="20ms")  # slow enough for windows to split
    monkeypatch.setattr(windows, "MIN_PAGES_TO_SPLIT", 1)
    gate = Gate()
    me = threading.get_ident()
    reading: list[bool] = []  # non-empty while the read runs (the test's own requests are not the read's)
    sent_held: list[bool] = []
    emitter_waits: list[bool] = []
    send = httpx.Client.send

    def recording_send(self: httpx.Client, request: httpx.Request, **kw: Any) -> httpx.Response:
        if threading.get_ident() == me and reading:
            sent_held.append(gate.held)
        return send(self, request, **kw)

    wait = threading.Condition.wait

    def recording_wait(self: threading.Condition, timeout: float | None = None) -> bool:
        if threading.get_ident() == me and reading:
            emitter_waits.append(gate.held)
        return wait(self, timeout)

    monkeypatch.setattr(httpx.Client, "send", recording_send)
    monkeypatch.setattr(threading.Condition, "wait", recording_wait)

    class State(dict[str, Any]):
        written_held: list[bool] = []

        def __setitem__(self, key: str, value: Any) -> None:
            self.written_held.append(gate.held)
            super().__setitem__(key, value)

    truth = sb.truth(ENTITY)
    state = State()
    with closing(Connection(_config(sb, page_size=20, source=source))) as conn:
        read = StreamRead(conn, ENTITY, incremental=True, state=state, owns_cursor=True)
        if filtered:
            unfiltered = read.channel.iter_records
            monkeypatch.setattr(
                read.channel,
                "iter_records",
                lambda stream, since: (r for i, r in enumerate(unfiltered(stream, since)) if i % 2 == 0),
            )
            truth = truth[: -(-len(truth) // 2)]
        with waits.consumer(gate.release, gate.take):
            reading.append(True)
            got = [(r["id"], gate.held) for r in read.records()]
            reading.clear()
    assert len(got) == len(truth) and all(held for _, held in got)
    assert sent_held and not any(sent_held), "a request sent with the gate held stalls every other stream"
    assert not any(emitter_waits), "waiting for a window reader with the gate held stalls every other stream"
    assert state.written_held and all(state.written_held), "the stream's state is written with the gate held"
    pages = -(-len(got) // 20)
    assert gate.opened <= 3 * pages < len(got), (gate.opened, pages, len(got))


def test_a_consumer_left_behind_by_an_unclosed_read_is_replaced_and_then_cleared() -> None:
    """A read whose generator another thread closes later cannot clear this thread's consumer; the next consumer
    replaces it, and when that one ends nothing of either is left (a stale gate's hooks would release a lock this
    thread does not hold)."""
    stale, fresh = Gate(), Gate()

    def left_open() -> Iterator[int]:
        with waits.consumer(stale.release, stale.take):
            yield 1

    reads = left_open()
    assert next(reads) == 1  # the stale consumer is now registered on this thread, never closed here
    with waits.consumer(fresh.release, fresh.take):
        assert list(waits.draw(iter([5]))) == [5]
    with waits.waiting():
        pass  # no consumer any more: neither gate is touched
    assert stale.opened == 0 and fresh.opened == 2 and stale.held and fresh.held
    thread = threading.Thread(target=reads.close)  # closed by another thread: this thread's state untouched
    thread.start()
    thread.join()
