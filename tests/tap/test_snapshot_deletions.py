"""Deletions from complete views (issue 23 item 2, docs/deletions.md), through both faces' CLIs against the sandbox.

The export channel's periodic full export file is a complete view: after ``/_sandbox/advance`` deletes visits,
voids authorizations and merges duplicate patients away, the next sync that reads a new full file emits every
deleted record once with ``_sdc_deleted_at`` (``/_sandbox/truth`` is the oracle), on tap-wellsky and on
source-wellsky alike. A first sync, a sync with no new full file, and a state whose private key store is on
another machine emit none and say why.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from airbyte_protocol.models import Type

from tests.airbyte.test_airbyte import final_states, of_type, run_source, write_json
from tests.airbyte.test_airbyte import records_by_stream as airbyte_records

from .catalogs import airbyte_catalog, selected_catalog
from .helpers import last_state, messages, records_by_stream, run_tap

STREAMS = ("patients", "appointments", "authorizations")


@pytest.fixture
def tenant(sandbox_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))  # the CLIs' private key store lives here
    server = sandbox_factory(product="home_health", scale=40)
    server.control("POST", "/_sandbox/exports", json={"full_every": 1})  # every night's export is also full
    return server


def export_config(tenant: Any) -> dict[str, Any]:
    creds = tenant.credentials()
    return {"base_url": creds["base_url"], "username": creds["username"], "password": creds["password"],
            "product": "home_health", "source": "export"}


def tombstones(got: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every deletion emitted, as ``stream/id`` (repeats kept: each must come exactly once)."""
    return sorted(f"{s}/{r['id']}" for s in STREAMS for r in got.get(s, []) if r.get("_sdc_deleted_at"))


def truth_keys(tenant: Any) -> set[str]:
    return {f"{s}/{r['id']}" for s in STREAMS for r in tenant.truth(s)}


def deleted_by(result: dict[str, Any]) -> list[str]:
    return sorted(k for k in result["deleted"] if k.split("/", 1)[0] in STREAMS)


def test_a_full_export_reports_every_deletion_once_on_both_faces(tenant, tmp_path):
    config = export_config(tenant)
    catalog = selected_catalog(tmp_path, config, STREAMS)
    first = run_tap(tmp_path, config, catalog=catalog)
    assert not tombstones(records_by_stream(messages(first.stdout))), "a first sync knows no deletion"
    assert re.search(r"patients: deletions: none known this run: first view", first.stderr), first.stderr[-2000:]
    singer_state = last_state(messages(first.stdout))
    config_path = write_json(tmp_path / "ab-config.json", config)
    ab_catalog = airbyte_catalog(tmp_path, config_path, STREAMS)
    ab_first = run_source("read", "--config", config_path, "--catalog", ab_catalog)
    assert not tombstones(airbyte_records(ab_first))
    ab_state = write_json(tmp_path / "ab-state.json", final_states(ab_first))
    assert {s["stream"]["stream_descriptor"]["name"]: s["stream"]["stream_state"]["snapshot_keys"]
            for s in final_states(ab_first)} == {s: singer_state["bookmarks"][s]["snapshot_keys"] for s in STREAMS}

    before = truth_keys(tenant)
    result = tenant.advance(fraction=0.3, seed=4)
    kinds = result["by_kind"]
    assert kinds.get("visit_deleted") and kinds.get("authorization_voided") and kinds.get("patient_merged"), kinds
    gone = deleted_by(result)
    assert sorted(before - truth_keys(tenant)) == gone

    run = run_tap(tmp_path, config, catalog=catalog, state=singer_state)
    singer = records_by_stream(messages(run.stdout))
    assert tombstones(singer) == gone, "every deleted record exactly once, nothing else"
    for stream in STREAMS:
        assert re.search(rf"{stream}: deletions: {sum(k.startswith(stream + '/') for k in gone)} emitted",
                         run.stderr), run.stderr[-3000:]
    merged = next(r for r in singer["appointments"] + singer["authorizations"] if r.get("_sdc_deleted_at"))
    assert merged["patient_id"] and set(merged) == {"id", "patient_id", "data_quality", "updated_at",
                                                    "_sdc_deleted_at"}
    airbyte = airbyte_records(run_source("read", "--config", config_path, "--catalog", ab_catalog,
                                         "--state", ab_state))
    assert tombstones(airbyte) == gone, "the Airbyte face reports the same deletions"

    # the same full view again (nothing changed): no deletion repeated
    again = run_tap(tmp_path, config, catalog=catalog, state=last_state(messages(run.stdout)))
    assert not tombstones(records_by_stream(messages(again.stdout)))


