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
from wellsky_core.normalize.hl7 import Hl7Options, Unsupported, normalize_records, split_messages

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
