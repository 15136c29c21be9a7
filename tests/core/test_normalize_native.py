"""Native records of every product normalize to exactly the tenant's logical truth, and back for writes."""

from __future__ import annotations

import httpx
import pytest

from wellsky_core.errors import NormalizationError
from wellsky_core.models import ENTITIES, MODELED_ENTITIES
from wellsky_core.normalize.native import to_canonical, to_native
from wellsky_core.products.personal_care import normalize as home_connect

MODELED_PRODUCTS = ["home_health", "hospice"]
"""The products with a modeled REST dialect; personal care speaks Home Connect (tests/core/test_home_connect.py)."""

PATHS = {e: e.replace("_", "-") for e in ENTITIES}


def _login(sb) -> httpx.Client:
    client = httpx.Client(base_url=sb.base_url)
    client.post("/sessions", json={"username": sb.username, "password": sb.password}).raise_for_status()
    return client


def _native(client: httpx.Client, entity: str) -> list[dict]:
    out, cursor = [], None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/{PATHS[entity]}", params=params).json()
        out += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return out


@pytest.mark.parametrize("product", MODELED_PRODUCTS)
def test_every_native_record_normalizes_to_the_truth(sandbox_factory, product):
    sb = sandbox_factory(product=product, scale=60)
    client = _login(sb)
    for entity in MODELED_ENTITIES:
        truth = {
            r["id"]: ENTITIES[entity].model.model_validate(r).model_dump(mode="json", by_alias=True)
            for r in sb.truth(entity)
        }
        got = {}
        for native in _native(client, entity):
            rec = to_canonical(product, entity, native)
            got[rec["id"]] = rec
        assert got.keys() == truth.keys(), entity
        for rid, rec in got.items():
            assert rec == truth[rid], (product, entity, rid)


@pytest.mark.parametrize("product", MODELED_PRODUCTS)
def test_canonical_to_native_round_trips(sandbox_factory, product):
    sb = sandbox_factory(product=product, scale=20)
    for entity in ("patients", "appointments"):
        for rec in sb.truth(entity)[:20]:
            canonical = ENTITIES[entity].model.model_validate(rec).model_dump(mode="json", by_alias=True)
            assert (
                to_canonical(product, entity, {**to_native(product, entity, canonical), **_updated(product, canonical)})
                == canonical
            )


def _updated(product: str, rec: dict) -> dict:
    """to_native drops updated_at (servers set it); put it back in the product's spelling for the round trip."""
    from datetime import datetime

    ts = datetime.fromisoformat(rec["updated_at"].replace("Z", "+00:00"))
    return {
        "home_health": {"lastModified": rec["updated_at"]},
        "hospice": {"modified_at": int(ts.timestamp())},
    }[product]


