"""SIGTERM/SIGINT stop the tap with its last STATE written and a non-zero exit (issue 16 #3).

The SDK's own handler exits 0 after a partial sync, so an orchestrator recorded it as complete. Now: the last
line is a STATE that covers only what was emitted, the exit code is 128+signal (143 / 130), and a resume from
that STATE completes the clean record set.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    assert_no_traceback,
    child_env,
    last_state,
    parse_messages,
    record_set,
    run_tap_cli,
    tap_args,
    tap_config,
)


def _interrupt_after(tmp: Path, config: dict[str, Any], records: int, signum: int) -> tuple[int, str, str]:
    with (tmp / "interrupted.stderr").open("w") as err:
        proc = subprocess.Popen(tap_args(tmp, config), stdout=subprocess.PIPE, stderr=err, env=child_env(), bufsize=0)
        assert proc.stdout is not None
        seen, buffer, chunks = 0, b"", []
        while seen < records:
            data = proc.stdout.read(4096)
            if not data:
                break
            chunks.append(data)
            buffer += data
            *complete, buffer = buffer.split(b"\n")
            seen += sum(1 for line in complete if line.startswith(b'{"type":"RECORD"'))
        proc.send_signal(signum)
        chunks.append(proc.stdout.read())
        code = proc.wait(timeout=60)
    return code, b"".join(chunks).decode(), (tmp / "interrupted.stderr").read_text()


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_sync_exits_non_zero_after_a_final_state(tmp_path, small_tenant, signum, expected) -> None:
    sb = small_tenant
    config = tap_config(sb, page_size=50, max_requests_per_second=10)  # ~10 pages/s: the signal lands mid-sync
    code, stdout, stderr = _interrupt_after(tmp_path, config, 120, signum)
    assert code == expected, f"exit {code} after {signal.Signals(signum).name}:\n{stderr[-1500:]}"
    assert_no_traceback(stderr, "interrupted tap")
    messages = parse_messages(stdout)
    assert messages[-1]["type"] == "STATE", "the last line must be the final STATE"
    clean = record_set(parse_messages(run_tap_cli(tmp_path, config, tag="clean").stdout))
    first = record_set(messages)
    assert first and first < clean, "the sync should have been stopped part-way"

    resumed = run_tap_cli(tmp_path, config, last_state(messages), tag="resume")
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    assert first | record_set(parse_messages(resumed.stdout)) == clean
