"""HL7 v2 as interface engines send it -> canonical records.

The fixtures under ``tests/fixtures/hl7`` were written by hand from the HL7 v2.3-v2.8 specifications (see its
README), not captured from the sandbox; ``expected.json`` holds the canonical values, also written by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wellsky_core.errors import NormalizationError
from wellsky_core.normalize import hl7
from wellsky_core.normalize.hl7 import (
    Hl7Options,
    Unsupported,
    entity_of,
    normalize_message,
    normalize_records,
    split_messages,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hl7"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
OPTIONS = Hl7Options(
    timezone=EXPECTED["_options"]["timezone"], mrn_authorities=tuple(EXPECTED["_options"]["mrn_authorities"])
)
FILES = [name for name in EXPECTED if not name.startswith("_")]


def read_file(name: str) -> list[list[dict[str, Any]] | str]:
    """Per message of the file: its canonical records, or the skipped message type."""
    text = (FIXTURES / name).read_bytes().decode("utf-8")
    out: list[list[dict[str, Any]] | str] = []
    for message in split_messages(text):
        try:
            out.append([{"entity": e, **rec} for e, rec in normalize_records(message, OPTIONS)])
        except Unsupported as exc:
            out.append(exc.message_type)
    return out


def wrong_fields(record: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    problems = [f"entity {record['entity']}"] if record["entity"] != expected["entity"] else []
    if record["id"] != expected["id"]:
        problems.append(f"id {record['id']!r}, expected {expected['id']!r}")
    problems += [
        f"{name}: got {record.get(name)!r}, expected {want!r}"
        for name, want in expected["fields"].items()
        if record.get(name) != want
    ]
    flagged = sorted(f["field"] for f in record["data_quality"])
    if flagged != sorted(expected["flags"]):
        problems.append(f"data_quality flags {flagged}, expected {sorted(expected['flags'])}")
    return problems


def compare(name: str) -> tuple[int, int, list[str]]:
    got = read_file(name)
    want = EXPECTED[name]
    problems: list[str] = []
    total = exact = 0
    assert len(got) == len(want), f"{name}: {len(got)} messages, expected {len(want)}"
    for index, (mine, theirs) in enumerate(zip(got, want, strict=True), start=1):
        if isinstance(theirs, dict):
            if mine != theirs["skipped"]:
                problems.append(f"{name}#{index}: expected {theirs['skipped']} skipped, got {mine!r}")
            continue
        total += len(theirs)
        if isinstance(mine, str) or len(mine) != len(theirs):
            problems.append(f"{name}#{index}: expected {len(theirs)} record(s), got {mine!r}")
            continue
        for rec, exp in zip(mine, theirs, strict=True):
            wrong = wrong_fields(rec, exp)
            exact += not wrong
            problems += [f"{name}#{index} {exp['id']}: {w}" for w in wrong]
    return total, exact, problems


@pytest.mark.parametrize("name", FILES)
def test_every_fixture_message_maps_to_the_hand_written_values(name: str) -> None:
    _, _, problems = compare(name)
    assert not problems, problems


def test_at_least_95_percent_of_standard_messages_become_exact_records() -> None:
    total = exact = 0
    for name in FILES:
        t, e, _ = compare(name)
        total, exact = total + t, exact + e
    print(f"standard HL7 fixtures: {exact}/{total} records exact ({exact / total:.1%})")
    assert total >= 24
    assert exact / total >= 0.95


def test_every_adt_and_siu_event_of_the_issue_is_read() -> None:
    events = set()
    for name in FILES:
        for message in split_messages((FIXTURES / name).read_bytes().decode("utf-8")):
            fields = message.split("\r", 1)[0].split("|")
            events.add(fields[8].split("^")[1])
    wanted = {"A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A13", "A28", "A31", "A40", "A47",
              "S12", "S13", "S14", "S15", "S16", "S17", "S26"}
    assert wanted <= events


def test_a_timestamp_without_offset_needs_hl7_timezone() -> None:
    message = split_messages((FIXTURES / "adt_a01_v28_crlf.hl7").read_text())[0]
    with pytest.raises(NormalizationError) as info:
        normalize_records(message)
    assert info.value.field == "MSH-7" and "hl7_timezone" in str(info.value)
    central = normalize_records(message, Hl7Options(timezone="America/Chicago"))[0][1]
    assert central["updated_at"] == "2026-01-15T17:26:00Z"


def test_mrn_by_configured_assigning_authority() -> None:
    message = (
        "MSH|^~\\&|REG|HOSP|WELLSKY|AGENCY|20260120100000+0000||ADT^A08^ADT_A01|X1|P|2.5\r"
        "PID|1||ACCT55^^^BILLING^AN~Z-991^^^NORTHSIDE^PT||DOE^JANE||19700101|F\r"
    )
    with pytest.raises(NormalizationError) as info:
        normalize_records(message)
    assert info.value.field == "PID-3"
    record = normalize_records(message, Hl7Options(mrn_authorities=("NORTHSIDE",)))[0][1]
    assert record["id"] == "Z-991" and record["mrn"] == "Z-991"


def test_versions_2_3_to_2_8_are_accepted() -> None:
    base = (
        "MSH|^~\\&|REG|HOSP|WELLSKY|AGENCY|20260120100000+0000||ADT^A08|X1|P|{v}\r"
        "PID|1||W1^^^WELLSKY^PI||DOE^JANE||19700101|F\r"
    )
    for version in ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"):
        assert normalize_records(base.format(v=version))[0][1]["id"] == "W1", version


def test_flags_never_quote_patient_data() -> None:
    records = [r for name in FILES for msg in read_file(name) if isinstance(msg, list) for r in msg]
    text = json.dumps([r["data_quality"] for r in records])
    for value in ("RIVERA", "CARMEN", "OKONKWO", "1938", "MRN448812"):
        assert value not in text


# -- framing, header and timestamps, one rule per test (issue 29 item 6: `scripts/mutate hl7`) -----------------
HEAD = "MSH|^~\\&|REG|HOSP|WELLSKY|AGENCY|{ts}||{type}|X1|P|{v}\r"
PATIENT = "PID|1||W1^^^WELLSKY^PI||DOE^JANE||19700101|F\r"


def adt08(ts: str = "20260120100000+0000", v: str = "2.5", body: str = PATIENT, **options: Any) -> dict[str, Any]:
    ((entity, record),) = normalize_records(HEAD.format(ts=ts, type="ADT^A08^ADT_A01", v=v) + body,
                                            Hl7Options(**options))
    assert entity == "patients"
    return record


def refusal(text: str) -> NormalizationError:
    with pytest.raises(NormalizationError) as info:
        normalize_records(text)
    assert not isinstance(info.value, Unsupported)
    return info.value


def test_split_drops_bom_mllp_framing_batch_segments_and_blank_lines() -> None:
    one = HEAD.format(ts="20260120100000+0000", type="ADT^A08", v="2.5")
    text = (
        "\ufeff\x0bFHS|^~\\&|REG\r\nBHS|^~\\&|REG\n" + one.replace("\r", "\r\n") + "PID|1\n  \n\x1c\r"
        + "\x0b\ufeff" + one + "\x00PID|2\rBTS|2\rFTS\rFHS\r"
    )
    assert split_messages(text) == [one + "PID|1\r", one + "PID|2\r"]


def test_split_keeps_segments_before_any_msh_as_a_message_of_their_own() -> None:
    """Not glued to the next message: normalizing it is then refused, naming MSH (no silent loss)."""
    one = HEAD.format(ts="20260120100000+0000", type="ADT^A08", v="2.5")
    parts = split_messages("PID|1\rPV1|1\r" + one + PATIENT + "BTSX|1\r")
    assert parts == ["PID|1\rPV1|1\r", one + PATIENT + "BTSX|1\r"]  # BTSX is no batch segment: kept, refused later
    err = refusal(parts[0])
    assert (err.entity, err.field) == ("hl7", "MSH")
    assert err.reason == "message does not start with an MSH segment"
    assert refusal(parts[1]).field == "segment"


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("MSH|^~", "MSH-2", "MSH is truncated before its encoding characters"),
        ("MSHA^~\\&A", "MSH-2", "encoding characters are not 4 distinct non-alphanumeric characters"),
        ("MSH|^^\\&|", "MSH-2", "encoding characters are not 4 distinct non-alphanumeric characters"),
        ("MSH|^~\\a|", "MSH-2", "encoding characters are not 4 distinct non-alphanumeric characters"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P|2.5\rpid|1\r", "segment",
         "a segment does not start with a 3-character segment id"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P|2.5\rPIDX|1\r", "segment",
         "a segment does not start with a 3-character segment id"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P\r", "MSH-12", "version is missing or not HL7 v2.1-2.8"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P|2.9\r", "MSH-12", "version is missing or not HL7 v2.1-2.8"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P|3.0\r", "MSH-12", "version is missing or not HL7 v2.1-2.8"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P|2.5x\r", "MSH-12", "version is missing or not HL7 v2.1-2.8"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT|X|P|2.5\rPID|1||W1^^^W^PI\r", "MSH-9",
         "message type is missing (expected e.g. ADT^A08)"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT^|X|P|2.5\rEVN|\r", "MSH-9",
         "message type is missing (expected e.g. ADT^A08)"),
        ("MSH|^~\\&|A||||20260120100000+0000||^A08|X|P|2.5\rEVN|A08\r", "MSH-9",
         "message type is missing (expected e.g. ADT^A08)"),
        ("MSH|^~\\&|A||||20260120100000+0000|||X|P|2.5\r", "MSH-9", "message type is missing (expected e.g. ADT^A08)"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT|X|P|2.5\rEVN\r", "MSH-9",
         "message type is missing (expected e.g. ADT^A08)"),
        ("MSH|^~\\&", "MSH-12", "version is missing or not HL7 v2.1-2.8"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P|2.5\rZZZX\r", "segment",
         "a segment does not start with a 3-character segment id"),
        ("XMSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P|2.5\r", "MSH", "message does not start with an MSH segment"),
    ],
)
def test_a_broken_header_or_segment_is_refused_naming_the_field(text: str, field: str, reason: str) -> None:
    err = refusal(text)
    assert (err.entity, err.field, err.reason) == ("hl7", field, reason)


@pytest.mark.parametrize("single", ["EVN", "SCH", "OBR"])
def test_a_segment_that_occurs_once_per_message_twice_is_refused(single: str) -> None:
    """Two messages glued together (a lost MSH) must not become one record mixing both."""
    err = refusal(HEAD.format(ts="20260120100000+0000", type="SIU^S12", v="2.5") + f"{single}|1\r{single}|2\r")
    assert (err.entity, err.field) == ("hl7", single)
    assert err.reason.startswith("segment appears more than once; a message without its MSH was probably merged")


def test_a_second_msh_in_one_message_is_refused() -> None:
    one = HEAD.format(ts="20260120100000+0000", type="ADT^A08", v="2.5")
    assert refusal(one + PATIENT + one + PATIENT).field == "MSH"


def test_v21_style_event_in_evn1_and_the_version_component() -> None:
    text = "MSH|^~\\&|A||||20260120100000+0000||ADT|X|P|2.1^USA\rEVN|A08\r" + PATIENT
    ((entity, record),) = normalize_records(text)
    assert (entity, record["id"]) == ("patients", "W1")
    with pytest.raises(Unsupported) as info:
        normalize_records("MSH|^~\\&|A||||20260120100000+0000||ADT|X|P|2.1\rEVN|A17\r" + PATIENT)
    assert info.value.message_type == "ADT^A17" and info.value.field == "MSH-9"


@pytest.mark.parametrize(
    ("message_type", "entity"),
    [("ADT^A08", "patients"), ("SIU^S12", "appointments"), ("ORU^R01", "encounters"), ("ORU^R30", None),
     ("SIU^A08", None), ("ADT^S12", None), ("ADT^R01", None), ("ORM^O01", None), ("SIU^S23", None)],
)
def test_entity_of_each_message_type(message_type: str, entity: str | None) -> None:
    assert entity_of(*message_type.split("^")) == entity


def test_three_encoding_characters_mean_the_default_subcomponent_separator() -> None:
    text = "MSH|^~\\|A||||20260120100000+0000||ADT^A08|X|P|2.5\rPID|1||W1^^^WELLSKY^PI||DOE^JA&NE~X^Y||19700101\r"
    ((_, record),) = normalize_records(text)
    assert (record["last_name"], record["first_name"]) == ("DOE", "JA")


def test_the_message_own_separators_are_used_for_every_split() -> None:
    """MSH-1/MSH-2 may differ from ``|^~\\&``: fields, components, repetitions, subcomponents and escapes."""
    text = (
        "MSH#*@!%#A####20260120100000+0000##ADT*A08#X#P#2.5\r"
        "PID#1##ACCT*%*%BILLING*AN@W1*%*%WELLSKY*PI##DOE*JA%X!T!NE!S!Q|^~\\&@ROE*B##19700101#f*Female\r"
    )
    ((_, record),) = normalize_records(text)
    assert (record["id"], record["last_name"], record["first_name"]) == ("W1", "DOE", "JA")
    assert record["gender"] == "female" and record["birth_date"] == "1970-01-01"
    escaped = text.replace("DOE*JA%X!T!NE!S!Q|^~\\&", "DOE*JA!T!NE!S!Q!F!!R!|^~\\&")
    ((_, record),) = normalize_records(escaped)
    assert record["first_name"] == "JA%NE*Q#@|^~\\&"


@pytest.mark.parametrize(
    ("ts", "utc"),
    [
        ("20260120100000+0000", "2026-01-20T10:00:00Z"),
        ("20260120100000+0530", "2026-01-20T04:30:00Z"),
        ("20260120100000-0330", "2026-01-20T13:30:00Z"),
        ("20260120100000-0000", "2026-01-20T10:00:00Z"),
        ("20260120100059.1234+0100", "2026-01-20T09:00:59Z"),
        ("202601201000+0200", "2026-01-20T08:00:00Z"),
        ("2026012010-0100", "2026-01-20T11:00:00Z"),
        ("20260120+0000", "2026-01-20T00:00:00Z"),
        ("202601+0000", "2026-01-01T00:00:00Z"),
        ("2026+0000", "2026-01-01T00:00:00Z"),
        ("20260120100000+0000^S", "2026-01-20T10:00:00Z"),
    ],
)
def test_msh7_offsets_and_precisions(ts: str, utc: str) -> None:
    assert adt08(ts)["updated_at"] == utc


@pytest.mark.parametrize(
    ("ts", "zone", "utc"),
    [
        ("20260120100000", "America/Chicago", "2026-01-20T16:00:00Z"),  # CST, UTC-6
        ("20260720100000", "America/Chicago", "2026-07-20T15:00:00Z"),  # CDT, UTC-5
        ("20260720100000", "Asia/Kolkata", "2026-07-20T04:30:00Z"),
        ("20260720100000+0000", "America/Chicago", "2026-07-20T10:00:00Z"),  # a stated offset wins over the zone
        ("2026", "America/Chicago", "2026-01-01T06:00:00Z"),
    ],
)
def test_hl7_timezone_reads_timestamps_without_offset_in_that_zone(ts: str, zone: str, utc: str) -> None:
    assert adt08(ts, timezone=zone)["updated_at"] == utc


@pytest.mark.parametrize(
    ("ts", "reason"),
    [
        ("20260120100000", "has no UTC offset; send YYYYMMDDHHMMSS+ZZZZ or set hl7_timezone"),
        ("2026-01-20T10:00:00Z", "is not an HL7 timestamp (YYYYMMDDHHMMSS+ZZZZ)"),
        ("20260120100000.12345+0000", "is not an HL7 timestamp (YYYYMMDDHHMMSS+ZZZZ)"),
        ("20260120100000+00", "is not an HL7 timestamp (YYYYMMDDHHMMSS+ZZZZ)"),
        ("20260230100000+0000", "is not a valid calendar date/time"),
        ("20260120250000+0000", "is not a valid calendar date/time"),
    ],
)
def test_an_unusable_msh7_refuses_the_record_naming_msh7(ts: str, reason: str) -> None:
    err = refusal(HEAD.format(ts=ts, type="ADT^A08", v="2.5") + PATIENT)
    assert (err.entity, err.field, err.reason) == ("patients", "MSH-7", reason)


def test_an_unusable_timestamp_elsewhere_is_null_and_flagged_with_its_reason() -> None:
    death = "PID|1||W1^^^WELLSKY^PI||DOE^JANE||19700101|F" + "|" * 21 + "202602301200+0000|Y\r"
    record = adt08(body=death)
    (flag,) = record["data_quality"]
    assert (record["deceased_at"], record["deceased"], record["status"]) == (None, True, "discharged")
    assert (flag["field"], flag["kind"]) == ("deceased_at", "invalid")
    assert flag["reason"] == "PID-29 is not a valid calendar date/time"
    naive = adt08(body=death.replace("202602301200+0000", "202602011200"))
    assert naive["data_quality"][0]["reason"] == (
        "PID-29 has no UTC offset; send YYYYMMDDHHMMSS+ZZZZ or set hl7_timezone"
    )
    zoned = adt08(body=death.replace("202602301200+0000", "202602011200"), timezone="America/Chicago")
    assert zoned["deceased_at"] == "2026-02-01T18:00:00Z" and zoned["data_quality"] == []


@pytest.mark.parametrize(
    ("dob", "day"),
    [("19700101", "1970-01-01"), ("197001011230", "1970-01-01"), ("19700101123000.5", "1970-01-01"),
     ("19700101-0500", "1970-01-01"), ("19700101^D", "1970-01-01")],
)
def test_a_birth_date_keeps_the_day_of_a_longer_timestamp(dob: str, day: str) -> None:
    record = adt08(body=PATIENT.replace("19700101", dob))
    assert record["birth_date"] == day and "birth_date" not in [f["field"] for f in record["data_quality"]]


@pytest.mark.parametrize(
    ("text", "last_name"),
    [
        ("\ufeffMSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P|2.5\rPID|1||W1^^^WS^PI||DOE^JANE\r", "DOE"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P|2.5\nPID|1||W1^^^WS^PI||DOE^JANE\n", "DOE"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P|2.5\r\nPID|1||W1^^^WS^PI||DOE^JANE\r\n", "DOE"),
        ("MSH|^~\\&#|A||||20260120100000+0000||ADT^A08|X|P|2.7\rPID|1||W1^^^WS^PI||DOE^JANE\r", "DOE"),
        ("MSH|^~\\&|A||||20260120100000+0000||ADT^A08|X|P|2.5\rZZZ\rPID|1||W1^^^WS^PI||DOE^JANE\r", "DOE"),
    ],
    ids=["bom", "lf", "crlf", "v27-truncation-character", "segment-without-fields"],
)
def test_one_message_read_directly_with_any_terminator_bom_or_v27_header(text: str, last_name: str) -> None:
    ((_, record),) = normalize_records(text)
    assert (record["id"], record["last_name"]) == ("W1", last_name)


@pytest.mark.parametrize(("ts", "utc"), [("20260120100000+1000", "2026-01-20T00:00:00Z"),
                                         ("20260120100000-1130", "2026-01-20T21:30:00Z")])
def test_two_digit_offset_hours(ts: str, utc: str) -> None:
    assert adt08(ts)["updated_at"] == utc


def test_hl7apy_checks_each_header_shape_once_and_accepts_every_supported_one() -> None:
    """hl7apy costs milliseconds per segment, so its verdict is cached per header shape (separators, MSH-9,
    MSH-12); per-message values (MSH-7, MSH-10) do not make a new shape. Starts from an empty cache, as a new
    process does."""
    hl7._HEADER_SHAPES.clear()
    for ts, control in (("20260120100000+0000", "X1"), ("20260121100000+0000", "X2")):
        normalize_records(f"MSH|^~\\&|A||||{ts}||ADT^A08^ADT_A01|{control}|P|2.5\r" + PATIENT)
    normalize_records("MSH|^~\\&|A||||20260120100000+0000||ADT^A08|X3|P|2.8\r" + PATIENT)
    normalize_records("MSH#^~\\&#A####20260120100000+0000##ADT^A08#X4#P#2.8\r" + PATIENT.replace("|", "#"))
    assert hl7._HEADER_SHAPES == {
        ("|", "^~\\&", "ADT^A08^ADT_A01", "2.5"): None,
        ("|", "^~\\&", "ADT^A08", "2.8"): None,
        ("#", "^~\\&", "ADT^A08", "2.8"): None,
    }


def test_normalize_message_is_the_first_record_read_with_the_options_given() -> None:
    text = ("MSH|^~\\&|A||||20260120100000||ADT^A40^ADT_A39|X|P|2.5\r" + PATIENT + "MRG|W0^^^WELLSKY^PI\r"
            + PATIENT.replace("W1", "W2") + "MRG|W9^^^WELLSKY^PI\r")
    entity, record = normalize_message(text, Hl7Options(timezone="America/Chicago"))
    assert (entity, record["id"], record["updated_at"]) == ("patients", "W1", "2026-01-20T16:00:00Z")
