"""Parallel output order, proven deterministically (issue 29): no timeouts, no sleeps, no luck.

Each test swaps the lock ``tap_wellsky/parallel.py`` builds for an *observable* one that knows its owner and
says when a thread is blocked on it. A thread that must wait for "the other thread is blocked on the gate, or
it got in" then waits for an event that happens in both the right and the broken code, and the output shows
which. So deleting the output lock, opening the gate at the wrong moment, or a SIGTERM STATE written while a
stream is still mid-message fails at once, instead of hanging into a pytest timeout (the weak spot the issue
names: both end-to-end parallel tests passed with no lock).
"""

from __future__ import annotations

import io
import json
import logging
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tap_wellsky import parallel
from tap_wellsky.parallel import OutputGate, SyncStopped, run_parallel
from wellsky_core import stream_workers, waits
from wellsky_sandbox.testing import SandboxServer

from .helpers import sandbox_config
from .test_parallel import _check_state_never_ahead

_RealLock = threading.Lock
changed = threading.Condition()  # notified on every observable step below


def _notify() -> None:
    with changed:
        changed.notify_all()


def wait_until(predicate: Callable[[], bool]) -> None:
    """Block until ``predicate`` holds; every step that can make it hold notifies ``changed`` (no timeout)."""
    with changed:
        changed.wait_for(predicate)


class ObservableLock:
    """A lock that knows its owner and how many threads are blocked on it."""

    def __init__(self) -> None:
        self._lock = _RealLock()
        self.owner: threading.Thread | None = None
        self.blocked = 0
        self.ever_contended = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking=False)
        if not got and blocking:
            with changed:
                self.blocked += 1
                self.ever_contended = True
                changed.notify_all()
            try:
                got = self._lock.acquire(True, timeout)
            finally:
                with changed:
                    self.blocked -= 1
        if got:
            self.owner = threading.current_thread()
            _notify()
        return got

    def release(self) -> None:
        self.owner = None
        self._lock.release()
        _notify()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@pytest.fixture
def locks(monkeypatch: pytest.MonkeyPatch) -> list[ObservableLock]:
    """Every lock ``parallel`` creates from now on is observable (the gate's is the first after the fixture)."""
    made: list[ObservableLock] = []

    def make() -> ObservableLock:
        made.append(ObservableLock())
        return made[-1]

    fake = types.SimpleNamespace(**{k: getattr(threading, k) for k in dir(threading) if not k.startswith("__")})
    fake.Lock = make
    monkeypatch.setattr(parallel, "threading", fake)
    return made


