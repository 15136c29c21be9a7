"""The Home Connect channel's own machinery, in-process (seconds): search Bundles of every shape, paging stops,
request counts per stream, the fan-out's bounded map, the change memo and its limit, the fan-out lists and the
request bodies. Written after ``scripts/mutate home_connect`` showed these survive ``test_home_connect.py``."""

from __future__ import annotations

import hashlib
import threading
from datetime import date
from typing import Any

import httpx
import orjson
import pytest

from tests.core.home_connect_fake import (
    FakeHomeConnect,
    care_log,
    channel_for,
    config,
    patient,
    practitioner,
    shift,
)
from wellsky_core.channels import open_channel
from wellsky_core.errors import RemoteError
from wellsky_core.http.client import WellSkyClient
from wellsky_core.products.personal_care.channel import (
    HomeConnectChannel,
    _entries,
    _total,
    bounded_map,
)
from wellsky_core.products.personal_care.schedule_memo import content_hash


def scripted(*bundles: Any, **extra: Any) -> tuple[HomeConnectChannel, list[httpx.Request]]:
    """A channel whose searches are answered by ``bundles`` in turn (tokens are answered too)."""
    queue = list(bundles)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/accesstoken"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        seen.append(request)
        return httpx.Response(200, content=orjson.dumps(queue.pop(0)))

    cfg = config(**extra)
    client = WellSkyClient(cfg, transport=httpx.MockTransport(handler), sleep=lambda s: None)
    channel = open_channel("api", cfg, client, "personal_care")
    assert isinstance(channel, HomeConnectChannel)
    return channel, seen


def bundle(*ids: Any, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "entry": [{"resource": {"id": i}} for i in ids], **extra}


# -- Bundles ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "did not answer a search Bundle"),
        ({"resourceType": "Patient"}, "did not answer a search Bundle"),
        ({"resourceType": "Bundle", "entry": {"resource": {}}}, "answered a Bundle whose entry is not a list"),
    ],
)
def test_a_body_that_is_not_a_search_bundle_is_a_clear_remote_error(body: Any, says: str) -> None:
    with pytest.raises(RemoteError) as err:
        _entries(body, "/v1/patients/_search/")
    assert (err.value.status, err.value.code) == (200, "unexpected_shape")
    assert f"/v1/patients/_search/ {says}" in str(err.value) and "/v1/patients/_search/" in str(err.value.url)


def test_entries_are_unwrapped_only_when_they_hold_a_resource_object() -> None:
    raw = {"resourceType": "Bundle", "entry": [{"resource": {"id": 1}}, {"id": 2}, {"resource": "x"}, 7]}
    assert _entries(raw, "/p") == [{"id": 1}, {"id": 2}, {"resource": "x"}, 7]
    assert (
        _entries({"resourceType": "Bundle"}, "/p") == []
        and _entries({"resourceType": "Bundle", "entry": None}, "/p") == []
    )


@pytest.mark.parametrize(
    ("body", "total"),
    [
        ({"totalRecords": 5}, 5),
        ({"total": 7}, 7),
        ({"total": "12"}, 12),
        ({"totalRecords": "x", "total": 3}, 3),
        ({"totalRecords": True}, None),
        ({"total": "-1"}, None),
        ({"total": 2.5}, None),
        ({}, None),
    ],
)
def test_total_reads_totalrecords_then_total_as_int_or_digits(body: dict[str, Any], total: int | None) -> None:
    assert _total(body) == total


# -- searching ----------------------------------------------------------------------------------------------
def test_requests_are_counted_per_stream_or_resource_and_paging_stops_on_the_total() -> None:
    channel, seen = scripted(bundle(*range(2), totalRecords=3), bundle(2, totalRecords=3), page_size=2)
    assert [r["id"] for r in channel.search("patients", {}, stream="fan_out_list")] == [0, 1, 2]
    assert channel.requests_by_stream == {"fan_out_list": 2}
    channel2, _ = scripted(bundle(1, 2, total="2"), page_size=2)
    assert len(list(channel2.search("locations", {}))) == 2
    assert channel2.requests_by_stream == {"locations": 1}, "the total counts from the first record on"
    assert [str(r.url.path) for r in seen] == ["/v1/patients/_search/", "/v1/patients/_search/"]


def test_a_full_page_without_a_total_asks_for_the_next_and_stops_on_an_empty_one() -> None:
    channel, seen = scripted(bundle(1, 2), bundle(3, 4), bundle(), page_size=2)
    assert [r["id"] for r in channel.search("patients", {})] == [1, 2, 3, 4]
    assert [r.url.params["_page"] for r in seen] == ["0", "1", "2"]


def test_a_repeated_page_is_a_page_loop_error() -> None:
    channel, _ = scripted(bundle(1, 2), bundle(1, 2), page_size=2)
    with pytest.raises(RemoteError) as err:
        list(channel.search("patients", {}))
    assert (err.value.status, err.value.code) == (200, "page_loop")
    assert "returned the same page of records twice" in str(err.value)
    raw, _ = scripted({"resourceType": "Bundle", "entry": [5]}, page_size=2)
    assert list(raw.search("patients", {})) == [5], "a non-object entry is handed on (the normalizer refuses it)"


def test_locations_slash_setting_is_followed() -> None:
    channel, seen = scripted(bundle(), home_connect_locations_trailing_slash=True)
    list(channel.search("locations", {}))
    assert seen[0].url.path == "/v1/locations/_search/"


