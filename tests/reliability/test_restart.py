"""The vendor restarts in the middle of a sync (same port, same SQLite file; every session is forgotten).

A short restart must be invisible to the user: the tap retries the refused connections, logs in again and
completes with exactly the clean record set. An outage longer than the retry budget must stop the tap with a
clear error (no traceback), and a resume from its last STATE must complete the set.
"""

from __future__ import annotations

import re
import subprocess
import threading

from tests.waiting import wait_for

from .conftest import (
    assert_no_traceback,
    child_env,
    duplicates,
    parse_messages,
    record_key,
    records,
    run_tap_cli,
    tap_args,
    tap_config,
    truth_set,
)


def _summary(stderr: str) -> tuple[dict[str, int], int]:
    """Retries by reason and re-logins from the tap's summary line on stderr."""
    match = re.search(r"(\d+) retries ?([({][^)}]*[)}])?\s*, (\d+) re-logins", stderr)
    assert match, f"no sync summary on stderr:\n{stderr[-1500:]}"
    detail = (match.group(2) or "()")[1:-1]
    by_reason = {k.strip(" '\""): int(v) for k, v in re.findall(r"([\w'\"]+): (\d+)", detail)}
    assert sum(by_reason.values()) == int(match.group(1)), match.group(0)
    return by_reason, int(match.group(3))


def _start_reading(proc: subprocess.Popen[str], lines: list[str], ready: threading.Event, after: int) -> None:
    assert proc.stdout is not None
    count = 0
    for line in proc.stdout:
        lines.append(line)
        if line.startswith('{"type":"RECORD"'):
            count += 1
            if count == after:
                ready.set()
    ready.set()


def test_sandbox_restart_mid_sync_is_survived(tmp_path, small_tenant):
    sb = small_tenant
    clean = truth_set(sb)
    # ~15 pages/s so the restart lands mid-sync; backoff up to 1 s x 10 retries rides out the restart
    config = tap_config(
        sb, page_size=20, max_requests_per_second=15, backoff_base_seconds=0.2, backoff_max_seconds=1.0, max_retries=10
    )
    with (tmp_path / "tap.stderr").open("w+") as err:
        proc = subprocess.Popen(
            tap_args(tmp_path, config), stdout=subprocess.PIPE, stderr=err, text=True, env=child_env()
        )
        lines: list[str] = []
        ready = threading.Event()
        reader = threading.Thread(target=_start_reading, args=(proc, lines, ready, 250), daemon=True)
        reader.start()
        assert ready.wait(60)
        assert proc.poll() is None, "the tap finished before the restart; slow it down"
        port = sb.port
        sb.stop()
        wait_for(  # the tap meets refused connections, then the tenant comes back
            lambda: "retrying" in (tmp_path / "tap.stderr").read_text(), timeout=60, what="the tap to retry"
        )
        sb.start()
        assert sb.port == port
        assert proc.wait(timeout=120) == 0
        reader.join(10)
        err.seek(0)
        stderr = err.read()
    assert_no_traceback(stderr, "tap across a sandbox restart")
    delivered = [record_key(s, r) for s, r in records(parse_messages("".join(lines)))]
    assert not duplicates(delivered), "a page was repeated across the restart"
    assert set(delivered) == clean, f"lost {len(clean - set(delivered))} records across the restart"
    retries, relogins = _summary(stderr)
    assert retries.get("connection", 0) >= 1, retries
    assert relogins >= 1, "the restarted tenant forgot the session; the tap must have logged in again"
    print(f"FIGURES restart: survived with {retries} retries and {relogins} re-logins")


def test_outage_beyond_the_retry_budget_fails_clearly_and_resumes_from_state(tmp_path, small_tenant):
    sb = small_tenant
    clean = truth_set(sb)
    config = tap_config(sb, page_size=20, max_requests_per_second=15, max_retries=2)
    proc = subprocess.Popen(
        tap_args(tmp_path, config, tag="down"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(),
    )
    lines: list[str] = []
    ready = threading.Event()
    reader = threading.Thread(target=_start_reading, args=(proc, lines, ready, 150), daemon=True)
    reader.start()
    assert ready.wait(60) and proc.poll() is None
    sb.stop()
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        sb.start()
    reader.join(10)
    assert proc.returncode == 2, stderr[-1500:]
    assert_no_traceback(stderr, "tap during an outage")
    error = [line for line in stderr.splitlines() if line.startswith("tap-wellsky: error:")]
    assert error and "retry budget" in error[0] and "max_retries" in error[0], stderr[-1500:]

    first = parse_messages("".join(lines))
    states = [m["value"] for m in first if m["type"] == "STATE"]
    assert states, "the tap emitted no STATE before the outage"
    resumed = run_tap_cli(tmp_path, config, state=states[-1], tag="resume")
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    union = {record_key(s, r) for s, r in records(first) + records(parse_messages(resumed.stdout))}
    assert union == clean