class Out:
    """What the streams wrote, one entry per write, with a notification per write."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)
        _notify()

    def text(self) -> str:
        return "".join(self.parts)


# -- the gate ---------------------------------------------------------------------------------------------
def test_a_message_is_written_whole_while_another_stream_waits_at_the_gate(locks: list[ObservableLock]) -> None:
    """Two streams each write a message in two parts. Each, mid-message, waits until the other stream is
    blocked on the gate or has begun its own message. With the lock: the other is blocked, the message ends
    whole. Without it: both begin, and the lines interleave."""
    gate = OutputGate()
    (gate_lock,) = locks
    out = Out()
    begun: set[str] = set()

    def stream(name: str) -> Callable[[], None]:
        def sync() -> None:
            out.write(f'{{"type":"RECORD","stream":"{name}",')
            begun.add(name)
            wait_until(lambda: gate_lock.blocked > 0 or len(begun) == 2)
            out.write('"record":{}}\n')

        return sync

    run_parallel(gate, [("one", stream("one")), ("two", stream("two"))], workers=2)
    lines = out.text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["type"] == "RECORD" for line in lines), out.parts
    assert gate_lock.ever_contended and gate.active is False


def test_every_job_runs_inside_the_gate_and_the_gate_is_inactive_afterwards(locks: list[ObservableLock]) -> None:
    gate = OutputGate()
    (gate_lock,) = locks
    owners: list[bool] = []

    def job() -> None:
        owners.append(gate_lock.owner is threading.current_thread())

    run_parallel(gate, [(str(i), job) for i in range(5)], workers=3)
    assert owners == [True] * 5 and gate.active is False and not gate_lock.locked()
    with gate:  # sequential again: no locking at all
        assert not gate_lock.locked()


def test_the_gate_opens_only_while_the_next_record_is_awaited(locks: list[ObservableLock]) -> None:
    """A stream holds the gate and reads two records through ``waiting``, each awaited (``waits.draw``, as the
    read loop pulls a channel's records). A second stream (started inside the gate) gets in exactly while the
    first awaits its next record, never while it writes one."""
    gate = OutputGate()
    (gate_lock,) = locks
    gate.active = True
    out = Out()
    me = threading.current_thread()

    def items() -> Iterator[int]:
        yield 1
        # the gate must be open now: the other stream gets in and writes its STATE; a gate left shut shows as
        # still being ours, and then the STATE comes after both records
        wait_until(lambda: "STATE\n" in out.parts or gate_lock.owner is me)
        yield 2

    def other() -> None:
        with gate:
            out.write("STATE\n")

    thread = threading.Thread(target=other)
    with gate:
        for item in gate.waiting(waits.draw(items())):  # drawn as the read loop draws a channel's records
            assert gate_lock.owner is me  # shut again before the record is handed over
            out.write(f"RECORD {item} ")
            if item == 1:
                thread.start()  # the other stream comes to the gate while this one writes
            wait_until(lambda: gate_lock.blocked > 0 or "STATE\n" in out.parts)  # the other is at the gate
            out.write("end\n")
    thread.join()
    assert out.text().splitlines() == ["RECORD 1 end", "STATE", "RECORD 2 end"]


def test_waiting_is_a_plain_pass_through_when_sequential() -> None:
    gate = OutputGate()
    assert list(gate.waiting(iter([1, 2, 3]))) == [1, 2, 3]
    gate.stopping.set()  # only the parallel path stops on it
    assert list(gate.waiting(iter([4]))) == [4]


def test_a_stopping_gate_stops_the_stream_at_its_next_record(locks: list[ObservableLock]) -> None:
    gate = OutputGate()
    gate.active = True
    got: list[int] = []
    with gate, pytest.raises(SyncStopped):
        for item in gate.waiting(iter([1, 2, 3])):
            got.append(item)
            gate.stopping.set()
    assert got == [1] and not locks[0].locked()
    assert issubclass(SyncStopped, BaseException) and not issubclass(SyncStopped, Exception)


def test_a_failure_stops_the_others_and_is_raised_after_every_thread_ended(locks: list[ObservableLock]) -> None:
    gate = OutputGate()
    stopped: list[str] = []

    def waiting_stream() -> None:
        def items() -> Iterator[int]:
            yield 1
            me = threading.current_thread()  # a gate left shut while waiting shows as still ours
            wait_until(lambda: gate.stopping.is_set() or locks[0].owner is me)
            yield 2

        try:
            for _ in gate.waiting(waits.draw(items())):
                pass
        except SyncStopped:
            stopped.append("waiting")
            raise

    def failing() -> None:
        raise KeyError("broken stream")

    with pytest.raises(KeyError, match="broken stream"):
        run_parallel(gate, [("waiting", waiting_stream), ("failing", failing), ("never", lambda: None)], workers=2)
    assert stopped == ["waiting"] and gate.active is False


# -- SIGTERM under parallel streams (issue 29 bug 4) ---------------------------------------------------------
def test_sigterm_shuts_the_gate_before_the_last_state_and_keeps_it_shut(
    locks: list[ObservableLock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream is mid-message when SIGTERM arrives. The handler must shut the output gate first: the last STATE
    comes after that message, and nothing after the STATE. Planted bug: the handler writes its STATE at once
    (the gate not shut) - the STATE lands inside the record and the stream writes on after it."""
    from tap_wellsky.tap import TapWellSky

    tap = TapWellSky(
        config={"base_url": "http://127.0.0.1:9", "username": "u", "password": "p"}, parse_env_config=False
    )
    gate = tap.output_gate
    gate_lock = locks[0]
    out = Out()
    # the final STATE (written unconditionally by the handler) goes to the test's stdout; the test process's own
    # stdout is not sealed
    monkeypatch.setattr(tap, "write_final_state", lambda consistent: out.write("STATE\n"))
    monkeypatch.setattr("tap_wellsky.tap.seal_stdout", lambda: None)
    gate.active = True  # as run_parallel sets it
    mid_message = threading.Event()
    ended: list[str] = []

    def stream() -> None:
        try:
            with gate:
                for item in gate.waiting(iter([1, 2])):
                    out.write(f"RECORD {item} ")
                    mid_message.set()
                    _notify()
                    wait_until(lambda: gate_lock.blocked > 0 or "STATE\n" in out.parts)
                    out.write("end\n")
        except SyncStopped:
            ended.append("stopped")
        except BaseException as exc:  # a broken gate: reported below, never a hang
            ended.append(repr(exc))
        finally:
            _notify()

    worker = threading.Thread(target=stream)
    worker.start()
    wait_until(lambda: mid_message.is_set() or bool(ended))
    assert not ended, ended
    codes: list[object] = []

    def handler() -> None:
        try:
            tap._handle_termination(signal.SIGTERM, None)
        except SystemExit as exc:
            codes.append(exc.code)

    signal_thread = threading.Thread(target=handler)
    signal_thread.start()
    signal_thread.join()  # returns in the right code (the stream gives the gate up) and in the broken one
    if gate_lock.locked():  # the process would exit here; let the stream see the stop (test clean-up only)
        gate_lock.release()
    gate.stopping.set()
    worker.join()
    assert codes == [143]
    assert out.text().splitlines()[-1] == "STATE", out.parts
    assert out.text().splitlines() == ["RECORD 1 end", "STATE"]
    assert ended == ["stopped"]


# -- a real parallel sync, in-process ----------------------------------------------------------------------
class GateCheckedStdout(io.RawIOBase):
    """stdout's bytes: every write made while the gate is active must come from the thread holding it."""

    def __init__(self, gate: OutputGate, lock: ObservableLock) -> None:
        self.gate, self.lock, self.data = gate, lock, bytearray()
        self.unguarded = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self.gate.active and self.lock.owner is not threading.current_thread():
            self.unguarded += 1
            _notify()
        self.data += bytes(b)
        return len(b)


def test_a_parallel_sync_writes_every_byte_under_the_gate_and_no_state_ahead(
    locks: list[ObservableLock], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tap's own parallel sync (SDK writer and the orjson fast path alike) against a small tenant: every
    byte of stdout written while streams run comes from the thread that holds the gate, every line is one
    whole message, and no STATE names a bookmark before its record."""
    from tap_wellsky.tap import TapWellSky

    with SandboxServer(scale=10, sftp_port=None, data_dir=tmp_path / "tenant", latency="5ms") as sb:
        config = sandbox_config(sb, page_size=5, max_parallel_streams=8)
        tap = TapWellSky(config=config, parse_env_config=False)
        gate_lock = locks[0]
        raw = GateCheckedStdout(tap.output_gate, gate_lock)
        stdout = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", write_through=True)
        monkeypatch.setattr(sys, "stdout", stdout)
        logging.getLogger("tap-wellsky").setLevel(logging.WARNING)
        # the sync runs on its own thread and this one waits for "finished, or a write outside the gate": a
        # broken gate can also deadlock the streams, and must fail here at its first stray write, not hang
        finished: list[BaseException | None] = []

        def sync() -> None:
            try:
                tap.sync_all()
                finished.append(None)
            except BaseException as exc:
                finished.append(exc)
            _notify()

        threading.Thread(target=sync, daemon=True).start()
        wait_until(lambda: bool(finished) or raw.unguarded > 0)
        assert raw.unguarded == 0, "a write to stdout outside the output gate while streams run"
        if finished[0] is not None:
            raise finished[0]
        stdout.flush()
        msgs = [json.loads(line) for line in raw.data.decode().splitlines()]
        counts: dict[str, int] = {}
        for m in msgs:
            if m["type"] == "RECORD":
                counts[m["stream"]] = counts.get(m["stream"], 0) + 1
        truth = {s: len(sb.truth(s)) for s in counts}
    assert raw.unguarded == 0, f"{raw.unguarded} writes to stdout outside the output gate"
    _check_state_never_ahead(msgs)
    assert counts == truth  # every record once
    assert sum(counts.values()) > 50 and len(counts) > 3


def test_streams_run_on_named_daemon_threads_no_more_than_needed(locks: list[ObservableLock], monkeypatch) -> None:
    """Daemon threads, so a signal's exit is never held up by a stream waiting on the network; named, so a log
    line or a py-spy dump says which thread is a stream; never more threads than jobs or workers."""
    gate = OutputGate()
    started: list[threading.Thread] = []
    real_thread = threading.Thread

    def counting(*args: Any, **kwargs: Any) -> threading.Thread:
        thread = real_thread(*args, **kwargs)
        started.append(thread)
        return thread

    monkeypatch.setattr(stream_workers.threading, "Thread", counting)  # both faces' one pool
    seen: list[tuple[str, bool]] = []

    def job() -> None:
        me = threading.current_thread()
        seen.append((me.name, me.daemon))

    run_parallel(gate, [("only", job)], workers=8)
    assert len(started) == 1 and seen == [("tap-wellsky-stream-0", True)]
    started.clear()
    run_parallel(gate, [(str(i), job) for i in range(5)], workers=3)
    assert [t.name for t in started] == ["tap-wellsky-stream-0", "tap-wellsky-stream-1", "tap-wellsky-stream-2"]
    assert all(daemon for _, daemon in seen)
