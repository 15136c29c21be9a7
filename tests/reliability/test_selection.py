"""Deselected or removed catalog properties never reach a RECORD, on the fast output path too (issue 16 #5).

Before: with ``mrn`` removed from the catalog's patients schema, the SCHEMA message lacked it and every RECORD
still carried it (the orjson fast path skipped selection, and the SDK keeps unknown properties when type
conformance is off). Real tap subprocesses: ``--discover``, edit the catalog the way a user does, sync.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import TAP_CMD, child_env, parse_messages, tap_config, write_json


def _catalog(tmp_path, config) -> dict:
    out = subprocess.run(
        [*TAP_CMD, "--config", str(write_json(tmp_path / "d.json", config)), "--discover"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
        check=True,
    ).stdout
    return json.loads(out)


def _narrowed(catalog: dict, how: str) -> dict:
    for entry in catalog["streams"]:
        for md in entry["metadata"]:
            if md["breadcrumb"] == []:
                md["metadata"]["selected"] = entry["tap_stream_id"] == "patients"
        if entry["tap_stream_id"] != "patients":
            continue
        props = entry["schema"]["properties"]
        if how == "removed":
            del props["mrn"]
            del props["address"]["properties"]["city"]
        else:
            for md in entry["metadata"]:
                if md["breadcrumb"] in (["properties", "mrn"], ["properties", "birth_date"]):
                    md["metadata"]["selected"] = False
    return catalog


def _sync(tmp_path, config: dict, catalog: object) -> subprocess.CompletedProcess[str]:
    """``tap-wellsky --config … --catalog …`` as a user runs it."""
    return subprocess.run(
        [*TAP_CMD, "--config", str(write_json(tmp_path / "c.json", config)),
         "--catalog", str(write_json(tmp_path / "catalog.json", catalog))],
        capture_output=True, text=True, env=child_env(), timeout=180,
    )


@pytest.mark.parametrize("how", ["removed", "deselected"])
def test_records_carry_only_what_the_catalog_selects(tmp_path, sandbox, how) -> None:
    config = tap_config(sandbox)
    catalog = _narrowed(_catalog(tmp_path, config), how)
    proc = _sync(tmp_path, config, catalog)
    assert proc.returncode == 0, proc.stderr[-2000:]
    messages = parse_messages(proc.stdout)
    schema = next(m["schema"] for m in messages if m["type"] == "SCHEMA" and m["stream"] == "patients")
    records = [m["record"] for m in messages if m["type"] == "RECORD"]
    assert len(records) == len(sandbox.truth("patients"))
    gone = {"removed": ("mrn",), "deselected": ("mrn", "birth_date")}[how]
    for name in gone:
        assert name not in schema["properties"]
    for record in records:
        assert not set(gone) & set(record), f"a RECORD carries {set(gone) & set(record)}"
        assert set(record) <= set(schema["properties"])
        if how == "removed" and record.get("address"):
            assert "city" not in record["address"] and "state" in record["address"]
    assert all(r["first_name"] for r in records), "selected properties are still emitted"


@pytest.mark.parametrize(
    ("catalog", "needle"),
    [
        ([], 'must be a JSON object with a "streams" list'),
        ({}, 'must be a JSON object with a "streams" list'),
        ({"streams": "patients"}, 'must be a JSON object with a "streams" list'),
        ({"streams": [{"stream": "patients"}]}, "streams[0] has no tap_stream_id"),
        ({"streams": [{"tap_stream_id": "patients", "schema": []}]}, "(patients): schema must be a JSON object"),
        ({"streams": [{"tap_stream_id": "patients", "metadata": [{"selected": True}]}]},
         "(patients): metadata must be a list of"),
    ],
    ids=["a-list", "no-streams", "streams-not-a-list", "no-tap-stream-id", "schema-not-object", "bad-metadata"],
)
def test_a_malformed_catalog_is_one_line_before_any_request(tmp_path, catalog, needle) -> None:
    """Each was an internal error with a traceback on the Singer face (the Airbyte face already named the
    problem): now one line naming the catalog and the fix, exit 2, and nothing sent to the tenant."""
    config = {"base_url": "http://127.0.0.1:9", "product": "home_health", "username": "u", "password": "p"}
    proc = _sync(tmp_path, config, catalog)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr[-1500:]
    assert "catalog:" in proc.stderr.strip().splitlines()[-1]


def test_a_catalog_that_selects_no_stream_says_so(tmp_path, sandbox) -> None:
    config = tap_config(sandbox)
    catalog = _catalog(tmp_path, config)
    for entry in catalog["streams"]:
        for md in entry["metadata"]:
            if md["breadcrumb"] == []:
                md["metadata"]["selected"] = False
    proc = _sync(tmp_path, config, catalog)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "the catalog selects no stream, so nothing is read" in proc.stderr
