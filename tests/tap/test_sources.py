"""The same tenant read through different channels yields the same canonical records."""

from __future__ import annotations

import json

import pytest

from wellsky_core.models import MODELED_ENTITIES as ENTITIES

from ..fhir_only import comparable
from .helpers import messages, records_by_stream, run_tap, sandbox_config


# personal_care's `source: api` is the real Home Connect API, a different surface from the sandbox's modeled FHIR
# (other ids for recurring shifts, no MRN or payers): it is compared with the truth in test_home_connect_sync.py.
@pytest.mark.parametrize("product", ["home_health", "hospice"])
def test_api_and_fhir_sources_give_identical_records(sandbox_factory, tmp_path, product):
    sb = sandbox_factory(product=product, scale=40)
    api = records_by_stream(messages(run_tap(tmp_path, sandbox_config(sb, source="api")).stdout))
    proc = run_tap(tmp_path, sandbox_config(sb, source="fhir"))
    fhir = records_by_stream(messages(proc.stdout))
    compared = 0
    for stream in ENTITIES:
        if stream not in fhir:
            # the product does not expose this resource over FHIR: the tap says so instead of failing
            assert f"{stream} is not available through source 'fhir'" in proc.stderr
            continue
        by_id = {r["id"]: r for r in api[stream]}
        assert len(fhir[stream]) == len(by_id), stream
        for record in fhir[stream]:
            assert comparable(stream, record) == comparable(stream, by_id[record["id"]]), (stream, record["id"])
            compared += 1
    assert compared > 300


def test_a_stream_the_source_cannot_read_is_marked_not_read_on_both_faces(sandbox_factory, tmp_path):
    """Hospice tenants expose no ServiceRequest over FHIR: referrals through `source: fhir` cannot be read. The
    summary says "not read" with the fix, not "0 records", and both faces' reports name it under ``not_read``."""
    from tests.airbyte.test_airbyte import configured_catalog, run_source

    sb = sandbox_factory(product="hospice", scale=20)
    tap_report, source_report = tmp_path / "tap-quality.json", tmp_path / "source-quality.json"
    proc = run_tap(tmp_path, sandbox_config(sb, source="fhir", data_quality_report_path=str(tap_report)))
    [row] = [line for line in proc.stderr.splitlines() if line.strip().startswith("referrals ")]
    assert row.split() == ["referrals", "fhir", "not", "read"], row
    assert "  not read: referrals is not available through source 'fhir'" in proc.stderr
    config = tmp_path / "source-config.json"
    config.write_text(json.dumps(sandbox_config(sb, source="fhir", data_quality_report_path=str(source_report))))
    run_source("read", "--config", str(config), "--catalog", configured_catalog(tmp_path, str(config)))
    for report in (tap_report, source_report):
        not_read = json.loads(report.read_text())["not_read"]
        assert list(not_read) == ["referrals"] and "stream_sources" in not_read["referrals"], (report, not_read)
