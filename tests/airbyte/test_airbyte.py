"""source-wellsky end to end: the console script against a sandbox tenant, every message checked by the official
Airbyte protocol models (airbyte-protocol-models-pdv2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from airbyte_protocol.models import AirbyteMessage, ConfiguredAirbyteCatalog, Type

from wellsky_core.models import ENTITIES, MODELED_ENTITIES

SOURCE = str(Path(sys.executable).with_name("source-wellsky"))
PAGE = 40  # small pages, so streams of ~100-400 records checkpoint several times mid-stream
SYNC_MODES = ["full_refresh", "incremental"]


def run_source(*args: str, expect_rc: int = 0) -> list[AirbyteMessage]:
    """Run the console script; every stdout line must be a valid AirbyteMessage (nothing else may be there)."""
    proc = subprocess.run([SOURCE, *args], capture_output=True, text=True, timeout=120)
    detail = f"rc={proc.returncode}\nstderr:\n{proc.stderr[-3000:]}\nstdout:{proc.stdout[-3000:]}"
    assert proc.returncode == expect_rc, detail
    messages = []
    for line in proc.stdout.splitlines():
        messages.append(AirbyteMessage.model_validate_json(line))
    assert messages, "no Airbyte message on stdout"
    return messages


def of_type(messages: list[AirbyteMessage], kind: Type) -> list[AirbyteMessage]:
    return [m for m in messages if m.type == kind]


def write_json(path: Path, data: Any) -> str:
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def config_file(sandbox, tmp_path: Path) -> str:
    creds = sandbox.credentials()
    config = {
        "base_url": creds["base_url"],
        "username": creds["username"],
        "password": creds["password"],
        "page_size": PAGE,
    }
    return write_json(tmp_path / "config.json", config)


def configured_catalog(tmp_path: Path, config: str, sync_mode: str = "incremental", name: str = "catalog") -> str:
    """A ConfiguredAirbyteCatalog selecting every discovered stream (as the platform would build it)."""
    catalog = of_type(run_source("discover", "--config", config), Type.CATALOG)[0].catalog
    configured = {
        "streams": [
            {
                "stream": stream.model_dump(mode="json", exclude_none=True),
                "sync_mode": sync_mode,
                "destination_sync_mode": "append_dedup" if sync_mode == "incremental" else "overwrite",
                "cursor_field": ["updated_at"],
                "primary_key": [["id"]],
            }
            for stream in catalog.streams
        ]
    }
    ConfiguredAirbyteCatalog.model_validate(configured)
    return write_json(tmp_path / f"{name}.json", configured)


def records_by_stream(messages: list[AirbyteMessage]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in of_type(messages, Type.RECORD):
        out[m.record.stream].append(m.record.data)
    return out


def final_states(messages: list[AirbyteMessage]) -> list[dict[str, Any]]:
    """The last STATE per stream, in the per-stream list format a platform hands back to --state."""
    last: dict[str, dict[str, Any]] = {}
    for m in of_type(messages, Type.STATE):
        body = m.state.model_dump(mode="json", exclude_none=True, by_alias=True)
        last[m.state.stream.stream_descriptor.name] = body
    return list(last.values())


def truth_ids(sandbox, stream: str, since: str | None = None) -> list[str]:
    return sorted(str(r["id"]) for r in sandbox.truth(stream, updated_since=since))


# --- spec / check / discover -----------------------------------------------------------------------------------


def test_spec_marks_secrets_and_lists_every_setting():
    from wellsky_core.config import COMMAND_SETTINGS, WellSkyConfig, secret_fields

    [message] = run_source("spec")
    assert message.type == Type.SPEC
    props = message.spec.connectionSpecification["properties"]
    assert set(WellSkyConfig.model_fields) - set(COMMAND_SETTINGS) <= set(props)
    secrets = {name for name, p in props.items() if p.get("airbyte_secret")}
    assert secrets == set(secret_fields(WellSkyConfig))
    assert {"password", "client_secret", "totp_secret"} <= secrets
    assert message.spec.supportsIncremental is True


def _face(command: list[str], env_extra: dict[str, str]) -> tuple[int, list[AirbyteMessage]]:
    env = {k: v for k, v in os.environ.items() if k != "WELLSKY_ALLOW_COMMAND_SETTINGS"} | env_extra
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    return proc.returncode, [AirbyteMessage.model_validate_json(line) for line in proc.stdout.splitlines()]


DESTINATION = str(Path(sys.executable).with_name("destination-wellsky"))


@pytest.mark.parametrize("face", [SOURCE, DESTINATION])
def test_settings_that_run_programs_need_the_host_to_allow_them(face, tmp_path):
    """Before: mfa_code_command (run with a shell) and chromium_path were plain settings of the Airbyte spec, so
    whoever could edit a connection's config could run commands in the connector's container."""
    from wellsky_core.config import COMMAND_SETTINGS

    allow = {"WELLSKY_ALLOW_COMMAND_SETTINGS": "1"}
    for allowed, env in ((False, {"WELLSKY_ALLOW_COMMAND_SETTINGS": "0"}), (True, allow)):
        _, [spec] = _face([face, "spec"], env)
        offered = set(COMMAND_SETTINGS) & set(spec.spec.connectionSpecification["properties"])
        assert offered == (set(COMMAND_SETTINGS) if allowed else set()), env
    key, value = ("mfa_code_command", "touch /tmp/pwned") if face == SOURCE else ("chromium_path", "/bin/sh")
    settings = {"base_url": "http://127.0.0.1:9", "username": "u", "password": "p", "max_retries": 0, key: value}
    config = write_json(tmp_path / f"{key}.json", settings)
    _, messages = _face([face, "check", "--config", config], {})
    text = " ".join(m.model_dump_json() for m in messages)
    assert f"{key}: runs a program on the connector's host" in text, text[-2000:]
    assert "WELLSKY_ALLOW_COMMAND_SETTINGS=1" in text
    _, allowed_messages = _face([face, "check", "--config", config], allow)
    assert "runs a program on the connector's host" not in " ".join(m.model_dump_json() for m in allowed_messages), (
        "allowed on this host: the setting is accepted (the check then fails on the unreachable tenant)"
    )


def test_check_succeeds_with_good_credentials(config_file):
    messages = run_source("check", "--config", config_file)
    [status] = of_type(messages, Type.CONNECTION_STATUS)
    assert status.connectionStatus.status.value == "SUCCEEDED", status.connectionStatus.message
    assert "home_health" in status.connectionStatus.message


def test_check_fails_with_bad_password_and_never_echoes_it(sandbox, tmp_path):
    creds = sandbox.credentials()
    wrong = "Wr0ng-Passw0rd-xyz"
    config = write_json(
        tmp_path / "bad.json",
        {"base_url": creds["base_url"], "username": creds["username"], "password": wrong, "max_retries": 0},
    )
    proc = subprocess.run([SOURCE, "check", "--config", config], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0  # the protocol reports a failed check as a FAILED status, not a crash
    messages = [AirbyteMessage.model_validate_json(line) for line in proc.stdout.splitlines()]
    [status] = of_type(messages, Type.CONNECTION_STATUS)
    assert status.connectionStatus.status.value == "FAILED"
    assert "password" in status.connectionStatus.message.lower()
    assert wrong not in proc.stdout + proc.stderr


def test_check_fails_on_unreachable_tenant_naming_base_url(tmp_path):
    config = write_json(
        tmp_path / "down.json",
        {"base_url": "http://127.0.0.1:9", "username": "u", "password": "p", "max_retries": 0},
    )
    [status] = of_type(run_source("check", "--config", config), Type.CONNECTION_STATUS)
    assert status.connectionStatus.status.value == "FAILED"
    assert "base_url" in status.connectionStatus.message


def test_discover_catalog_from_the_canonical_models(config_file):
    from wellsky_core.schemas import stream_schema

    [message] = run_source("discover", "--config", config_file)
    streams = {s.name: s for s in message.catalog.streams}
    portal_only = [name for name, spec in ENTITIES.items() if spec.sources]
    assert list(streams) == [name for name in ENTITIES if name not in portal_only]  # offered once routed there
    routed = json.loads(Path(config_file).read_text()) | {"stream_sources": {"claims": "portal"},
                                                          "agency_timezone": "America/Chicago"}
    [with_claims] = run_source("discover", "--config", write_json(Path(config_file).with_name("routed.json"), routed))
    assert [s.name for s in with_claims.catalog.streams] == [
        n for n in ENTITIES if n not in portal_only or n == "claims"
    ]
    for name, stream in streams.items():
        assert {m.value for m in stream.supported_sync_modes} == {"full_refresh", "incremental"}
        assert stream.source_defined_cursor is True
        assert stream.default_cursor_field == ["updated_at"]
        assert stream.source_defined_primary_key == [["id"]]
        assert stream.json_schema == stream_schema(name)


def test_bad_config_is_a_config_error_trace(tmp_path):
    config = write_json(tmp_path / "typo.json", {"base_url": "http://127.0.0.1:9", "usernme": "u", "password": "p"})
    messages = run_source("discover", "--config", config, expect_rc=1)
    [trace] = of_type(messages, Type.TRACE)
    error = trace.trace.error
    assert error.failure_type.value == "config_error"
    assert "usernme" in error.message and "username" in error.message


def test_catalog_naming_unknown_stream_is_a_config_error(config_file, tmp_path):
    catalog = write_json(
        tmp_path / "unknown.json",
        {
            "streams": [
                {
                    "stream": {"name": "invoices", "json_schema": {}, "supported_sync_modes": ["full_refresh"]},
                    "sync_mode": "full_refresh",
                    "destination_sync_mode": "overwrite",
                }
            ]
        },
    )
    messages = run_source("read", "--config", config_file, "--catalog", catalog, expect_rc=1)
    [trace] = of_type(messages, Type.TRACE)
    assert trace.trace.error.failure_type.value == "config_error"
    assert "invoices" in trace.trace.error.message and "patients" in trace.trace.error.message
    assert not of_type(messages, Type.RECORD)


# --- read --------------------------------------------------------------------------------------------------------


def assert_checkpoints_never_pass_unsent_records(messages: list[AirbyteMessage]) -> None:
    """Each STATE names exactly the updated_at of the stream's last emitted record (ordered REST channel)."""
    last_seen: dict[str, str] = {}
    for m in messages:
        if m.type == Type.RECORD:
            previous = last_seen.get(m.record.stream)
            current = m.record.data["updated_at"]
            assert previous is None or previous <= current, "records must come in updated_at order"
            last_seen[m.record.stream] = current
        elif m.type == Type.STATE:
            stream = m.state.stream.stream_descriptor.name
            cursor = m.state.stream.stream_state.model_dump().get("replication_key_value")
            assert cursor == last_seen.get(stream), f"{stream}: checkpoint {cursor} is not the last record sent"


