"""The orjson RECORD fast path must be indistinguishable from the SDK's writer, and step aside when it isn't."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from singer_sdk.singerlib.encoding import SimpleSingerWriter
from singer_sdk.singerlib.messages import RecordMessage

from tap_wellsky.fastio import FastRecordWriter

from .helpers import messages, records_by_stream, run_tap


def _config(sandbox, **extra):
    return {
        "base_url": sandbox.base_url,
        "username": sandbox.username,
        "password": sandbox.password,
        "page_size": 100,
        "max_requests_per_second": 0,
        **extra,
    }


def test_fast_line_equals_the_sdk_line_except_the_extraction_time(capsysbinary):
    record = {"id": "HH-P000001", "mrn": None, "coverage": [{"payer_id": "MCR", "rank": 1}], "score": 1.5, "ok": True}
    for version in (None, 1733000000):
        assert FastRecordWriter("patients", version).write(record)
        fast = json.loads(capsysbinary.readouterr().out)
        sdk = json.loads(
            SimpleSingerWriter().format_message(
                RecordMessage(stream="patients", record=record, version=version, time_extracted=datetime.now(UTC))
            )
        )
        assert datetime.fromisoformat(fast.pop("time_extracted")).tzinfo is not None
        sdk.pop("time_extracted")
        assert fast == sdk


def test_unencodable_values_fall_back_to_the_sdk(capsysbinary):
    class Odd:
        pass

    assert FastRecordWriter("patients", None).write({"id": "x", "odd": Odd()}) is False
    assert capsysbinary.readouterr().out == b""


def test_records_and_states_interleave_in_order(sandbox, tmp_path):
    """Every STATE comes after the records it covers: its bookmark never exceeds what was already sent."""
    msgs = messages(run_tap(tmp_path, _config(sandbox)).stdout)
    sent: dict[str, str] = {}
    states = 0
    for m in msgs:
        if m["type"] == "RECORD":
            sent[m["stream"]] = max(sent.get(m["stream"], ""), m["record"]["updated_at"])
        elif m["type"] == "STATE":
            states += 1
            for stream, mark in m["value"].get("bookmarks", {}).items():
                if mark.get("replication_key_value"):
                    assert mark["replication_key_value"] <= sent[stream]
    assert states > 8  # page_size 100: several STATEs per stream, so interleaving was really exercised
    assert sum(len(r) for r in records_by_stream(msgs).values()) == sum(sandbox.tenant.counts.values())


def test_deselected_property_and_stream_maps_still_apply(sandbox, tmp_path):
    """The fast path steps aside for catalog pruning and stream maps, so the SDK semantics hold."""
    catalog = json.loads(run_tap(tmp_path, _config(sandbox), args=("--discover",)).stdout)
    for entry in catalog["streams"]:
        selected = entry["tap_stream_id"] in ("patients", "practitioners")
        for md in entry["metadata"]:
            if md["breadcrumb"] == []:
                md["metadata"]["selected"] = selected
            elif entry["tap_stream_id"] == "patients" and md["breadcrumb"] == ["properties", "phone"]:
                md["metadata"]["selected"] = False
    config = _config(sandbox, stream_maps={"practitioners": {"npi": "__NULL__"}})
    out = records_by_stream(messages(run_tap(tmp_path, config, catalog=catalog).stdout))
    assert set(out) == {"patients", "practitioners"}
    assert out["patients"] and all("phone" not in r for r in out["patients"])
    assert out["practitioners"] and all("npi" not in r for r in out["practitioners"])
