"""Bookmarks and STATE, in process against a real sandbox: the inclusive bookmark pinned at a shared timestamp,
bookmarks that follow the records sent, start_date, and which sources may bookmark record by record.

In process (stdout captured) so it is fast enough to be the mutation-testing selection for bookmarks.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tap_wellsky.tap import TapWellSky
from wellsky_sandbox.testing import SandboxServer

from .helpers import bookmarks, sandbox_config


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    server = SandboxServer(scale=30, sftp_port=None, data_dir=tmp_path_factory.mktemp("tenant")).start()
    yield server
    server.cleanup()


def sync(
    config: dict[str, Any],
    state: dict[str, Any] | None = None,
    streams: tuple[str, ...] = (),
    *,
    full_table: bool = False,
    tap_out: list[TapWellSky] | None = None,
) -> list[dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        tap = TapWellSky(config=config, state=state, parse_env_config=False)
        for name, stream in tap.streams.items():
            if streams:
                stream.selected = name in streams
            if full_table:
                stream.forced_replication_method = "FULL_TABLE"
        tap.sync_all()
    if tap_out is not None:
        tap_out.append(tap)
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def _records(messages: list[dict], stream: str) -> list[dict]:
    return [m["record"] for m in messages if m["type"] == "RECORD" and m["stream"] == stream]


def test_resume_at_a_shared_timestamp_returns_the_records_not_yet_sent(sb):
    """Several records share the bookmark's timestamp and the cut fell between them: none may be lost."""
    sb.advance(count=60, seed=11)  # one advance stamps every changed record with the same updated_at
    stamps = Counter((entity, r["updated_at"]) for entity in ("appointments", "encounters") for r in sb.truth(entity))
    (stream, shared), count = stamps.most_common(1)[0]
    assert count >= 6, f"the advance should give one stream several records at one timestamp, got {count}"
    config = sandbox_config(sb, page_size=3)
    first = sync(config, streams=(stream,))
    sent: list[dict] = []
    cut_state = None
    for m in first:  # the first STATE whose bookmark is the shared timestamp while records at it are still to come
        if m["type"] == "RECORD" and m["stream"] == stream:
            sent.append(m["record"])
        elif m["type"] == "STATE" and cut_state is None:
            mark = bookmarks(m["value"]).get(stream)
            if (
                mark
                and mark.replace("+00:00", "Z") == shared
                and 0 < sum(r["updated_at"] == shared for r in sent) < count
            ):
                cut_state = m["value"]
                sent_before_cut = [r["id"] for r in sent if r["updated_at"] == shared]
    assert cut_state is not None, "no STATE fell inside the shared-timestamp block; change page_size"
    resumed = _records(sync(config, state=cut_state, streams=(stream,)), stream)
    at_shared = {r["id"] for r in sb.truth(stream) if r["updated_at"] == shared}
    unsent = at_shared - set(sent_before_cut)
    assert unsent, "the cut must leave records at the bookmark's timestamp unsent"
    resumed_ids = {r["id"] for r in resumed}
    assert unsent <= resumed_ids, f"{len(unsent - resumed_ids)} records at the bookmark's timestamp were lost"
    assert all(r["updated_at"] >= shared for r in resumed), "nothing older than the bookmark is sent again"
    newer = {r["id"] for r in sb.truth(stream) if r["updated_at"] > shared}
    assert resumed_ids == at_shared | newer


def test_final_bookmark_is_the_newest_record_sent(sb):
    messages = sync(sandbox_config(sb, page_size=50), streams=("patients", "coverage"))
    final = bookmarks([m["value"] for m in messages if m["type"] == "STATE"][-1])
    for stream in ("patients", "coverage"):
        newest = max(r["updated_at"] for r in _records(messages, stream))
        assert final[stream].replace("+00:00", "Z") == newest == max(r["updated_at"] for r in sb.truth(stream))
    again = sync(
        sandbox_config(sb),
        state={
            "bookmarks": {"patients": {"replication_key": "updated_at", "replication_key_value": final["patients"]}}
        },
        streams=("patients",),
    )
    assert {r["id"] for r in _records(again, "patients")} == {
        r["id"] for r in sb.truth("patients") if r["updated_at"] >= final["patients"].replace("+00:00", "Z")
    }


