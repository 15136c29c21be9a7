"""``wellsky_core/quality.py`` on its own, in-process (seconds): the lenient ``finish`` (null + flag, never a
silent loss), the per-stream counts, the report's verdict against ``max_flagged_fraction`` (exit 4 only *above*
it, issue 29 bug 6) and the report file."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from tap_wellsky.tap import raise_unless_clean
from wellsky_core.cli import EXIT_QUALITY, EXIT_REFUSALS
from wellsky_core.errors import NormalizationError, RunNotClean
from wellsky_core.quality import KINDS, Flags, QualityCounter, default_report_path, finish, flag, write_report

STAMP = "2026-03-10T12:00:00Z"
FULL = {
    "id": "P1",
    "updated_at": STAMP,
    "first_name": "Ann",
    "last_name": "Lee",
    "birth_date": "1950-03-12",
    "gender": "female",
    "status": "active",
}


def _flags(record: dict) -> dict[str, tuple[str, str]]:
    return {f["field"]: (f["kind"], f["reason"]) for f in record["data_quality"]}


# -- finish: lenient reads ------------------------------------------------------------------------------------
def test_a_complete_record_has_no_flags() -> None:
    out = finish("patients", FULL)
    assert out["data_quality"] == [] and out["birth_date"] == "1950-03-12" and out["updated_at"] == STAMP


def test_every_expected_field_left_empty_is_flagged_missing_and_nested_ones_by_path() -> None:
    out = finish("patients", {"id": "P1", "updated_at": STAMP, "address": {"city": "Austin"}})
    flags = _flags(out)
    for field in ("first_name", "last_name", "birth_date", "gender", "status"):
        assert flags[field] == ("missing", "not provided by the source")
    assert flags["address.line1"][0] == "missing" and flags["address.postal_code"][0] == "missing"
    assert "address.city" not in flags
    cov = finish("patients", {**FULL, "coverage": [{"payer_id": "X", "payer_name": "Y", "member_id": "Z"}]})
    assert _flags(cov) == {"coverage.0.order": ("missing", "not provided by the source")}


def test_an_invalid_value_becomes_null_with_a_flag_never_silently() -> None:
    out = finish("patients", {**FULL, "birth_date": "not-a-date", "gender": "robot"})
    assert out["birth_date"] is None and out["gender"] is None
    flags = _flags(out)
    assert flags["birth_date"][0] == "invalid" and flags["gender"][0] == "invalid"
    assert "not-a-date" not in json.dumps(out["data_quality"])  # reasons never quote the value
    nested = finish(
        "patients", {**FULL, "address": {"line1": "1 Main", "city": "A", "state": "Texas", "postal_code": "1"}}
    )
    assert nested["address"]["state"] is None and _flags(nested)["address.state"][0] == "invalid"


def test_a_bad_list_item_is_removed_with_a_flag_and_the_others_kept() -> None:
    coverage = [
        {"payer_id": "A", "payer_name": "a", "member_id": "1", "order": 1},
        {"payer_id": "B", "payer_name": "b", "member_id": "2", "order": 0},  # order must be >= 1
        {"payer_id": "C", "payer_name": "c", "member_id": "3", "order": 3},
    ]
    out = finish("patients", {**FULL, "coverage": coverage, "race": ["2106-3", {"x": 1}, "2054-5"]})
    assert [c["payer_id"] for c in out["coverage"]] == ["A", "B", "C"] and out["coverage"][1]["order"] is None
    assert out["race"] == ["2106-3", "2054-5"]
    flags = _flags(out)
    assert flags["coverage.1.order"][0] == "invalid" and flags["race.1"][0] == "invalid"


def test_a_field_that_cannot_be_null_falls_back_to_its_default_with_a_flag() -> None:
    out = finish("patients", {**FULL, "coverage": "not a list"})
    assert out["coverage"] == [] and _flags(out)["coverage"][0] == "invalid"
    none = finish("patients", {**FULL, "race": None})  # null where a list is required: the default, flagged
    assert none["race"] == [] and _flags(none)["race"][0] == "invalid"


def test_an_unknown_field_is_dropped_and_flagged_top_level_and_nested() -> None:
    out = finish(
        "patients",
        {
            **FULL,
            "shoe_size": 9,
            "address": {"line1": "1", "city": "A", "state": "TX", "postal_code": "1", "planet": "Earth"},
        },
    )
    assert "shoe_size" not in out and "planet" not in out["address"]
    flags = _flags(out)
    assert flags["shoe_size"] == ("invalid", "not a canonical field")
    assert flags["address.planet"] == ("invalid", "not a canonical field")


@pytest.mark.parametrize("key", ["id", "updated_at"])
@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_key_or_replication_timestamp_refuses_the_record(key: str, value: object) -> None:
    with pytest.raises(NormalizationError) as err:
        finish("patients", {**FULL, key: value}, record_id="P1")
    assert err.value.field == key and err.value.record_id == "P1" and err.value.entity == "patients"
    with pytest.raises(NormalizationError):
        finish("patients", {k: v for k, v in FULL.items() if k != key})


def test_an_unusable_replication_timestamp_refuses_the_record_naming_it() -> None:
    with pytest.raises(NormalizationError) as err:
        finish("patients", {**FULL, "updated_at": "yesterday"}, record_id="P9")
    assert err.value.field == "updated_at" and err.value.record_id == "P9" and "yesterday" not in str(err.value)


def test_flags_given_or_attached_by_a_mapper_are_kept_once() -> None:
    given = [flag("gender", "unmapped_code", "code not in the gender table")]
    out = finish(
        "patients",
        {
            **FULL,
            "gender": None,
            "data_quality": [
                "phone",
                {"field": "status", "kind": "unmapped_code", "reason": "r"},
                {"field": 3},
                {"field": "mrn"},
            ],
        },
        given,
    )
    flags = _flags(out)
    assert flags["gender"] == ("unmapped_code", "code not in the gender table")  # not re-flagged as missing
    assert flags["phone"] == ("missing", "left empty or unusable by the source")
    assert flags["status"] == ("unmapped_code", "r")
    assert flags["mrn"] == ("invalid", "")
    assert [f["field"] for f in out["data_quality"]].count("gender") == 1 and len(out["data_quality"]) == 4


def test_flags_add_ignores_a_field_already_flagged_and_covers_children() -> None:
    flags = Flags()
    flags.add("address", "invalid", "a")
    flags.add("address", "missing", "b")
    assert flags == [flag("address", "invalid", "a")]
    assert flags.covers("address") and flags.covers("address.city") and not flags.covers("addresses")
    assert KINDS == ("missing", "unmapped_code", "invalid", "unresolved_reference")


def test_the_input_record_is_not_modified() -> None:
    data = {**FULL, "gender": "robot", "data_quality": ["phone"]}
    before = json.dumps(data, sort_keys=True)
    finish("patients", data)
    assert json.dumps(data, sort_keys=True) == before


# -- counts and the report ------------------------------------------------------------------------------------
def _counter(records: int, flagged: int, stream: str = "patients") -> QualityCounter:
    counter = QualityCounter()
    for i in range(records):
        flags = [flag("gender", "unmapped_code", "r"), flag("phone", "missing", "r")] if i < flagged else []
        counter.observe(stream, {"id": str(i), "data_quality": flags})
    return counter


def test_counts_per_stream_by_kind_and_field() -> None:
    counter = _counter(4, 1)
    counter.observe("patients", {"data_quality": [{"field": "x"}, {"kind": "unresolved_reference"}]})
    counter.add_dead_lettered("patients")
    counter.add_dead_lettered("episodes", 2)
    counter.add_skipped("hl7_sftp", "ORU^R01")
    counter.add_skipped("hl7_sftp", "ORU^R01", 2)
    report = counter.report()
    p = report["streams"]["patients"]
    assert p == {
        "records": 5,
        "flagged": 2,
        "flagged_fraction": 0.4,
        "unmapped_codes": 1,
        "validation_failures": 1,
        "missing_fields": 1,
        "unresolved_references": 1,
        "dead_lettered": 1,
        "flags_by_field": {"?": 1, "gender": 1, "phone": 1, "x": 1},
    }
    assert report["streams"]["episodes"]["records"] == 0 and report["streams"]["episodes"]["flagged_fraction"] == 0
    assert report["totals"] == {"records": 5, "flagged": 2, "dead_lettered": 3, "skipped": 3}
    assert report["skipped"] == {"hl7_sftp": {"ORU^R01": 3}}
    assert report["status"] == "completed_with_refusals" and report["streams_over_threshold"] == []
    assert list(report["streams"]) == ["episodes", "patients"]
    assert report["generated_at"].endswith("Z") and len(report["generated_at"]) == 20


def test_flagged_fraction_is_rounded_to_six_places() -> None:
    assert _counter(3, 1).report()["streams"]["patients"]["flagged_fraction"] == 0.333333


@pytest.mark.parametrize(
    ("threshold", "over"),
    [(0.25, False), (0.2500001, False), (0.2499999, True), (0.0, True), (None, False), (1, False)],
)
def test_only_a_share_above_the_threshold_fails_the_run(threshold: float | None, over: bool) -> None:
    """Issue 29 bug 6: exactly at ``max_flagged_fraction`` (1 of 4 at 0.25) passes; ``>=`` would fail it."""
    report = _counter(4, 1).report(threshold)
    assert report["max_flagged_fraction"] == threshold
    assert report["streams_over_threshold"] == (["patients"] if over else [])
    assert report["status"] == ("failed" if over else "ok")
    if over:
        with pytest.raises(RunNotClean) as err:
            raise_unless_clean(report, None)
        assert err.value.exit_code == EXIT_QUALITY == 4 and "patients 25.0%" in str(err.value)
    else:
        raise_unless_clean(report, None)  # exit 0


def test_a_stream_with_no_flagged_records_is_never_over_a_zero_threshold() -> None:
    report = _counter(4, 0).report(0.0)
    assert report["status"] == "ok" and report["streams_over_threshold"] == []
    dead_only = QualityCounter()
    dead_only.add_dead_lettered("episodes")
    assert dead_only.report(0.0)["streams_over_threshold"] == []


def test_over_threshold_wins_over_refusals_and_refusals_exit_3() -> None:
    counter = _counter(2, 2)
    counter.add_dead_lettered("patients")
    report = counter.report(0.5)
    assert report["status"] == "failed"
    with pytest.raises(RunNotClean) as err:
        raise_unless_clean(report, "/tmp/dead.jsonl")
    assert err.value.exit_code == EXIT_QUALITY
    with pytest.raises(RunNotClean) as err:
        raise_unless_clean(counter.report(None), "/tmp/dead.jsonl")
    assert err.value.exit_code == EXIT_REFUSALS == 3 and "/tmp/dead.jsonl" in str(err.value)


def test_merge_adds_every_count() -> None:
    a, b = _counter(2, 1), _counter(3, 2)
    b.add_dead_lettered("patients")
    b.add_skipped("export", "row", 2)
    b.observe("episodes", {"data_quality": [flag("start", "invalid", "r")]})
    a.add_skipped("export", "row")
    a.merge(b)
    report = a.report()
    assert report["streams"]["patients"]["records"] == 5 and report["streams"]["patients"]["flagged"] == 3
    assert report["streams"]["patients"]["flags_by_field"] == {"gender": 3, "phone": 3}
    assert (
        report["streams"]["patients"]["unmapped_codes"] == 3
        and report["streams"]["episodes"]["validation_failures"] == 1
    )
    assert report["totals"]["dead_lettered"] == 1 and report["skipped"] == {"export": {"row": 3}}
    assert b.report()["streams"]["patients"]["records"] == 3  # the other counter is unchanged


def test_counts_from_many_threads_add_up() -> None:
    counter = QualityCounter()

    def work() -> None:
        for _ in range(500):
            counter.observe("patients", {"data_quality": [flag("a", "missing", "r")]})

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.report()["streams"]["patients"]["flagged"] == 2000


# -- the report file ------------------------------------------------------------------------------------------
def test_default_report_path_is_per_tenant_or_per_run_under_the_private_state_root(monkeypatch, tmp_path: Path) -> None:
    """Never one file shared by every run (issue 24): the tenant's own report, or one per run without a config."""
    from wellsky_core.config import WellSkyConfig

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    config = WellSkyConfig.load({"base_url": "https://a.example", "product": "hospice", "username": "u",
                                 "password": "p"}, env={})
    assert default_report_path(config) == tmp_path / "xdg" / "tap-wellsky" / "hospice-a.example" / "data_quality.json"
    first, second = default_report_path(), default_report_path()
    assert first.parent == tmp_path / "xdg" / "tap-wellsky" / "reports" and first != second
    monkeypatch.setenv("XDG_STATE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_report_path().parent == tmp_path / "home" / ".local" / "state" / "tap-wellsky" / "reports"


def test_the_report_is_written_whole_and_private(tmp_path: Path) -> None:
    report = _counter(4, 1).report(0.5)
    path = write_report(report, tmp_path / "new" / "dq.json")
    assert path == tmp_path / "new" / "dq.json"
    assert json.loads(path.read_text()) == report and path.read_text().endswith("}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    write_report({"status": "ok"}, path)  # replaced, no temporary file left
    assert json.loads(path.read_text()) == {"status": "ok"} and [p.name for p in path.parent.iterdir()] == ["dq.json"]


# -- refusals that name the field, and details the mutation run showed untested ------------------------------
EPISODE = {
    "id": "E1",
    "updated_at": STAMP,
    "patient_id": "P1",
    "office": "North",
    "period_number": 1,
    "start_date": "2026-01-01",
    "end_date": "2026-02-28",
    "status": "active",
}


@pytest.mark.parametrize("field", ["office", "patient_id"])
def test_a_required_field_that_is_absent_or_null_refuses_the_record_naming_it(field: str) -> None:
    """Nothing to null (the field is absent) or nulling fails again: refused with the field, not a loop."""
    assert finish("episodes", EPISODE)["office"] == "North"
    for data in ({k: v for k, v in EPISODE.items() if k != field}, {**EPISODE, field: None}):
        with pytest.raises(NormalizationError) as err:
            finish("episodes", data, record_id="E1")
        assert (err.value.entity, err.value.field, err.value.record_id) == ("episodes", field, "E1")
        assert err.value.reason == "Field required"


def test_a_nested_item_without_its_id_refuses_the_record_naming_the_path() -> None:
    with pytest.raises(NormalizationError) as err:
        finish("appointments", {"id": "A1", "updated_at": STAMP, "tasks": [{"id": "T1"}, {"name": "x"}]})
    assert err.value.field == "tasks.1.id"


def test_refusals_say_why_and_name_the_entity() -> None:
    with pytest.raises(NormalizationError) as err:
        finish("patients", {**FULL, "updated_at": "yesterday"})
    assert err.value.entity == "patients" and "datetime" in err.value.reason
    with pytest.raises(NormalizationError) as err:
        finish("patients", {**FULL, "id": None})
    assert err.value.reason == "is missing; a record without it cannot be read"


def test_a_wrong_type_in_a_text_field_is_null_not_an_empty_string() -> None:
    out = finish("patients", {**FULL, "first_name": 123, "race": [{"x": 1}, "2106-3"]})
    assert out["first_name"] is None and _flags(out)["first_name"][0] == "invalid"
    assert out["race"] == ["2106-3"] and _flags(out)["race.0"][0] == "invalid"  # the first item too


def test_dead_letters_add_up_per_stream() -> None:
    counter = QualityCounter()
    counter.add_dead_lettered("patients", 2)
    counter.add_dead_lettered("patients")
    assert counter.report()["streams"]["patients"]["dead_lettered"] == 3


def test_the_report_file_is_indented_and_keeps_the_report_order(tmp_path: Path) -> None:
    path = write_report({"status": "ok", "streams": {"b": 1, "a": 2}}, tmp_path / "dq.json")
    assert path.read_text() == '{\n  "status": "ok",\n  "streams": {\n    "b": 1,\n    "a": 2\n  }\n}\n'


def test_the_verdict_and_exit_code_follow_the_faces_rule() -> None:
    """The report's ``exit_code`` is what the process exits with: the Singer CLIs' codes by default, the Airbyte
    commands' 0/1 with ``airbyte.exit_code``; a stream that failed while the run went on makes it ``incomplete``."""
    from wellsky_core.airbyte import exit_code as airbyte_exit_code
    from wellsky_core.errors import RemoteError

    counter = QualityCounter()
    counter.observe("patients", {"id": "1", "data_quality": []})
    counter.add_dead_lettered("patients")

    def verdict(**kw: object) -> tuple[str, int]:
        report = counter.report(None, **kw)  # type: ignore[arg-type]
        return report["status"], report["exit_code"]

    assert verdict() == ("completed_with_refusals", EXIT_REFUSALS)
    assert verdict(exit_code=airbyte_exit_code) == ("completed_with_refusals", 0), "Airbyte: refusals are counted"
    assert verdict(incomplete=["coverage"]) == ("incomplete", 2)
    assert verdict(incomplete=["coverage"], exit_code=airbyte_exit_code) == ("incomplete", 1)
    assert counter.report(None, incomplete=["coverage", "coverage"])["incomplete_streams"] == ["coverage"]
    refused = RemoteError(423, "locked", None)
    assert verdict(ended_by=refused) == ("aborted", 2)
    assert verdict(ended_by=refused, exit_code=airbyte_exit_code) == ("aborted", 1)
    assert verdict(ended_by=KeyboardInterrupt(), exit_code=airbyte_exit_code) == ("aborted", 130), "Ctrl-C keeps 130"
