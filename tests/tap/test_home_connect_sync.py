"""tap-wellsky and target-wellsky against the sandbox's Home Connect emulation (real loopback HTTP, subprocesses).

The connector's side is written from the fact sheet; here it meets an independent implementation of the same
sheet, and the sandbox's truth (its logical records) is the oracle for what Home Connect can carry.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.target.helpers import TARGET, singer_lines

from .helpers import last_state, messages, records_by_stream, run_tap

OFFERED = ("patients", "practitioners", "appointments", "encounters", "related_persons", "locations")
LACKING = ("care_plans", "authorizations", "referrals", "coverage")


def hc_config(sb: Any, **extra: Any) -> dict[str, Any]:
    return {
        "product": "personal_care",
        "base_url": sb.base_url,
        "client_id": sb.client_id,
        "client_secret": sb.client_secret,
        "max_requests_per_second": 0,
        "start_date": "2024-01-01T00:00:00Z",
        "home_connect_future_months": 14,
        **extra,
    }


def digits(phone: Any) -> str | None:
    return re.sub(r"\D", "", phone) if isinstance(phone, str) else None


@pytest.fixture
def tenant(sandbox_factory):
    return sandbox_factory(product="personal_care", scale=40)


def test_tap_emits_every_stream_the_api_offers_and_names_the_rest(tenant, tmp_path):
    proc = run_tap(tmp_path, hc_config(tenant))
    got = records_by_stream(messages(proc.stdout))
    for stream in OFFERED:
        assert got[stream], f"{stream} is empty"
    schemas = {m["stream"] for m in messages(proc.stdout) if m["type"] == "SCHEMA"}
    for stream in LACKING:  # not discovered for personal_care, so never selected, never warned about
        assert stream not in got and stream not in schemas
        assert stream not in proc.stderr
    # selected on purpose (discover_all_streams), the product's reason is told once and nothing is synced
    everything = run_tap(tmp_path, hc_config(tenant, discover_all_streams=True))
    assert "care_plans is not available for this product (personal_care)" in everything.stderr
    assert "care_plans" not in records_by_stream(messages(everything.stdout))

    truth = {p["id"]: p for p in tenant.truth("patients")}
    assert sorted(p["id"] for p in got["patients"]) == sorted(truth)
    for mine in got["patients"]:
        theirs = truth[mine["id"]]
        for field in ("first_name", "last_name", "birth_date", "gender", "status", "address"):
            assert mine[field] == theirs[field], (mine["id"], field)
        assert digits(mine["phone"]) == digits(theirs["phone"])
        assert mine["status_code"] is not None

    people = {p["id"]: p for p in tenant.truth("practitioners")}
    assert {p["id"]: (p["first_name"], p["last_name"], p["active"]) for p in got["practitioners"]} == {
        i: (p["first_name"], p["last_name"], p["active"]) for i, p in people.items()
    }

    shifts = {(a["patient_id"], a["start"], a["end"], a["practitioner_id"], a["status"]) for a in got["appointments"]}
    assert len(shifts) == len(got["appointments"]), "every occurrence once"
    assert len({a["id"] for a in got["appointments"]}) == len(got["appointments"])
    expected = {
        (a["patient_id"], a["start"], a["end"], a["practitioner_id"], a["status"])
        for a in tenant.truth("appointments")
    }
    assert shifts == expected

    care_logs = {e["id"]: e for e in got["encounters"]}
    assert set(care_logs) == {e["id"] for e in tenant.truth("encounters")}
    assert all(e["task_logs"] is not None and e["pay_rates"] for e in got["encounters"])
    patient_ids = set(truth)
    assert {r["patient_id"] for r in got["related_persons"]} <= patient_ids


def test_an_unordered_stream_writes_its_state_once_when_it_completes(tenant, tmp_path):
    """Every tap STATE carries every stream's change memo; on a stream whose bookmark moves only at its end a
    STATE after each page (5 records here) would only repeat it. One per stream, as on the Airbyte face."""
    config = hc_config(tenant, page_size=5, max_parallel_streams=1)
    out = messages(run_tap(tmp_path, config).stdout)
    kinds = [(m["type"], m.get("stream")) for m in out if m["type"] in ("RECORD", "STATE")]
    streams = [stream for kind, stream in kinds if kind == "RECORD"]
    assert streams.count("appointments") > 5, "the tenant has several pages of shifts"
    for before, (kind, _), after in zip(kinds, kinds[1:], kinds[2:], strict=False):
        assert not (kind == "STATE" and before[0] == after[0] == "RECORD" and before[1] == after[1]), (
            f"a STATE inside {before[1]}")
    assert sum(kind == "STATE" for kind, _ in kinds) <= len(set(streams)) + 1
    memo = last_state(out)["bookmarks"]["appointments"]["content_hashes"]
    assert memo["v"] == 3 and isinstance(memo["records"], str), "the compact memo"


def test_incremental_runs_read_only_what_changed(tenant, tmp_path):
    config = hc_config(tenant)
    first = messages(run_tap(tmp_path, config).stdout)
    state = last_state(first)
    assert state["bookmarks"]["appointments"].get("content_hashes"), "the change memo is kept in the state"

    quiet = records_by_stream(messages(run_tap(tmp_path, config, state=state).stdout))
    assert not quiet.get("appointments") and not quiet.get("encounters") and not quiet.get("locations"), (
        "nothing changed: the trailing window is re-read but nothing is emitted"
    )

    bookmark = state["bookmarks"]["patients"]["replication_key_value"]
    result = tenant.advance(fraction=0.1, seed=3)
    assert result
    second = records_by_stream(messages(run_tap(tmp_path, config, state=state).stdout))
    floor = (datetime.fromisoformat(bookmark.replace("Z", "+00:00")) - timedelta(minutes=5)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert sorted(p["id"] for p in second["patients"]) == sorted(
        p["id"] for p in tenant.truth("patients", updated_since=floor)
    ), "patients: exactly what the server's updated filter returns"
    before = {a["id"]: a for a in records_by_stream(first)["appointments"]}
    for record in second.get("appointments", []):
        assert before.get(record["id"]) != record, "only new or changed shifts are emitted"


def run_target(tmp_path, config: dict[str, Any], lines: list[str]) -> subprocess.CompletedProcess:
    cfg = tmp_path / "target-config.json"
    cfg.write_text(json.dumps(config))
    return subprocess.run(
        [*TARGET, "--config", str(cfg)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=240
    )


def test_round_trip_of_patients_creates_nothing_twice(tenant, tmp_path):
    config = hc_config(tenant)
    catalog_run = run_tap(tmp_path, config, args=("--discover",))
    catalog = json.loads(catalog_run.stdout)
    for entry in catalog["streams"]:
        entry["metadata"][0]["metadata"]["selected"] = entry["tap_stream_id"] == "patients"
    patients = records_by_stream(messages(run_tap(tmp_path, config, catalog=catalog).stdout))["patients"]
    count = len(tenant.truth("patients"))
    target_config = {k: v for k, v in config.items() if k not in ("start_date", "home_connect_future_months")}

    with_ids = run_target(tmp_path, target_config, singer_lines("patients", patients))
    assert with_ids.returncode == 0, with_ids.stderr[-2000:]
    assert f"unchanged {len(patients)}" in with_ids.stderr

    without_ids = [{k: v for k, v in p.items() if k != "id"} for p in patients if p["birth_date"]]
    by_key = run_target(tmp_path, target_config, singer_lines("patients", without_ids))
    assert by_key.returncode in (0, 3), by_key.stderr[-2000:]
    assert "created" not in by_key.stderr.split("summary")[-1] or "created 0" in by_key.stderr
    assert len(tenant.truth("patients")) == count, "matched on the natural key: nothing created"

    new = {**{k: v for k, v in patients[0].items() if k not in ("id", "updated_at", "status_code", "data_quality")},
           "first_name": "Wren", "last_name": "Alvarado-Quist"}
    for _ in range(2):
        run = run_target(tmp_path, target_config, singer_lines("patients", [new]))
        assert run.returncode == 0, run.stderr[-2000:]
    assert len(tenant.truth("patients")) == count + 1, "the second run found the first run's client"


def test_appointment_stream_is_refused_in_one_line(tenant, tmp_path):
    shifts = [
        {**a, "id": a["id"]} for a in records_by_stream(messages(run_tap(tmp_path, hc_config(tenant)).stdout))[
            "appointments"][:5]
    ]
    run = run_target(tmp_path, hc_config(tenant), singer_lines("appointments", shifts))
    assert run.returncode == 3
    assert run.stderr.count("appointments cannot be written to WellSky Personal Care") == 1
    assert "refused 5" in run.stderr