def test_no_deletion_without_a_new_full_view_and_none_lost_after(tenant, tmp_path):
    config = export_config(tenant)
    catalog = selected_catalog(tmp_path, config, STREAMS)
    state = last_state(messages(run_tap(tmp_path, config, catalog=catalog).stdout))

    tenant.control("POST", "/_sandbox/exports", json={"full_every": 0})  # nights hold changes only
    first = deleted_by(tenant.advance(fraction=0.3, seed=4))
    assert first
    partial = run_tap(tmp_path, config, catalog=catalog, state=state)
    assert not tombstones(records_by_stream(messages(partial.stdout))), "a changes-only night shows no deletion"
    # the last full file (stamped with the bookmark's second) is read again: it is not a new view
    assert re.search(r"appointments: deletions: none known this run: (no full export file since the last sync|no "
                     r"complete view newer than the last sync's)", partial.stderr), partial.stderr[-3000:]
    state = last_state(messages(partial.stdout))

    tenant.control("POST", "/_sandbox/exports", json={"full_every": 1})
    second = deleted_by(tenant.advance(fraction=0.3, seed=5))
    full = run_tap(tmp_path, config, catalog=catalog, state=state)
    assert tombstones(records_by_stream(messages(full.stdout))) == sorted(first + second), \
        "the deletions a partial run could not know come with the next full view"


def test_a_state_without_its_key_store_knows_no_deletion(sandbox_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    tenant = sandbox_factory(product="home_health", scale=260)  # over 1,000 visits: their keys go to the store
    tenant.control("POST", "/_sandbox/exports", json={"full_every": 1})
    config = export_config(tenant)
    catalog = selected_catalog(tmp_path, config, STREAMS)
    state = last_state(messages(run_tap(tmp_path, config, catalog=catalog).stdout))
    stored = [s for s in STREAMS if "store" in state["bookmarks"][s]["snapshot_keys"]]
    assert stored, "at least one stream's keys are too many for the state and live in the private store"
    assert all("keys" not in state["bookmarks"][s]["snapshot_keys"] for s in stored)
    gone = deleted_by(tenant.advance(fraction=0.3, seed=4))
    assert [k for k in gone if k.split("/", 1)[0] in stored], "deletions the store would have known"

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "another-machine"))
    moved = run_tap(tmp_path, config, catalog=catalog, state=state)
    got = tombstones(records_by_stream(messages(moved.stdout)))
    assert not [k for k in got if k.split("/", 1)[0] in stored], "no deletion without the previous keys"
    for stream in stored:
        assert f"{stream}: deletions: none known this run: cannot know this run" in moved.stderr


def aged(states: Any) -> Any:
    """The same state a week later: every stream's last complete view taken long ago (a full export is due)."""
    text = json.dumps(states)
    for stamp in set(re.findall(r'"view_at": "([^"]+)"', text)):
        text = text.replace(f'"view_at": "{stamp}"', '"view_at": "2026-01-01T00:00:00Z"')
    return json.loads(text)


