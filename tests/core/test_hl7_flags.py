"""HL7 v2 values that cannot be mapped become null with a data-quality flag naming the canonical field and kind,
never a silent null and never a guess (issue 29: ``scripts/mutate hl7`` showed the flags of the fixture
messages' *good* paths tested, the bad ones not). In-process, no SFTP: milliseconds each."""

from __future__ import annotations

from typing import Any

import pytest

from wellsky_core.errors import NormalizationError
from wellsky_core.normalize.hl7 import normalize_records

MSH = "MSH|^~\\&|EHR|AGENCY|WELLSKY|AGENCY01|20260205170000-0500||{type}|X-1|P|2.5.1\r"
PID = "PID|1||W1^^^WELLSKY^PI||DOE^JANE||{dob}|{sex}\r"


def seg(name: str, fields: dict[int, str]) -> str:
    """One segment with ``fields`` by HL7 field number (1-based), the rest empty."""
    values = [""] * max(fields)
    for n, value in fields.items():
        values[n - 1] = value
    return "|".join([name, *values]) + "\r"


def one(text: str) -> dict[str, Any]:
    ((_, record),) = normalize_records(text)
    return record


def flags(record: dict[str, Any]) -> dict[str, str]:
    return {f["field"]: f["kind"] for f in record["data_quality"]}


# -- ADT: patients -------------------------------------------------------------------------------------------
def test_unmapped_sex_and_account_status_and_bad_coverage_order_are_flagged() -> None:
    record = one(
        MSH.format(type="ADT^A08^ADT_A01")
        + PID.format(dob="19700101", sex="Z")
        + seg("PV1", {1: "1", 2: "O", 41: "Q"})
        + seg("IN1", {1: "x", 2: "PLAN^Plan", 3: "PAYER1", 4: "Acme Health", 36: "M-1"})
    )
    assert record["gender"] is None and record["status"] is None
    got = flags(record)
    assert got["gender"] == "unmapped_code" and got["status"] == "unmapped_code"
    assert got.get("coverage.0.order") == "invalid" and record["coverage"][0]["order"] is None


@pytest.mark.parametrize(("dob", "why"), [("1970-01-01", "is not an HL7 date"), ("19700231", "not a valid calendar")])
def test_a_birth_date_that_is_not_a_date_is_null_and_flagged_invalid(dob: str, why: str) -> None:
    record = one(MSH.format(type="ADT^A08^ADT_A01") + PID.format(dob=dob, sex="F"))
    (flag,) = [f for f in record["data_quality"] if f["field"] == "birth_date"]
    assert record["birth_date"] is None and flag["kind"] == "invalid" and why in flag["reason"]
    assert "PID-7" in flag["reason"] and dob not in flag["reason"]


def test_a_merge_without_the_prior_identifier_is_flagged_missing() -> None:
    record = one(MSH.format(type="ADT^A40^ADT_A39") + PID.format(dob="19700101", sex="F") + "MRG|\r")
    assert flags(record).get("merged_ids") == "missing" and record["merged_ids"] == []


def test_a_patient_without_any_usable_identifier_is_refused_naming_pid3() -> None:
    with pytest.raises(NormalizationError) as err:
        one(MSH.format(type="ADT^A08^ADT_A01") + "PID|1||ACCT^^^BILLING^AN||DOE^JANE\r")
    assert err.value.field == "PID-3"
    with pytest.raises(NormalizationError) as err:
        one(MSH.format(type="ADT^A08^ADT_A01"))
    assert err.value.field == "PID"


# -- SIU: appointments ---------------------------------------------------------------------------------------
def sch(discipline: str, status: str) -> str:
    return seg(
        "SCH", {1: "PL-1", 2: "FL-1", 7: discipline, 11: "^^^20260203090000-0600^20260203100000-0600", 25: status}
    )


def test_unmapped_status_discipline_service_code_and_patient_are_flagged() -> None:
    record = one(
        MSH.format(type="SIU^S12^SIU_S12")
        + sch("", "Weird")
        + "PID|1||ACCT^^^BILLING^AN||DOE^JANE\r"
        + "AIS|1||XYZ^Something^L|20260203090000-0600|||60|MIN\r"
    )
    got = flags(record)
    # an unknown SCH-25 is flagged; the status then follows the trigger event (S12: booked)
    assert got.get("status") == "unmapped_code" and record["status"] == "scheduled"
    assert got.get("patient_id") == "unresolved_reference" and record["patient_id"] is None
    assert got.get("discipline") == "unmapped_code"
    assert got.get("service_code") == "unmapped_code"
    assert record["id"] == "FL-1"


def test_an_appointment_without_sch_or_its_id_is_refused_naming_the_field() -> None:
    with pytest.raises(NormalizationError) as err:
        one(MSH.format(type="SIU^S12^SIU_S12") + PID.format(dob="19700101", sex="F"))
    assert err.value.field == "SCH"
    with pytest.raises(NormalizationError) as err:
        one(MSH.format(type="SIU^S12^SIU_S12") + "SCH|||||||PT|ROUTINE|60|MIN\r")
    assert err.value.field == "SCH-2"


