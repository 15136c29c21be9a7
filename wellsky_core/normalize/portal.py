"""Portal rows -> canonical records: the authorizations CSV download and the care-plan HTML report.

The portal spells dates ``MM/DD/YYYY``, codes in any case and lists as ``;``-separated text or ``<li>`` items
with ``data-*`` attributes; these functions turn one row into a validated canonical record, or raise a
``NormalizationError`` naming the field (the channel rejects the row through ``Channel.reject``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..errors import NormalizationError
from .validation import validated


def us_date(value: str, entity: str, field: str) -> str | None:
    """``MM/DD/YYYY`` (the portal's spelling) -> ISO date; empty -> None."""
    value = value.strip()
    if not value:
        return None
    try:
        return datetime.strptime(value, "%m/%d/%Y").date().isoformat()
    except ValueError:
        raise NormalizationError(entity, field, "expected a date as MM/DD/YYYY") from None


def authorization_row(row: dict[str, str]) -> dict[str, Any]:
    """One row of the authorizations CSV download (columns already renamed to canonical keys)."""
    entity = "authorizations"

    def units(field: str) -> int:
        try:
            return int(row[field])
        except ValueError:
            raise NormalizationError(entity, field, "expected a whole number", record_id=row["id"]) from None

    data = {
        "id": row["id"],
        "patient_id": row["patient_id"],
        "payer_id": row["payer_id"],
        "payer_name": row["payer_name"],
        "member_id": row["member_id"],
        "service_codes": [c.strip() for c in row["service_codes"].split(";") if c.strip()],
        "unit_type": row["unit_type"].strip().lower(),
        "rounding": row["rounding"].strip().lower() or "nearest",
        "units_authorized": units("units_authorized"),
        "units_used": units("units_used"),
        "start_date": us_date(row["start_date"], entity, "start_date"),
        "end_date": us_date(row["end_date"], entity, "end_date"),
        "status": row["status"].strip().lower(),
        "updated_at": row["updated_at"],
    }
    return validated(entity, data, row["id"])

def care_plan_row(row: dict[str, Any]) -> dict[str, Any]:
    """One row of the care-plan HTML report: ``{field: {text, datetime, items}}`` per ``td[data-field]``."""
    entity = "care_plans"

    def text(field: str) -> str:
        return str((row.get(field) or {}).get("text") or "")

    def items(field: str) -> list[dict[str, Any]]:
        return list((row.get(field) or {}).get("items") or [])

    rid = text("id")
    data = {
        "id": rid,
        "patient_id": text("patient_id"),
        "status": text("status").lower(),
        "period_start": us_date(text("period_start"), entity, "period_start"),
        "period_end": us_date(text("period_end"), entity, "period_end"),
        "goals": [
            {
                "description": g["text"],
                "status": g["data"].get("status"),
                "target_date": g["data"].get("targetDate"),
            }
            for g in items("goals")
        ],
        "interventions": [
            {
                "description": i["text"],
                "discipline": i["data"].get("discipline"),
                "frequency": i["data"].get("frequency"),
            }
            for i in items("interventions")
        ],
        "outcomes": [
            {
                "description": o["text"],
                "achieved": {"yes": True, "no": False}.get(o["data"].get("achieved", "")),
                "recorded_on": o["data"].get("recordedOn"),
            }
            for o in items("outcomes")
        ],
        "updated_at": (row.get("updated_at") or {}).get("datetime"),
    }
    return validated(entity, data, rid)
