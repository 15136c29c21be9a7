"""Parallel stream sync: the same records as one stream at a time, whole messages, STATE never ahead of its
records, and one request budget for every stream (the sandbox's soft-limit meter sees no overrun)."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from tap_wellsky.parallel import OutputGate, SyncStopped, run_parallel
from wellsky_core import waits
from wellsky_sandbox.testing import SandboxServer

from .helpers import run_tap, sandbox_config

BUDGET = 25  # tap requests/s; the sandbox asks for at most LIMIT
LIMIT = 30


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]  # every line one whole JSON message


def _record_set(msgs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(m["stream"], json.dumps(m["record"], sort_keys=True)) for m in msgs if m["type"] == "RECORD"}


def _check_state_never_ahead(msgs: list[dict[str, Any]], start: dict[str, str] | None = None) -> dict[str, str]:
    """Every STATE's bookmark per stream is <= the newest updated_at of that stream's records written before
    (or the bookmark the run started from)."""
    newest: dict[str, str] = dict(start or {})
    for m in msgs:
        if m["type"] == "RECORD":
            value = m["record"]["updated_at"]
            newest[m["stream"]] = max(newest.get(m["stream"], value), value)
        elif m["type"] == "STATE":
            for stream, book in m["value"].get("bookmarks", {}).items():
                for value in (
                    book.get("replication_key_value"),
                    book.get("progress_markers", {}).get("replication_key_value"),
                ):
                    if value is not None:
                        assert stream in newest and value <= newest[stream], (stream, value, newest.get(stream))
    return newest


@pytest.fixture
def wan_sandbox(tmp_path: Path) -> Any:
    with SandboxServer(scale=40, sftp_port=None, data_dir=tmp_path / "tenant", latency="40ms", rate_limit=LIMIT) as sb:
        yield sb


def test_parallel_sync_equals_sequential_with_exact_state_and_one_budget(wan_sandbox: SandboxServer, tmp_path: Path):
    base = sandbox_config(wan_sandbox, page_size=10, max_requests_per_second=BUDGET)
    parallel = _lines(run_tap(tmp_path, {**base, "max_parallel_streams": 8}).stdout)
    after_parallel = wan_sandbox.rate()
    sequential = _lines(run_tap(tmp_path, {**base, "max_parallel_streams": 1}).stdout)

    assert _record_set(parallel) == _record_set(sequential) and len(_record_set(parallel)) > 300
    records = [m for m in parallel if m["type"] == "RECORD"]
    assert len(records) == len(_record_set(parallel))  # nothing written twice
    # the streams really ran at once: their RECORD runs interleave (sequentially each stream is one run)
    runs = sum(1 for a, b in itertools.pairwise(records) if a["stream"] != b["stream"]) + 1
    assert runs > len({m["stream"] for m in records})
    newest = _check_state_never_ahead(parallel)
    final = next(m for m in reversed(parallel) if m["type"] == "STATE")["value"]["bookmarks"]
    assert {s: b["replication_key_value"] for s, b in final.items() if "replication_key_value" in b} == newest
    # SCHEMA before each stream's first RECORD
    seen_schema: set[str] = set()
    for m in parallel:
        if m["type"] == "SCHEMA":
            seen_schema.add(m["stream"])
        elif m["type"] == "RECORD":
            assert m["stream"] in seen_schema
    assert after_parallel["overruns"] == 0 and after_parallel["peak_per_second"] <= LIMIT
    assert wan_sandbox.rate()["overruns"] == 0


def test_incremental_parallel_run_resumes_each_stream_from_its_bookmark(wan_sandbox: SandboxServer, tmp_path: Path):
    base = sandbox_config(wan_sandbox, page_size=10, max_requests_per_second=BUDGET, max_parallel_streams=8)
    first = _lines(run_tap(tmp_path, base).stdout)
    state = next(m for m in reversed(first) if m["type"] == "STATE")["value"]
    wan_sandbox.advance(fraction=0.2)
    second = _lines(run_tap(tmp_path, base, state=state).stdout)
    start = {s: b["replication_key_value"] for s, b in state["bookmarks"].items() if "replication_key_value" in b}
    _check_state_never_ahead(second, start)
    for m in second:
        if m["type"] == "RECORD":
            assert m["stream"] not in start or m["record"]["updated_at"] >= start[m["stream"]]
    assert any(m["type"] == "RECORD" for m in second)


# -- the gate itself (no network) -----------------------------------------------------------------------------
def test_first_failure_stops_the_other_streams_and_is_raised() -> None:
    gate = OutputGate()
    stopped = threading.Event()
    release = threading.Event()

    def slow_items() -> Any:
        while not release.wait(0.01):
            yield 1

    def endless() -> None:
        try:
            for _ in gate.waiting(waits.draw(slow_items())):  # awaited, as the read loop draws a channel
                pass
        except SyncStopped:
            stopped.set()
            raise

    def failing() -> None:
        raise ValueError("stream two broke")

    with pytest.raises(ValueError, match="stream two broke"):
        run_parallel(gate, [("one", endless), ("two", failing)], workers=2)
    release.set()
    assert stopped.is_set() and gate.active is False


def test_gate_is_open_only_while_waiting_for_the_next_item() -> None:
    gate = OutputGate()
    gate.active = True
    observed: list[bool] = []

    def items() -> Any:
        for i in range(3):
            acquired = gate._lock.acquire(blocking=False)  # free while the item is awaited
            observed.append(acquired)
            if acquired:
                gate._lock.release()
            yield i

    with gate:
        assert list(gate.waiting(waits.draw(items()))) == [0, 1, 2]
        assert gate._lock.locked()
    assert observed == [True, True, True] and not gate._lock.locked()


def test_the_private_sdk_steps_the_parallel_sync_calls_still_exist() -> None:
    from singer_sdk import Tap

    assert callable(Tap._reset_state_progress_markers) and callable(Tap._set_compatible_replication_methods)


# -- a signal while streams run in parallel ----------------------------------------------------------------------
@pytest.fixture
def inprocess_tap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A TapWellSky in this process, stdout captured as bytes, signal handlers restored afterwards."""
    import io
    import signal
    import sys

    from tap_wellsky.tap import TapWellSky

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    kept: list[io.TextIOWrapper] = []
    with SandboxServer(scale=20, sftp_port=None, data_dir=tmp_path / "tenant") as sb:

        def make(**extra: Any) -> tuple[Any, io.BytesIO]:
            """Called in the test itself: pytest resets sys.stdout between a fixture and the test."""
            out = io.BytesIO()
            wrapper = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
            monkeypatch.setattr(sys, "stdout", wrapper)
            kept.append(wrapper)  # collecting the wrapper would close `out`
            config = sandbox_config(sb, page_size=500, **extra)
            return TapWellSky(config=config, parse_env_config=False), out

        try:
            yield make
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def _terminate(tap: Any) -> None:
    """What the SIGTERM handler runs (it ends in sys.exit(143))."""
    import signal

    with pytest.raises(SystemExit) as stopped:
        tap._handle_termination(signal.SIGTERM, None)
    assert stopped.value.code == 143