def test_the_same_patient_from_each_product_gives_the_same_canonical_record():
    canonical = {
        "id": "7",
        "mrn": "MR1",
        "medicare_mbi": None,
        "medicaid_id": None,
        "first_name": "Ada",
        "last_name": "Hale",
        "birth_date": "1941-02-03",
        "gender": "female",
        "phone": None,
        "address": {"line1": "1 Oak St", "line2": None, "city": "Tulsa", "state": "OK", "postal_code": "74101"},
        "status": "active",
        "status_code": None,
        "coverage": [],
        "data_quality": [],
        "updated_at": "2026-03-01T14:00:00Z",
    }
    natives = {
        "home_health": {
            "id": "7",
            "mrn": "MR1",
            "name": {"first": "Ada", "last": "Hale"},
            "birthDate": "1941-02-03",
            "gender": "F",
            "address": {"street": "1 Oak St", "city": "Tulsa", "state": "OK", "zip": "74101"},
            "status": "Admitted",
            "coverage": [],
            "lastModified": "2026-03-01T14:00:00Z",
        },
        "hospice": {
            "id": "7",
            "medical_record_number": "MR1",
            "first_name": "Ada",
            "last_name": "Hale",
            "birth_date": "1941-02-03",
            "gender": "female",
            "address_line1": "1 Oak St",
            "city": "Tulsa",
            "state": "OK",
            "postal_code": "74101",
            "status": "active",
            "coverage": [],
            "modified_at": 1772373600,
        },
    }
    complete = ENTITIES["patients"].model.model_validate(canonical).model_dump(mode="json", by_alias=True)
    for product, native in natives.items():
        assert to_canonical(product, "patients", native) == complete, product
        assert complete["data_quality"] == []
    # personal care (Home Connect, fact sheet section 3) carries no MRN or payers: everything else is the same
    home_connect_native = {
        "resourceType": "Patient",
        "id": 7,
        "active": True,
        "meta": {
            "lastUpdated": "2026-03-01T14:00:00+00:00",
            "tag": [
                {"code": "agencyId", "display": "4505"},
                {"code": "isClient", "display": "true"},
                {"code": "status", "display": "80"},
            ],
        },
        "name": [{"use": "official", "family": "Hale", "given": ["Ada"]}],
        "address": [{"use": "home", "line": ["1 Oak St"], "city": "Tulsa", "state": "OK", "postalCode": "74101"}],
        "gender": "female",
        "birthDate": "1941-02-03",
    }
    from datetime import UTC, datetime

    got = home_connect.to_canonical("patients", home_connect_native, datetime.now(UTC))
    assert got == {**complete, "mrn": None, "status_code": "80"}


@pytest.mark.parametrize(
    ("native", "field"),
    [
        (
            {
                "id": "1",
                "name": {"first": "A", "last": "B"},
                "birthDate": "1941-13-40",
                "gender": "F",
                "status": "Admitted",
                "lastModified": "2026-03-01T14:00:00Z",
            },
            "birthDate",
        ),
        (
            {
                "id": "1",
                "name": {"first": "A", "last": "B"},
                "birthDate": "1941-01-01",
                "gender": "X",
                "status": "Admitted",
                "lastModified": "2026-03-01T14:00:00Z",
            },
            "gender",
        ),
        (
            {
                "id": "1",
                "name": {"first": "A", "last": "B"},
                "birthDate": "1941-01-01",
                "gender": "F",
                "status": "Admitted",
                "lastModified": "2026-03-01T14:00:00",
            },
            "lastModified",
        ),
        (
            {
                "id": "1",
                "name": "A B",
                "birthDate": "1941-01-01",
                "gender": "F",
                "status": "Admitted",
                "lastModified": "2026-03-01T14:00:00Z",
            },
            "name",
        ),
        (
            {
                "id": "1",
                "name": {"first": "A"},
                "birthDate": "1941-01-01",
                "gender": "F",
                "status": "Admitted",
                "lastModified": "2026-03-01T14:00:00Z",
            },
            "last_name",
        ),
    ],
)
def test_bad_native_values_become_null_with_a_flag_naming_the_field_not_the_value(native, field):
    """Lenient read: only a bad key or timestamp refuses the record; any other bad value is null + a flag."""
    if field == "lastModified":
        with pytest.raises(NormalizationError) as info:
            to_canonical("home_health", "patients", native)
        message = str(info.value)
        assert field in message and "2026" not in message
        return
    record = to_canonical("home_health", "patients", native)
    flagged = {f["field"]: f for f in record["data_quality"]}
    canonical_field = {"birthDate": "birth_date", "gender": "gender", "name": "first_name"}.get(field, field)
    assert canonical_field in flagged, record["data_quality"]
    assert record[canonical_field] is None
    assert record["id"] == "1" and record["updated_at"] == "2026-03-01T14:00:00Z"
    flag = flagged[canonical_field]
    assert flag["kind"] == ("missing" if field == "last_name" else "unmapped_code" if field == "gender" else "invalid")
    assert flag["kind"] == "missing" or field in flag["reason"] or canonical_field in flag["reason"]
    assert "1941" not in str(record["data_quality"]) and "A B" not in str(record["data_quality"])
