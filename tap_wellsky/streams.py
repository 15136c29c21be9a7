"""The tap's streams: one small declaration per canonical entity (schemas and keys come from the core)."""

from __future__ import annotations

from .client import WellSkyStream


class PatientsStream(WellSkyStream):
    """Patients (personal care: clients) with identifiers, demographics and payers."""

    name = "patients"


class PractitionersStream(WellSkyStream):
    """Clinicians, hospice staff and caregivers with NPI, roles and disciplines."""

    name = "practitioners"


class AppointmentsStream(WellSkyStream):
    """Scheduled visits and shifts."""

    name = "appointments"


class EncountersStream(WellSkyStream):
    """Documented visits with diagnoses, procedures and vitals."""

    name = "encounters"


class CarePlansStream(WellSkyStream):
    """Plans of care with goals, interventions and outcomes."""

    name = "care_plans"


class AuthorizationsStream(WellSkyStream):
    """Payer prior authorizations: services, units authorized and used, date range."""

    name = "authorizations"


class ReferralsStream(WellSkyStream):
    """Incoming referrals."""

    name = "referrals"


class CoverageStream(WellSkyStream):
    """Insurance coverage per patient and payer."""

    name = "coverage"


STREAM_TYPES: list[type[WellSkyStream]] = [
    PatientsStream,
    PractitionersStream,
    AppointmentsStream,
    EncountersStream,
    CarePlansStream,
    AuthorizationsStream,
    ReferralsStream,
    CoverageStream,
]
