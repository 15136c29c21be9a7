"""The same tenant read through different channels yields the same canonical records."""

from __future__ import annotations

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
