"""Home health: camelCase, ``HH-`` prefixed ids, UTC ISO timestamps, upper-case discipline codes; its web portal is
the shared Kinnser portal (``products/kinnser/``)."""

from __future__ import annotations

from ..base import Dialect

DIALECT = Dialect(
    product="home_health",
    camel_case=True,
    timestamps="iso_utc",
    dates="iso",
    integer_ids=False,
    renames={
        "*": {"last_modified": "updated_at", "clinician_id": "practitioner_id"},
        "appointments": {"visit_id": "id", "scheduled_start": "start", "scheduled_end": "end"},
        "practitioners": {"clinician_id": "id"},
    },
    gender={"M": "male", "F": "female", "O": "other", "U": "unknown"},
    patient_status={"Pending": "pending", "Admitted": "active", "Discharged": "discharged", "Non-Admit": "inactive"},
    appointment_status={"Scheduled": "scheduled", "Completed": "completed", "Cancelled": "cancelled",
                        "Missed": "missed"},
    discipline=str,
    discipline_out=str,
    name_style="nested",
    portal_channel="wellsky_core.products.kinnser.channel:KinnserPortalChannel",
    address_style="nested",
)
