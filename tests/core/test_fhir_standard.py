"""Standard FHIR R4 (US Core, Da Vinci PAS) as certified servers send it -> canonical records.

The fixtures under ``tests/fixtures/fhir`` were written by hand from the published specifications (see its
README), not captured from the sandbox; ``expected.json`` holds the canonical values, also written by hand.
Lenient on read: only a record without a usable id or ``meta.lastUpdated`` is refused; every other gap is a
null field named in ``data_quality``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from wellsky_core.channels.fhir import normalize_page
from wellsky_core.errors import NormalizationError
from wellsky_core.models import ENTITIES
from wellsky_core.normalize import fhir as fhir_norm

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
RULES = fhir_norm.FhirRules(EXPECTED["_rules"])
ENTITY_NAMES = [e for e in ENTITIES if e in EXPECTED]


def read_entity(entity: str) -> tuple[dict[str, dict[str, Any]], list[str], Counter[str]]:
    """(records by id, ids refused, skipped counts) for one fixture Bundle, through the channel's page logic."""
    bundle = json.loads((FIXTURES / f"{entity}.json").read_text())
    refused: list[str] = []
    skipped: Counter[str] = Counter()

    def reject(stream: str, exc: Exception, payload: Any, **context: Any) -> None:
        assert isinstance(exc, NormalizationError) and stream == entity
        refused.append(payload.get("id"))

    resources = [((e.get("search") or {}).get("mode"), e["resource"]) for e in bundle["entry"]]
    records = normalize_page(entity, fhir_norm.ENTITY_TYPES[entity], resources, RULES, reject, skipped)
    return {r["id"]: r for r in records}, refused, skipped


def wrong_fields(record: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    problems = [
        f"{name}: got {record.get(name)!r}, expected {want!r}"
        for name, want in expected["fields"].items()
        if record.get(name) != want
    ]
    flagged = sorted(f["field"] for f in record["data_quality"])
    if flagged != sorted(expected["flags"]):
        problems.append(f"data_quality flags {flagged}, expected {sorted(expected['flags'])}")
    return problems


@pytest.mark.parametrize("entity", ENTITY_NAMES)
def test_every_fixture_record_maps_to_the_hand_written_values(entity: str) -> None:
    records, refused, skipped = read_entity(entity)
    spec = EXPECTED[entity]
    assert sorted(refused) == sorted(spec["refused"]), "only a missing id or lastUpdated may refuse a record"
    assert sum(skipped.values()) == len(spec.get("skipped", []))
    assert set(records) == set(spec["records"]), "every other resource becomes a record"
    problems = {rid: wrong_fields(records[rid], want) for rid, want in spec["records"].items()}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}


def test_at_least_95_percent_of_standard_resources_become_exact_records() -> None:
    """The acceptance figure: resources that are records of an entity become records with no wrong field."""
    total = exact = 0
    for entity in ENTITY_NAMES:
        records, _, _ = read_entity(entity)
        for rid, want in EXPECTED[entity]["records"].items():
            total += 1
            exact += rid in records and not wrong_fields(records[rid], want)
    print(f"standard FHIR fixtures: {exact}/{total} resources became exact records ({exact / total:.1%})")
    assert total >= 25
    assert exact / total >= 0.95


def test_flags_name_fields_and_never_values() -> None:
    records, _, _ = read_entity("patients")
    text = json.dumps([r["data_quality"] for r in records.values()])
    for value in ("Nguyen", "Linh", "1950-07-04", "Baby Girl Doe"):
        assert value not in text
    kinds = {f["kind"] for r in records.values() for f in r["data_quality"]}
    assert kinds <= {"missing", "unmapped_code", "invalid", "unresolved_reference"}


def test_mrn_by_type_code_from_any_system_and_by_configured_tenant_system() -> None:
    bundle = json.loads((FIXTURES / "patients.json").read_text())
    by_id = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    assert fhir_norm.patient(by_id["example"])["mrn"] == "1032702"  # type MR, the hospital's own system
    assert fhir_norm.patient(by_id["tenant-system"])["mrn"] is None  # no type, system not configured
    configured = fhir_norm.Resolver(rules=RULES)
    assert fhir_norm.patient(by_id["tenant-system"], configured)["mrn"] == "AGY-000451"


def test_practitioner_role_joins_by_literal_and_by_identifier_reference() -> None:
    records, _, _ = read_entity("practitioners")
    assert records["practitioner-1"]["roles"] == ["General Practice"]  # PractitionerRole.practitioner.identifier
    assert records["nurse-42"]["roles"] == ["Home Health Registered Nurse"]  # absolute literal reference


def test_a_claim_response_for_a_claim_is_skipped_and_counted_not_dead_lettered() -> None:
    _, refused, skipped = read_entity("authorizations")
    assert refused == []
    assert list(skipped.items()) == [("ClaimResponse (ClaimResponse.use is not preauthorization)", 1)]


def test_r5_spellings_of_class_and_preauthref_are_read() -> None:
    enc = {"resourceType": "Encounter", "id": "r5", "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
           "status": "finished", "subject": {"reference": "Patient/p"},
           "class": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"}]}]}
    assert fhir_norm.encounter(enc, {})["encounter_class"] == "HH"
    auth = {"resourceType": "ClaimResponse", "id": "r5a", "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
            "use": "preauthorization", "patient": {"reference": "Patient/p"}, "preAuthRef": ["PA-9"]}
    assert fhir_norm.authorization(auth)["authorization_number"] == "PA-9"
