"""A state belongs to one tenant and source: a foreign one is refused before any work, on both faces (issue 23)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.reliability.conftest import parse_messages, run_tap_cli, tap_config, write_json

SOURCE = str(Path(sys.executable).with_name("source-wellsky"))


def _final_state(stdout: str) -> dict[str, Any]:
    return [m["value"] for m in parse_messages(stdout) if m["type"] == "STATE"][-1]


def _airbyte_state(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"type": "STREAM", "stream": {"stream_descriptor": {"name": name}, "stream_state": value}}
        for name, value in state["bookmarks"].items()
    ]


def _catalog(streams: list[str]) -> dict[str, Any]:
    return {
        "streams": [
            {
                "stream": {"name": s, "json_schema": {}, "supported_sync_modes": ["incremental"]},
                "sync_mode": "incremental",
                "destination_sync_mode": "append",
            }
            for s in streams
        ]
    }


def _source_read(tmp: Path, config: Path, state: Any) -> subprocess.CompletedProcess[str]:
    catalog = write_json(tmp / "catalog.json", _catalog(["patients"]))
    args = ["--config", str(config), "--catalog", str(catalog), "--state", str(write_json(tmp / "ab.json", state))]
    return subprocess.run([SOURCE, "read", *args], capture_output=True, text=True, timeout=120)


def test_another_tenants_state_is_refused_by_both_faces(sandbox_factory, tmp_path: Path) -> None:
    home_health = sandbox_factory(product="home_health", scale=30)
    hospice = sandbox_factory(product="hospice", scale=30)
    first = run_tap_cli(tmp_path, tap_config(home_health), tag="first")
    assert first.returncode == 0, first.stderr[-1500:]
    state = _final_state(first.stdout)
    assert state["bookmarks"]["patients"]["stamp"] == {"product": "home_health", "host": "local", "source": "api"}

    foreign = run_tap_cli(tmp_path, tap_config(hospice), state, tag="foreign")
    assert foreign.returncode == 2
    [line] = [ln for ln in foreign.stderr.splitlines() if "error:" in ln]
    assert "product home_health" in line and "product hospice" in line and "accept_foreign_state" in line
    assert '"type":"RECORD"' not in foreign.stdout.replace(" ", "")
    assert "Traceback" not in foreign.stderr

    accepted = run_tap_cli(tmp_path, tap_config(hospice, accept_foreign_state=True), state, tag="accepted")
    assert accepted.returncode == 0, accepted.stderr[-1500:]
    assert "used anyway (accept_foreign_state)" in accepted.stderr

    config = write_json(tmp_path / "source.json", tap_config(hospice))
    proc = _source_read(tmp_path, config, _airbyte_state(state))
    assert proc.returncode == 1
    messages = [json.loads(line) for line in proc.stdout.splitlines()]
    assert not [m for m in messages if m["type"] == "RECORD"]
    [error] = [m["trace"]["error"] for m in messages if m["type"] == "TRACE" and m["trace"]["type"] == "ERROR"]
    assert error["failure_type"] == "config_error" and "accept_foreign_state" in error["message"]


def test_a_stream_moved_to_another_source_refuses_its_old_bookmark(sandbox, tmp_path: Path) -> None:
    first = run_tap_cli(tmp_path, tap_config(sandbox), tag="api")
    state = _final_state(first.stdout)
    moved = run_tap_cli(tmp_path, tap_config(sandbox, stream_sources={"patients": "fhir"}), state, tag="moved")
    assert moved.returncode == 2
    assert "source api" in moved.stderr and "source fhir" in moved.stderr


def test_the_singer_state_resumes_the_airbyte_face(sandbox, tmp_path: Path) -> None:
    """A pipeline may switch faces without a full resync: the state is the same dict."""
    first = run_tap_cli(tmp_path, tap_config(sandbox), tag="first")
    state = _final_state(first.stdout)
    config = write_json(tmp_path / "source.json", tap_config(sandbox))
    proc = _source_read(tmp_path, config, state)
    assert proc.returncode == 0, proc.stdout[-1500:]
    records = [m for m in map(json.loads, proc.stdout.splitlines()) if m["type"] == "RECORD"]
    mark = state["bookmarks"]["patients"]["replication_key_value"]
    assert all(r["record"]["data"]["updated_at"] >= mark.replace("+00:00", "Z")[:19] for r in records)
    assert len(records) < len(sandbox.truth("patients")) / 2
