"""HL7 v2 values that cannot be mapped become null with a data-quality flag naming the canonical field and kind,
never a silent null and never a guess (issue 29: ``scripts/mutate hl7`` showed the flags of the fixture
messages' *good* paths tested, the bad ones not). Below the flags, every field position and table value of the
mapping, one rule per test, from hand-written messages. In-process, no SFTP: milliseconds each."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from wellsky_core.errors import NormalizationError
from wellsky_core.normalize import hl7
from wellsky_core.normalize.hl7 import Hl7Options, normalize_records, split_messages

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


def problems(record: dict[str, Any]) -> dict[str, str]:
    """The flags the mapping itself raised (not the ``missing`` of an expected field the message leaves empty)."""
    return {field: kind for field, kind in flags(record).items() if kind != "missing"}


def reason(record: dict[str, Any], field: str) -> str:
    (found,) = [f["reason"] for f in record["data_quality"] if f["field"] == field]
    return found


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
    ("duration", "unit", "end"),
    [("2", "HRS", "17:00"), ("45", "MINS", "15:45"), ("90", "min", "16:30"), ("1", "h", "16:00"),
     ("1", "DAY", "15:00"), ("3600", "SECONDS", "16:00")],
)
def test_durations_in_the_usual_spellings_of_their_units_give_the_end(duration: str, unit: str, end: str) -> None:
    """``HRS`` and ``MINS`` (what interface engines send as often as ANSI's ``HR`` and ``MIN``) and UCUM's lower
    case: the end was null and flagged for every one of them."""
    sch = "SCH|PL-1|FL-1|||||PT^Physical therapy^WELLSKY|ROUTINE|||||||||||||||||Booked\r"
    ais = seg("AIS", {1: "1", 3: "G0151^PT^HCPCS", 4: "20260203090000-0600", 7: duration, 8: unit})
    record = one(MSH.format(type="SIU^S12^SIU_S12") + sch + PID.format(dob="19700101", sex="F") + ais)
    day = "2026-02-04" if unit == "DAY" else "2026-02-03"
    assert record["start"] == "2026-02-03T15:00:00Z" and record["end"] == f"{day}T{end}:00Z", record["end"]
    assert "end" not in flags(record)


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


# -- every field position and table value, one rule per test (issue 29 item 6: `scripts/mutate hl7`) -----------
def adt(pid: dict[int, str], *more: str, event: str = "A08", **options: Any) -> dict[str, Any]:
    base = {1: "1", 3: "W1^^^WELLSKY^PI", 5: "DOE^JANE", 7: "19700101", 8: "F"}
    ((_, record),) = normalize_records(
        MSH.format(type=f"ADT^{event}^ADT_A01") + seg("PID", {**base, **pid}) + "".join(more), Hl7Options(**options)
    )
    return record


@pytest.mark.parametrize(
    ("code", "gender"),
    [("M", "male"), ("F", "female"), ("O", "other"), ("U", "unknown"), ("A", "other"), ("N", "unknown"),
     ("X", "other"), ("f", "female"), ("m^Male^HL70001", "male")],
)
def test_each_administrative_sex_code(code: str, gender: str) -> None:
    record = adt({8: code})
    assert record["gender"] == gender and "gender" not in flags(record)


def test_the_sex_table_is_fully_tested() -> None:
    assert hl7.SEX == {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "unknown",
                       "X": "other"}


def test_patient_field_positions() -> None:
    record = adt({
        3: "M-77^^^HOSP^MR~MBI-1^^^CMS^MC~MCD-1^^^STATE^MA~W9^^^WELLSKY^PI~W8^^^WELLSKY^PI",
        5: "ROE^ANN^Q~ALIAS^NAME",
        7: "19450607",
        10: "2106-3^White^CDCREC~~2054-5^Black^CDCREC",
        11: "1 MAIN ST^UNIT 4^TULSA^OK^74103~2 OTHER RD^^ELSEWHERE^TX^75001",
        13: "(918)555-0100~^^^^^212^5550199",
        22: "2135-2^Hispanic^CDCREC",
    })
    assert (record["id"], record["mrn"], record["medicare_mbi"], record["medicaid_id"]) == (
        "W9", "M-77", "MBI-1", "MCD-1")
    assert (record["last_name"], record["first_name"], record["birth_date"]) == ("ROE", "ANN", "1945-06-07")
    assert record["race"] == ["2106-3", "2054-5"] and record["ethnicity"] == ["2135-2"]
    assert record["address"] == {"line1": "1 MAIN ST", "line2": "UNIT 4", "city": "TULSA", "state": "OK",
                                 "postal_code": "74103"}
    assert record["phone"] == "(918)555-0100"
    assert (record["deceased"], record["deceased_at"], record["coverage"], record["merged_ids"]) == (
        None, None, [], [])


@pytest.mark.parametrize(
    ("xtn", "phone"),
    [("^^^^^212^5550199", "(212) 555-0199"), ("^PRN^PH^^^212", None), ("", None), ("~(918)555-0100", None)],
)
def test_the_phone_is_the_first_repetition_formatted_or_from_area_and_local_number(
    xtn: str, phone: str | None
) -> None:
    assert adt({13: xtn})["phone"] == phone


def test_empty_names_and_addresses_are_null_not_empty_text() -> None:
    record = adt({5: "^", 11: "^^^^"})
    assert (record["last_name"], record["first_name"], record["address"]) == (None, None, None)
    record = adt({5: "", 11: "^^TULSA"})
    assert (record["last_name"], record["first_name"]) == (None, None)
    assert record["address"] == {"line1": None, "line2": None, "city": "TULSA", "state": None, "postal_code": None}


def test_identifier_types_first_of_each_type_and_the_mrn_by_configured_authority() -> None:
    pid3 = "A-1^^^NORTHSIDE^XX~M-2^^^HOSP^MR~M-3^^^HOSP^MR~^^^WELLSKY^PI"
    record = adt({3: pid3}, mrn_authorities=("NORTHSIDE",))
    assert (record["id"], record["mrn"]) == ("A-1", "A-1")  # no PI value: the MRN by authority is the id
    record = adt({3: pid3})
    assert (record["id"], record["mrn"]) == ("M-2", "M-2")
    assert adt({3: "A-1^^^northside^XX~M-2^^^HOSP^MR"}, mrn_authorities=("NORTHSIDE",))["mrn"] == "M-2"


@pytest.mark.parametrize(
    ("pid3", "field", "values"),
    [
        ("123^^^MR", "mrn", ("123", "123")),
        ("W1^^^WELLSKY^PI~123^^^mr", "mrn", ("W1", "123")),
        ("55^^^PI", "id", ("55", None)),
        ("W1^^^WELLSKY^PI~MB^^^MC", "medicare_mbi", ("W1", None)),
        ("W1^^^WELLSKY^PI~MD^^^MA", "medicaid_id", ("W1", None)),
    ],
)
def test_a_type_sent_in_cx4_is_read_as_the_type_and_flagged(pid3: str, field: str, values: tuple[str, str]) -> None:
    record = adt({3: pid3})
    assert (record["id"], record["mrn"]) == values
    assert flags(record).get(field) == "invalid"
    (flag,) = [f for f in record["data_quality"] if f["field"] == field]
    assert flag["reason"].startswith("PID-3 identifier type ") and "CX.4" in flag["reason"]


def test_a_type_in_cx4_never_overrides_one_sent_properly_or_the_configured_authority() -> None:
    record = adt({3: "W1^^^WELLSKY^PI~X9^^^MR~M-2^^^HOSP^MR"})
    assert record["mrn"] == "M-2" and "mrn" not in flags(record)
    record = adt({3: "X9^^^MR~A-1^^^NORTHSIDE"}, mrn_authorities=("NORTHSIDE",))
    assert (record["id"], record["mrn"]) == ("A-1", "A-1") and "mrn" not in flags(record)
    record = adt({3: "X9^^^MR~X8^^^MR"})
    assert record["mrn"] == "X9"


def test_two_different_mrns_without_a_configured_authority_are_read_first_and_flagged() -> None:
    """A hospital's MRN and the agency's in one PID-3: the first is read (HL7 lists the primary first), but it is
    flagged, since nothing says it is the agency's; naming the authority removes the doubt. The same MRN twice
    is no doubt at all."""
    both = "H-77^^^HOSP^MR~A-5^^^AGENCY^MR"
    record = adt({3: both})
    assert (record["id"], record["mrn"]) == ("H-77", "H-77")
    assert flags(record)["mrn"] == "invalid"
    record = adt({3: both}, mrn_authorities=("AGENCY",))
    assert record["mrn"] == "A-5" and "mrn" not in flags(record)
    assert "mrn" not in flags(adt({3: "A-5^^^HOSP^MR~A-5^^^AGENCY^MR"}))
    assert "mrn" not in flags(adt({3: "W1^^^WELLSKY^PI~A-5^^^AGENCY^MR"}))


@pytest.mark.parametrize(
    ("death", "indicator", "deceased", "at"),
    [("", "", None, None), ("", "N", False, None), ("", "Y", True, None), ("20260101", "", True, None),
     ("202601011200+0000", "N", True, "2026-01-01T12:00:00Z"), ("", "y", None, None)],
)
def test_death_date_and_indicator(death: str, indicator: str, deceased: bool | None, at: str | None) -> None:
    record = adt({29: death, 30: indicator})
    assert (record["deceased"], record["deceased_at"]) == (deceased, at)
    assert record["status"] == ("discharged" if deceased else None)


def test_coverage_in_order_of_benefits_with_the_fallback_fields() -> None:
    record = adt(
        {},
        seg("IN1", {1: "2", 2: "PLAN-B", 4: "Second Payer^x", 49: "MEM-B^^^X"}),
        seg("IN1", {1: "", 3: "PAYER-C", 36: "MEM-C"}),
        seg("IN1", {1: "1", 2: "PLAN-A", 3: "PAYER-A^^^NAIC", 4: "First Payer", 36: "MEM-A^1", 49: "OTHER"}),
    )
    assert record["coverage"] == [
        {"order": 1, "payer_id": "PAYER-A", "payer_name": "First Payer", "member_id": "MEM-A"},
        {"order": 2, "payer_id": "PLAN-B", "payer_name": "Second Payer", "member_id": "MEM-B"},
        {"order": None, "payer_id": "PAYER-C", "payer_name": None, "member_id": "MEM-C"},
    ]
    assert "coverage.1.order" not in flags(record)  # empty is not invalid


def test_an_empty_in1_is_kept_as_an_empty_coverage_not_dropped() -> None:
    record = adt({}, "IN1|1\r")
    assert record["coverage"] == [{"order": 1, "payer_id": None, "payer_name": None, "member_id": None}]


def test_pv1_41_is_read_from_the_pv1_of_the_message() -> None:
    assert adt({}, seg("PV1", {1: "1", 41: "I"}))["status"] == "inactive"
    assert adt({}, seg("PV1", {1: "1", 40: "D", 41: ""}), event="A05")["status"] == "pending"


def test_a_merge_names_each_survivor_with_its_own_prior_id() -> None:
    text = (
        MSH.format(type="ADT^A40^ADT_A39")
        + "PID|1||W1^^^WELLSKY^PI||DOE^JANE||19700101|F\rMRG|W0^^^WELLSKY^PI~M0^^^HOSP^MR\r"
        + "PID|1||W2^^^WELLSKY^PI||ROE^ANN||19710101|F\rMRG|M5^^^HOSP^MR\rPV1|1|O" + "|" * 39 + "I\r"
        + "PID|1||W3^^^WELLSKY^PI||POE^AL||19720101|M\rMRG|W3^^^WELLSKY^PI~Q7\r"
        + "PID|1||W4^^^WELLSKY^PI||LOE^BO||19730101|M\rMRG|U9\rMRG|U8\r"
    )
    records = [r for _, r in normalize_records(text)]
    assert [(r["id"], r["merged_ids"]) for r in records] == [
        ("W1", ["W0"]), ("W2", ["M5"]), ("W3", []), ("W4", ["U9"])]
    assert [r["status"] for r in records] == [None, "inactive", None, None]
    assert flags(records[2]).get("merged_ids") == "missing" and "merged_ids" not in flags(records[0])


def test_a_merge_by_configured_authority_and_a_merge_without_any_pid_is_refused() -> None:
    text = MSH.format(type="ADT^A40^ADT_A39") + PID.format(dob="19700101", sex="F") + "MRG|X^^^HOSP^MR~A-5^^^NORTH\r"
    ((_, record),) = normalize_records(text, Hl7Options(mrn_authorities=("NORTH",)))
    assert record["merged_ids"] == ["A-5"]
    with pytest.raises(NormalizationError) as err:
        normalize_records(MSH.format(type="ADT^A47^ADT_A30") + "MRG|W0^^^WELLSKY^PI\r")
    assert err.value.field == "PID"


# -- SIU: every position ----------------------------------------------------------------------------------------
TQ1 = "TQ1|1||||||20260203090000-0600|20260203100000-0600\r"


def siu(*segments: str, event: str = "S12", sch_fields: dict[int, str] | None = None, **options: Any) -> dict[str, Any]:
    fields = {1: "PL-1", 2: "FL-1", 7: "PT", 25: "Booked", **(sch_fields or {})}
    text = MSH.format(type=f"SIU^{event}^SIU_S12") + seg("SCH", fields) + "".join(segments)
    ((entity, record),) = normalize_records(text, Hl7Options(**options))
    assert entity == "appointments"
    return record


def test_appointment_field_positions() -> None:
    record = siu(
        TQ1,
        PID.format(dob="19700101", sex="F"),
        "RGS|1\r",
        "AIS|1|A|97110^Therapeutic exercise^C4\r",
        seg("AIL", {1: "1", 3: "^^^SUNRISE^^^^^Patient home", 4: "HOME^Home"}),
        "AIP|1|A|1234567893^OKAFOR^GRACE|pt^Physical therapist\r",
        seg("ZSC", {1: "1", 2: "EXT-9", 3: "PAYER-4^Acme", 4: "SN", 5: "9 ELM^^TULSA^OK^74103"}),
    )
    assert {k: record[k] for k in ("id", "external_id", "patient_id", "practitioner_id", "payer_id", "start", "end",
                                    "status", "discipline", "service_code", "location_name", "resources")} == {
        "id": "FL-1", "external_id": "EXT-9", "patient_id": "W1", "practitioner_id": "1234567893",
        "payer_id": "PAYER-4", "start": "2026-02-03T15:00:00Z", "end": "2026-02-03T16:00:00Z",
        "status": "scheduled", "discipline": "PT", "service_code": "97110", "location_name": "Patient home",
        "resources": [],
    }
    assert record["location"] == {"line1": "9 ELM", "line2": None, "city": "TULSA", "state": "OK",
                                  "postal_code": "74103"}
    assert record["data_quality"] == []


@pytest.mark.parametrize(
    ("placer", "filler", "zsc2", "ids"),
    [("PL-1", "FL-1", "", ("FL-1", "PL-1")), ("PL-1", "", "", ("PL-1", None)), ("FL-1", "FL-1", "", ("FL-1", None)),
     ("", "FL-1", "", ("FL-1", None)), ("PL-1", "FL-1", "EXT", ("FL-1", "EXT")),
     ("PL-1^EHR", "FL-1^WS", "", ("FL-1", "PL-1"))],
)
def test_the_id_is_the_filler_id_and_the_external_id_zsc2_else_a_different_placer_id(
    placer: str, filler: str, zsc2: str, ids: tuple[str, str | None]
) -> None:
    record = siu(TQ1, *([seg("ZSC", {2: zsc2})] if zsc2 else []), sch_fields={1: placer, 2: filler})
    assert (record["id"], record["external_id"]) == ids


@pytest.mark.parametrize(
    ("segments", "sch7", "discipline"),
    [
        (["AIP|1|A|N1|sn\r", seg("ZSC", {4: "PT"})], "OT", "SN"),
        (["AIP|1|A|N1|RN\r", seg("ZSC", {4: "pt"})], "OT", "PT"),
        (["AIP|1|A|N1|RN\r", seg("ZSC", {4: "XX"})], "ot^Occupational", "OT"),
        ([], "ST", "ST"), ([], "MSW", "MSW"), ([], "HHA", "HHA"),
    ],
)
def test_the_discipline_is_the_first_wellsky_code_of_aip4_zsc4_sch7(
    segments: list[str], sch7: str, discipline: str
) -> None:
    record = siu(TQ1, *segments, sch_fields={7: sch7})
    assert record["discipline"] == discipline and "discipline" not in flags(record)


def test_the_disciplines_table_is_fully_tested() -> None:
    assert {"SN", "PT", "OT", "ST", "MSW", "HHA"} == hl7.DISCIPLINES


@pytest.mark.parametrize(
    ("ais3", "code"),
    [("G0151^PT^HCPCS", "G0151"), ("G0151^PT^hcpcs-ii", "G0151"), ("G0151^PT^HC", "G0151"), ("99213^x^C4", "99213"),
     ("99213^x^CPT", "99213"), ("99213^x^CPT4", "99213"), ("G0151", "G0151"), ("99213", "99213"),
     ("0001F", "0001F"), ("0001T", "0001T"), ("0001U", "0001U"), ("T1019", "T1019"), ("V5010", "V5010"),
     ("W1234", None), ("0001X", None), ("G015", None), ("G01511", None), ("G0151^x^L", None), ("", None)],
)
def test_the_service_code_is_a_hcpcs_or_cpt_code(ais3: str, code: str | None) -> None:
    record = siu(TQ1, seg("AIS", {1: "1", 3: ais3}))
    assert record["service_code"] == code
    assert flags(record).get("service_code") == ("unmapped_code" if ais3 and code is None else
                                                  None if code else "missing")


def test_the_procedure_systems_table_is_fully_tested() -> None:
    assert hl7.PROCEDURE_SYSTEMS == {"HCPCS": "HCPCS", "HCPCS-II": "HCPCS", "HC": "HCPCS", "C4": "CPT",
                                     "CPT": "CPT", "CPT4": "CPT"}


@pytest.mark.parametrize(
    ("ail3", "ail4", "name"),
    [("^^^BLDG^^^^^Room 2", "", "Room 2"), ("CLINIC-1^^^BLDG", "", "CLINIC-1"), ("^^^BLDG", "", "BLDG"),
     ("", "HOME^Home", "Home"), ("", "HOME", "HOME"), ("", "", None)],
)
def test_the_location_name_from_ail3_else_ail4(ail3: str, ail4: str, name: str | None) -> None:
    assert siu(TQ1, seg("AIL", {1: "1", 3: ail3, 4: ail4 or ""}))["location_name"] == name


def test_resources_every_aig_and_later_aip_with_deleted_ones_left_out() -> None:
    record = siu(
        TQ1,
        "AIP|1|A|^SMITH^JO|RN\r",  # no id: not the practitioner, but kept as a resource
        "AIP|2|A|N1^OKAFOR^GRACE|PT\r",
        "AIP|3|d|N2^LEE^DANA|HHA\r",
        "AIP|4||N3^^DANA|^Aide\r",
        "AIG|1|A|EQ-1^Wheelchair^L|EQ^Equipment\r",
        "AIG|2|D|EQ-2^Lift\r",
        "AIG|3|A|^^L|EQ\r",  # neither id nor name: nothing to keep
        "AIG|4|A|EQ-3|^Scale\r",
    )
    assert record["practitioner_id"] == "N1"
    assert record["resources"] == [
        {"id": None, "name": "JO SMITH", "type": "RN", "kind": "personnel"},
        {"id": "N3", "name": "DANA", "type": "Aide", "kind": "personnel"},
        {"id": "EQ-1", "name": "Wheelchair", "type": "EQ", "kind": "general"},
        {"id": "EQ-3", "name": None, "type": "Scale", "kind": "general"},
    ]


@pytest.mark.parametrize(
    ("unit", "minutes"),
    [("", 90), ("MIN", 90), ("min", 90), ("M", 90), ("MINS", 90), ("MINUTE", 90), ("MINUTES", 90), ("H", 5400),
     ("HR", 5400), ("HRS", 5400), ("HOUR", 5400), ("HOURS", 5400), ("S", 1.5), ("SEC", 1.5), ("SECS", 1.5),
     ("SECOND", 1.5), ("SECONDS", 1.5), ("D", 129600), ("d^day^ANS+", 129600), ("DAY", 129600), ("DAYS", 129600),
     ("WK", 907200), ("wk^week^UCUM", 907200), ("WEEK", 907200), ("WEEKS", 907200)],
)
def test_each_duration_unit(unit: str, minutes: float) -> None:
    record = siu(f"TQ1|1|||||90^{unit}|20260203090000-0600\r")
    start = "2026-02-03T15:00:00Z"
    assert record["start"] == start
    end = datetime.fromisoformat(start) + timedelta(minutes=minutes)
    assert record["end"] == end.isoformat().replace("+00:00", "Z")


def test_the_duration_units_table_is_fully_tested() -> None:
    assert hl7.DURATION_UNITS == {
        "": 1, "M": 1, "MIN": 1, "MINS": 1, "MINUTE": 1, "MINUTES": 1,
        "H": 60, "HR": 60, "HRS": 60, "HOUR": 60, "HOURS": 60,
        "S": 1 / 60, "SEC": 1 / 60, "SECS": 1 / 60, "SECOND": 1 / 60, "SECONDS": 1 / 60,
        "D": 1440, "DAY": 1440, "DAYS": 1440, "WK": 10080, "WEEK": 10080, "WEEKS": 10080,
    }


@pytest.mark.parametrize("amount", ["", "ninety", "90^FORTNIGHT"])
def test_a_duration_that_is_not_a_number_or_unit_leaves_the_end_null(amount: str) -> None:
    record = siu(f"TQ1|1|||||{amount}|20260203090000-0600\r")
    assert record["start"] == "2026-02-03T15:00:00Z" and record["end"] is None
    assert flags(record).get("end") == "missing"


def test_tq1_wins_whole_over_sch11_and_a_disagreeing_sch11_is_flagged() -> None:
    sch11 = "^^60^20260203080000-0600^20260203083000-0600"
    record = siu(TQ1, sch_fields={11: sch11})
    assert (record["start"], record["end"]) == ("2026-02-03T15:00:00Z", "2026-02-03T16:00:00Z")
    assert problems(record) == {"start": "invalid", "end": "invalid"}
    agree = siu(TQ1, sch_fields={11: "^^60^20260203150000+0000^20260203160000+0000"})
    assert problems(agree) == {}
    start_only = siu("TQ1|1||||||20260203090000-0600\r", sch_fields={11: sch11})
    assert (start_only["end"], problems(start_only)) == (None, {"start": "invalid"})
    assert flags(start_only)["end"] == "missing"
    bad_old = siu(TQ1, sch_fields={11: "^^60^garbage^2026"})  # only compared: never flagged as unreadable
    assert problems(bad_old) == {}
    # TQ1 without end or duration, SCH-11 the same start: one timing sent twice, so SCH-11.5 is its end
    same = siu("TQ1|1||||||20260203090000-0600\r", sch_fields={11: "^^60^20260203150000+0000^20260203160000+0000"})
    assert (same["start"], same["end"]) == ("2026-02-03T15:00:00Z", "2026-02-03T16:00:00Z")
    assert same["data_quality"] == [f for f in same["data_quality"] if f["field"] not in ("start", "end")]


def test_sch11_times_when_tq1_gives_no_start_and_bad_ones_are_flagged() -> None:
    record = siu("TQ1|1\r", sch_fields={11: "^^60^20260203090000-0600^20260203100000-0600~^^^20260204090000-0600"})
    assert (record["start"], record["end"]) == ("2026-02-03T15:00:00Z", "2026-02-03T16:00:00Z")
    record = siu(sch_fields={11: "^^60^2026-02-03^20260203100000-0600"})
    assert (record["start"], record["end"]) == (None, "2026-02-03T16:00:00Z")
    assert flags(record)["start"] == "invalid"


def test_resource_segments_give_the_start_in_order_and_the_first_duration() -> None:
    record = siu(
        seg("AIG", {1: "1", 3: "R1^Nurse", 8: "20260203100000-0600"}),
        seg("AIS", {1: "1", 3: "G0151", 4: "20260203090000-0600", 7: "", 8: ""}),
        seg("AIL", {1: "1", 3: "L1", 6: "20260203110000-0600", 9: "30", 10: "MIN"}),
        seg("AIP", {1: "1", 3: "N1", 6: "20260203120000-0600", 9: "45", 10: "MIN"}),
    )
    assert (record["start"], record["end"]) == ("2026-02-03T15:00:00Z", "2026-02-03T15:30:00Z")
    record = siu(seg("AIP", {1: "1", 3: "N1", 6: "20260203120000-0600"}), sch_fields={9: "2", 10: "H"})
    assert (record["start"], record["end"]) == ("2026-02-03T18:00:00Z", "2026-02-03T20:00:00Z")
    record = siu(TQ1, seg("AIS", {1: "1", 3: "G0151", 4: "20260203120000-0600", 7: "5", 8: "MIN"}))
    assert (record["start"], record["end"]) == ("2026-02-03T15:00:00Z", "2026-02-03T16:00:00Z")


def test_an_appointment_without_pid_has_no_patient_and_no_unresolved_flag() -> None:
    record = siu(TQ1)
    assert record["patient_id"] is None and flags(record).get("patient_id") == "missing"


# -- ORU: every position ----------------------------------------------------------------------------------------
def oru(*segments: str, obr25: str = "F") -> dict[str, Any]:
    text = MSH.format(type="ORU^R01^ORU_R01") + PID.format(dob="19700101", sex="F") + "".join(segments)
    ((entity, record),) = normalize_records(text.replace("{obr25}", obr25))
    assert entity == "encounters"
    return record


OBR_FULL = seg("OBR", {1: "1", 2: "FL-2001^WS", 3: "VISIT-9^WS", 7: "20260203090000-0600",
                       8: "20260203100000-0600", 25: "{obr25}"})


def test_encounter_field_positions_pv1_wins_over_obr_times() -> None:
    pv1 = seg("PV1", {1: "1", 2: "O", 7: "N1^OKAFOR^GRACE", 10: "sn", 19: "V-OTHER",
                      44: "20260203091500-0600", 45: "20260203094500-0600"})
    record = oru(pv1, OBR_FULL)
    assert {k: record[k] for k in ("id", "patient_id", "practitioner_id", "appointment_id", "start", "end",
                                    "discipline", "status", "finalized", "vitals", "note_summary")} == {
        "id": "VISIT-9", "patient_id": "W1", "practitioner_id": "N1", "appointment_id": "FL-2001",
        "start": "2026-02-03T15:15:00Z", "end": "2026-02-03T15:45:00Z", "discipline": "SN",
        "status": "completed", "finalized": True, "vitals": None, "note_summary": None,
    }


def test_an_encounter_from_pv1_alone_and_its_times_from_obr() -> None:
    record = oru(seg("PV1", {1: "1", 19: "V-7^^^WS"}))
    assert (record["id"], record["appointment_id"], record["status"], record["finalized"]) == (
        "V-7", None, None, None)
    record = oru(seg("PV1", {1: "1", 19: "V-7"}), OBR_FULL)
    assert (record["id"], record["start"], record["end"]) == (
        "VISIT-9", "2026-02-03T15:00:00Z", "2026-02-03T16:00:00Z")


RESULT_STATUS = {"P": "in_progress", "I": "in_progress", "R": "in_progress", "S": "in_progress",
                 "A": "in_progress", "F": "completed", "C": "completed", "X": "cancelled"}  # HL7 table 0123


@pytest.mark.parametrize(("code", "status"), RESULT_STATUS.items())
def test_each_obr25_result_status(code: str, status: str) -> None:
    record = oru(OBR_FULL, obr25=code)
    assert record["status"] == status and "status" not in flags(record)
    assert record["finalized"] is (status == "completed")


def test_the_result_status_table_is_fully_tested() -> None:
    assert hl7.RESULT_STATUS == RESULT_STATUS


@pytest.mark.parametrize(
    ("zen2", "obr25", "finalized"),
    [("Y", "P", True), ("N", "F", False), ("", "F", True), ("", "P", False), ("y", "F", True), ("", "", None)],
)
def test_zen2_says_whether_the_note_is_finalized_else_a_completed_status_does(
    zen2: str, obr25: str, finalized: bool | None
) -> None:
    assert oru(OBR_FULL, f"ZEN|1|{zen2}\r", obr25=obr25)["finalized"] is finalized


VITALS = [("8310-5", "98.6", "temperature_f", 98.6), ("8867-4", "72", "pulse_bpm", 72),
          ("9279-1", "16", "respiratory_rate", 16), ("8480-6", "128", "bp_systolic", 128),
          ("8462-4", "82", "bp_diastolic", 82), ("59408-5", "97", "spo2_pct", 97), ("2708-6", "95.0", "spo2_pct", 95),
          ("29463-7", "154.5", "weight_lb", 154.5)]


@pytest.mark.parametrize(("loinc", "value", "key", "want"), VITALS)
def test_each_vital_sign_by_loinc(loinc: str, value: str, key: str, want: float) -> None:
    record = oru(OBR_FULL, f"OBX|1|NM|{loinc}^x^LN||{value}|u|||||F\r")
    vitals = record["vitals"]
    assert vitals[key] == want and type(vitals[key]) is type(want)
    assert sorted(vitals) == sorted({k for _, _, k, _ in VITALS})
    assert [v for k, v in vitals.items() if k != key] == [None] * 6


def test_the_vitals_table_is_fully_tested() -> None:
    assert {code: key for code, (key, _) in hl7.VITALS.items()} == {code: key for code, _, key, _ in VITALS}
    assert {code: kind for code, (_, kind) in hl7.VITALS.items()} == {
        code: type(want) for code, _, _, want in VITALS}


def test_bad_vital_values_are_null_and_flagged_and_unknown_codes_ignored() -> None:
    record = oru(OBR_FULL, "OBX|1|NM|8867-4^HR^LN||72.5\r", "OBX|2|NM|8310-5^T^LN||hot\r",
                 "OBX|3|NM|1234-5^Other^LN||7\r", "OBX|4|NM|8480-6^S^LN||120\r")
    assert record["vitals"]["pulse_bpm"] is None and record["vitals"]["temperature_f"] is None
    assert record["vitals"]["bp_systolic"] == 120
    assert problems(record) == {"vitals.pulse_bpm": "invalid", "vitals.temperature_f": "invalid"}
    reasons = {f["field"]: f["reason"] for f in record["data_quality"] if f["kind"] != "missing"}
    assert reasons == {"vitals.pulse_bpm": "OBX[1]-5 observation value must be a whole number",
                       "vitals.temperature_f": "OBX[2]-5 numeric observation value is not a number"}
    assert oru(OBR_FULL, "OBX|1|NM|8867-4^HR^LN||\r")["vitals"] is None


def test_a_note_obx_is_unescaped_text() -> None:
    record = oru(OBR_FULL, "OBX|1|TX|NOTE^Visit note||Pain 3\\S\\10\\.br\\walked 20 ft\r")
    assert record["note_summary"] == "Pain 3^10\nwalked 20 ft"


def test_diagnoses_ranked_by_dg1_15_else_dg1_1_else_order() -> None:
    record = oru(OBR_FULL, seg("DG1", {1: "1", 3: "E11.9^Diabetes^I10", 15: "2"}),
                 seg("DG1", {1: "3", 3: "I10^Hypertension^I10"}), seg("DG1", {3: "Z99.1"}),
                 seg("DG1", {1: "x", 3: "R52"}))
    assert record["diagnoses"] == [
        {"code": "E11.9", "description": "Diabetes", "rank": 2},
        {"code": "I10", "description": "Hypertension", "rank": 3},
        {"code": "Z99.1", "description": None, "rank": 3},
        {"code": "R52", "description": None, "rank": None},
    ]
    assert problems(record) == {"diagnoses.3.rank": "invalid"}
    assert reason(record, "diagnoses.3.rank") == "DG1[4]-15 diagnosis priority is not a number"


def test_procedures_with_their_coding_system() -> None:
    record = oru(OBR_FULL, "PR1|1||G0151^PT home^hcpcs\r", "PR1|2||97110^Exercise^C4\r", "PR1|3||X1^Other^L\r")
    assert record["procedures"] == [
        {"code": "G0151", "system": "HCPCS", "description": "PT home"},
        {"code": "97110", "system": "CPT", "description": "Exercise"},
        {"code": "X1", "system": None, "description": "Other"},
    ]
    assert problems(record) == {"procedures.2.system": "unmapped_code"}
    assert reason(record, "procedures.2.system") == "PR1[3]-3.3 coding system is not HCPCS or C4/CPT"


@pytest.mark.parametrize("code", ["SN", "PT", "OT", "ST", "MSW", "HHA"])
def test_each_pv1_10_discipline(code: str) -> None:
    record = oru(seg("PV1", {1: "1", 10: f"{code.lower()}^x"}), OBR_FULL)
    assert record["discipline"] == code and "discipline" not in flags(record)


@pytest.mark.parametrize(
    ("segments", "sch11", "field", "where"),
    [
        (["TQ1|1||||||2026-02-03|20260203100000-0600\r"], "", "start", "TQ1-7"),
        (["TQ1|1||||||20260203090000-0600|20260231100000-0600\r"], "", "end", "TQ1-8"),
        ([], "^^60^20260203X^20260203100000-0600", "start", "SCH-11.4"),
        ([], "^^60^20260203090000-0600^20260203100000", "end", "SCH-11.5"),
        (["AIS|1||G0151|2026-02-03|||45|MIN\r"], "", "start", "AIS-4"),
        ([seg("AIG", {1: "1", 3: "R1^Nurse", 8: "x"})], "", "start", "AIG-8"),
        ([seg("AIL", {1: "1", 3: "L1", 6: "x"})], "", "start", "AIL-6"),
        ([seg("AIP", {1: "1", 3: "N1", 6: "x"})], "", "start", "AIP-6"),
    ],
)
def test_an_unreadable_appointment_time_is_null_and_flagged_naming_its_field(
    segments: list[str], sch11: str, field: str, where: str
) -> None:
    record = siu(*segments, sch_fields={11: sch11})
    assert record[field] is None and flags(record)[field] == "invalid"
    assert reason(record, field).startswith(f"{where} ")


@pytest.mark.parametrize(("pv1", "field", "where"), [({44: "2026-02-03"}, "start", "PV1-44"),
                                                     ({45: "20260203250000+0000"}, "end", "PV1-45")])
def test_an_unreadable_encounter_time_is_null_and_flagged_naming_its_field(
    pv1: dict[int, str], field: str, where: str
) -> None:
    record = oru(seg("PV1", {1: "1", **pv1}), OBR_FULL)
    assert record[field] is None and flags(record)[field] == "invalid"
    assert reason(record, field).startswith(f"{where} ")


def test_tq1_end_wins_over_the_duration() -> None:
    record = siu("TQ1|1|||||15^MIN|20260203090000-0600|20260203100000-0600\r")
    assert record["end"] == "2026-02-03T16:00:00Z"


@pytest.mark.parametrize(
    ("text", "entity", "field", "why"),
    [
        (MSH.format(type="ORU^R01^ORU_R01") + PID.format(dob="", sex=""), "encounters", "OBR",
         "segment is missing: the encounter cannot be identified"),
        (MSH.format(type="ORU^R01^ORU_R01") + "PV1|1\rOBR|1|FL-1\r", "encounters", "OBR-3",
         "has no filler order number (and PV1-19 no visit number)"),
        (MSH.format(type="SIU^S12^SIU_S12") + PID.format(dob="", sex=""), "appointments", "SCH",
         "segment is missing: the appointment cannot be identified"),
        (MSH.format(type="SIU^S12^SIU_S12") + "SCH|^EHR|^WS\r", "appointments", "SCH-2",
         "has no filler (or placer) appointment id"),
        (MSH.format(type="ADT^A08^ADT_A01") + "EVN|A08\r", "patients", "PID",
         "segment is missing: the patient cannot be identified"),
        (MSH.format(type="ADT^A08^ADT_A01") + "PID|1||X^^^B^AN\r", "patients", "PID-3",
         "has no WellSky patient id (type PI) and no MRN (type MR or a configured authority)"),
        (MSH.format(type="ADT^A08^ADT_A01").replace("20260205170000-0500", "") + PID.format(dob="", sex=""),
         "patients", "MSH-7", "message date/time is required: it is the record's updated_at"),
    ],
)
def test_each_refusal_names_its_entity_field_and_reason(text: str, entity: str, field: str, why: str) -> None:
    with pytest.raises(NormalizationError) as err:
        normalize_records(text)
    assert (err.value.entity, err.value.field, err.value.reason) == (entity, field, why)


@pytest.mark.parametrize("message_type", ["ORU^R01^ORU_R01", "SIU^S12^SIU_S12"])
def test_a_referenced_patient_typed_in_cx4_is_flagged_on_patient_id(message_type: str) -> None:
    body = "SCH|PL-1|FL-1|||||PT\rTQ1|1||||||20260203090000-0600\r" if message_type.startswith("SIU") else OBR_FULL
    pid = "PID|1||MB^^^MC~M-1^^^MR||DOE^JANE\r"  # the type that is not the patient's id comes first
    ((_, record),) = normalize_records(MSH.format(type=message_type) + pid + body.replace("{obr25}", "F"))
    assert record["patient_id"] == "M-1"
    assert flags(record)["patient_id"] == "invalid" and "mrn" not in flags(record)
    assert reason(record, "patient_id").startswith("PID-3 identifier type MR sent in CX.4")
    assert "medicare_mbi" not in flags(record)  # not the identifier the record refers to the patient by
    unresolved = normalize_records(MSH.format(type=message_type) + "PID|1||X^^^B^AN\r" + body.replace("{obr25}", "F"))
    assert flags(unresolved[0][1])["patient_id"] == "unresolved_reference"
    assert reason(unresolved[0][1], "patient_id") == "PID-3 has no WellSky id (PI) and no MRN"


def test_a_merge_reads_each_pid_with_its_own_pv1_and_skips_other_segments() -> None:
    text = MSH.format(type="ADT^A40^ADT_A39")
    for n, status in enumerate("ADI", start=1):
        text += (f"PID|1||W{n}^^^WELLSKY^PI||DOE^JANE||19700101|F\rPD1|" + "|" * 40 + "P\r"
                 + f"MRG|W0{n}^^^WELLSKY^PI\rPV1|1|O" + "|" * 39 + f"{status}\r")
    text += "PID|1||W4^^^WELLSKY^PI||DOE^JANE||19700101|F\rPD1|" + "|" * 40 + "P\rMRG|W04^^^WELLSKY^PI\r"  # no PV1
    records = [r for _, r in normalize_records(text)]
    assert [(r["id"], r["status"], r["merged_ids"]) for r in records] == [
        ("W1", "active", ["W01"]), ("W2", "discharged", ["W02"]), ("W3", "inactive", ["W03"]), ("W4", None, ["W04"])]


@pytest.mark.parametrize(
    ("text", "field", "kind", "why"),
    [
        (MSH.format(type="ADT^A08^ADT_A01") + PID.format(dob="19700101", sex="Z"), "gender", "unmapped_code",
         "PID-8 administrative sex is not one of M, F, O, U, A, N, X"),
        (MSH.format(type="ADT^A08^ADT_A01") + PID.format(dob="19700101", sex="F") + seg("PV1", {41: "Q"}),
         "status", "unmapped_code", "PV1-41 account status is not one of P, A, D, I"),
        (MSH.format(type="ADT^A08^ADT_A01") + PID.format(dob="19700101", sex="F") + "IN1|x\r",
         "coverage.0.order", "invalid", "IN1-1 set id (order of benefits) is not a number"),
        (MSH.format(type="ADT^A40^ADT_A39") + PID.format(dob="19700101", sex="F") + "MRG|\r",
         "merged_ids", "missing", "MRG-1 names no prior patient identifier"),
        (MSH.format(type="SIU^S12^SIU_S12") + "SCH|P|F|||||PT\r" + TQ1 + seg("AIS", {1: "1", 3: "XYZ^x^L"}),
         "service_code", "unmapped_code",
         "AIS-3 is not a HCPCS or CPT code"),
        (MSH.format(type="SIU^S12^SIU_S12") + "SCH|P|F|||||RN\r" + TQ1, "discipline",
         "unmapped_code", "no WellSky discipline code in AIP-4, ZSC-4 or SCH-7"),
        (MSH.format(type="SIU^S12^SIU_S12") + seg("SCH", {1: "P", 2: "F", 7: "PT", 25: "Odd"}) + TQ1, "status",
         "unmapped_code", "SCH-25 filler status code has no canonical equivalent"),
        (MSH.format(type="SIU^S19^SIU_S12") + "SCH|P|F|||||PT\r" + TQ1, "status", "missing",
         "SIU^S19 changes a resource of the appointment and SCH-25 gives no status"),
        (MSH.format(type="SIU^S12^SIU_S12") + "SCH|P|F|||||PT||||^^60^20260203080000-0600\r" + TQ1, "start",
         "invalid", "SCH-11.4 (deprecated) disagrees with TQ1-7; TQ1 used (v2.5+ rule)"),
        (MSH.format(type="SIU^S12^SIU_S12") + "SCH|P|F|||||PT||||^^60^^20260203080000-0600\r" + TQ1, "end",
         "invalid", "SCH-11.5 (deprecated) disagrees with TQ1-8; TQ1 used (v2.5+ rule)"),
        (MSH.format(type="ORU^R01^ORU_R01") + PID.format(dob="19700101", sex="F") + OBR.format(status="Q"),
         "status", "unmapped_code", "OBR-25 result status is not one of P, I, R, S, A, F, C, X"),
        (MSH.format(type="ORU^R01^ORU_R01") + PID.format(dob="19700101", sex="F") + seg("PV1", {10: "MED"})
         + OBR.format(status="F"), "discipline", "unmapped_code",
         "PV1-10 hospital service is not a WellSky discipline"),
    ],
)
def test_each_flag_has_one_line_naming_the_hl7_field(text: str, field: str, kind: str, why: str) -> None:
    ((_, record),) = normalize_records(text)
    assert [f for f in record["data_quality"] if f["field"] == field] == [{"field": field, "kind": kind,
                                                                          "reason": why}]


def test_an_empty_birth_date_is_missing_not_invalid() -> None:
    record = adt({7: ""})
    assert record["birth_date"] is None and flags(record)["birth_date"] == "missing"


def test_an_empty_identifier_repetition_is_skipped_not_the_end_of_the_list() -> None:
    assert adt({3: "~^^^HOSP^MR~W1^^^WELLSKY^PI"})["id"] == "W1"


def test_a_merge_prior_id_typed_mr_wins_over_an_untyped_first_repetition() -> None:
    text = MSH.format(type="ADT^A40^ADT_A39") + PID.format(dob="19700101", sex="F") + "MRG|X1^^^B^AN~M5^^^H^MR\r"
    ((_, record),) = normalize_records(text)
    assert record["merged_ids"] == ["M5"]


def test_diagnoses_and_coverage_are_sorted_whatever_the_order_sent() -> None:
    record = oru(OBR_FULL, seg("DG1", {1: "1", 3: "I10", 15: "3"}), seg("DG1", {1: "2", 3: "E11.9", 15: "1"}),
                 seg("DG1", {1: "3", 3: "R52", 15: "2"}))
    assert [d["code"] for d in record["diagnoses"]] == ["E11.9", "R52", "I10"]
    record = adt({}, "IN1|3|||C\r", "IN1|1|||A\r", "IN1|2|||B\r")
    assert [c["payer_name"] for c in record["coverage"]] == ["A", "B", "C"]


@pytest.mark.parametrize(("seg_name", "at"), [("AIL", 6), ("AIP", 6)])
def test_ail_and_aip_durations_are_read_in_their_own_unit(seg_name: str, at: int) -> None:
    record = siu(seg(seg_name, {1: "1", 3: "X1", at: "20260203090000-0600", 9: "2", 10: "H", 11: "MIN"}))
    assert (record["start"], record["end"]) == ("2026-02-03T15:00:00Z", "2026-02-03T17:00:00Z")


def test_split_keeps_a_leading_segment_verbatim_and_a_batch_followed_by_a_headless_segment() -> None:
    one = "MSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P|2.5\r"
    assert split_messages("XAB|1\r" + one) == ["XAB|1\r", one]
    assert split_messages("BHS|^~\\&\rPID|1\r" + one + "BTS|1\r") == ["PID|1\r", one]


def test_charset_escapes_are_dropped_not_decoded_as_hex() -> None:
    record = adt({5: "DOE^A\\C2842\\B\\M2442\\C"})
    assert record["first_name"] == "ABC"


@pytest.mark.parametrize("message_type", ["ADT^A08^ADT_A01", "SIU^S12^SIU_S12", "ORU^R01^ORU_R01"])
def test_a_second_patient_outside_a_merge_is_refused_not_dropped(message_type: str) -> None:
    """Found by `scripts/mutate hl7` (issue 29): the second PID of an A08 (two messages glued without the second
    MSH/EVN) was silently ignored, losing a patient; an appointment or encounter took the first patient."""
    body = {"ADT": "", "SIU": "SCH|P|F|||||PT\r", "ORU": "OBR|1||V1\r"}[message_type[:3]]
    text = MSH.format(type=message_type) + body + "PID|1||W1^^^WS^PI||DOE^JANE\rPV1|1\rPID|1||W2^^^WS^PI||ROE^ANN\r"
    with pytest.raises(NormalizationError) as err:
        normalize_records(text)
    assert (err.value.field, err.value.reason) == (
        "PID", "segment appears more than once; only a merge (ADT^A40, A47) names several patients")
    assert "W2" not in str(err.value) and "ROE" not in str(err.value)


def test_a_pv1_sent_before_the_pid_is_still_read() -> None:
    text = MSH.format(type="ADT^A08^ADT_A01") + seg("PV1", {1: "1", 41: "I"}) + PID.format(dob="19700101", sex="F")
    ((_, record),) = normalize_records(text)
    assert record["status"] == "inactive"


@pytest.mark.parametrize(
    ("sch11", "end", "flagged"),
    [
        ("^^M45^20260203090000-0600", "2026-02-03T15:45:00Z", None),
        ("^^H2^20260203090000-0600", "2026-02-03T17:00:00Z", None),
        ("^^S90^20260203090000-0600", "2026-02-03T15:01:30Z", None),
        ("^^W1^20260203090000-0600", "2026-02-10T15:00:00Z", None),
        ("^^M45^20260203090000-0600^20260203093000-0600", "2026-02-03T15:30:00Z", None),  # an explicit end wins
        ("^^INDEF^20260203090000-0600", None, "missing"),  # no end said: none guessed
        ("^^L1^20260203090000-0600", None, "missing"),  # months have no fixed length
        ("^^45^20260203090000-0600", None, "invalid"),  # a bare number: minutes? never guessed
    ],
)
def test_sch11_duration_gives_the_end_when_sch11_has_none(sch11: str, end: str | None, flagged: str | None) -> None:
    """SCH-11.3, the TQ duration (v2.x: S, M, H, D, W and a count), ends a SCH-11 timing that has no SCH-11.5."""
    record = siu(sch_fields={11: sch11})
    assert (record["start"], record["end"]) == ("2026-02-03T15:00:00Z", end)
    assert flags(record).get("end") == flagged
    if flagged == "invalid":
        assert reason(record, "end").startswith("SCH-11.3 duration")


def test_sch11_duration_wins_over_a_resource_segments_duration() -> None:
    record = siu("AIS|1||G0151|20260203090000-0600|||30|MIN\r", sch_fields={11: "^^M45^20260203090000-0600"})
    assert record["end"] == "2026-02-03T15:45:00Z"


def _values(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for value in node.values() for v in _values(value)]
    if isinstance(node, list):
        return [v for value in node for v in _values(value)]
    return [node] if isinstance(node, str) else []


def test_repeating_id_fields_give_their_first_repetition_never_a_run_together_value() -> None:
    """AIP-3, AIG-3, PV1-7 and IN1-3/4 repeat (an NPI beside the local id). Read whole, a first repetition
    without components ran into the next one: practitioner ``N1~1234567893``, resource name ``Bo~98… Jones``."""
    appointment = siu(
        seg("AIP", {1: "1", 3: "N1~1234567893^Smith^Ann^^^^^^NPI", 4: "SN"}),
        seg("AIP", {1: "2", 3: "N2^Jones^Bo~9876543210^Jones^Bo", 4: "PT"}),
        seg("AIG", {1: "3", 3: "BED-4~EQ-77^Hoyer lift", 4: "EQUIP"}),
    )
    assert appointment["practitioner_id"] == "N1"
    assert appointment["resources"] == [
        {"id": "N2", "name": "Bo Jones", "type": "PT", "kind": "personnel"},
        {"id": "BED-4", "name": None, "type": "EQUIP", "kind": "general"},
    ]
    visit = oru(seg("PV1", {1: "1", 7: "N1~1234567893^Smith^Ann"}), OBR_FULL)
    assert visit["practitioner_id"] == "N1"
    patient = adt({}, seg("IN1", {1: "1", 3: "PAYER-A~NAIC-9", 4: "First Payer~Alias Name", 36: "MEM-A"}))
    assert patient["coverage"][0] | {"order": 1} == {
        "order": 1, "payer_id": "PAYER-A", "payer_name": "First Payer", "member_id": "MEM-A"}
    for record in (appointment, visit, patient):
        assert not [v for v in _values(record) if "~" in v], record


def test_messages_cut_at_any_chunk_boundary_are_the_same_messages() -> None:
    """A file read a block at a time (``iter_messages``) gives the messages of the whole file, wherever a block
    ends: inside a segment, between CR and LF, inside a BOM, an MLLP frame or a multi-byte character."""
    from pathlib import Path

    from wellsky_core.normalize.hl7 import iter_messages

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "hl7"
    for path in sorted(fixtures.glob("*.hl7")):
        raw = path.read_bytes().replace(b"RIVERA", "RIVÉRA".encode())
        whole = list(iter_messages([raw]))
        assert whole == split_messages(raw.decode("utf-8")), path.name
        for cut in range(1, len(raw)):
            assert list(iter_messages([raw[:cut], raw[cut:]])) == whole, (path.name, cut)
        assert list(iter_messages(raw[i : i + 1] for i in range(len(raw)))) == whole, path.name


def test_each_message_is_decoded_on_its_own() -> None:
    from wellsky_core.normalize.hl7 import iter_messages

    utf8 = "MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5.1\rPID|1||M1||NÚÑEZ\r".encode()
    latin = "MSH|^~\\&|A|B|C|D|20260101||ADT^A08|2|P|2.5.1\rPID|1||M2||MÜLLER\r".encode("latin-1")
    first, second = iter_messages([utf8 + latin])
    assert "NÚÑEZ" in first and "MÜLLER" in second