def test_start_date_limits_a_run_without_state(sb):
    stamps = sorted(r["updated_at"] for r in sb.truth("patients"))
    middle = stamps[len(stamps) // 2]
    got = _records(sync(sandbox_config(sb, start_date=middle), streams=("patients",)), "patients")
    assert {r["id"] for r in got} == {r["id"] for r in sb.truth("patients") if r["updated_at"] >= middle}


@pytest.mark.parametrize(
    ("settings", "patients_sorted", "appointments_sorted"),
    [
        ({}, True, True),
        ({"source": "api"}, True, True),
        ({"source": "hl7_sftp"}, False, False),
        ({"source": "export"}, False, False),
        ({"source": "api", "stream_sources": {"patients": "hl7_sftp"}}, False, True),
        ({"source": "hl7_sftp", "stream_sources": '{"patients": "api"}'}, True, False),
        ({"source": "hl7_sftp", "stream_sources": "  "}, False, False),
    ],
)
def test_only_ordered_sources_bookmark_record_by_record(settings, patients_sorted, appointments_sorted):
    config = {"base_url": "http://127.0.0.1:9", "username": "u", "password": "p", "sftp_host": "127.0.0.1"}
    tap = TapWellSky(config={**config, **settings}, parse_env_config=False, validate_config=False)
    assert tap.streams["patients"].is_sorted is patients_sorted
    assert tap.streams["appointments"].is_sorted is appointments_sorted


def test_state_is_emitted_every_page_of_records(sb):
    messages = sync(sandbox_config(sb, page_size=7), streams=("patients",))
    kinds = [m["type"] for m in messages if m["type"] in ("RECORD", "STATE")]
    runs, current = [], 0
    for kind in kinds:
        if kind == "RECORD":
            current += 1
        else:
            runs.append(current)
            current = 0
    assert max(runs) <= 7 and runs.count(7) >= 2, runs


def test_full_table_ignores_the_bookmark_but_honours_start_date(sb):
    stamps = sorted(r["updated_at"] for r in sb.truth("patients"))
    newest, middle = stamps[-1], stamps[len(stamps) // 2]
    state = {"bookmarks": {"patients": {"replication_key": "updated_at", "replication_key_value": newest}}}
    everything = _records(sync(sandbox_config(sb), state=state, streams=("patients",), full_table=True), "patients")
    assert len(everything) == len(stamps)
    later = sync(sandbox_config(sb, start_date=middle), state=state, streams=("patients",), full_table=True)
    assert {r["id"] for r in _records(later, "patients")} == {
        r["id"] for r in sb.truth("patients") if r["updated_at"] >= middle
    }


def test_the_run_summary_counts_what_was_sent(sb):
    taps: list[TapWellSky] = []
    messages = sync(sandbox_config(sb), streams=("patients", "coverage"), tap_out=taps)
    for name in ("patients", "coverage"):
        summary = taps[0].streams[name].summary
        assert summary["records"] == len(_records(messages, name)) > 0
        assert summary["source"] == "api" and 0 < summary["seconds"] < 60
    assert taps[0].streams["encounters"].summary == {"records": 0, "seconds": 0.0}


def test_the_bookmark_is_sent_in_utc_whatever_the_machine_time_zone(sb, monkeypatch):
    import time
    from datetime import datetime, timedelta

    stamps = sorted({r["updated_at"] for r in sb.truth("patients")})
    when = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in stamps]
    # a bookmark one hour after a record: read as Chicago time (six hours earlier) that record would come back
    mark = (when[len(when) // 2] + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    state = {"bookmarks": {"patients": {"replication_key": "updated_at", "replication_key_value": mark}}}
    monkeypatch.setenv("TZ", "America/Chicago")
    time.tzset()
    try:
        resumed = _records(sync(sandbox_config(sb), state=state, streams=("patients",)), "patients")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert {r["id"] for r in resumed} == {r["id"] for r in sb.truth("patients") if r["updated_at"] >= mark}
