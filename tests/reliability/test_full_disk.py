"""A full volume under the files the connector keeps: the run stops in one line, and nothing is lost or doubled.

The dead-letter file is the one place a refused input is kept, and the audit trail the one record of a write
decision. When either cannot be written (the volume is full: a real tmpfs filled to its last byte), the run must
not go on as if the line had been kept: it stops naming the setting and the reason, leaves no half line, moves no
bookmark past what it could not keep, and a rerun creates nothing twice.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    SUBPROCESS_TIMEOUT,
    assert_no_traceback,
    child_env,
    last_state,
    parse_messages,
    record_set,
    run_tap_cli,
    run_target_cli,
    tap_args,
    tap_config,
    truth_set,
)
from .test_bad_input import FEED_SAMPLES, _feed_run
from .test_private_state import _patients


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` at ``mount`` (skipped where mounting is not allowed; CI runs as root)."""
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()[:80]}); CI runs as root and can")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 kB tmpfs filled to the last byte: every write there fails with ENOSPC, as on a full volume."""
    with tmpfs(tmp_path / "full", "64k") as mount:
        with contextlib.suppress(OSError), (mount / "filler").open("wb", buffering=0) as filler:
            while True:
                filler.write(b"\0" * 512)
        yield mount


def test_a_temporary_volume_that_fills_mid_run_stops_in_one_line_and_a_rerun_loses_nothing(
    sandbox_factory: Any, tmp_path: Path
) -> None:
    """The windowed readers spool pages under TMPDIR. A volume that filled during the run ended in "internal error
    (please report it)" and a traceback: now one line says what is full and what to point elsewhere, and the
    rerun from the last STATE delivers every record the first run did not."""
    sb = sandbox_factory(scale=2000, sftp_port=None)
    config = tap_config(sb, page_size=100)
    with tmpfs(tmp_path / "tmp", "128k") as small:
        first = subprocess.run(
            tap_args(tmp_path, config, tag="first"), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
            env={**child_env(), "TMPDIR": str(small)},
        )
    assert first.returncode == 2, first.stderr[-2000:]
    assert_no_traceback(first.stderr, "tap with a full TMPDIR")
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("tap-wellsky: error: No space left on device") and "TMPDIR" in last, last
    messages = parse_messages(first.stdout)
    second = run_tap_cli(tmp_path, config, last_state(messages), tag="second")
    assert second.returncode == 0, second.stderr[-2000:]
    delivered = record_set(messages) | record_set(parse_messages(second.stdout))
    truth = truth_set(sb)
    assert truth <= delivered, f"{len(truth - delivered)} records lost"
    print(f"FIGURES full TMPDIR: first run {len(record_set(messages))} records, then {last}")


@pytest.mark.parametrize("source", list(FEED_SAMPLES))
def test_a_dead_letter_file_on_a_full_disk_stops_the_run_in_one_line(
    sandbox_factory: Any, tmp_path: Path, full_disk: Path, source: str
) -> None:
    """The one place a refused input is kept is the dead-letter file: when it cannot be written (the volume is
    full), the input must not be dropped and the run must not look fine. It stops in one line naming
    dead_letter_path and the cause, and the final STATE does not pass the refused input."""
    sb = sandbox_factory(scale=5)
    proc, _name = _feed_run(sb, tmp_path, source, dead_letter_path=str(full_disk / "dead.jsonl"))
    assert proc.returncode == 2, proc.stderr[-1500:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tap-wellsky: error:") and "dead_letter_path" in last, proc.stderr[-1500:]
    assert "No space left on device" in last, last
    states = [json.loads(x)["value"] for x in proc.stdout.splitlines() if '"type":"STATE"' in x.replace(" ", "")]
    marks = [s.get("bookmarks", {}).get("patients", {}).get("replication_key_value") for s in states]
    assert not any(marks), f"a STATE moved past the input that could not be kept: {marks}"
    assert not (full_disk / "dead.jsonl").exists() or (full_disk / "dead.jsonl").read_bytes() == b""
    print(f"FIGURES full disk ({source}): {last}")


@pytest.mark.parametrize("keyed", [False, True], ids=["key-file-beside-the-log", "configured-key"])
def test_an_audit_log_on_a_full_disk_stops_the_target_and_a_rerun_creates_nothing_twice(
    sandbox_factory: Any, tmp_path: Path, full_disk: Path, keyed: bool
) -> None:
    """Without a configured key, the key file beside the audit log cannot be kept: the run stops before any
    write. With one, the audit line of the first write is appended after WellSky answered: the write is done,
    its record is not, and the run stops there. Either way one line names audit_log_path, and a rerun with room
    leaves each patient once."""
    sb = sandbox_factory(scale=5, sftp_port=None)
    before = len(sb.truth("patients"))
    config = {
        "base_url": sb.base_url, "username": sb.username, "password": sb.password, "product": sb.product,
        "max_requests_per_second": 0, "dead_letter_path": str(tmp_path / "dead.jsonl"),
        "write_ledger_path": str(tmp_path / "ledger.sqlite"),
        "write_concurrency": 1,  # one write in flight: the run must stop after the first
        **({"audit_hash_secret": "a-key-of-the-agency-s-own"} if keyed else {}),
    }
    stdin = _patients(3)
    first = run_target_cli(tmp_path, {**config, "audit_log_path": str(full_disk / "audit.jsonl")}, stdin, "full")
    assert first.returncode == 2, first.stderr[-1500:]
    assert_no_traceback(first.stderr, "target on a full disk")
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("target-wellsky: error:") and "audit_log_path" in last, first.stderr[-1500:]
    assert "No space left on device" in last, last
    assert ("audit key file" in last) is not keyed, last
    written = [p for p in sb.truth("patients")[before:] if str(p.get("mrn", "")).startswith("MRN-90")]
    # one write in flight, and the next one its worker had already taken when the first's audit failed
    assert len(written) in ((1, 2) if keyed else (0,)), f"the run went on writing: {len(written)} written"
    again = run_target_cli(tmp_path, {**config, "audit_log_path": str(tmp_path / "audit.jsonl")}, stdin, "again")
    assert again.returncode == 0, again.stderr[-1500:]
    mrns = [p["mrn"] for p in sb.truth("patients")[before:] if str(p.get("mrn", "")).startswith("MRN-90")]
    assert sorted(mrns) == ["MRN-900", "MRN-901", "MRN-902"], mrns
    print(f"FIGURES full disk (audit log, {'configured key' if keyed else 'key file'}): {last}")
