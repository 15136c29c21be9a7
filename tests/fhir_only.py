"""Canonical fields the sandbox's FHIR face fills from standard elements but its REST face and truth do not hold.

The sandbox renders Encounter.class (HH), ClaimResponse.preAuthRef and addItem, and CarePlan.activity statuses;
its logical records (the test oracle) and its native REST records have no such fields, so they stay empty there.
Comparisons of FHIR-read records with the truth or with REST leave these out, and
``tests/core/test_fhir_channel.py`` checks their FHIR values on their own.
"""

from __future__ import annotations

from typing import Any

FHIR_ONLY: dict[str, tuple[str, ...]] = {
    "encounters": ("encounter_class",),
    "authorizations": ("authorization_number", "items"),
    "care_plans": ("activities",),
}


def comparable(entity: str, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without the FHIR-only fields of its entity."""
    return {k: v for k, v in record.items() if k not in FHIR_ONLY.get(entity, ())}


def without_fhir_only(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without any entity's FHIR-only fields (their names are unique to their entity)."""
    drop = {f for fields in FHIR_ONLY.values() for f in fields}
    return {k: v for k, v in record.items() if k not in drop}
