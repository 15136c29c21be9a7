"""Canonical records -> personal care's Home Connect write bodies, validated by the documented write rules
(``docs/facts/wellsky-home-connect.md`` §4, §6) before a byte is sent: writing is strict.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from ...writes import control_character_path

CANONICAL_TO_CLIENT_STATUS = {"pending": "1", "active": "80", "inactive": "90", "discharged": "80"}
"""For creates and status changes: the code each canonical status is written as (inverse of client_status)."""


class WriteInvalid(ValueError):
    """A canonical record that breaks a documented Home Connect write rule; names the field and the fix."""

    def __init__(self, field: str, fix: str) -> None:
        self.field = field
        super().__init__(f"{field}: {fix}")


_PHONE_FORMATTING = re.compile(r"[\s().\-]")


def valid_phone(value: str, field: str = "phone") -> str:
    """Exactly 10 digits, no country code, first digit 2-9 (§4); spaces, dots, dashes and brackets are dropped."""
    digits = _PHONE_FORMATTING.sub("", value)
    if not re.fullmatch(r"[2-9]\d{9}", digits):
        raise WriteInvalid(field, "must be a 10-digit US number without country code, first digit 2-9 "
                                  "(e.g. 3035550123)")
    return digits


def check_text(value: Any, field: str) -> None:
    """Code points below 32 are refused except tab, CR and LF (§6): the rule every write keeps
    (``writes.CONTROL_CHARACTERS``), applied to the native payload this product builds."""
    where = control_character_path(value, field)
    if where is not None:
        raise WriteInvalid(where, "contains a control character (below U+0020 other than tab, CR, LF); remove it")


def agency_tag(agency_id: str) -> dict[str, str]:
    return {"code": "agencyId", "display": str(agency_id)}


def patient_body(changes: dict[str, Any], agency_id: str, *, create: bool) -> dict[str, Any]:
    """Canonical patient fields -> the body of ``POST /v1/patients/`` (create) or ``PUT /v1/patients/{id}/``
    (partial update: only the fields given change, §4). Validates every documented rule first."""
    check_text(changes, "patient")
    body: dict[str, Any] = {"resourceType": "Patient"}
    tag_list = [agency_tag(agency_id)]
    if "first_name" in changes or "last_name" in changes:
        body["name"] = [{"use": "official", "family": changes.get("last_name"), "given": [changes.get("first_name")]}]
    if "birth_date" in changes and changes["birth_date"] is not None:
        try:
            body["birthDate"] = date.fromisoformat(str(changes["birth_date"])).isoformat()
        except ValueError:
            raise WriteInvalid("birth_date", "must be a date YYYY-MM-DD") from None
    if "gender" in changes:
        body["gender"] = changes["gender"]
    if "phone" in changes:
        body["telecom"] = (
            [{"system": "phone", "value": valid_phone(changes["phone"]), "use": "mobile"}] if changes["phone"] else []
        )
    if "address" in changes:
        addr = changes["address"]
        body["address"] = (
            [
                {
                    "use": "home",
                    "line": [p for p in (addr.get("line1"), addr.get("line2")) if p],
                    "city": addr.get("city"),
                    "state": addr.get("state"),
                    "postalCode": addr.get("postal_code"),
                }
            ]
            if addr
            else []
        )
    if "status" in changes:
        status = changes["status"]
        body["active"] = status in ("active", "pending")  # discharged = client code 80 + active false
        tag_list += [
            {"code": "status", "display": CANONICAL_TO_CLIENT_STATUS[status]},
            {"code": "isClient", "display": "false" if status == "pending" else "true"},
        ]
    if create:
        missing = [f for f in ("first_name", "last_name", "birth_date", "status") if not changes.get(f)]
        if missing:
            raise WriteInvalid(missing[0], "is required to create a Home Connect client")
    body["meta"] = {"tag": tag_list}
    return body


__all__ = ["CANONICAL_TO_CLIENT_STATUS", "WriteInvalid", "agency_tag", "check_text", "patient_body", "valid_phone"]
