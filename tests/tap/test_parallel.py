"""Parallel stream sync: the same records as one stream at a time, whole messages, STATE never ahead of its
records, and one request budget for every stream (the sandbox's soft-limit meter sees no overrun)."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from tap_wellsky.parallel import OutputGate, SyncStopped, run_parallel
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
            for _ in gate.waiting(slow_items()):
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
        assert list(gate.waiting(items())) == [0, 1, 2]
        assert gate._lock.locked()
    assert observed == [True, True, True] and not gate._lock.locked()


def test_the_private_sdk_steps_the_parallel_sync_calls_still_exist() -> None:
    from singer_sdk import Tap

    assert callable(Tap._reset_state_progress_markers) and callable(Tap._set_compatible_replication_methods)
