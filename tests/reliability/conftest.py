"""Shared helpers for the reliability suite: run the tap and target the way users do, and compare record sets.

The tap and target run as subprocesses (``python -m tap_wellsky.tap`` / ``python -m target_wellsky.target``)
wherever the point is what a user sees (exit codes, stderr, SIGKILL); in-process runs are used only where the
test needs the client's own counters (``Metrics``) to compare with the sandbox's fault counters.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wellsky_core.models import MODELED_ENTITIES as ENTITIES

STREAMS = tuple(ENTITIES)
TAP_CMD = [sys.executable, "-m", "tap_wellsky.tap"]
TARGET_CMD = [sys.executable, "-m", "target_wellsky.target"]
FAST_RETRIES = {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05, "max_retries": 12}
SUBPROCESS_TIMEOUT = 180

RecordKey = tuple[str, str]


def tap_config(sb: Any, **extra: Any) -> dict[str, Any]:
    """Session login to a sandbox, no client-side rate limit, quick backoff (the faults are what we test)."""
    return {
        "base_url": sb.base_url,
        "username": sb.username,
        "password": sb.password,
        "product": sb.product,
        "page_size": 50,
        "max_requests_per_second": 0,
        **FAST_RETRIES,
        **extra,
    }


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value))
    return path


def child_env() -> dict[str, str]:
    """The test's environment minus any WELLSKY_* variable, so only the given config counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WELLSKY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tap_args(tmp: Path, config: dict[str, Any], state: dict[str, Any] | None = None, tag: str = "tap") -> list[str]:
    cmd = [*TAP_CMD, "--config", str(write_json(tmp / f"{tag}-config.json", config))]
    if state is not None:
        cmd += ["--state", str(write_json(tmp / f"{tag}-state.json", state))]
    return cmd


def run_tap_cli(
    tmp: Path, config: dict[str, Any], state: dict[str, Any] | None = None, tag: str = "tap"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tap_args(tmp, config, state, tag),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=child_env(),
    )


def run_target_cli(
    tmp: Path, config: dict[str, Any], stdin: str, tag: str = "target"
) -> subprocess.CompletedProcess[str]:
    cfg = write_json(tmp / f"{tag}-config.json", config)
    return subprocess.run(
        [*TARGET_CMD, "--config", str(cfg)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=child_env(),
    )


def parse_messages(stdout: str) -> list[dict[str, Any]]:
    """Singer messages from a tap's stdout; a last line cut by a kill (no newline) is dropped, as a target would."""
    lines = stdout.split("\n")
    complete = lines[:-1]  # the final element is "" after a newline, or a partial line after a SIGKILL
    return [json.loads(line) for line in complete if line.strip()]


def records(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(m["stream"], m["record"]) for m in messages if m["type"] == "RECORD"]


def record_key(stream: str, record: dict[str, Any]) -> RecordKey:
    """A record's identity *and* content: the same id with other content is a different delivery."""
    return stream, json.dumps(record, sort_keys=True)


def record_set(messages: list[dict[str, Any]]) -> set[RecordKey]:
    return {record_key(s, r) for s, r in records(messages)}


def last_state(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    states = [m["value"] for m in messages if m["type"] == "STATE"]
    return states[-1] if states else None


def assert_no_traceback(stderr: str, what: str) -> None:
    assert "Traceback" not in stderr, f"{what}: an unhandled traceback reached the user:\n{stderr[-2500:]}"


def truth_set(sb: Any) -> set[RecordKey]:
    """What a sync must deliver: the sandbox's own logical records (the oracle)."""
    return {record_key(entity, rec) for entity in STREAMS for rec in sb.truth(entity)}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name}: {text}")


@contextlib.contextmanager
def capture_logs(*names: str, level: int = logging.DEBUG) -> Iterator[_Capture]:
    """Every record of the named loggers (and children), kept as emitted (after redaction at creation)."""
    handler = _Capture()
    loggers = [logging.getLogger(n) for n in names or ("",)]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(level)
    try:
        yield handler
    finally:
        for lg, lvl in saved:
            lg.removeHandler(handler)
            lg.setLevel(lvl)


def run_tap_inprocess(config: dict[str, Any], state: dict[str, Any] | None = None) -> tuple[list[dict], Any, str]:
    """Sync in this process (stdout captured) so the client's Metrics can be read afterwards."""
    from tap_wellsky.tap import TapWellSky

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        tap = TapWellSky(config=config, state=state, parse_env_config=False)
        tap.sync_all()
    return parse_messages(out.getvalue()), tap, err.getvalue()


def duplicates(keys: list[RecordKey]) -> Counter[RecordKey]:
    counts = Counter(keys)
    return Counter({k: n - 1 for k, n in counts.items() if n > 1})


@pytest.fixture
def small_tenant(sandbox_factory: Any) -> Any:
    """100 patients (about 1k records, 8 streams), no SFTP: fast enough for repeated full syncs."""
    return sandbox_factory(scale=100, sftp_port=None)
