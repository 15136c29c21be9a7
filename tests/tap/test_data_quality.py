"""The tap's data-quality summary, JSON report and exit codes, through the real CLI against a sandbox tenant.

Exit 0: clean; 3: finished but inputs were dead-lettered; 4: a stream's share of flagged records is above
``max_flagged_fraction``. The report counts records, flags by kind, dead letters and skipped inputs per stream.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from wellsky_sandbox.hl7 import feeds_for
from wellsky_sandbox.testing import SandboxServer

from .helpers import messages, records_by_stream, run_tap

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hl7"
KEYS = ("base_url", "username", "password", "sftp_host", "sftp_port", "sftp_username", "sftp_password", "sftp_host_key")


def _config(sandbox: SandboxServer, tmp: Path, **over: Any) -> dict[str, Any]:
    creds = sandbox.credentials()
    return {
        **{k: creds[k] for k in KEYS},
        "dead_letter_path": str(tmp / "dead.jsonl"),
        "data_quality_report_path": str(tmp / "quality.json"),
        # one stream at a time: the hl7_sftp channel's on-disk cache is not shared across stream threads yet
        "max_parallel_streams": 1,
        **over,
    }


def _drop_standard_feed(sandbox: SandboxServer, broken: bool) -> None:
    feeds = feeds_for(sandbox.tenant)
    feeds.refresh()
    for i, source in enumerate(sorted(FIXTURES.glob("*.hl7"))):
        shutil.copy(source, feeds.hl7.dir / f"29990101T0000{i:02d}Z-{source.stem}.hl7")
    if broken:  # one message no record can be made of: no PID at all
        (feeds.hl7.dir / "29990101T000099Z-broken.hl7").write_text(
            "MSH|^~\\&|REG|HOSP|WELLSKY|AGENCY|20260120100000+0000||ADT^A08^ADT_A01|X9|P|2.5\rEVN|A08\r"
        )


def test_clean_sync_exits_0_with_an_ok_report(sandbox: SandboxServer, tmp_path: Path) -> None:
    proc = run_tap(tmp_path, _config(sandbox, tmp_path, source="api"))
    report = json.loads((tmp_path / "quality.json").read_text())
    assert report["status"] == "ok" and report["totals"]["dead_lettered"] == 0
    synced = records_by_stream(messages(proc.stdout))
    assert report["streams"]["patients"]["records"] == len(synced["patients"]) > 0
    assert all(s["flagged"] == 0 for s in report["streams"].values())
    assert "data quality: 0 flagged, 0 dead-lettered" in proc.stderr and "status OK" in proc.stderr


def test_dead_letters_exit_3_and_flags_and_skips_are_counted(sandbox: SandboxServer, tmp_path: Path) -> None:
    _drop_standard_feed(sandbox, broken=True)
    config = _config(sandbox, tmp_path, source="api", stream_sources={"patients": "hl7_sftp",
                     "appointments": "hl7_sftp", "encounters": "hl7_sftp"}, hl7_timezone="America/New_York")
    catalog_free = run_tap(tmp_path, config, check=False)
    assert catalog_free.returncode == 3, catalog_free.stderr[-2000:]
    assert "tap-wellsky: completed with refusals: 1 input(s) could not be read" in catalog_free.stderr
    report = json.loads((tmp_path / "quality.json").read_text())
    assert report["status"] == "completed_with_refusals"
    patients = report["streams"]["patients"]
    assert patients["dead_lettered"] == 1
    # flagged standard records (hand-counted in the fixtures): the A08/A28/A40/A47 patients without a status (5),
    # and the two of adt_v251_ch2_cx_type_in_authority_lf.hl7 whose MRN type stands in CX.4 (read, flagged)
    assert patients["flagged"] == 7 and patients["missing_fields"] >= 5
    assert report["streams"]["appointments"]["unmapped_codes"] >= 1
    # S23 (blocked time, v2.5.1 ch. 10 fixture) is no appointment: skipped and counted like the other types
    assert report["skipped"]["hl7_sftp"] == {"ACK^A01": 1, "ADT^A17": 1, "MDM^T02": 1, "ORM^O01": 1, "SIU^S23": 1}
    records = records_by_stream(messages(catalog_free.stdout))
    flagged = [r for r in records["patients"] if r["data_quality"]]
    assert len(flagged) == patients["flagged"]
    assert "completed_with_refusals".upper() in catalog_free.stderr
    assert "patients" in catalog_free.stderr and "flagged" in catalog_free.stderr


def test_too_many_flagged_records_exit_4(sandbox: SandboxServer, tmp_path: Path) -> None:
    _drop_standard_feed(sandbox, broken=False)
    config = _config(sandbox, tmp_path, source="api", stream_sources={"patients": "hl7_sftp"},
                     hl7_timezone="America/New_York", max_flagged_fraction=0.0001)
    proc = run_tap(tmp_path, config, check=False)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "tap-wellsky: failed: share of records with data-quality flags above max_flagged_fraction" in proc.stderr
    report = json.loads((tmp_path / "quality.json").read_text())
    assert report["status"] == "failed" and report["streams_over_threshold"] == ["patients"]
    relaxed = run_tap(tmp_path, {**config, "max_flagged_fraction": 1}, check=False)
    assert relaxed.returncode == 0, relaxed.stderr[-2000:]


def test_a_bad_threshold_is_a_config_error(sandbox: SandboxServer, tmp_path: Path) -> None:
    proc = run_tap(tmp_path, _config(sandbox, tmp_path, max_flagged_fraction=2), check=False)
    assert proc.returncode in (1, 2)  # the SDK's config validation (1) or ours (2): before any record
    assert "max_flagged_fraction" in proc.stderr and '"type": "RECORD"' not in proc.stdout


# -- issue 28: expectations per stream and field ---------------------------------------------------------------
def _flagged(field: str, kind: str = "missing") -> dict[str, Any]:
    return {"id": "1", "data_quality": [{"field": field, "kind": kind, "reason": "r"}]}


def test_quality_ignore_drops_the_flags_of_expected_fields_from_record_and_counts() -> None:
    from wellsky_core.quality import QualityCounter

    counter = QualityCounter(ignore={"appointments": ["service_code", "address"]})
    ignored, nested, kept = _flagged("service_code"), _flagged("address.zip"), _flagged("discipline")
    for record in (ignored, nested, kept):
        counter.observe("appointments", record)
    counter.observe("patients", _flagged("service_code"))  # another stream: not covered
    assert ignored["data_quality"] == [] and nested["data_quality"] == []
    assert kept["data_quality"][0]["field"] == "discipline"
    report = counter.report(max_flagged_fraction=0.5)
    assert report["streams"]["appointments"]["flagged"] == 1 and report["streams"]["patients"]["flagged"] == 1
    assert report["streams_over_threshold"] == ["patients"]


def test_a_field_the_product_never_sends_is_not_missing_but_a_bad_value_still_counts() -> None:
    from wellsky_core.products import DIALECTS
    from wellsky_core.quality import QualityCounter

    counter = QualityCounter(never_sent=lambda: DIALECTS["personal_care"].never_sent)
    absent, invalid = _flagged("service_code"), _flagged("service_code", kind="invalid")
    counter.observe("appointments", absent)
    counter.observe("appointments", invalid)
    assert absent["data_quality"] == [] and len(invalid["data_quality"]) == 1
    assert counter.report()["streams"]["appointments"]["flagged"] == 1
    home_health = QualityCounter(never_sent=lambda: DIALECTS["home_health"].never_sent)
    record = _flagged("service_code")
    home_health.observe("appointments", record)
    assert len(record["data_quality"]) == 1  # home health does send service codes: missing is a real gap


def test_personal_care_shifts_are_not_all_flagged(sandbox_factory: Any, tmp_path: Path) -> None:
    """Home Connect has no service code: with the product default a clean tenant's shifts carry no flag, so
    max_flagged_fraction is usable (it flagged 100% of shifts before)."""
    tenant = sandbox_factory(product="personal_care", scale=20)
    config = {
        "product": "personal_care", "base_url": tenant.base_url, "client_id": tenant.client_id,
        "client_secret": tenant.client_secret, "max_requests_per_second": 0, "home_connect_history_months": 2,
        "data_quality_report_path": str(tmp_path / "quality.json"), "max_flagged_fraction": 0.2,
    }
    catalog = json.loads(run_tap(tmp_path, config, args=("--discover",)).stdout)
    for entry in catalog["streams"]:
        entry["metadata"][0]["metadata"]["selected"] = entry["tap_stream_id"] == "appointments"
    proc = run_tap(tmp_path, config, catalog=catalog)
    shifts = records_by_stream(messages(proc.stdout))["appointments"]
    assert shifts and all(r["service_code"] is None for r in shifts)
    report = json.loads((tmp_path / "quality.json").read_text())
    assert "service_code" not in report["streams"]["appointments"]["flags_by_field"]
