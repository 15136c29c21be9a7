"""Idempotency keys: deterministic from (tenant, resource, natural key, canonical body)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal

from wellsky_core.idempotency import canonical_json, idempotency_key

BODY = {
    "mrn": "MRN-1001",
    "name": {"first": "Ada", "last": "Lovelace"},
    "birthDate": "1950-03-12",
    "lastModified": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-02T00:00:00Z",
}


def test_key_ignores_key_order_and_whitespace():
    shuffled = json.loads(json.dumps(dict(reversed(list(BODY.items())))))
    shuffled["name"] = {"last": "Lovelace", "first": "Ada"}
    assert idempotency_key("t1", "patients", "MRN-1001", BODY) == idempotency_key(
        "t1", "patients", "MRN-1001", shuffled
    )
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == '{"a":[1,{"c":3,"d":2}],"b":1}'


def test_every_component_changes_the_key():
    base = idempotency_key("t1", "patients", "MRN-1001", BODY)
    assert base.startswith("wsk1-") and len(base) == 5 + 64
    assert idempotency_key("t2", "patients", "MRN-1001", BODY) != base
    assert idempotency_key("t1", "appointments", "MRN-1001", BODY) != base
    assert idempotency_key("t1", "patients", "MRN-1002", BODY) != base
    assert idempotency_key("t1", "patients", "MRN-1001", {**BODY, "mrn": "x"}) != base


def test_volatile_fields_are_excluded_by_choice():
    changed = {**BODY, "updated_at": "2027-01-01T00:00:00Z"}
    assert idempotency_key("t", "patients", "k", BODY) == idempotency_key("t", "patients", "k", changed)
    assert idempotency_key("t", "patients", "k", BODY, exclude=()) != idempotency_key(
        "t", "patients", "k", changed, exclude=()
    )
    moved = {**BODY, "lastModified": "2030-01-01T00:00:00Z"}
    assert idempotency_key("t", "patients", "k", BODY, exclude=("updated_at", "lastModified")) == idempotency_key(
        "t", "patients", "k", moved, exclude=("updated_at", "lastModified")
    )


def test_rich_values_and_tuple_keys():
    body = {"when": datetime(2026, 1, 1, 14, 0, tzinfo=UTC), "day": date(2026, 1, 1), "units": Decimal("1.50")}
    key = idempotency_key("t", "appointments", ("EXT", "42"), body)
    assert key == idempotency_key("t", "appointments", ["EXT", "42"], dict(reversed(list(body.items()))))


def test_stable_across_processes():
    """Another interpreter with another hash seed computes the very same key."""
    code = (
        "import json,sys; from wellsky_core.idempotency import idempotency_key as k; "
        "print(k('t1','patients','MRN-1001', json.loads(sys.argv[1])))"
    )
    keys = set()
    for seed in ("1", "987"):
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(BODY)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        keys.add(out.stdout.strip())
    assert keys == {idempotency_key("t1", "patients", "MRN-1001", BODY)}


def test_non_json_values_have_one_spelling_each():
    """Values a body may carry before JSON: each has one canonical spelling, and unknown types are refused."""
    import enum
    from uuid import UUID

    from pydantic import BaseModel

    class Status(enum.Enum):
        BOOKED = "scheduled"

    class Name(BaseModel):
        first: str
        born: date
        raw: bytes = b"x"  # only JSON mode turns bytes into text: proves models are dumped in JSON mode

    uid = UUID("12345678-1234-5678-1234-567812345678")
    value = {
        "amount": Decimal("12.50"),
        "uid": uid,
        "status": Status.BOOKED,
        "codes": {"SN", "PT", "OT"},
        "frozen": frozenset({3, 1, 2}),
        "name": Name(first="Ada", born=date(1950, 3, 12)),
        "seen": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    assert json.loads(canonical_json(value)) == {
        "amount": "12.50",
        "uid": "12345678-1234-5678-1234-567812345678",
        "status": "scheduled",
        "codes": ["OT", "PT", "SN"],
        "frozen": [1, 2, 3],
        "name": {"first": "Ada", "born": "1950-03-12", "raw": "x"},
        "seen": "2026-01-02T03:04:05+00:00",
    }
    assert canonical_json({"codes": {"b", "a"}}) == canonical_json({"codes": {"a", "b"}})
    assert canonical_json({"mixed": {2, "a"}}) == '{"mixed":["a",2]}', "mixed types still sort (by repr)"
    try:
        canonical_json({"x": object()})
    except TypeError as exc:
        assert str(exc) == "cannot canonicalize a object for an idempotency key"
    else:
        raise AssertionError("an unknown type must be refused, not spelled somehow")


def test_key_formula_is_stable_across_releases():
    """A write retried by the next release (an upgrade between a lost answer and its replay) must carry the
    same key, so the formula is pinned: tenant, resource, natural key and body, non-ASCII text kept as is."""
    body = {"name": {"first": "Zoë", "last": "Ødegård"}, "updated_at": "2026-01-01T00:00:00Z", "mrn": "M1"}
    assert canonical_json(body) == (
        '{"mrn":"M1","name":{"first":"Zoë","last":"Ødegård"},"updated_at":"2026-01-01T00:00:00Z"}'
    )
    assert idempotency_key("tenant-a", "patients", ("M1", 2), body) == GOLDEN_KEY


GOLDEN_KEY = "wsk1-a28e2c186c415cb80cb0ef474163b7904a4952ddf70519082427d6d2add0682b"


def test_based_on_binds_the_key_to_the_version_it_was_computed_against():
    body = {"phone": "555-0101"}
    plain = idempotency_key("t", "patients", "HH-P1", body)
    v1 = idempotency_key("t", "patients", "HH-P1", body, based_on={"updated_at": "2026-01-01T00:00:00Z"})
    v2 = idempotency_key("t", "patients", "HH-P1", body, based_on={"updated_at": "2026-01-02T00:00:00Z"})
    assert len({plain, v1, v2}) == 3, "the same change against another version is another write"
    assert v1 == idempotency_key("t", "patients", "HH-P1", body, based_on={"updated_at": "2026-01-01T00:00:00Z"})
    assert v1 == "wsk1-" + hashlib.sha256(
        b'{"b":{"phone":"555-0101"},"k":"HH-P1","r":"patients","t":"t","v":{"updated_at":"2026-01-01T00:00:00Z"}}'
    ).hexdigest(), "the formula is pinned (a release must replay the previous release's keys)"
