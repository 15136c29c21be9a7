"""target-wellsky against a sandbox: idempotent re-runs, authorization refusals, dead letters, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from wellsky_core.audit import AuditLog
from wellsky_core.deadletter import DeadLetter

from .helpers import TARGET, bookable_appointments, new_patients, run_target, singer_lines, target_config


def _count(sb, entity: str, field: str, prefix: str) -> int:
    return sum(1 for r in sb.truth(entity) if (r.get(field) or "").startswith(prefix))


def test_first_run_creates_second_run_changes_nothing(sandbox, tmp_path):
    patients = new_patients(sandbox, 30)
    appts = bookable_appointments(sandbox, 10)
    lines = singer_lines("patients", patients) + singer_lines("appointments", appts)
    config = target_config(sandbox, tmp_path)
    first = run_target(tmp_path, config, lines)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "patients      created 30" in first.stderr and "appointments  created 10" in first.stderr
    assert _count(sandbox, "patients", "mrn", "NEW") == 30
    assert _count(sandbox, "appointments", "external_id", "EXT") == 10
    writes_before = len(sandbox.audit())
    second = run_target(tmp_path, config, lines, name="again")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "patients      unchanged 30" in second.stderr and "appointments  unchanged 10" in second.stderr
    assert len(sandbox.audit()) == writes_before, "a re-run must not write at all"
    assert _count(sandbox, "patients", "mrn", "NEW") == 30
    actions = [e["action"] for e in AuditLog.read(tmp_path / "audit.jsonl")]
    assert actions.count("created") == 40 and actions.count("unchanged") == 40


def test_changed_record_is_updated_in_place(sandbox, tmp_path):
    patients = new_patients(sandbox, 5)
    config = target_config(sandbox, tmp_path)
    assert run_target(tmp_path, config, singer_lines("patients", patients)).returncode == 0
    patients[2]["phone"] = "(555) 555-0199"
    proc = run_target(tmp_path, config, singer_lines("patients", patients), name="update")
    assert proc.returncode == 0 and "unchanged 4, updated 1" in proc.stderr
    stored = [r for r in sandbox.truth("patients") if r["mrn"] == patients[2]["mrn"]]
    assert len(stored) == 1 and stored[0]["phone"] == "(555) 555-0199"


def test_over_authorized_appointments_are_refused_and_dead_lettered(sandbox, tmp_path):
    auth = next(
        a
        for a in sandbox.truth("authorizations")
        if a["status"] == "active" and a["unit_type"] == "visit" and 2 <= a["units_authorized"] - a["units_used"] <= 12
    )
    left = auth["units_authorized"] - auth["units_used"]
    code = auth["service_codes"][0]
    day = max(auth["start_date"], "2026-11-02")
    base = {
        "patient_id": auth["patient_id"],
        "payer_id": auth["payer_id"],
        "status": "scheduled",
        "discipline": code,
        "service_code": {"SN": "G0299", "PT": "G0151", "OT": "G0152", "ST": "G0153"}[code],
        "start": f"{day}T15:00:00Z",
        "end": f"{day}T16:00:00Z",
    }
    appts = [{**base, "external_id": f"OVER{i:03d}"} for i in range(left + 3)]
    proc = run_target(tmp_path, target_config(sandbox, tmp_path), singer_lines("appointments", appts))
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"created {left}" in proc.stderr and "rejected 3" in proc.stderr
    dead = DeadLetter.read(tmp_path / "dead.jsonl")
    assert len(dead) == 3
    assert all("authorization_exceeded" in d["reason"] for d in dead)
    assert all(d["payload"]["external_id"].startswith("OVER") and d["context"]["input_line"] > 1 for d in dead)
    stored = next(a for a in sandbox.truth("authorizations") if a["id"] == auth["id"])
    assert stored["units_used"] == auth["units_authorized"], "never over-utilized under enforce"


def test_read_only_tenant_dead_letters_everything(sandbox_factory, tmp_path):
    sb = sandbox_factory(read_only=True)
    proc = run_target(tmp_path, target_config(sb, tmp_path), singer_lines("patients", new_patients(sb, 4)))
    assert proc.returncode == 3
    dead = DeadLetter.read(tmp_path / "dead.jsonl")
    assert len(dead) == 4 and all("read_only_tenant" in d["reason"] for d in dead)
    assert "rejected 4" in proc.stderr


def test_dry_run_writes_nothing(sandbox, tmp_path):
    writes = len(sandbox.audit())
    proc = run_target(
        tmp_path, target_config(sandbox, tmp_path, dry_run=True), singer_lines("patients", new_patients(sandbox, 6))
    )
    assert proc.returncode == 0
    assert "would_create 6" in proc.stderr and "dry run" in proc.stderr
    assert len(sandbox.audit()) == writes


def test_malformed_singer_input_names_the_line(sandbox, tmp_path):
    good = singer_lines("patients", new_patients(sandbox, 2))
    cases = {
        "bad json": ([*good[:2], '{"type": "RECORD", "stream": "patients", "record": {'], "line 3"),
        "record before schema": (good[1:2], "line 1"),
        "not an object": ([*good[:1], "[1, 2, 3]"], "line 2"),
        "missing record key": ([*good[:1], '{"type": "RECORD", "stream": "patients"}'], "line 2"),
        "unknown type": ([*good[:1], '{"type": "BANANA"}'], "line 2"),
    }
    for name, (lines, needle) in cases.items():
        proc = run_target(tmp_path, target_config(sandbox, tmp_path), lines, name=name.replace(" ", "-"))
        assert proc.returncode == 2, (name, proc.stderr[-1500:])
        assert needle in proc.stderr, (name, proc.stderr[-800:])
        assert "Traceback" not in proc.stderr, name


def test_schema_violations_are_dead_lettered_with_field_and_line(sandbox, tmp_path):
    patients = new_patients(sandbox, 3)
    patients[1]["birth_date"] = "31/31/1940"
    patients[2].pop("last_name")
    proc = run_target(tmp_path, target_config(sandbox, tmp_path), singer_lines("patients", patients))
    assert proc.returncode == 3
    dead = DeadLetter.read(tmp_path / "dead.jsonl")
    assert [d["context"]["input_line"] for d in dead] == [3, 4]
    assert "birth_date" in dead[0]["reason"] and "last_name" in dead[1]["reason"]
    assert "31/31/1940" not in proc.stderr, "values never reach the log"


def test_other_streams_warn_or_fail_under_strict(sandbox, tmp_path):
    lines = singer_lines("encounters", sandbox.truth("encounters")[:3])
    lenient = run_target(tmp_path, target_config(sandbox, tmp_path), lines)
    assert lenient.returncode == 0 and "encounters    skipped 3" in lenient.stderr
    strict = run_target(tmp_path, target_config(sandbox, tmp_path, strict=True), lines, name="strict")
    assert strict.returncode == 2 and "encounters" in strict.stderr and "Traceback" not in strict.stderr


def test_killed_mid_batch_then_rerun_ends_with_exactly_n(sandbox, tmp_path):
    patients = new_patients(sandbox, 120, prefix="KILL")
    lines = singer_lines("patients", patients)
    config = target_config(sandbox, tmp_path, max_requests_per_second=60, write_concurrency=2)
    (tmp_path / "k.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [*TARGET, "--config", str(tmp_path / "k.json")],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    proc.stdin.write("\n".join(lines) + "\n")
    proc.stdin.close()
    deadline = time.monotonic() + 60
    while _count(sandbox, "patients", "mrn", "KILL") < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _count(sandbox, "patients", "mrn", "KILL")
    assert 0 < partial < 120, "the kill must land mid-batch"
    rerun = run_target(tmp_path, target_config(sandbox, tmp_path), lines, name="rerun")
    assert rerun.returncode == 0, rerun.stderr[-1500:]
    mrns = [r["mrn"] for r in sandbox.truth("patients") if (r["mrn"] or "").startswith("KILL")]
    assert len(mrns) == 120 and len(set(mrns)) == 120


def test_write_ledger_skips_identical_records_without_asking_wellsky(sandbox, tmp_path):
    patients = new_patients(sandbox, 12, prefix="LEDG")
    config = target_config(sandbox, tmp_path, write_ledger_path=str(tmp_path / "ledger.sqlite"))
    assert run_target(tmp_path, config, singer_lines("patients", patients)).returncode == 0
    requests_before = sandbox.stats()["data_requests"]
    again = run_target(tmp_path, config, singer_lines("patients", patients), name="again")
    assert again.returncode == 0 and "unchanged 12" in again.stderr
    assert sandbox.stats()["data_requests"] == requests_before, "identical input: no request at all"
    patients[3]["phone"] = "(555) 555-0142"
    changed = run_target(tmp_path, config, singer_lines("patients", patients), name="changed")
    assert "unchanged 11, updated 1" in changed.stderr
    assert sandbox.stats()["data_requests"] == requests_before + 2  # one lookup, one update
    assert b"LEDG" not in (tmp_path / "ledger.sqlite").read_bytes(), "the ledger stores hashes, not MRNs"


def test_large_batches_find_natural_keys_with_one_scan(sandbox, tmp_path):
    patients = new_patients(sandbox, 260, prefix="BULK")
    patients[5]["mrn"] = sandbox.truth("patients")[0]["mrn"]  # one already exists: must be updated, not duplicated
    config = target_config(sandbox, tmp_path)
    before = sandbox.stats()["data_requests"]
    proc = run_target(tmp_path, config, singer_lines("patients", patients))
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "created 259" in proc.stderr
    requests = sandbox.stats()["data_requests"] - before
    assert requests <= 260 + 5, f"{requests} requests: expected one scan plus one write per record"
    assert _count(sandbox, "patients", "mrn", "BULK") == 259