# -- the fan-out map ----------------------------------------------------------------------------------------
def test_bounded_map_keeps_input_order_on_named_threads_with_at_most_two_per_worker_in_flight() -> None:
    lock = threading.Lock()
    started: list[int] = []
    names: set[str] = set()

    def work(i: int) -> int:
        with lock:
            started.append(i)
            names.add(threading.current_thread().name.rsplit("_", 1)[0])
        return i * 10

    results = bounded_map(work, range(20), 3)
    assert next(results) == 0
    assert max(started) <= 5, f"at most 2 x 3 submitted before the first result is taken: {started}"
    assert [0, *results] == [i * 10 for i in range(20)]
    assert names == {"wsk-fanout"}
    one: list[str] = []
    list(bounded_map(lambda i: one.append(threading.current_thread().name), range(5), 1))
    assert len(set(one)) == 1, "one worker: one thread"


# -- the change memo ----------------------------------------------------------------------------------------
def test_content_hash_is_pinned_and_ignores_only_updated_at() -> None:
    record = {"id": "1", "b": 2, "a": [1], "updated_at": "x"}
    expected = hashlib.sha256(orjson.dumps({"a": [1], "b": 2, "id": "1"})).digest()[:8]
    assert content_hash(record) == expected == content_hash({"a": [1], "id": "1", "b": 2})
    older = hashlib.sha256(orjson.dumps({"a": [1], "b": 2, "id": "1"})).hexdigest()[:20]
    assert older.startswith(expected.hex()), "a version 2 memo's hash carries this one: an upgrade re-emits nothing"
    assert content_hash({**record, "UPDATED_AT": 1}) != expected


def test_an_unknown_stream_is_refused_with_the_reason() -> None:
    channel, _ = scripted()
    with pytest.raises(ValueError, match="Home Connect has no coverage: Home Connect exposes no insurance coverage"):
        list(channel.iter_records("coverage", None))
    with pytest.raises(ValueError, match="Home Connect has no nonsense: unknown stream"):
        list(channel.iter_records("nonsense", None))


# -- fan-out lists, bodies and counts, against the fact-sheet fake ---------------------------------------------
def test_fan_out_lists_skip_prospects_and_applicants_and_are_read_once() -> None:
    fake = FakeHomeConnect()
    fake.data["patients"] = [patient(1), patient(2, is_client=False), {**patient(3), "id": None}]
    fake.data["practitioners"] = [practitioner(10), practitioner(11, hired=False)]
    channel = channel_for(fake, home_connect_fanout_prospects=False)
    assert channel.client_ids() == ["1"] and channel.caregiver_ids() == ["10"]
    assert channel.client_ids() == ["1"] and channel.caregiver_ids() == ["10"]
    assert channel.requests_by_stream == {"fan_out_list": 2}
    untagged = {k: v for k, v in patient(4).items() if k != "tag"}
    fake.data["patients"] = [untagged]
    assert channel_for(fake, home_connect_fanout_prospects=False).client_ids() == ["4"], "no tag: a client"
    fake.data["patients"] = [patient(1), patient(2, is_client=False)]
    assert channel_for(fake).client_ids() == ["1", "2"], "prospects are read by default"


def test_shift_and_care_log_reads_count_their_requests_and_keep_the_client(monkeypatch) -> None:
    fake = FakeHomeConnect()
    fake.data["patients"] = [patient(1)]
    fake.data["practitioners"] = [practitioner(10)]
    fake.data["appointment"] = [
        shift(100, 1, 10, "2026-08-01T09:00:00", "2026-08-01T10:00:00"),
        shift(101, 1, 10, "2026-09-30T09:00:00", "2026-09-30T10:00:00"),
    ]
    fake.data["encounter"] = [care_log(200, 1, 10, 100, "2026-08-01T09:00:00", "2026-08-01T10:00:00")]
    channel = channel_for(
        fake, home_connect_future_months=1, home_connect_trailing_months=0, home_connect_history_months=0
    )
    shifts = list(channel.iter_records("appointments", None))
    read = channel._plans["appointments"]  # a first read: the client in full, history to published future
    assert (read.floor, read.last) == (date(2026, 8, 1), date(2026, 9, 30))
    assert sorted(s["id"] for s in shifts) != [] and all(s["patient_id"] == "1" for s in shifts)
    assert any(s["start"][:10] == "2026-09-30" for s in shifts), "a shift on the window's last day is kept"
    logs = list(channel.iter_records("encounters", None))
    assert [e["patient_id"] for e in logs] == ["1"]
    assert channel.requests_by_stream["encounters"] == 2  # one search, one task-log read
    assert channel.requests_by_stream["appointments"] == 2  # one search per month


def test_an_unreadable_resource_is_dead_lettered_and_the_search_goes_on(tmp_path) -> None:
    import json

    dead = tmp_path / "dead.jsonl"
    channel, _ = scripted(
        {
            "resourceType": "Bundle",
            "entry": [{"resource": {"name": []}}, {"resource": {"id": 2}}, {"resource": {"id": 3}}],
        },
        page_size=5,
        dead_letter_path=str(dead),
    )
    ids = [r["id"] for r in channel.iter_records("patients", None)]
    assert ids == ["2", "3"], "the sync goes on after the refused one"
    (line,) = [json.loads(x) for x in dead.read_text().splitlines()]
    assert line["stream"] == "patients" and line["payload"] == {"name": []} and "id" in line["reason"]
    # both records lack every expected field: each flag counted once per record
    assert channel.quality["patients"]["first_name"] == 2 and channel.quality["patients"]["birth_date"] == 2