@pytest.mark.parametrize(
    ("segment", "minutes"),
    [
        ("AIS|1||G0151^PT^HCPCS|20260203090000-0600|||45|MIN\r", 45),
        (seg("AIG", {1: "1", 3: "R1^Nurse", 8: "20260203090000-0600", 11: "2", 12: "HR"}), 120),
        ("AIL|1||LOC1|||20260203090000-0600|||30|MIN\r", 30),
        ("AIP|1||1234567893^OKAFOR^GRACE|PT^Physical therapist||20260203090000-0600|||90|MIN\r", 90),
    ],
)
def test_the_end_comes_from_each_resource_segments_start_and_duration(segment: str, minutes: int) -> None:
    sch = "SCH|PL-1|FL-1|||||PT^Physical therapy^WELLSKY|ROUTINE|||||||||||||||||Booked\r"
    record = one(MSH.format(type="SIU^S12^SIU_S12") + sch + PID.format(dob="19700101", sex="F") + segment)
    assert record["start"] == "2026-02-03T15:00:00Z"
    end = {45: "15:45", 120: "17:00", 30: "15:30", 90: "16:30"}[minutes]
    assert record["end"] == f"2026-02-03T{end}:00Z"


# -- ORU: encounters -----------------------------------------------------------------------------------------
OBR = "OBR|1|FL-2001|VISIT-9001|HV^Home visit^L|||20260203090000-0600|20260203100000-0600|||||||||||||||||{status}\r"


def test_unmapped_result_status_bad_diagnosis_rank_and_discipline_are_flagged() -> None:
    record = one(
        MSH.format(type="ORU^R01^ORU_R01")
        + PID.format(dob="19700101", sex="F")
        + seg("PV1", {1: "1", 2: "O", 10: "ZZ"})
        + OBR.format(status="Q")
        + seg("DG1", {1: "1", 3: "I50.9^Heart failure^I10", 6: "F", 15: "x"})
    )
    got = flags(record)
    assert got.get("status") == "unmapped_code" and record["status"] is None
    assert got.get("diagnoses.0.rank") == "invalid"
    assert got.get("discipline") == "unmapped_code"


def test_an_encounter_without_obr_or_an_order_number_is_refused_naming_the_field() -> None:
    with pytest.raises(NormalizationError) as err:
        one(MSH.format(type="ORU^R01^ORU_R01") + PID.format(dob="19700101", sex="F"))
    assert err.value.field == "OBR"
    with pytest.raises(NormalizationError) as err:
        one(MSH.format(type="ORU^R01^ORU_R01") + PID.format(dob="19700101", sex="F") + "OBR|1\r")
    assert err.value.field == "OBR-3"


def test_a_message_without_its_date_is_refused_naming_msh7() -> None:
    with pytest.raises(NormalizationError) as err:
        one("MSH|^~\\&|EHR|AGENCY|WELLSKY|AGENCY01|||ADT^A08^ADT_A01|X-1|P|2.5.1\r" + PID.format(dob="", sex="F"))
    assert err.value.field == "MSH-7"


def test_a_duration_in_an_unknown_unit_leaves_the_end_null_and_flagged() -> None:
    sch = "SCH|PL-1|FL-1|||||PT^Physical therapy^WELLSKY|ROUTINE|||||||||||||||||Booked\r"
    ais = seg("AIS", {1: "1", 3: "G0151^PT^HCPCS", 4: "20260203090000-0600", 7: "2", 8: "FORTNIGHTS"})
    record = one(MSH.format(type="SIU^S12^SIU_S12") + sch + PID.format(dob="19700101", sex="F") + ais)
    assert record["start"] == "2026-02-03T15:00:00Z" and record["end"] is None
    assert flags(record).get("end") == "missing"


@pytest.mark.parametrize(
    ("escaped", "text"),
    [
        ("A\\F\\B", "A|B"),
        ("A\\S\\B", "A^B"),
        ("A\\T\\B", "A&B"),
        ("A\\R\\B", "A~B"),
        ("A\\E\\B", "A\\B"),
        ("A\\XC9\\B", "AÉB"),
        ("A\\XZZ\\B", "AB"),
        ("A\\.br\\B", "A\nB"),
        ("A\\H\\B\\N\\", "AB"),
        ("plain", "plain"),
    ],
)
def test_escape_sequences_in_text_are_decoded(escaped: str, text: str) -> None:
    """HL7 escapes (v2.5 2.7): delimiters, hex (latin-1), a line break; formatting codes are dropped."""
    record = one(MSH.format(type="ADT^A08^ADT_A01") + f"PID|1||W1^^^WELLSKY^PI||DOE^{escaped}||19700101|F\r")
    assert record["first_name"] == text