def test_a_due_full_bulk_export_reports_deletions_on_both_faces(tenant, tmp_path):
    config = {**export_config(tenant), "source": "fhir_bulk", "fhir_bulk_job_dir": str(tmp_path / "jobs"),
              "max_requests_per_second": 0}
    catalog = selected_catalog(tmp_path, config, STREAMS)
    first = run_tap(tmp_path, config, catalog=catalog)
    assert not tombstones(records_by_stream(messages(first.stdout)))
    singer_state = last_state(messages(first.stdout))
    config_path = write_json(tmp_path / "ab-config.json", config)
    ab_catalog = airbyte_catalog(tmp_path, config_path, STREAMS)
    ab_state = final_states(run_source("read", "--config", config_path, "--catalog", ab_catalog))
    gone = deleted_by(tenant.advance(fraction=0.3, seed=4))
    assert gone

    since = run_tap(tmp_path, config, catalog=catalog, state=singer_state)
    assert not tombstones(records_by_stream(messages(since.stdout))), "a _since export knows no deletion"
    assert "patients: deletions: none known this run: a _since export holds only what changed; the next complete " \
        "view is due at the first sync after" in since.stderr, "the default (7 days) says when deletions are known"

    due = {**config, "fhir_bulk_full_export_days": 7}
    full = run_tap(tmp_path, due, catalog=catalog, state=aged(last_state(messages(since.stdout))))
    assert "a complete view is due (every 7 days)" in full.stderr, full.stderr[-3000:]
    assert tombstones(records_by_stream(messages(full.stdout))) == gone
    not_due = run_tap(tmp_path, due, catalog=catalog, state=last_state(messages(full.stdout)))
    assert "a complete view is due" not in not_due.stderr
    assert not tombstones(records_by_stream(messages(not_due.stdout)))

    due_path = write_json(tmp_path / "ab-due.json", due)
    ab_aged = write_json(tmp_path / "ab-aged.json", aged(ab_state))
    airbyte = airbyte_records(run_source("read", "--config", due_path, "--catalog", ab_catalog, "--state", ab_aged))
    assert tombstones(airbyte) == gone, "the Airbyte face reports the same deletions"


@pytest.mark.browser
@pytest.mark.timeout(900)
def test_a_finished_portal_walk_reports_a_deleted_visit_on_both_faces(sandbox_factory, tmp_path, monkeypatch):
    """Kinnser portal (real Chromium, one small tenant): every office walked is a complete view."""
    import shutil

    if shutil.which("/usr/bin/chromium") is None:
        pytest.skip("needs Debian's chromium")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    tenant = sandbox_factory(product="home_health", scale=10, sftp_port=None)
    base = {**export_config(tenant), "source": "portal", "chromium_path": "/usr/bin/chromium",
            "agency_timezone": "America/Chicago", "portal_wait_seconds": 20}
    singer_config = {**base, "portal_state_path": str(tmp_path / "singer-portal.json")}
    catalog = selected_catalog(tmp_path, singer_config, STREAMS)
    for entry in catalog["streams"]:  # the portal's clinical walk: patients and their schedules
        for meta in entry["metadata"]:
            if meta["breadcrumb"] == []:
                meta["metadata"]["selected"] = entry["tap_stream_id"] in ("patients", "appointments")
    first = run_tap(tmp_path, singer_config, catalog=catalog)
    assert not tombstones(records_by_stream(messages(first.stdout)))
    monkeypatch.setenv("WELLSKY_CHROMIUM_PATH", "/usr/bin/chromium")  # the Airbyte face takes no command path
    ab_settings = {k: v for k, v in base.items() if k != "chromium_path"}
    ab_config = write_json(tmp_path / "ab-portal.json", {**ab_settings, "portal_state_path": str(tmp_path / "ab.json")})
    discovered = of_type(run_source("discover", "--config", ab_config), Type.CATALOG)[0].catalog
    ab_catalog = write_json(tmp_path / "ab-catalog.json", {"streams": [
        {"stream": s.model_dump(mode="json", exclude_none=True), "sync_mode": "incremental",
         "destination_sync_mode": "append_dedup", "cursor_field": ["updated_at"], "primary_key": [["id"]]}
        for s in discovered.streams if s.name in ("patients", "appointments")]})
    ab_state = write_json(tmp_path / "ab-state.json", final_states(run_source(
        "read", "--config", ab_config, "--catalog", ab_catalog)))

    gone = deleted_by(tenant.advance(fraction=0.3, seed=15))
    gone = [k for k in gone if not k.startswith("authorizations/")]
    assert gone, "the change model deleted a visit"
    run = run_tap(tmp_path, singer_config, catalog=catalog, state=last_state(messages(first.stdout)))
    assert tombstones(records_by_stream(messages(run.stdout))) == gone
    assert re.search(r"appointments: deletions: \d+ emitted \(compared with the portal walk started", run.stderr)
    airbyte = airbyte_records(run_source("read", "--config", ab_config, "--catalog", ab_catalog, "--state", ab_state))
    assert tombstones(airbyte) == gone


