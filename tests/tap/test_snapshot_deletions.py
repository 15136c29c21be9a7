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
from pathlib import Path
from typing import Any

import pytest
from airbyte_protocol.models import Type

from tests.airbyte.test_airbyte import final_states, of_type, run_source, write_json
from tests.airbyte.test_airbyte import records_by_stream as airbyte_records

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


def selected_catalog(tmp_path: Path, config: dict[str, Any]) -> dict[str, Any]:
    catalog = json.loads(run_tap(tmp_path, config, args=("--discover",)).stdout)
    for entry in catalog["streams"]:
        for meta in entry["metadata"]:
            if meta["breadcrumb"] == []:
                meta["metadata"]["selected"] = entry["tap_stream_id"] in STREAMS
    return catalog


def airbyte_catalog(tmp_path: Path, config_path: str) -> str:
    discovered = of_type(run_source("discover", "--config", config_path), Type.CATALOG)[0].catalog
    return write_json(tmp_path / "ab-catalog.json", {"streams": [
        {"stream": s.model_dump(mode="json", exclude_none=True), "sync_mode": "incremental",
         "destination_sync_mode": "append_dedup", "cursor_field": ["updated_at"], "primary_key": [["id"]]}
        for s in discovered.streams if s.name in STREAMS
    ]})


def tombstones(got: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every deletion emitted, as ``stream/id`` (repeats kept: each must come exactly once)."""
    return sorted(f"{s}/{r['id']}" for s in STREAMS for r in got.get(s, []) if r.get("_sdc_deleted_at"))


def truth_keys(tenant: Any) -> set[str]:
    return {f"{s}/{r['id']}" for s in STREAMS for r in tenant.truth(s)}


def deleted_by(result: dict[str, Any]) -> list[str]:
    return sorted(k for k in result["deleted"] if k.split("/", 1)[0] in STREAMS)


def test_a_full_export_reports_every_deletion_once_on_both_faces(tenant, tmp_path):
    config = export_config(tenant)
    catalog = selected_catalog(tmp_path, config)
    first = run_tap(tmp_path, config, catalog=catalog)
    assert not tombstones(records_by_stream(messages(first.stdout))), "a first sync knows no deletion"
    assert re.search(r"patients: deletions: none known this run: first view", first.stderr), first.stderr[-2000:]
    singer_state = last_state(messages(first.stdout))
    config_path = write_json(tmp_path / "ab-config.json", config)
    ab_catalog = airbyte_catalog(tmp_path, config_path)
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
    catalog = selected_catalog(tmp_path, config)
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
    catalog = selected_catalog(tmp_path, config)
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
