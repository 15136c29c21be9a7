"""Hospice: snake_case, UUID ids, epoch-second timestamps, lower-case discipline codes; its web portal is the shared
Kinnser portal (``products/kinnser/``)."""

from __future__ import annotations

from ..base import Dialect

DIALECT = Dialect(
    product="hospice",
    camel_case=False,
    timestamps="epoch",
    dates="iso",
    integer_ids=False,
    renames={
        "*": {"modified_at": "updated_at", "staff_id": "practitioner_id"},
        "patients": {"medical_record_number": "mrn"},
        "appointments": {"start_time": "start", "end_time": "end"},
    },
    gender={"male": "male", "female": "female", "other": "other", "unknown": "unknown"},
    patient_status={"pending": "pending", "active": "active", "discharged": "discharged", "inactive": "inactive"},
    appointment_status={"scheduled": "scheduled", "completed": "completed", "cancelled": "cancelled",
                        "missed": "missed"},
    discipline=str.upper,
    discipline_out=str.lower,
    name_style="flat_long",
    portal_channel="wellsky_core.products.kinnser.channel:KinnserPortalChannel",
    address_style="flat",
)