def test_full_read_then_incremental_after_advance(sandbox, config_file, tmp_path):
    catalog = configured_catalog(tmp_path, config_file)
    first = run_source("read", "--config", config_file, "--catalog", catalog)

    records = records_by_stream(first)
    for stream in MODELED_ENTITIES:
        ids = sorted(str(r["id"]) for r in records[stream])
        assert ids == truth_ids(sandbox, stream), f"{stream}: records differ from the sandbox truth"
    # stream status: STARTED, RUNNING, COMPLETE per stream, in order
    statuses: dict[str, list[str]] = defaultdict(list)
    for m in of_type(first, Type.TRACE):
        if m.trace.stream_status:
            statuses[m.trace.stream_status.stream_descriptor.name].append(m.trace.stream_status.status.value)
    assert all(statuses[s] == ["STARTED", "RUNNING", "COMPLETE"] for s in MODELED_ENTITIES), dict(statuses)
    assert_checkpoints_never_pass_unsent_records(first)
    appointment_states = [
        m for m in of_type(first, Type.STATE) if m.state.stream.stream_descriptor.name == "appointments"
    ]
    assert len(appointment_states) > 2, "a checkpoint should follow every page's worth of records"
    assert sum(m.state.sourceStats.recordCount for m in appointment_states) == len(records["appointments"])
    assert of_type(first, Type.LOG), "progress and summary go out as LOG messages"

    # Round trip: the platform stores the last per-stream states and passes them back after the tenant changed.
    states = final_states(first)
    state_file = write_json(tmp_path / "state.json", states)
    bookmarks = {
        s["stream"]["stream_descriptor"]["name"]: s["stream"]["stream_state"].get("replication_key_value")
        for s in states
    }
    changed = sandbox.advance(fraction=0.05)
    assert changed
    second = run_source("read", "--config", config_file, "--catalog", catalog, "--state", state_file)
    again = records_by_stream(second)
    total = 0
    for stream in MODELED_ENTITIES:
        expected = truth_ids(sandbox, stream, since=bookmarks[stream])  # changed + records at the bookmark
        got = sorted(str(r["id"]) for r in again.get(stream, []))
        assert got == expected, f"{stream}: incremental read is not exactly the changed records"
        total += len(got)
    assert 0 < total < sum(len(v) for v in records.values()) / 2

    # The legacy dict state ({stream: {updated_at}}) resumes the same way.
    legacy = write_json(tmp_path / "legacy.json", {name: {"updated_at": value} for name, value in bookmarks.items()})
    third = run_source("read", "--config", config_file, "--catalog", catalog, "--state", legacy)
    assert {k: sorted(str(r["id"]) for r in v) for k, v in records_by_stream(third).items()} == {
        k: sorted(str(r["id"]) for r in v) for k, v in again.items()
    }


