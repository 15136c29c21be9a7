"""Home Connect incremental that misses nothing (issue 23 item 1): the schedule memo against the fact-sheet fake.

Shifts and care logs have no change filter; these tests pin down who is re-read over which dates, when the
reconcile runs, what it finds (deletions included), and what the run-end report says is still unseen.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.core.home_connect_fake import FakeHomeConnect, care_log, patient, shift
from wellsky_core.channels import open_channel
from wellsky_core.config import WellSkyConfig
from wellsky_core.http.client import WellSkyClient
from wellsky_core.products.personal_care.channel import HomeConnectChannel
from wellsky_core.products.personal_care.schedule_memo import content_hash, records_of

NOW = datetime(2026, 8, 15, 12, 0, tzinfo=UTC)
SETTINGS = {"home_connect_history_months": 12, "home_connect_trailing_months": 2, "home_connect_future_months": 1}


def old_hash(record: dict[str, Any]) -> str:
    """A record's hash as versions before the compact memo wrote it (20 hex digits of SHA-256)."""
    body = {k: v for k, v in record.items() if k != "updated_at"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


def channel_at(fake: FakeHomeConnect, when: datetime, **extra: Any) -> HomeConnectChannel:
    cfg = WellSkyConfig.load(
        {"product": "personal_care", "client_id": "cid-123", "client_secret": "secret-xyz",
         "max_requests_per_second": 0, **SETTINGS, **extra},
        env={},
    )
    channel = open_channel("api", cfg, WellSkyClient(cfg, transport=fake.transport(), sleep=lambda s: None),
                           "personal_care")
    assert isinstance(channel, HomeConnectChannel)
    channel._clock = lambda: when
    return channel


def sync(fake: FakeHomeConnect, entity: str, memo: dict[str, Any] | None, when: datetime, **extra: Any):
    """One complete read of ``entity`` as the read loop does it: memo in, records out, memo back."""
    channel = channel_at(fake, when, **extra)
    channel.load_memo(entity, memo)
    records = list(channel.iter_records(entity, when - timedelta(days=1) if memo else None))
    return records, channel.dump_memo(entity), channel


@pytest.fixture
def fake() -> FakeHomeConnect:
    return two_clients()


def two_clients() -> FakeHomeConnect:
    """Two clients: a shift in the horizon, an older one, one in the published future; two care logs."""
    fake = FakeHomeConnect()
    fake.data["patients"] = [patient(1), patient(2)]
    fake.data["appointment"] = [
        shift(500, 1, 77, "2026-08-10T14:00:00+00:00", "2026-08-10T18:00:00+00:00", "COMPLETED"),  # in horizon
        shift(501, 1, 77, "2026-02-09T14:00:00+00:00", "2026-02-09T18:00:00+00:00", "COMPLETED"),  # older
        shift(502, 2, 78, "2026-09-02T08:00:00+00:00", "2026-09-02T10:00:00+00:00"),  # published future
    ]
    fake.data["encounter"] = [
        care_log(900, 1, 77, 500, "2026-08-10T14:02:00+00:00", "2026-08-10T18:01:00+00:00"),
        care_log(901, 1, 77, 501, "2026-02-09T14:00:00+00:00", "2026-02-09T18:00:00+00:00"),
    ]
    return fake


def months_asked(fake: FakeHomeConnect, since: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for call in fake.log[since:]:
        if call[1] == "/v1/appointment/_search/":
            out.setdefault(call[3]["clientId"], []).append(call[3]["monthNo"])
    return {k: sorted(set(v)) for k, v in out.items()}


def test_a_new_client_is_read_in_full_known_clients_over_the_horizon(fake):
    first, memo, _ = sync(fake, "appointments", None, NOW)
    assert len(first) == 3
    assert memo["people"] == ["1", "2"] and memo["reconciled_at"]
    # a migration: a new client arrives with a year of history
    fake.data["patients"].append(patient(3))
    fake.data["appointment"].append(
        shift(600, 3, 79, "2025-09-03T09:00:00+00:00", "2025-09-03T11:00:00+00:00", "COMPLETED"))
    mark = len(fake.log)
    records, memo, channel = sync(fake, "appointments", memo, NOW + timedelta(days=1))
    assert [r["id"] for r in records] == ["600@2025-09-03T09:00:00Z"], "the new client's old shift is emitted"
    asked = months_asked(fake, mark)
    assert asked["3"][0] == "202508" and asked["3"][-1] == "202609", "history and future of the new client"
    assert asked["1"] == ["202606", "202607", "202608", "202609"], "known clients: the re-read horizon only"
    assert "3" in memo["people"]
    assert "1 new clients in full from 2025-08-01" in channel.reports["appointments"]


def test_an_older_change_waits_for_the_reconcile_which_the_report_names(fake, caplog):
    _, memo, _ = sync(fake, "appointments", None, NOW)
    fake.data["appointment"][1]["status"] = "CANCELLED"  # a back-dated cancellation, six months back
    caplog.set_level(logging.INFO)
    quiet, memo, channel = sync(fake, "appointments", memo, NOW + timedelta(days=1))
    assert quiet == []
    report = channel.reports["appointments"]
    assert "changes to records dated before 2026-06-01 may be unseen until the reconcile due 2026-08-22" in report
    assert report in caplog.text and "requests" in report
    later, memo, channel = sync(fake, "appointments", memo, NOW + timedelta(days=7))
    assert [(r["id"], r["status"]) for r in later] == [("501@2026-02-09T14:00:00Z", "cancelled")]
    assert "reconcile: re-read all 2 clients in full" in channel.reports["appointments"]
    assert memo["reconciled_at"].startswith("2026-08-22")


def test_reconcile_every_sync_when_set_to_zero(fake):
    _, memo, _ = sync(fake, "appointments", None, NOW)
    fake.data["appointment"][1]["end"] = "2026-02-09T19:00:00+00:00"
    records, _, _ = sync(fake, "appointments", memo, NOW + timedelta(minutes=5), home_connect_reconcile_days=0)
    assert [r["id"] for r in records] == ["501@2026-02-09T14:00:00Z"]


def test_a_status_only_change_of_a_shift_is_re_emitted(fake):
    _, memo, _ = sync(fake, "appointments", None, NOW)
    fake.data["appointment"][0]["status"] = "CANCELLED"
    records, _, _ = sync(fake, "appointments", memo, NOW + timedelta(days=1))
    assert [(r["id"], r["status"]) for r in records] == [("500@2026-08-10T14:00:00Z", "cancelled")]
    base = {"id": "x", "status": "scheduled", "start": "2026-08-10T14:00:00Z"}
    assert content_hash(base) != content_hash({**base, "status": "cancelled"})
    assert content_hash(base) == content_hash({**base, "updated_at": "2030-01-01T00:00:00Z"})


def test_a_rescheduled_occurrence_replaces_the_old_one_with_a_deletion(fake):
    _, memo, _ = sync(fake, "appointments", None, NOW)
    fake.data["appointment"][0].update(start="2026-08-11T14:00:00+00:00", end="2026-08-11T18:00:00+00:00")
    records, memo, channel = sync(fake, "appointments", memo, NOW + timedelta(days=1))
    by_id = {r["id"]: r for r in records}
    assert by_id["500@2026-08-11T14:00:00Z"].get("_sdc_deleted_at") is None
    gone = by_id["500@2026-08-10T14:00:00Z"]
    assert gone["_sdc_deleted_at"] == "2026-08-16T12:00:00Z" and gone["patient_id"] == "1"
    assert gone["series_id"] == "500"
    assert "500@2026-08-10T14:00:00Z" not in records_of(memo)
    assert "1 deleted" in channel.reports["appointments"]


def test_deleted_care_logs_are_confirmed_by_id_and_moved_ones_are_not_deleted(fake):
    _, memo, _ = sync(fake, "encounters", None, NOW)
    fake.data["encounter"][0]["period"]["start"] = "2026-03-01T14:02:00+00:00"  # moved out of the horizon
    mark = len(fake.log)
    records, memo, _ = sync(fake, "encounters", memo, NOW + timedelta(days=1))
    assert [(r["id"], r.get("_sdc_deleted_at"), r["start"]) for r in records] == [
        ("900", None, "2026-03-01T14:02:00Z")], "read by id: it exists, so it is a change, not a deletion"
    assert any(c[1] == "/v1/encounter/900/" for c in fake.log[mark:])
    del fake.data["encounter"][0]
    records, memo, _ = sync(fake, "encounters", memo, NOW + timedelta(days=7))  # the reconcile finds it
    assert [(r["id"], r["_sdc_deleted_at"]) for r in records] == [("900", "2026-08-22T12:00:00Z")]
    assert "900" not in records_of(memo)
    again, _, _ = sync(fake, "encounters", memo, NOW + timedelta(days=8))
    assert again == [], "a deletion is reported once"


def test_an_older_plain_hash_memo_is_read_and_upgraded(fake):
    first, _, _ = sync(fake, "appointments", None, NOW)
    legacy = {r["id"]: old_hash(r) for r in first}
    legacy["499@2026-08-01T10:00:00Z"] = "0" * 20  # a shift the old window saw that is gone since
    records, memo, channel = sync(fake, "appointments", copy.deepcopy(legacy), NOW + timedelta(days=1))
    assert [(r["id"], r["_sdc_deleted_at"]) for r in records] == [("499@2026-08-01T10:00:00Z", "2026-08-16T12:00:00Z")]
    assert memo["v"] == 3 and memo["people"] == ["1", "2"]
    assert "reconcile" in channel.reports["appointments"]


def test_a_full_refresh_gets_no_memo_and_emits_everything(fake):
    _, memo, _ = sync(fake, "appointments", None, NOW)
    again, _, _ = sync(fake, "appointments", None, NOW + timedelta(days=1))
    assert len(again) == 3 and memo


def test_a_subscription_event_re_reads_that_client_in_full_before_the_reconcile(fake, tmp_path):
    from wellsky_core.webhooks import EventStore

    path = tmp_path / "events.sqlite"
    store = EventStore(path)
    old = {"id": "e0", "type": "encounter.notified", "entity": "encounters", "record": {"id": "1", "patient_id": "2"}}
    store.add(old, json.dumps(old).encode())
    store.close()
    _, memo, _ = sync(fake, "encounters", None, NOW, webhook_events_path=str(path))
    assert memo["event_seq"] == 1, "events before the first run are not acted on"
    fake.data["encounter"][1]["period"]["end"] = "2026-02-09T19:30:00+00:00"  # a late clock-out, six months back
    quiet, _, _ = sync(fake, "encounters", memo, NOW + timedelta(days=1))
    assert quiet == [], "without the event it waits for the reconcile"
    store = EventStore(path)
    event = {"id": "e1", "type": "encounter.notified", "entity": "encounters",
             "record": {"id": "901", "patient_id": "1"}}
    store.add(event, json.dumps(event).encode())
    store.close()
    records, memo, channel = sync(fake, "encounters", memo, NOW + timedelta(days=1), webhook_events_path=str(path))
    assert [(r["id"], r["end"]) for r in records] == [("901", "2026-02-09T19:30:00Z")]
    assert memo["event_seq"] == 2
    assert "1 named by subscription events" in channel.reports["encounters"]


def test_the_reconcile_reports_the_records_of_a_client_no_longer_listed(fake):
    _, memo, _ = sync(fake, "appointments", None, NOW)
    fake.data["patients"] = [p for p in fake.data["patients"] if p["id"] != 2]
    fake.data["appointment"] = [a for a in fake.data["appointment"] if a["client"]["id"] != 2]
    quiet, _, _ = sync(fake, "appointments", memo, NOW + timedelta(days=1))
    assert quiet == [], "between reconciles a client that vanished is not read, so nothing is claimed"
    records, memo, _ = sync(fake, "appointments", memo, NOW + timedelta(days=7))
    assert [(r["id"], r["patient_id"], r["_sdc_deleted_at"]) for r in records] == [
        ("502@2026-09-02T08:00:00Z", "2", "2026-08-22T12:00:00Z")]
    assert memo["people"] == ["1"] and "502@2026-09-02T08:00:00Z" not in records_of(memo)
