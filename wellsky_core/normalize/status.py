"""Status rules shared by every normalizer (one home per rule; see docs/standard-mappings.md)."""

from __future__ import annotations

from typing import Literal

PatientStatus = Literal["pending", "active", "discharged", "inactive"]

DECEASED_STATUS: PatientStatus = "discharged"
"""A deceased patient's canonical status when the source states none: death ends the episode of care, and
home health and hospice record it as a discharge (OASIS RFA 8 'death at home', hospice 'discharged: death').
``deceased``/``deceased_at`` keep the fact itself."""


def patient_status(
    stated: PatientStatus | None, deceased: bool | None, implied: PatientStatus | None = None
) -> PatientStatus | None:
    """The source's own status field, else ``discharged`` for a deceased patient, else what the message or
    record implies (an HL7 event, FHIR ``Patient.active``): a record flag such as ``active`` describes the
    chart, not whether the patient is still in care, so it never overrides a death."""
    if stated is not None:
        return stated
    if deceased:
        return DECEASED_STATUS
    return implied