def test_resume_from_a_mid_stream_checkpoint_loses_nothing(sandbox, config_file, tmp_path):
    """Cut the output at a mid-stream STATE (as if killed there): resuming from it delivers the rest."""
    catalog = configured_catalog(tmp_path, config_file)
    messages = run_source("read", "--config", config_file, "--catalog", catalog)
    states = of_type(messages, Type.STATE)
    cut = next(i for i, m in enumerate(messages) if m is states[len(states) // 2])
    delivered = records_by_stream(messages[: cut + 1])
    kept: dict[str, dict[str, Any]] = {}
    for m in of_type(messages[: cut + 1], Type.STATE):
        kept[m.state.stream.stream_descriptor.name] = m.state.model_dump(mode="json", exclude_none=True)
    state_file = write_json(tmp_path / "cut.json", list(kept.values()))

    resumed = records_by_stream(
        run_source("read", "--config", config_file, "--catalog", catalog, "--state", state_file)
    )
    for stream in MODELED_ENTITIES:
        union = {str(r["id"]) for r in delivered.get(stream, [])} | {str(r["id"]) for r in resumed.get(stream, [])}
        assert sorted(union) == truth_ids(sandbox, stream), f"{stream}: a record was lost across the resume"
    cut_stream = states[len(states) // 2].state.stream.stream_descriptor.name
    assert len(resumed[cut_stream]) < len(truth_ids(sandbox, cut_stream)), "resume should not restart the stream"


def test_full_refresh_reads_everything_without_state(sandbox, config_file, tmp_path):
    catalog = configured_catalog(tmp_path, config_file, sync_mode="full_refresh", name="full")
    stale = write_json(tmp_path / "state.json", {"patients": {"updated_at": "2100-01-01T00:00:00Z"}})
    messages = run_source("read", "--config", config_file, "--catalog", catalog, "--state", stale)
    assert not of_type(messages, Type.STATE)
    patients = records_by_stream(messages)["patients"]
    assert sorted(str(r["id"]) for r in patients) == truth_ids(sandbox, "patients")


def test_read_failure_is_a_trace_and_nonzero_exit(sandbox, config_file, tmp_path):
    catalog = configured_catalog(tmp_path, config_file)
    creds = sandbox.credentials()
    bad = write_json(
        tmp_path / "badpw.json",
        {"base_url": creds["base_url"], "username": creds["username"], "password": "nope-nope", "max_retries": 0},
    )
    messages = run_source("read", "--config", bad, "--catalog", catalog, expect_rc=1)
    errors = [m.trace.error for m in of_type(messages, Type.TRACE) if m.trace.error]
    assert len(errors) == 1 and errors[0].failure_type.value == "config_error"
    assert errors[0].stream_descriptor is None  # the login is proved before any stream starts (issue 28)
    statuses = [m.trace.stream_status.status.value for m in of_type(messages, Type.TRACE) if m.trace.stream_status]
    assert statuses == []


def test_unordered_channel_checkpoints_once_at_the_end(sandbox, tmp_path):
    """Nightly exports come unordered across files: the only checkpoint follows the whole stream, at its maximum."""
    creds = sandbox.credentials()
    config = write_json(
        tmp_path / "export.json",
        {
            "base_url": creds["base_url"],
            "username": creds["username"],
            "password": creds["password"],
            "page_size": PAGE,
            "stream_sources": {"coverage": "export"},
        },
    )
    catalog = write_json(
        tmp_path / "coverage.json",
        {
            "streams": [
                {
                    "stream": {"name": "coverage", "json_schema": {}, "supported_sync_modes": SYNC_MODES},
                    "sync_mode": "incremental",
                    "destination_sync_mode": "append_dedup",
                }
            ]
        },
    )
    messages = run_source("read", "--config", config, "--catalog", catalog)
    records = records_by_stream(messages)["coverage"]
    assert sorted(str(r["id"]) for r in records) == truth_ids(sandbox, "coverage")
    [state] = of_type(messages, Type.STATE)
    assert messages.index(state) > max(i for i, m in enumerate(messages) if m.type == Type.RECORD)
    mark = state.state.stream.stream_state.model_dump()["replication_key_value"]
    assert mark == max(r["updated_at"] for r in records)


def test_bulk_channel_state_is_the_exports_transaction_time(sandbox, tmp_path):
    """fhir_bulk is unordered; its one checkpoint is the $export's transactionTime, the next run's _since."""
    sandbox.control("POST", "/_sandbox/bulk", json={"delay_seconds": 0, "retry_after_seconds": 0})
    creds = sandbox.credentials()
    config = write_json(
        tmp_path / "bulk.json",
        {
            "base_url": creds["base_url"],
            "username": creds["username"],
            "password": creds["password"],
            "stream_sources": {"coverage": "fhir_bulk"},
            "fhir_bulk_job_dir": str(tmp_path / "jobs"),
        },
    )
    stream = {"name": "coverage", "json_schema": {}, "supported_sync_modes": SYNC_MODES}
    catalog = write_json(
        tmp_path / "coverage.json",
        {"streams": [{"stream": stream, "sync_mode": "incremental", "destination_sync_mode": "append_dedup"}]},
    )
    first = run_source("read", "--config", config, "--catalog", catalog)
    assert sorted(str(r["id"]) for r in records_by_stream(first)["coverage"]) == truth_ids(sandbox, "coverage")
    [state] = of_type(first, Type.STATE)
    mark = state.state.stream.stream_state.model_dump()["replication_key_value"]
    assert mark > max(r["updated_at"] for r in records_by_stream(first)["coverage"])  # the export's instant
    sandbox.advance(count=40, seed=2)
    second = run_source(
        "read",
        "--config",
        config,
        "--catalog",
        catalog,
        "--state",
        write_json(tmp_path / "state.json", final_states(first)),
    )
    assert sorted(str(r["id"]) for r in records_by_stream(second).get("coverage", [])) == truth_ids(
        sandbox, "coverage", since=mark
    )


def _patients_catalog(tmp_path: Path) -> str:
    return write_json(
        tmp_path / "patients-catalog.json",
        {
            "streams": [
                {
                    "stream": {"name": "patients", "json_schema": {}, "supported_sync_modes": SYNC_MODES},
                    "sync_mode": "full_refresh",
                    "destination_sync_mode": "overwrite",
                }
            ]
        },
    )


def test_read_reports_data_quality_and_fails_above_the_threshold(sandbox, tmp_path):
    """The Airbyte face counts flagged records like the Singer tap: a LOG line, the JSON report, and a TRACE
    error (exit 1) when a stream's flagged share exceeds max_flagged_fraction."""
    import shutil

    from wellsky_sandbox.hl7 import feeds_for

    feeds = feeds_for(sandbox.tenant)
    feeds.refresh()
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "hl7"
    shutil.copy(fixtures / "adt_batch_fhs_v251_cr.hl7", feeds.hl7.dir / "29990101T000000Z-batch.hl7")
    creds = sandbox.credentials()
    base = {k: creds[k] for k in ("base_url", "username", "password", "sftp_host", "sftp_port", "sftp_username",
                                  "sftp_password", "sftp_host_key")}
    base |= {"stream_sources": {"patients": "hl7_sftp"}, "data_quality_report_path": str(tmp_path / "q.json")}
    catalog = _patients_catalog(tmp_path)
    messages = run_source("read", "--config", write_json(tmp_path / "ok.json", base), "--catalog", catalog)
    logs = [m.log.message for m in of_type(messages, Type.LOG)]
    assert any(line.startswith("data quality OK: 2 flagged, 0 dead-lettered") for line in logs), logs
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["streams"]["patients"]["flagged"] == 2  # the A08 and A28 patients carry no status
    strict = write_json(tmp_path / "strict.json", {**base, "max_flagged_fraction": 0.001})
    failed = run_source("read", "--config", strict, "--catalog", catalog, expect_rc=1)
    [error] = [m.trace.error for m in of_type(failed, Type.TRACE) if m.trace.error is not None]
    assert "max_flagged_fraction" in error.message


# --- streams read in parallel (max_parallel_streams, as the Singer face) -----------------------------------------


def test_streams_are_read_in_parallel_by_default_with_the_same_records_and_states_as_one_at_a_time(
    sandbox_factory, tmp_path
):
    """The Airbyte face honours ``max_parallel_streams`` (default 8) as the Singer face does: streams overlap,
    and what comes out per stream (records in order, checkpoints, final state) is what one stream at a time gives."""
    sb = sandbox_factory(latency="20ms")  # slow enough that streams overlap in time
    creds = sb.credentials()
    base = {"base_url": creds["base_url"], "username": creds["username"], "password": creds["password"]}
    parallel_cfg = write_json(tmp_path / "parallel.json", {**base, "page_size": PAGE})
    serial_cfg = write_json(tmp_path / "serial.json", {**base, "page_size": PAGE, "max_parallel_streams": 1})
    catalog = configured_catalog(tmp_path, parallel_cfg)
    parallel = run_source("read", "--config", parallel_cfg, "--catalog", catalog)
    serial = run_source("read", "--config", serial_cfg, "--catalog", catalog)

    def overlaps(messages: list[AirbyteMessage]) -> bool:
        """Some stream started before another one completed."""
        open_streams: set[str] = set()
        for m in of_type(messages, Type.TRACE):
            if m.trace.stream_status:
                name, status = m.trace.stream_status.stream_descriptor.name, m.trace.stream_status.status.value
                if status == "STARTED":
                    if open_streams:
                        return True
                    open_streams.add(name)
                elif status in ("COMPLETE", "INCOMPLETE"):
                    open_streams.discard(name)
        return False

    assert overlaps(parallel) and not overlaps(serial)
    assert_checkpoints_never_pass_unsent_records(parallel)
    assert records_by_stream(parallel) == records_by_stream(serial)
    assert sorted(final_states(parallel), key=json.dumps) == sorted(final_states(serial), key=json.dumps)


def test_a_login_error_in_one_stream_stops_the_streams_in_flight(sandbox, tmp_path, monkeypatch):
    """A config or login error would fail every stream the same way: the others stop at their next record
    (INCOMPLETE, no error of their own), the read exits non-zero with one error, and nothing is left running."""
    import io
    import logging
    import threading

    from tap_wellsky.airbyte import commands
    from wellsky_core.errors import AuthError
    from wellsky_core.read_loop import StreamRead

    creds = sandbox.credentials()
    config = write_json(
        tmp_path / "config.json",
        {"base_url": creds["base_url"], "username": creds["username"], "password": creds["password"], "page_size": 20},
    )
    catalog = write_json(
        tmp_path / "catalog.json",
        {
            "streams": [
                {"stream": {"name": name, "json_schema": {}, "supported_sync_modes": ["incremental"]},
                 "sync_mode": "incremental", "destination_sync_mode": "append"}
                for name in ("appointments", "patients")
            ]
        },
    )
    both_running = threading.Barrier(2)
    records = StreamRead.records

    def records_then_fail(self: StreamRead):  # type: ignore[no-untyped-def]
        for i, record in enumerate(records(self)):
            if i == 1:
                both_running.wait(timeout=30)  # both streams are mid-read
                if self.stream == "patients":
                    raise AuthError("the session was refused (injected)", setting="password")
            yield record

    monkeypatch.setattr(StreamRead, "records", records_then_fail)
    out = io.BytesIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        rc = commands.run(["read", "--config", config, "--catalog", catalog], stdout=out)
    finally:  # the command points the root logger at its output: give the next test its own
        root.handlers[:], root.level = handlers, level
    messages = [AirbyteMessage.model_validate_json(line) for line in out.getvalue().splitlines()]
    errors = [m.trace.error for m in of_type(messages, Type.TRACE) if m.trace.error]
    statuses = {
        (m.trace.stream_status.stream_descriptor.name, m.trace.stream_status.status.value)
        for m in of_type(messages, Type.TRACE)
        if m.trace.stream_status
    }
    assert rc == 1
    assert len(errors) == 1 and errors[0].stream_descriptor.name == "patients"
    assert ("appointments", "INCOMPLETE") in statuses and ("patients", "INCOMPLETE") in statuses
    assert not any(status == "COMPLETE" for _, status in statuses)
    assert not [t for t in threading.enumerate() if t.name.startswith("source-wellsky-stream")]
