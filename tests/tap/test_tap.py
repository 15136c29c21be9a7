"""tap-wellsky end to end against a sandbox over loopback: schemas, incremental state, full table, errors."""

from __future__ import annotations

import json

import jsonschema
import pytest

from wellsky_core.models import ENTITIES, MODELED_ENTITIES
from wellsky_core.schemas import stream_schema

from .helpers import bookmarks, last_state, messages, records_by_stream, run_tap, sandbox_config


def _truth_ids(sb) -> dict[str, set[str]]:
    return {e: {r["id"] for r in sb.truth(e)} for e in MODELED_ENTITIES}


def test_full_sync_emits_every_record_valid_against_its_schema(sandbox, tmp_path):
    proc = run_tap(tmp_path, sandbox_config(sandbox))
    assert "product home_health)" in proc.stderr  # detected with GET /tenant, named in the summary (not '?')
    msgs = messages(proc.stdout)
    schemas = {m["stream"]: m["schema"] for m in msgs if m["type"] == "SCHEMA"}
    # product detected at sync time: every stream some product serves through the api (portal-only ones not)
    assert set(schemas) == {name for name, spec in ENTITIES.items() if spec.sources is None}
    for stream, schema in schemas.items():
        assert schema == stream_schema(stream)
    got = records_by_stream(msgs)
    truth = _truth_ids(sandbox)
    for stream in MODELED_ENTITIES:
        validator = jsonschema.Draft7Validator(schemas[stream], format_checker=jsonschema.FormatChecker())
        for record in got[stream]:
            validator.validate(record)
        assert {r["id"] for r in got[stream]} == truth[stream], stream
        assert len(got[stream]) == len(truth[stream]), f"{stream} has duplicates"
    assert "tap-wellsky sync summary" in proc.stderr


def test_incremental_run_emits_exactly_the_changed_records(sandbox, tmp_path):
    first = messages(run_tap(tmp_path, sandbox_config(sandbox)).stdout)
    state = last_state(first)
    marks = bookmarks(state)
    assert set(marks) == set(MODELED_ENTITIES)
    changed = sandbox.advance(count=40, seed=3)
    assert changed["changed"] == 40
    second = records_by_stream(messages(run_tap(tmp_path, sandbox_config(sandbox), state=state).stdout))
    for stream in MODELED_ENTITIES:
        truth = sandbox.truth(stream)
        after = {r["id"] for r in truth if r["updated_at"] > marks[stream]}
        boundary = {r["id"] for r in truth if r["updated_at"] == marks[stream]}
        got = {r["id"] for r in second.get(stream, [])}
        assert after <= got, f"{stream}: changed records missing from the incremental run"
        assert got <= after | boundary, f"{stream}: unchanged records re-sent beyond the inclusive boundary"
    assert sum(len(v) for v in second.values()) >= 40


def test_bookmarks_never_pass_an_unsent_record(sandbox, tmp_path):
    msgs = messages(run_tap(tmp_path, sandbox_config(sandbox, page_size=50)).stdout)
    sent: dict[str, set[str]] = {e: set() for e in MODELED_ENTITIES}
    truth = {e: sandbox.truth(e) for e in MODELED_ENTITIES}
    states = 0
    for m in msgs:
        if m["type"] == "RECORD":
            sent[m["stream"]].add(m["record"]["id"])
        elif m["type"] == "STATE":
            states += 1
            for stream, mark in bookmarks(m["value"]).items():
                older = {r["id"] for r in truth[stream] if r["updated_at"] < mark}
                assert older <= sent[stream], f"{stream} bookmark {mark} passed unsent records"
    assert states > len(ENTITIES), "expected a STATE message per page, not only at stream ends"


def test_start_date_limits_the_first_sync(sandbox, tmp_path):
    start = "2026-06-01T00:00:00Z"
    got = records_by_stream(messages(run_tap(tmp_path, sandbox_config(sandbox, start_date=start)).stdout))
    for stream in MODELED_ENTITIES:
        expected = {r["id"] for r in sandbox.truth(stream) if r["updated_at"] >= start}
        assert {r["id"] for r in got.get(stream, [])} == expected


