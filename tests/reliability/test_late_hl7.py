"""HL7 delivered late, through the tap as an orchestrator runs it: each run from the last run's state.

A file dropped in with its old times kept carries a patient nobody was sent and an older version of a patient
already sent. The next run sends the new patient and never the older version; the run after sends neither again.
The list of delivered files rides in the state (``content_hashes``): a run whose state was not kept (killed before
the target committed) leaves the next one to read the late file again.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.reliability.conftest import (
    assert_no_traceback,
    child_env,
    last_state,
    parse_messages,
    records,
    tap_args,
    tap_config,
    write_json,
)
from wellsky_sandbox.hl7 import feeds_for


def _run(tmp: Path, config: dict[str, Any], state: dict[str, Any] | None, tag: str) -> list[dict[str, Any]]:
    proc = subprocess.run(tap_args(tmp, config, state, tag), capture_output=True, text=True, env=child_env(),
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_no_traceback(proc.stderr, tag)
    return parse_messages(proc.stdout)


def _patients(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for s, r in records(messages) if s == "patients"}


def test_a_late_hl7_file_is_sent_once_by_the_run_after_it_arrives(tmp_path: Path, sandbox_factory: Any) -> None:
    sb = sandbox_factory(scale=60)
    config = {**tap_config(sb), "source": "hl7_sftp", "state_dir": str(tmp_path / "state"),
              **{k: v for k, v in sb.credentials().items() if k.startswith("sftp_")}}
    first = _run(tmp_path, config, None, "first")
    sent = _patients(first)
    assert sorted(sent) == sorted(p["id"] for p in sb.truth("patients"))
    state = last_state(first)
    assert state is not None and "content_hashes" in state["bookmarks"]["patients"]

    newest = max(sent.values(), key=lambda p: (p["updated_at"], p["id"]))
    bookmark = datetime.fromisoformat(newest["updated_at"].replace("Z", "+00:00"))
    base = sb.tenant.store.get("patients", newest["id"])
    def before(days: int) -> str:
        return (bookmark - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")

    registered = {**base, "id": "late-patient-9", "mrn": "LATE0009", "updated_at": before(5)}
    stale = {**base, "last_name": "Stalename", "updated_at": before(1)}
    feeds_for(sb.tenant).hl7.deliver_late([("patients", registered), ("patients", stale)], keep_times=True)

    killed_state = state  # a run whose state nobody kept: the next one starts from the same input
    second = _run(tmp_path, config, killed_state, "second")
    assert "late-patient-9" in _patients(second)
    second_again = _run(tmp_path, config, killed_state, "second-again")
    assert "late-patient-9" in _patients(second_again), "a run whose state was not kept delivered nothing"
    for run in (second, second_again):
        assert all(p["last_name"] != "Stalename" for p in _patients(run).values())
        assert _patients(run).get(newest["id"], newest) == newest

    third = _run(tmp_path, config, last_state(second), "third")
    assert "late-patient-9" not in _patients(third)


def test_an_hl7_feed_with_outages_loses_nothing_and_undoes_nothing(tmp_path: Path, sandbox_factory: Any) -> None:
    """The sandbox's feed queues a fifth of every refresh's changes (an outage) and sends them with the next one,
    in a file that keeps their old times. Runs from each other's state, with the tenant changing between them,
    applied as a warehouse applies them (the last record of an id wins): every record ends at the tenant's version
    (none lost, no late older version on top)."""
    sb = sandbox_factory(scale=60)
    sb.control("POST", "/_sandbox/hl7", json={"late": 0.2, "keep_times": True})
    config = {**tap_config(sb), "source": "hl7_sftp", "state_dir": str(tmp_path / "state"),
              **{k: v for k, v in sb.credentials().items() if k.startswith("sftp_")}}
    table: dict[tuple[str, str], dict[str, Any]] = {}
    state: dict[str, Any] | None = None
    for run in range(5):
        if run:
            assert sb.advance(fraction=0.05, seed=run)["changed"]
        messages = _run(tmp_path, config, state, f"run-{run}")
        for stream, record in records(messages):
            table[(stream, record["id"])] = record
        state = last_state(messages) or state
    sb.control("POST", "/_sandbox/hl7", json={"late": 0})
    for stream, record in records(_run(tmp_path, config, state, "after-the-outages")):  # the last queue arrives
        table[(stream, record["id"])] = record
    late = sorted(p.name for p in feeds_for(sb.tenant).hl7.dir.glob("*-late.hl7"))
    assert len(late) >= 4, late
    for entity in ("patients", "appointments", "encounters"):
        truth = {r["id"]: r for r in sb.truth(entity)}
        behind = sorted(i for i, r in truth.items() if table.get((entity, i), {}).get("updated_at") != r["updated_at"])
        assert not behind, f"{entity}: {len(behind)} record(s) not at the tenant's version"
    for patient_id, patient in {r["id"]: r for r in sb.truth("patients")}.items():
        assert table[("patients", patient_id)] == patient


def test_source_wellsky_sends_a_late_hl7_file_from_its_own_state(tmp_path: Path, sandbox_factory: Any) -> None:
    """The Airbyte face keeps the same list in its per-stream state and sends the late patient on its next read."""
    import json
    import sys

    sb = sandbox_factory(scale=40)
    config = {**tap_config(sb), "source": "hl7_sftp", "state_dir": str(tmp_path / "state"),
              **{k: v for k, v in sb.credentials().items() if k.startswith("sftp_")}}
    catalog = {"streams": [{"stream": {"name": "patients", "json_schema": {}, "supported_sync_modes": ["incremental"]},
                            "sync_mode": "incremental", "destination_sync_mode": "append",
                            "cursor_field": ["updated_at"]}]}
    base = [sys.executable, "-m", "tap_wellsky.airbyte", "read",
            "--config", str(write_json(tmp_path / "source-config.json", config)),
            "--catalog", str(write_json(tmp_path / "catalog.json", catalog))]

    def read(state: list[dict[str, Any]] | None, tag: str) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        cmd = base + (["--state", str(write_json(tmp_path / f"{tag}-state.json", state))] if state else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=180)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        messages = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        patients = {m["record"]["data"]["id"]: m["record"]["data"] for m in messages if m["type"] == "RECORD"}
        states = [m["state"] for m in messages if m["type"] == "STATE"]
        return patients, states[-1:]

    first, state = read(None, "first")
    assert state and "content_hashes" in state[0]["stream"]["stream_state"]
    newest = max(first.values(), key=lambda p: (p["updated_at"], p["id"]))
    bookmark = datetime.fromisoformat(newest["updated_at"].replace("Z", "+00:00"))
    registered = {**sb.tenant.store.get("patients", newest["id"]), "id": "late-patient-7", "mrn": "LATE0007",
                  "updated_at": (bookmark - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    feeds_for(sb.tenant).hl7.deliver_late([("patients", registered)], keep_times=True)
    second, state = read(state, "second")
    assert second["late-patient-7"]["mrn"] == "LATE0007"
    third, _ = read(state, "third")
    assert "late-patient-7" not in third
