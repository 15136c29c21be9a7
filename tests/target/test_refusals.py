"""The target's refusal path (issue 23 item 5): a refused stream or a record missing a key property always leaves
a dead letter with the reason, an audit line and a count in the summary, whatever ``key_properties`` says; never
a traceback. Both faces: target-wellsky and destination-wellsky, as subprocesses against the sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from wellsky_core.audit import AuditLog
from wellsky_core.deadletter import DeadLetter
from wellsky_core.schemas import stream_schema

from .helpers import new_patients, run_target, target_config

REFUSED = "appointments cannot be written to WellSky Personal Care"


def hc_target_config(sb: Any, tmp_path, **extra: Any) -> dict[str, Any]:
    return {
        "product": "personal_care", "base_url": sb.base_url, "client_id": sb.client_id,
        "client_secret": sb.client_secret, "max_requests_per_second": 0,
        "dead_letter_path": str(tmp_path / "dead.jsonl"), "audit_log_path": str(tmp_path / "audit.jsonl"), **extra,
    }


def lines_for(stream: str, records: list[dict[str, Any]], key_properties: list[str]) -> list[str]:
    head = {"type": "SCHEMA", "stream": stream, "schema": stream_schema(stream), "key_properties": key_properties}
    return [json.dumps(head)] + [json.dumps({"type": "RECORD", "stream": stream, "record": r}) for r in records]


SHIFTS = [
    {"patient_id": "1000001", "start": f"2026-12-0{d}T15:00:00Z", "end": f"2026-12-0{d}T17:00:00Z",
     "status": "scheduled", "discipline": "HHA", "service_code": "T1019", "updated_at": "2026-12-01T00:00:00Z"}
    for d in (2, 3, 4)
]


@pytest.fixture(autouse=True)
def private_state(tmp_path, monkeypatch):
    """The CLIs keep their state under tmp_path, never in the user's home directory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


@pytest.fixture
def pc_tenant(sandbox_factory):
    return sandbox_factory(product="personal_care", scale=5)


@pytest.mark.parametrize("key_properties", [["id"], []])
def test_a_refused_stream_is_dead_lettered_audited_and_counted(pc_tenant, tmp_path, key_properties):
    run = run_target(tmp_path, hc_target_config(pc_tenant, tmp_path), lines_for("appointments", SHIFTS,
                                                                                  key_properties))
    assert run.returncode == 3, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr
    assert run.stderr.count(REFUSED) == 1, "the reason is said once"
    assert "refused 3" in run.stderr
    letters = DeadLetter.read(tmp_path / "dead.jsonl")
    assert [(d["stream"], d["context"]["code"]) for d in letters] == [("appointments", "stream_refused")] * 3
    assert all(REFUSED in d["reason"] for d in letters)
    assert [d["payload"] for d in letters] == SHIFTS
    audit = [e for e in AuditLog.read(tmp_path / "audit.jsonl") if e["stream"] == "appointments"]
    assert [e["action"] for e in audit] == ["refused"] * 3
    assert not [e for e in pc_tenant.audit() if e.get("entity") == "appointments"], "nothing was sent"


def test_a_missing_key_property_refuses_that_record_in_one_line(sandbox, tmp_path):
    patients = new_patients(sandbox, 3, prefix="KEYP")
    patients[1]["mrn"] = None
    run = run_target(tmp_path, target_config(sandbox, tmp_path), lines_for("patients", patients, ["mrn"]))
    assert run.returncode == 3, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "MissingKeyProperties" not in run.stderr
    assert run.stderr.count("key property mrn is missing or empty") == 1
    assert "created 2" in run.stderr and "rejected 1" in run.stderr
    [letter] = DeadLetter.read(tmp_path / "dead.jsonl")
    assert letter["context"] == {"input_line": 3, "code": "missing_key"}
    assert [e["action"] for e in AuditLog.read(tmp_path / "audit.jsonl")].count("rejected") == 1


def test_the_airbyte_face_dead_letters_every_refused_record(pc_tenant, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(hc_target_config(pc_tenant, tmp_path)))
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"streams": [{
        "stream": {"name": "appointments", "json_schema": {}, "supported_sync_modes": ["incremental"]},
        "sync_mode": "incremental", "destination_sync_mode": "append_dedup"}]}))
    stdin = "".join(json.dumps({"type": "RECORD", "record": {"stream": "appointments", "data": r, "emitted_at": 1}})
                    + "\n" for r in SHIFTS)
    proc = subprocess.run([sys.executable, "-m", "target_wellsky.destination", "write", "--config", str(config),
                           "--catalog", str(catalog)], input=stdin, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    letters = DeadLetter.read(tmp_path / "dead.jsonl")
    assert [d["payload"] for d in letters] == SHIFTS and all(REFUSED in d["reason"] for d in letters)
    assert [e["action"] for e in AuditLog.read(tmp_path / "audit.jsonl")] == ["refused"] * 3
    assert "refused 3" in proc.stdout + proc.stderr
