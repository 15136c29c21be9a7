"""Bad, wrapped, future and foreign state files (issue 16 #4): one line naming the stream and the fix, exit 2.

Real tap subprocesses against a sandbox tenant. Before the fix each bad value below ended in a traceback (or,
for ``[]``, was silently ignored); Meltano's ``{"singer_state": ...}`` was ignored, so a resume started over.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tap_wellsky.embedded import load_tap_config
from wellsky_core.stream_state import state_stamp

from .conftest import assert_no_traceback, last_state, parse_messages, record_set, run_tap_cli, tap_config, truth_set

BAD_STATES = {
    "integer bookmark": ({"bookmarks": {"patients": {"replication_key_value": 1700000000}}}, "patients"),
    "dict bookmark value": ({"bookmarks": {"patients": {"replication_key_value": {"at": "x"}}}}, "patients"),
    "non-date string": ({"bookmarks": {"encounters": {"replication_key_value": "yesterday"}}}, "encounters"),
    "bookmark is a list": ({"bookmarks": {"coverage": []}}, "coverage"),
    "state is a list": ([], "JSON object"),
    "bookmarks is a string": ({"bookmarks": "patients"}, "bookmarks"),
    "replication key id": (
        {"bookmarks": {"appointments": {"replication_key": "id", "replication_key_value": "HH-V000001"}}},
        "appointments",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_bad_state_is_one_actionable_line(tmp_path, case) -> None:
    """Checked before any connection: the tenant address is never contacted (nothing listens there)."""
    state, named = BAD_STATES[case]
    config = {"base_url": "http://127.0.0.1:9", "username": "u", "password": "p", "product": "home_health"}
    proc = run_tap_cli(tmp_path, config, state)
    assert proc.returncode == 2, f"{case}: exit {proc.returncode}\n{proc.stderr[-1500:]}"
    assert_no_traceback(proc.stderr, case)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-1500:]
    assert named in errors[0] and ("delete" in errors[0] or "must be" in errors[0]), errors[0]
    assert proc.stdout.count('"type":"RECORD"') == 0


def test_meltano_wrapped_state_resumes_like_the_plain_one(tmp_path, small_tenant) -> None:
    config = tap_config(small_tenant)
    first = parse_messages(run_tap_cli(tmp_path, config, tag="first").stdout)
    state = last_state(first)
    plain = run_tap_cli(tmp_path, config, state, tag="plain")
    wrapped = run_tap_cli(tmp_path, config, {"singer_state": state}, tag="wrapped")
    assert plain.returncode == wrapped.returncode == 0, wrapped.stderr[-1500:]
    resumed = record_set(parse_messages(wrapped.stdout))
    assert resumed == record_set(parse_messages(plain.stdout))
    assert len(resumed) < len(truth_set(small_tenant)) / 2, "a wrapped state must not restart the sync"


def test_future_bookmark_and_unknown_stream_are_warned(tmp_path, sandbox) -> None:
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    config = tap_config(sandbox)
    stamp = state_stamp(load_tap_config(config, start_embedded=False), "patients")
    state = {
        "bookmarks": {
            "patients": {"replication_key": "updated_at", "replication_key_value": future, "stamp": stamp},
            "invoices": {"replication_key_value": "2026-01-01T00:00:00Z"},
        }
    }
    proc = run_tap_cli(tmp_path, config, state)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "'patients' has a bookmark in the future" in proc.stderr
    assert "unknown stream 'invoices'" in proc.stderr
    assert not any(s == "patients" for s, _ in record_set(parse_messages(proc.stdout)))


def test_unstamped_state_with_a_future_bookmark_is_refused(tmp_path, sandbox) -> None:
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    state = {"bookmarks": {"patients": {"replication_key": "updated_at", "replication_key_value": future}}}
    proc = run_tap_cli(tmp_path, tap_config(sandbox), state)
    assert proc.returncode == 2
    assert "unstamped state" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.count('"type":"RECORD"') == 0


