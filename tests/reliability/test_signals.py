"""SIGTERM/SIGINT stop the tap with its last STATE written and a non-zero exit (issue 16 #3).

The SDK's own handler exits 0 after a partial sync, so an orchestrator recorded it as complete. Now: the last
line is a STATE that covers only what was emitted, the exit code is 128+signal (143 / 130), and a resume from
that STATE completes the clean record set.
"""

from __future__ import annotations

import signal
import subprocess
import threading
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
from .proxy import WireProxy


def _interrupt_while_stalled(tmp: Path, config: dict[str, Any], proxy: WireProxy, signum: int) -> tuple[int, str, str]:
    """Start the tap through ``proxy``, signal it once a request hangs unanswered (so it is surely mid-sync, on a
    fast machine or a slow one: no wall-clock pacing), and return its exit code, stdout and stderr."""
    with (tmp / "interrupted.stderr").open("w") as err:
        proc = subprocess.Popen(tap_args(tmp, config), stdout=subprocess.PIPE, stderr=err, env=child_env())
        assert proc.stdout is not None
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()))  # type: ignore[union-attr]
        reader.start()  # drained all along: the tap never blocks on a full pipe
        proxy.stalled.wait()
        proc.send_signal(signum)
        reader.join()
        code = proc.wait()
    return code, b"".join(chunks).decode(), (tmp / "interrupted.stderr").read_text()


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_sync_exits_non_zero_after_a_final_state(tmp_path, small_tenant, signum, expected) -> None:
    sb = small_tenant
    proxy = WireProxy(sb.base_url)
    proxy.stall_after = 6  # the login and five pages of 50 are answered; the sixth page never is
    with proxy.running():
        config = tap_config(sb, page_size=50, max_requests_per_second=0, base_url=proxy.base_url)
        code, stdout, stderr = _interrupt_while_stalled(tmp_path, config, proxy, signum)
    assert code == expected, f"exit {code} after {signal.Signals(signum).name}:\n{stderr[-1500:]}"
    assert_no_traceback(stderr, "interrupted tap")
    messages = parse_messages(stdout)
    assert messages[-1]["type"] == "STATE", "the last line must be the final STATE"
    config = tap_config(sb, page_size=50, max_requests_per_second=0)
    clean = record_set(parse_messages(run_tap_cli(tmp_path, config, tag="clean").stdout))
    first = record_set(messages)
    # stopped part-way (with parallel streams and windows, what reached stdout before the stall may be nothing)
    assert first < clean, "the sync should have been stopped part-way"

    resumed = run_tap_cli(tmp_path, config, last_state(messages), tag="resume")
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    assert first | record_set(parse_messages(resumed.stdout)) == clean