def test_nothing_follows_the_final_state_even_from_a_stream_inside_the_gate(inprocess_tap, monkeypatch) -> None:
    """Before: 2 of ~40 SIGTERMs let SCHEMA lines out after the final STATE. A stream inside the gate when the
    signal came (here: held just before it writes its SCHEMA, longer than the handler waits for the gate) wrote
    its SCHEMA once released, after the handler had written the final STATE.

    Deterministic: the stream is released only after the handler has returned; its SCHEMA must go nowhere."""
    from tap_wellsky.stream import WellSkyStream

    held, release, finished = threading.Event(), threading.Event(), threading.Event()
    original = WellSkyStream._write_schema_message
    starts: list[str] = []

    def hold_the_second_schema(self: Any) -> None:
        starts.append(self.name)
        if len(starts) == 2:
            held.set()
            release.wait(60)
        original(self)

    monkeypatch.setattr(WellSkyStream, "_write_schema_message", hold_the_second_schema)
    tap, out = inprocess_tap(max_parallel_streams=2)
    tap.output_gate.close_timeout = 0.2  # the held stream keeps the gate: the handler must not wait for it

    def sync() -> None:
        with contextlib.suppress(BaseException):
            tap.sync_all()
        finished.set()

    threading.Thread(target=sync, daemon=True).start()
    assert held.wait(60), "a second stream started"
    _terminate(tap)
    release.set()  # the held stream goes on: SCHEMA, then SyncStopped at its first record
    assert finished.wait(60), "every stream stops at its next record and the sync returns"
    lines = _lines(out.getvalue().decode())
    assert starts[1] not in {m.get("stream") for m in lines if m["type"] == "SCHEMA"}, "the late SCHEMA went nowhere"
    assert lines[-1]["type"] == "STATE", [m["type"] for m in lines[-5:]]


def test_the_final_state_is_written_even_when_nothing_changed(inprocess_tap) -> None:
    """The SDK's state writer skips a STATE equal to the last one; the final STATE must not be skipped, or a
    SCHEMA written since is the last line (a stream whose replication key is not a timestamp, such as
    webhook_events' seq, starts without a signpost, so without changing the state)."""
    tap, out = inprocess_tap()
    stream = tap.streams["patients"]
    tap.state_writer.write_state(tap.state)
    stream._write_schema_message()  # a stream starts; no bookmark has moved
    _terminate(tap)
    assert [m["type"] for m in _lines(out.getvalue().decode())] == ["STATE", "SCHEMA", "STATE"]
