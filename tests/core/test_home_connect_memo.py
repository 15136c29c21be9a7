"""The compact change memo (version 3) of the Home Connect incremental: what it stores comes back exactly, older
memos keep working, and a damaged one is a reconcile named in one line, never a traceback or a silent loss.

The behaviour of the incremental itself (who is re-read when, deletions, the report) is pinned down in
test_home_connect_incremental.py; here every memo goes through JSON text, as it does between two runs.
"""

from __future__ import annotations

import json
import logging
from datetime import date, timedelta
from typing import Any

import pytest

from tests.core.home_connect_fake import FakeHomeConnect
from tests.core.test_home_connect_incremental import NOW, old_hash, sync, two_clients
from wellsky_core.products.personal_care.schedule_memo import (
    MemoError,
    content_hash,
    decode_records,
    encode_records,
    records_of,
)

SHIFT = "500@2026-08-10T14:00:00Z"


@pytest.fixture
def fake() -> FakeHomeConnect:
    return two_clients()


def stored(memo: dict[str, Any] | None) -> dict[str, Any] | None:
    """The memo as the next run reads it: through the state's JSON text."""
    return json.loads(json.dumps(memo))


def test_records_round_trip_exactly_and_encode_the_same_whatever_the_order() -> None:
    records = {
        SHIFT: (content_hash({"id": SHIFT}), date(2026, 8, 10), "1"),
        "500@2026-08-11T14:00:00Z": (content_hash({"id": 2}), date(2026, 8, 11), "1"),
        "501@2026-02-09T23:30:00-05:00": (content_hash({"id": 3}), date(2026, 2, 10), "1"),  # key date != day
        "900": (content_hash({"id": 4}), date(2026, 8, 10), "1"),
        "x@y": (content_hash({"id": 5}), date(2025, 12, 31), "2"),
        "loc-1": (content_hash({"id": 6}), None, None),  # locations: no date, no person
        "legacy": (content_hash({"id": 7}), None, "3"),
        "dated-no-person": (content_hash({"id": 8}), date(2026, 1, 1), None),
    }
    text = encode_records(records)
    assert isinstance(text, str) and text.isascii()
    assert decode_records(text, len(records)) == records
    assert encode_records(dict(reversed(list(records.items())))) == text, "both faces write the same memo"


def test_a_memo_costs_a_fraction_of_the_former_encoding() -> None:
    records = {f"{700 + n % 3}@2026-{1 + n % 12:02d}-{1 + n % 28:02d}T08:00:00Z": (
        content_hash({"n": n}), date(2026, 1 + n % 12, 1 + n % 28), str(40_000 + n % 50)) for n in range(5_000)}
    former = json.dumps({k: [h.hex() + "0000", d.isoformat(), p] for k, (h, d, p) in records.items()})
    assert len(encode_records(records)) < len(former) / 3


def test_an_unchanged_schedule_emits_nothing_and_a_status_only_change_is_seen(fake: FakeHomeConnect) -> None:
    first, memo, _ = sync(fake, "appointments", None, NOW)
    assert memo is not None and memo["v"] == 3 and isinstance(memo["records"], str) and memo["count"] == 3
    assert set(records_of(stored(memo))) == {r["id"] for r in first}
    quiet, memo, _ = sync(fake, "appointments", stored(memo), NOW + timedelta(days=1))
    assert quiet == []
    fake.data["appointment"][0]["status"] = "CANCELLED"
    records, _, _ = sync(fake, "appointments", stored(memo), NOW + timedelta(days=2))
    assert [(r["id"], r["status"]) for r in records] == [(SHIFT, "cancelled")]


def test_deletions_are_still_found_through_the_stored_memo(fake: FakeHomeConnect) -> None:
    _, memo, _ = sync(fake, "appointments", None, NOW)
    del fake.data["appointment"][0]  # in the horizon: the next re-read misses it
    records, memo, _ = sync(fake, "appointments", stored(memo), NOW + timedelta(days=1))
    assert [(r["id"], r["patient_id"], r["_sdc_deleted_at"]) for r in records] == [
        (SHIFT, "1", "2026-08-16T12:00:00Z")]
    fake.data["patients"] = [p for p in fake.data["patients"] if p["id"] != 2]  # client 2 leaves with a shift
    records, memo, _ = sync(fake, "appointments", stored(memo), NOW + timedelta(days=7))  # the reconcile
    assert [(r["id"], r["patient_id"]) for r in records if r.get("_sdc_deleted_at")] == [
        ("502@2026-09-02T08:00:00Z", "2")]
    assert sorted(records_of(stored(memo))) == ["501@2026-02-09T14:00:00Z"]


