"""Personal care (ClearCare-like): clients/caregivers/shifts, integer ids, local-offset timestamps, MM/DD/YYYY
dates and discipline words."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from .base import Dialect

DISCIPLINE_WORDS = {
    "Skilled Nursing": "SN",
    "Physical Therapy": "PT",
    "Occupational Therapy": "OT",
    "Speech Therapy": "ST",
    "Social Work": "MSW",
    "Home Health Aide": "HHA",
}
_WORDS_BY_CODE = {code: word for word, code in DISCIPLINE_WORDS.items()}


def _word_to_code(value: str) -> str:
    return DISCIPLINE_WORDS.get(value, value)


def _code_to_word(value: str) -> str:
    return _WORDS_BY_CODE[value]


DIALECT = Dialect(
    product="personal_care",
    camel_case=False,
    timestamps="iso_local",
    dates="mdy",
    integer_ids=True,
    renames={
        "*": {"updated": "updated_at", "client_id": "patient_id", "caregiver_id": "practitioner_id"},
        "patients": {"client_number": "mrn", "mbi": "medicare_mbi"},
        "appointments": {"shift_start": "start", "shift_end": "end", "service_type": "discipline"},
        "practitioners": {"skills": "disciplines"},
    },
    gender={"Male": "male", "Female": "female", "Other": "other", "Unknown": "unknown"},
    patient_status={"Prospect": "pending", "Active": "active", "Discharged": "discharged", "Inactive": "inactive"},
    appointment_status={"Scheduled": "scheduled", "Completed": "completed", "Cancelled": "cancelled",
                        "No Show": "missed"},
    discipline=_word_to_code,
    discipline_out=_code_to_word,
    name_style="flat_short",
    address_style="list",
    local_tz=ZoneInfo("America/Chicago"),
)