def test_full_table_catalog_ignores_the_bookmark(sandbox, tmp_path):
    config = sandbox_config(sandbox)
    state = last_state(messages(run_tap(tmp_path, config).stdout))
    catalog = json.loads(run_tap(tmp_path, config, args=("--discover",)).stdout)
    for entry in catalog["streams"]:
        entry["replication_method"] = "FULL_TABLE" if entry["tap_stream_id"] == "patients" else "INCREMENTAL"
        for md in entry["metadata"]:
            if md["breadcrumb"] == []:
                md["metadata"]["selected"] = entry["tap_stream_id"] in ("patients", "coverage")
                if entry["tap_stream_id"] == "patients":
                    md["metadata"]["forced-replication-method"] = "FULL_TABLE"
    got = records_by_stream(messages(run_tap(tmp_path, config, state=state, catalog=catalog).stdout))
    assert len(got["patients"]) == len(sandbox.truth("patients"))
    assert set(got) <= {"patients", "coverage"}
    assert len(got.get("coverage", [])) < len(sandbox.truth("coverage"))


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"base_url": "http://example.com", "username": "u", "password": "p"}, "base_url"),
        ({"base_url": "http://127.0.0.1:9", "username": "u", "passwrd": "p"}, "passwrd"),
        ({"base_url": "http://127.0.0.1:9", "username": "u"}, "password"),
        (
            {
                "base_url": "http://127.0.0.1:9",
                "username": "u",
                "password": "p",
                "mfa_method": "totp",
                "totp_secret": "not base32!",
            },
            "totp_secret",
        ),
        ({"base_url": "ftp://127.0.0.1:9", "username": "u", "password": "p"}, "base_url"),
        ({"base_url": "http://127.0.0.1:9", "username": "u", "password": "p"}, "base_url"),
        ({"base_url": "http://127.0.0.1:9", "username": "u", "password": "p", "source": "carrier_pigeon"}, "source"),
        ({"base_url": "http://127.0.0.1:9", "username": "u", "password": "p", "page_size": 5000}, "page_size"),
    ],
)
def test_bad_config_fails_fast_naming_the_setting(tmp_path, config, needle):
    proc = run_tap(tmp_path, config, check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert 'p"' not in proc.stderr


def test_catalog_naming_an_unknown_stream_is_a_clear_error(sandbox, tmp_path):
    config = sandbox_config(sandbox)
    catalog = json.loads(run_tap(tmp_path, config, args=("--discover",)).stdout)
    catalog["streams"].append({**catalog["streams"][0], "tap_stream_id": "visits_v2", "stream": "visits_v2"})
    proc = run_tap(tmp_path, config, catalog=catalog, check=False)
    assert proc.returncode != 0
    assert "visits_v2" in proc.stderr and "Traceback" not in proc.stderr


def test_discovery_and_about_open_no_connection(tmp_path):
    """With no base_url a sync would start the embedded sandbox; discovery must not (it needs no tenant)."""
    proc = run_tap(tmp_path, {}, args=("--discover",))
    assert "embedded WellSky sandbox" not in proc.stderr
    streams = {s["tap_stream_id"] for s in json.loads(proc.stdout)["streams"]}
    assert streams == set(MODELED_ENTITIES)  # the embedded sandbox's product (home_health) over its REST API


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"product": "personal_care"}, {"patients", "practitioners", "appointments", "encounters",
                                        "related_persons", "locations"}),
        ({"product": "hospice", "source": "hl7_sftp"}, {"patients", "appointments", "encounters"}),
        ({"product": "home_health", "stream_sources": {"claims": "portal", "episodes": "portal"},
          "agency_timezone": "America/Chicago"},
         set(MODELED_ENTITIES) | {"claims", "episodes"}),
        ({"product": "personal_care", "discover_all_streams": True}, set(ENTITIES)),
    ],
)
def test_discovery_lists_what_the_product_and_sources_serve(tmp_path, config, expected):
    proc = run_tap(tmp_path, config, args=("--discover",))
    assert {s["tap_stream_id"] for s in json.loads(proc.stdout)["streams"]} == expected


def test_the_first_log_line_says_sandbox_or_production(sandbox, tmp_path):
    """Issue 28: a run says up front whether it reads synthetic data or a tenant, and which."""
    forced = run_tap(
        tmp_path,
        {"sandbox": True, "product": "personal_care", "client_id": "real-id", "client_secret": "real-secret",
         "sandbox_scale": "XS"},
        args=("--test",),
    )
    first = forced.stderr.splitlines()[0]
    assert "EMBEDDED SANDBOX: synthetic personal_care data" in first and "sandbox: true" in first
    production = run_tap(
        tmp_path,
        {"base_url": "https://agency.invalid/api", "username": "u", "password": "p", "max_retries": 0,
         "timeout_seconds": 2},
        args=("--test",),
        check=False,
    )
    assert production.returncode == 2
    assert "PRODUCTION TENANT: agency.invalid" in production.stderr.splitlines()[0]
    local = run_tap(tmp_path, sandbox_config(sandbox), args=("--test",))
    assert f"TENANT AT 127.0.0.1:{sandbox.port}" in local.stderr.splitlines()[0]


@pytest.mark.parametrize("product", ["home_health", "personal_care"])
def test_a_failed_sync_never_reports_status_ok(sandbox_factory, tmp_path, product):
    """A wrong secret: exit 2, no 'status OK', and the login is proved before any stream begins (one error, not
    one per stream). Personal care names its product, so no GET /tenant detection ran first before the fix."""
    tenant = sandbox_factory(product=product, scale=20)
    if product == "personal_care":
        config = {"product": product, "base_url": tenant.base_url, "client_id": tenant.client_id,
                  "client_secret": "wrong-secret", "max_retries": 0}
        setting = "check `client_id` and `client_secret`"
    else:
        config = sandbox_config(tenant, password="wrong-password", max_retries=0)
        setting = "check `password`"
    proc = run_tap(tmp_path, config, check=False)
    assert proc.returncode == 2
    assert "status OK" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("tap-wellsky: error:")
    assert "Beginning sync" not in proc.stderr and "An unhandled error" not in proc.stderr
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]]
    assert setting in lines[-1] and "``" not in lines[-1]


def test_embedded_sandbox_runs_without_the_vendor_limit_unless_asked(monkeypatch, tmp_path) -> None:
    """A try-out (no base_url) is not held to the vendor's budget; ``sandbox_rate_limit`` asks for it back."""
    from tap_wellsky.embedded import load_tap_config

    monkeypatch.delenv("WELLSKY_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    free = load_tap_config({"product": "personal_care", "sandbox_scale": "XS"}, start_embedded=True)
    assert free.max_requests_per_second == 0
    limited = load_tap_config(
        {"product": "personal_care", "sandbox_scale": "XS", "sandbox_rate_limit": True}, start_embedded=True
    )
    assert limited.max_requests_per_second == 100  # the vendor's documented budget
    chosen = load_tap_config(
        {"product": "personal_care", "sandbox_scale": "XS", "max_requests_per_second": 7}, start_embedded=True
    )
    assert chosen.max_requests_per_second == 7