def test_a_version_2_memo_upgrades_without_a_reconcile_or_a_re_emission(fake: FakeHomeConnect) -> None:
    first, memo, _ = sync(fake, "appointments", None, NOW)
    by_id = {r["id"]: r for r in first}
    v2 = {**{k: v for k, v in memo.items() if k != "count"}, "v": 2, "records": {
        key: [old_hash(by_id[key]), day.isoformat() if day else None, person]
        for key, (_, day, person) in records_of(memo).items()}}
    fake.data["appointment"][0]["status"] = "CANCELLED"
    records, upgraded, channel = sync(fake, "appointments", stored(v2), NOW + timedelta(days=1))
    assert [(r["id"], r["status"]) for r in records] == [(SHIFT, "cancelled")], "only the change is emitted"
    assert "re-read 2 known clients" in channel.reports["appointments"], "no reconcile: nothing was lost"
    assert upgraded["v"] == 3 and upgraded["reconciled_at"] == memo["reconciled_at"]
    assert records_of(upgraded)[SHIFT][0] == content_hash(records[0])


@pytest.mark.parametrize("damage", ["cut short", "not base64", "count", "not a string", "version", "people",
                                    "v2 not an object"])
def test_a_damaged_memo_is_a_reconcile_named_in_one_line(fake: FakeHomeConnect, caplog, damage: str) -> None:
    first, memo, _ = sync(fake, "appointments", None, NOW)
    memo = stored(memo)
    if damage == "cut short":
        memo["records"] = memo["records"][: len(memo["records"]) // 2]
    elif damage == "not base64":
        memo["records"] = "%%" + memo["records"][2:]
    elif damage == "count":
        memo["count"] += 1
    elif damage == "not a string":
        memo["records"] = {SHIFT: ["0" * 16, "2026-08-10", "1"]}
    elif damage == "version":
        memo["v"] = 99
    elif damage == "v2 not an object":
        memo.update(v=2, records=[[SHIFT, "0" * 20, "2026-08-10", "1"]])
    else:
        memo["people"] = "1,2"
    caplog.set_level(logging.WARNING)
    records, again, channel = sync(fake, "appointments", memo, NOW + timedelta(days=1))
    lines = [r for r in caplog.records if "change memo" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    line = lines[0].getMessage()
    assert line.startswith("appointments: the change memo in the state (content_hashes) cannot be read: ")
    assert "cannot be reported as deleted" in line and "full refresh" in line
    assert "Traceback" not in caplog.text
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in first), "every record is emitted again"
    assert "reconcile" in channel.reports["appointments"]
    assert again["v"] == 3 and again["count"] == 3, "the next memo is whole again"


@pytest.mark.parametrize("count", [None, 2, "3"])
def test_decode_refuses_a_count_that_does_not_match(count: Any) -> None:
    records = {str(n): (content_hash({"n": n}), date(2026, 1, 1), "1") for n in range(3)}
    with pytest.raises(MemoError):
        decode_records(encode_records(records), count)


def test_decode_refuses_a_stream_cut_short_or_inflating_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from wellsky_core.products.personal_care import schedule_memo

    records = {f"{n}@2026-08-{1 + n % 28:02d}T08:00:00Z": (content_hash({"n": n}), date(2026, 8, 1 + n % 28), "1")
               for n in range(200)}
    text = encode_records(records)
    cut = text[: (len(text) // 2) // 4 * 4]  # valid base64, half a zlib stream
    with pytest.raises(MemoError, match="does not decompress"):
        decode_records(cut, len(records))
    monkeypatch.setattr(schedule_memo, "MAX_PAYLOAD", 100)
    with pytest.raises(MemoError, match="decompresses to more than"):
        decode_records(text, len(records))
