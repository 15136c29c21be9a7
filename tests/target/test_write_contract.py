"""schemas/write/ publishes what target-wellsky accepts: records without `id`/`updated_at` (new ones) pass it and
the target's own validation alike, and what one refuses the other refuses too."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from wellsky_core.errors import WriteRefused
from wellsky_core.writes import validate_for_write

ROOT = Path(__file__).resolve().parents[2]

NEW_PATIENT = {
    "mrn": "MRN-7001",
    "first_name": "Ada",
    "last_name": "Quinn",
    "birth_date": "1941-03-02",
    "gender": "female",
    "status": "pending",
}
NEW_APPOINTMENT = {
    "external_id": "ehr-991",
    "patient_id": "HH-P000001",
    "start": "2026-12-01T15:00:00Z",
    "end": "2026-12-01T16:00:00Z",
    "status": "scheduled",
    "discipline": "SN",
    "service_code": "G0299",
}


def contract(stream: str) -> dict:
    return json.loads((ROOT / "schemas" / "write" / f"{stream}.json").read_text())


@pytest.mark.parametrize(
    ("stream", "record", "accepted"),
    [
        ("patients", NEW_PATIENT, True),
        ("patients", {**NEW_PATIENT, "id": "HH-P000001", "updated_at": "2026-11-01T00:00:00Z"}, True),
        ("patients", {k: v for k, v in NEW_PATIENT.items() if k != "last_name"}, False),
        ("patients", {**NEW_PATIENT, "gender": "M"}, False),
        ("patients", {**NEW_PATIENT, "birth_date": "03/02/1941"}, False),
        ("patients", {**NEW_PATIENT, "unknown_field": 1}, False),
        ("appointments", NEW_APPOINTMENT, True),
        ("appointments", {**NEW_APPOINTMENT, "status": "booked"}, False),
        ("appointments", {k: v for k, v in NEW_APPOINTMENT.items() if k != "patient_id"}, False),
    ],
)
def test_published_write_contract_agrees_with_the_target(stream, record, accepted):
    validator = jsonschema.Draft7Validator(contract(stream), format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    schema_ok = not list(validator.iter_errors(record))
    try:
        validate_for_write(stream, record)
        target_ok = True
    except WriteRefused:
        target_ok = False
    assert (schema_ok, target_ok) == (accepted, accepted)


def test_read_schemas_still_require_what_every_record_read_from_wellsky_has():
    read = json.loads((ROOT / "schemas" / "patients.json").read_text())
    assert {"id", "updated_at"} <= set(read["required"])
    assert not {"id", "updated_at"} & set(contract("patients")["required"])
