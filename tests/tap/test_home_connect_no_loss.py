"""No silent loss on Home Connect, through both faces (issue 23): tap-wellsky and source-wellsky as subprocesses
against the sandbox, ``/_sandbox/truth`` as the oracle.

After ``/_sandbox/advance`` (new clients with history, late visits, cancellations and reschedules in any month,
addenda, care logs deleted) an incremental whose reconcile is due emits every changed shift and care log and a
deletion for every deleted care log; one whose reconcile is not due misses only records dated before the date
its run-end report names. The Airbyte face re-sends no more than the Singer face.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.airbyte.test_airbyte import final_states, run_source, write_json
from tests.airbyte.test_airbyte import records_by_stream as airbyte_records

from .catalogs import airbyte_catalog, selected_catalog
from .helpers import last_state, messages, records_by_stream, run_tap
from .test_home_connect_sync import hc_config

STREAMS = ("appointments", "encounters")


def shift_view(rec: dict[str, Any]) -> tuple:
    """What Home Connect shows of a shift (its occurrence key is built from the start)."""
    return (rec["patient_id"], rec["start"], rec["end"], rec.get("practitioner_id"), rec["status"])


def care_log_view(rec: dict[str, Any]) -> tuple:
    """What Home Connect shows of a care log; an addendum (note) shows as one more shift note on it."""
    return (rec["id"], rec["patient_id"], rec.get("practitioner_id"), rec["start"], rec.get("end"), rec["status"],
            rec.get("note_summary"))


def truth_views(tenant: Any) -> tuple[set[tuple], dict[str, tuple]]:
    return ({shift_view(a) for a in tenant.truth("appointments")},
            {e["id"]: care_log_view(e) for e in tenant.truth("encounters")})


@pytest.fixture
def tenant(sandbox_factory):
    return sandbox_factory(product="personal_care", scale=40)


def missed(before: tuple[set[tuple], dict[str, tuple]], after: tuple[set[tuple], dict[str, tuple]],
           got: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    """Changed or new records the incremental did not emit, and deleted care logs it did not report."""
    shifts_before, logs_before = before
    shifts_after, logs_after = after
    live = {s: [r for r in got.get(s, []) if not r.get("_sdc_deleted_at")] for s in STREAMS}
    emitted_shifts = {shift_view(r) for r in live["appointments"]}
    emitted_logs = {r["id"] for r in live["encounters"]}
    tombstones = {r["id"] for r in got.get("encounters", []) if r.get("_sdc_deleted_at")}
    return {
        "appointments": sorted(shifts_after - shifts_before - emitted_shifts),
        "encounters": sorted(i for i, v in logs_after.items() if logs_before.get(i) != v and i not in emitted_logs),
        "deleted": sorted(set(logs_before) - set(logs_after) - tombstones),
    }


def test_an_incremental_after_advance_misses_nothing_on_both_faces(tenant, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))  # the CLIs never write to the home dir
    config = hc_config(tenant)
    catalog = selected_catalog(tmp_path, config, STREAMS)
    singer_state = last_state(messages(run_tap(tmp_path, config, catalog=catalog).stdout))
    config_path = write_json(tmp_path / "ab-config.json", config)
    ab_catalog = airbyte_catalog(tmp_path, config_path, STREAMS)
    ab_state = write_json(tmp_path / "ab-state.json", final_states(run_source(
        "read", "--config", config_path, "--catalog", ab_catalog)))

    # nothing changed: nothing re-sent on either face
    quiet = run_tap(tmp_path, config, catalog=catalog, state=singer_state)
    assert not records_by_stream(messages(quiet.stdout))
    assert not airbyte_records(run_source("read", "--config", config_path, "--catalog", ab_catalog, "--state",
                                          ab_state))

    clients_before = {p["id"] for p in tenant.truth("patients")}
    before = truth_views(tenant)
    result = tenant.advance(fraction=0.15, seed=5)
    after = truth_views(tenant)
    assert result["by_kind"].get("created") and result["by_kind"].get("late_entry"), result["by_kind"]
    assert result["deleted"], "the change model deletes care logs too"

    # reconcile not due (default 7 days): what is missed is only what the run-end report says may be unseen
    run = run_tap(tmp_path, config, catalog=catalog, state=singer_state)
    got = records_by_stream(messages(run.stdout))
    found = re.search(r"appointments: .*changes to records dated before (\d{4}-\d{2}-\d{2}) may be unseen", run.stderr)
    assert found, run.stderr[-3000:]
    unseen_before = found.group(1)
    assert re.search(r"encounters: .*\d+ requests", run.stderr)
    lost = missed(before, after, got)
    assert all(view[1][:10] < unseen_before for view in lost["appointments"]), lost["appointments"]
    assert all(after[1][i][3][:10] < unseen_before for i in lost["encounters"]), lost["encounters"]
    new_clients = {p["id"] for p in tenant.truth("patients")} - clients_before
    assert not [v for v in lost["appointments"] if v[0] in new_clients], "a new client's schedule is read in full"
    assert not [i for i in lost["encounters"] if after[1][i][1] in new_clients]
    history = [r for r in got["appointments"] if r["patient_id"] in new_clients and r["start"][:10] < unseen_before]
    assert history, "new clients come with history older than the re-read horizon"
    ab_got = airbyte_records(run_source("read", "--config", config_path, "--catalog", ab_catalog, "--state",
                                        ab_state))
    assert missed(before, after, ab_got) == lost, "the Airbyte face sees exactly what the Singer face sees"
    for stream in STREAMS:
        assert len(ab_got.get(stream, [])) <= len(got.get(stream, [])), f"{stream}: Airbyte re-sends more"

    # reconcile due: 0 missed, deletions reported, on both faces
    due = {**config, "home_connect_reconcile_days": 0}
    singer = records_by_stream(messages(run_tap(tmp_path, due, catalog=catalog, state=singer_state).stdout))
    assert missed(before, after, singer) == {"appointments": [], "encounters": [], "deleted": []}
    due_path = write_json(tmp_path / "ab-due.json", due)
    airbyte = airbyte_records(run_source("read", "--config", due_path, "--catalog", ab_catalog, "--state", ab_state))
    assert missed(before, after, airbyte) == {"appointments": [], "encounters": [], "deleted": []}
    for stream in STREAMS:
        assert len(airbyte.get(stream, [])) <= len(singer.get(stream, [])), f"{stream}: Airbyte re-sends more"
    deletions = [r for r in singer["encounters"] if r.get("_sdc_deleted_at")]
    assert sorted(r["id"] for r in deletions) == sorted(i.split("/", 1)[1] for i in result["deleted"])