def test_a_closed_home_connect_office_is_deleted_once_on_both_faces(sandbox_factory, tmp_path, monkeypatch):
    """Home Connect's location list is read whole every sync: an office the agency closed is a deletion."""
    from .test_home_connect_sync import hc_config

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    tenant = sandbox_factory(product="personal_care", scale=10)
    config = hc_config(tenant)
    catalog = json.loads(run_tap(tmp_path, config, args=("--discover",)).stdout)
    for entry in catalog["streams"]:
        for meta in entry["metadata"]:
            if meta["breadcrumb"] == []:
                meta["metadata"]["selected"] = entry["tap_stream_id"] == "locations"
    first = run_tap(tmp_path, config, catalog=catalog)
    assert len(records_by_stream(messages(first.stdout))["locations"]) == 3
    assert "locations: deletions: none known this run: first view" in first.stderr
    config_path = write_json(tmp_path / "ab-config.json", config)
    discovered = of_type(run_source("discover", "--config", config_path), Type.CATALOG)[0].catalog
    ab_catalog = write_json(tmp_path / "ab-catalog.json", {"streams": [
        {"stream": s.model_dump(mode="json", exclude_none=True), "sync_mode": "incremental",
         "destination_sync_mode": "append_dedup", "cursor_field": ["updated_at"], "primary_key": [["id"]]}
        for s in discovered.streams if s.name == "locations"]})
    ab_state = write_json(tmp_path / "ab-state.json", final_states(run_source(
        "read", "--config", config_path, "--catalog", ab_catalog)))

    offices = tenant.control("GET", "/_sandbox/homeconnect/locations")
    days = 0
    while not offices["closed"] and days < 12:
        tenant.advance(count=2, seed=days + 1)
        days += 1
        offices = tenant.control("GET", "/_sandbox/homeconnect/locations")
    assert offices["closed"], "the change model closes an office now and then"
    singer_run = run_tap(tmp_path, config, catalog=catalog, state=last_state(messages(first.stdout)))
    singer = records_by_stream(messages(singer_run.stdout))
    assert [(r["id"], bool(r.get("_sdc_deleted_at"))) for r in singer["locations"]] == [
        (i, True) for i in offices["closed"]], singer_run.stderr[-3000:]
    assert "locations: deletions: 1 emitted (compared with the locations list read at" in singer_run.stderr
    again = run_tap(tmp_path, config, catalog=catalog, state=last_state(messages(singer_run.stdout)))
    assert not records_by_stream(messages(again.stdout)).get("locations"), "a deletion is emitted once"
    airbyte = airbyte_records(run_source("read", "--config", config_path, "--catalog", ab_catalog,
                                         "--state", ab_state))
    assert [(r["id"], bool(r.get("_sdc_deleted_at"))) for r in airbyte["locations"]] == [
        (i, True) for i in offices["closed"]]


def test_an_interrupted_read_emits_no_deletion_and_loses_none(tenant, tmp_path):
    config = export_config(tenant)
    catalog = selected_catalog(tmp_path, config, STREAMS)
    state = last_state(messages(run_tap(tmp_path, config, catalog=catalog).stdout))
    gone = deleted_by(tenant.advance(fraction=0.3, seed=4))
    assert gone

    tenant.control("POST", "/_sandbox/exports", json={"url_ttl_seconds": 0.001})  # every download URL has expired
    broken = run_tap(tmp_path, config, catalog=catalog, state=state, check=False)
    assert broken.returncode != 0, "the downloads failed"
    assert not tombstones(records_by_stream(messages(broken.stdout))), "a failed read knows no deletion"
    assert not re.search(r"deletions: \d+ emitted", broken.stderr)

    tenant.control("POST", "/_sandbox/exports", json={"url_ttl_seconds": 300})
    again = run_tap(tmp_path, config, catalog=catalog, state=state)
    assert tombstones(records_by_stream(messages(again.stdout))) == gone, "the next complete read reports them"
