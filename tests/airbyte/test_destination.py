"""destination-wellsky, the Airbyte face of the write-back: spec, check and write through the real CLI against a
sandbox tenant. Every stdout line is a valid Airbyte message; STATE is echoed only after the records before it
are in WellSky; a replayed sync creates nothing twice; refusals are dead-lettered and never look successful."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from airbyte_protocol.models import AirbyteMessage

from tests.target.helpers import bookable_appointments, new_patients, target_config

CLI = [sys.executable, "-m", "target_wellsky.destination"]


def run(*args: str, stdin: str = "") -> tuple[int, list[AirbyteMessage]]:
    proc = subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=300)
    messages = [AirbyteMessage.model_validate_json(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, messages


def catalog(tmp: Path, mode: str = "append_dedup") -> Path:
    streams = [
        {
            "stream": {"name": name, "json_schema": {}, "supported_sync_modes": ["full_refresh", "incremental"]},
            "sync_mode": "incremental",
            "destination_sync_mode": mode,
        }
        for name in ("patients", "appointments")
    ]
    path = tmp / f"catalog-{mode}.json"
    path.write_text(json.dumps({"streams": streams}))
    return path


def airbyte_input(batches: list[tuple[str, list[dict[str, Any]]]]) -> str:
    lines = []
    for n, (stream, records) in enumerate(batches):
        for record in records:
            lines.append(json.dumps({"type": "RECORD", "record": {"stream": stream, "data": record, "emitted_at": 1}}))
        lines.append(
            json.dumps(
                {
                    "type": "STATE",
                    "state": {
                        "type": "STREAM",
                        "stream": {"stream_descriptor": {"name": stream}, "stream_state": {"checkpoint": n}},
                    },
                }
            )
        )
    return "\n".join(lines) + "\n"


def config_file(sandbox, tmp: Path, **extra: Any) -> Path:
    path = tmp / "config.json"
    path.write_text(json.dumps(target_config(sandbox, tmp, **extra)))
    return path


def test_spec_lists_upsert_modes_and_marks_secrets():
    code, messages = run("spec")
    assert code == 0 and len(messages) == 1
    spec = messages[0].spec
    assert {m.value for m in spec.supported_destination_sync_modes} == {"append", "append_dedup"}
    assert spec.connectionSpecification["properties"]["password"].get("airbyte_secret") is True


def test_check_succeeds_and_bad_credentials_fail_with_a_status(sandbox, tmp_path):
    code, messages = run("check", "--config", str(config_file(sandbox, tmp_path)))
    assert code == 0 and messages[-1].connectionStatus.status.value == "SUCCEEDED"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(config_file(sandbox, tmp_path).read_text()), "password": "wrong-pw"}))
    code, messages = run("check", "--config", str(bad))
    status = messages[-1].connectionStatus
    assert status.status.value == "FAILED" and "wrong-pw" not in (status.message or "")


def test_write_checkpoints_after_records_and_a_replay_creates_nothing(sandbox, tmp_path):
    patients = new_patients(sandbox, 5, prefix="ABY")
    appointments = bookable_appointments(sandbox, 3, prefix="ABX")
    stdin = airbyte_input([("patients", patients[:3]), ("patients", patients[3:]), ("appointments", appointments)])
    config = config_file(sandbox, tmp_path, audit_log_path=str(tmp_path / "audit.jsonl"))
    before = {p["mrn"] for p in sandbox.truth("patients")}

    code, messages = run("write", "--config", str(config), "--catalog", str(catalog(tmp_path)), stdin=stdin)
    assert code == 0, [m.trace for m in messages if m.trace]
    states = [m.state.stream.stream_state.checkpoint for m in messages if m.state]  # type: ignore[union-attr]
    assert states == [0, 1, 2], "every STATE is echoed, in order, after its records"
    created = {p["mrn"] for p in sandbox.truth("patients")} - before
    assert created == {p["mrn"] for p in patients}
    booked = {a["external_id"] for a in sandbox.truth("appointments")}
    assert {a["external_id"] for a in appointments} <= booked

    count = len(sandbox.truth("patients")), len(sandbox.truth("appointments"))
    code, messages = run("write", "--config", str(config), "--catalog", str(catalog(tmp_path)), stdin=stdin)
    assert code == 0
    assert (len(sandbox.truth("patients")), len(sandbox.truth("appointments"))) == count, "a replay created records"
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert sum(1 for a in audit if a["action"] == "created") == len(patients) + len(appointments)


def test_refusals_are_dead_lettered_and_reported_as_an_error(sandbox, tmp_path):
    good, bad = new_patients(sandbox, 2, prefix="ABZ")
    bad.pop("last_name")
    dead = tmp_path / "dead.jsonl"
    config = config_file(sandbox, tmp_path, dead_letter_path=str(dead))
    code, messages = run(
        "write",
        "--config",
        str(config),
        "--catalog",
        str(catalog(tmp_path)),
        stdin=airbyte_input([("patients", [good, bad])]),
    )
    assert code == 1
    errors = [m.trace.error for m in messages if m.trace and m.trace.error]
    assert errors and "1 record(s) could not be written" in errors[-1].message
    assert [m for m in messages if m.state], "the checkpoint still follows: the refused record is dead-lettered"
    kept = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(kept) == 1 and "last_name" in kept[0]["reason"]
    assert good["mrn"] in {p["mrn"] for p in sandbox.truth("patients")}


def test_overwrite_mode_and_broken_messages_are_refused_up_front(sandbox, tmp_path):
    config = config_file(sandbox, tmp_path)
    code, messages = run("write", "--config", str(config), "--catalog", str(catalog(tmp_path, "overwrite")))
    assert code == 1 and "append_dedup" in messages[-1].trace.error.message
    code, messages = run(
        "write",
        "--config",
        str(config),
        "--catalog",
        str(catalog(tmp_path)),
        stdin='{"type": "RECORD", "record": {"stream": "patients"}}\n',
    )
    assert code == 1 and "input line 1" in messages[-1].trace.error.message
