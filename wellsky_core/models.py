"""Canonical records: one shape per entity, whatever WellSky product or channel the data came from.

These models are the contract of the whole project. Every channel (REST, FHIR, HL7 over SFTP, exports,
portal) normalizes into them, the tap publishes them as the JSON schemas in ``schemas/``, and the target
accepts them. The sandbox's test oracle (``/_sandbox/truth``) uses the same field names, so a test can
compare what the connector produced with what the emulated tenant holds, field by field.

Conventions:
- ``id`` is the WellSky id of the record *as the tenant's product spells it*, as a string
  (home health ``HH-P000123``, hospice a UUID, personal care an integer rendered as ``"123"``).
  Foreign keys (``patient_id``...) use the same spelling.
- Timestamps are timezone-aware and normalized to UTC; dates are plain calendar dates.
- ``updated_at`` is the replication key of every stream; records are ordered by ``(updated_at, id)``.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _require_utc(value: datetime) -> datetime:
    """Refuse naive datetimes: a timestamp without an offset is ambiguous across agencies' time zones."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a UTC offset (e.g. 2026-01-31T14:00:00Z)")
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]

Discipline = Literal["SN", "PT", "OT", "ST", "MSW", "HHA"]
"""Home-health disciplines; personal-care caregivers are HHA (aides)."""

Gender = Literal["male", "female", "other", "unknown"]


class CanonicalModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=True)


class Address(CanonicalModel):
    line1: str
    line2: str | None = None
    city: str
    state: str = Field(min_length=2, max_length=2, description="USPS two-letter state code")
    postal_code: str


class PatientCoverage(CanonicalModel):
    """The payers on a patient's face sheet, in order of benefits."""

    payer_id: str
    payer_name: str
    member_id: str
    order: int = Field(ge=1, description="1 = primary, 2 = secondary, ...")


class Patient(CanonicalModel):
    id: str
    mrn: str | None = Field(default=None, description="Agency medical record number; natural key for writes")
    medicare_mbi: str | None = None
    medicaid_id: str | None = None
    first_name: str
    last_name: str
    birth_date: date | None = Field(default=None, description="Null when the source has none (flagged in data_quality)")
    gender: Gender
    phone: str | None = None
    address: Address | None = None
    status: Literal["pending", "active", "discharged", "inactive"]
    status_code: str | None = Field(
        default=None, description="The product's own status code as sent (e.g. Home Connect client status 80)"
    )
    coverage: list[PatientCoverage] = Field(default_factory=list)
    data_quality: list[str] = Field(
        default_factory=list, description="Fields the source left empty or unusable (read as null), by name"
    )
    updated_at: UtcDatetime


class Practitioner(CanonicalModel):
    id: str
    npi: str | None = Field(default=None, pattern=r"^\d{10}$")
    first_name: str
    last_name: str
    credentials: str | None = Field(default=None, description="e.g. RN, LPN, PT, OTR, HHA")
    roles: list[str] = Field(default_factory=list, description="e.g. clinician, case_manager, aide")
    disciplines: list[Discipline] = Field(default_factory=list)
    specialties: list[str] = Field(default_factory=list)
    active: bool = True
    status_code: str | None = Field(
        default=None, description="The product's own status code as sent (e.g. Home Connect applicant status 100)"
    )
    data_quality: list[str] = Field(
        default_factory=list, description="Fields the source left empty or unusable (read as null), by name"
    )
    updated_at: UtcDatetime


class ShiftTask(CanonicalModel):
    id: str
    description: str | None = None
    status: Literal["complete", "not_complete"] | None = None


class Appointment(CanonicalModel):
    """A scheduled visit (home health), hospice visit, or shift (personal care)."""

    id: str
    series_id: str | None = Field(
        default=None,
        description="Source id shared by every occurrence of a recurring shift (Home Connect); id is then "
        "'<series_id>@<start>' so each occurrence has its own stable key",
    )
    external_id: str | None = Field(
        default=None, description="Id in the system that booked it; natural key for writes when set"
    )
    patient_id: str
    practitioner_id: str | None = None
    payer_id: str | None = Field(default=None, description="Payer whose authorization covers the visit")
    start: UtcDatetime
    end: UtcDatetime
    status: Literal["scheduled", "completed", "cancelled", "missed"]
    discipline: Discipline
    service_code: str | None = Field(
        default=None,
        description="HCPCS code billed for the visit, e.g. G0299 (SN), G0151 (PT), T1019; null when the source "
        "does not carry one (Home Connect shifts)",
    )
    location: Address | None = None
    tasks: list[ShiftTask] = Field(default_factory=list, description="Tasks planned for the shift (Home Connect)")
    data_quality: list[str] = Field(
        default_factory=list, description="Fields the source left empty or unusable (read as null), by name"
    )
    updated_at: UtcDatetime


class Diagnosis(CanonicalModel):
    code: str = Field(description="ICD-10-CM code, e.g. I50.9")
    description: str | None = None
    rank: int = Field(ge=1, description="1 = primary diagnosis")


class Procedure(CanonicalModel):
    code: str
    system: Literal["HCPCS", "CPT"]
    description: str | None = None


class Vitals(CanonicalModel):
    temperature_f: float | None = None
    pulse_bpm: int | None = None
    respiratory_rate: int | None = None
    bp_systolic: int | None = None
    bp_diastolic: int | None = None
    spo2_pct: int | None = None
    weight_lb: float | None = None


class Rate(CanonicalModel):
    id: str | None = None
    amount: float | None = None
    method: str | None = Field(default=None, description="e.g. Hourly, perVisit, liveIn, notBillable, notPayable")


class TaskLog(CanonicalModel):
    id: str
    title: str | None = None
    description: str | None = None
    status: str | None = None
    comment: str | None = None
    recorded: UtcDatetime | None = None


class Encounter(CanonicalModel):
    """A documented visit: what was done, found and billed."""

    id: str
    patient_id: str
    practitioner_id: str | None = None
    appointment_id: str | None = None
    start: UtcDatetime
    end: UtcDatetime | None = None
    discipline: Discipline
    status: Literal["in_progress", "completed", "cancelled"]
    diagnoses: list[Diagnosis] = Field(default_factory=list)
    procedures: list[Procedure] = Field(default_factory=list)
    vitals: Vitals | None = None
    note_summary: str | None = None
    finalized: bool
    pay_rates: list[Rate] = Field(default_factory=list, description="Caregiver pay rates of a care log")
    bill_rates: list[Rate] = Field(default_factory=list, description="Client bill rates of a care log")
    task_logs: list[TaskLog] = Field(default_factory=list, description="Shift notes recorded on a care log")
    data_quality: list[str] = Field(
        default_factory=list, description="Fields the source left empty or unusable (read as null), by name"
    )
    updated_at: UtcDatetime


class Goal(CanonicalModel):
    description: str
    status: Literal["proposed", "in_progress", "achieved", "not_achieved"]
    target_date: date | None = None


class Intervention(CanonicalModel):
    description: str
    discipline: Discipline
    frequency: str | None = Field(default=None, description="Visit frequency as ordered, e.g. 2W4 (2/week for 4 weeks)")


class Outcome(CanonicalModel):
    description: str
    achieved: bool
    recorded_on: date


class CarePlan(CanonicalModel):
    id: str
    patient_id: str
    status: Literal["draft", "active", "completed", "revoked"]
    period_start: date
    period_end: date | None = None
    goals: list[Goal] = Field(default_factory=list)
    interventions: list[Intervention] = Field(default_factory=list)
    outcomes: list[Outcome] = Field(default_factory=list)
    updated_at: UtcDatetime


class Authorization(CanonicalModel):
    """A payer's prior authorization: which services, how many units, over which dates."""

    id: str
    patient_id: str
    payer_id: str
    payer_name: str
    member_id: str
    service_codes: list[str] = Field(description="Disciplines and/or HCPCS codes the authorization covers")
    unit_type: Literal["visit", "hour", "15min"]
    rounding: Literal["up", "down", "nearest"] = Field(
        default="nearest", description="Payer rule for rounding hour and 15-minute units"
    )
    units_authorized: int = Field(ge=0)
    units_used: int = Field(ge=0)
    start_date: date
    end_date: date
    status: Literal["pending", "active", "expired", "denied"]
    updated_at: UtcDatetime


class Referral(CanonicalModel):
    id: str
    patient_id: str
    source_name: str = Field(description="Referring physician or facility")
    source_npi: str | None = None
    reason: str
    priority: Literal["routine", "urgent", "stat"]
    status: Literal["received", "accepted", "declined", "pending"]
    received_date: date
    accepted_date: date | None = None
    updated_at: UtcDatetime


class Coverage(CanonicalModel):
    id: str
    patient_id: str
    payer_id: str
    payer_name: str
    plan_name: str | None = None
    member_id: str
    order: int = Field(ge=1)
    period_start: date
    period_end: date | None = None
    status: Literal["active", "cancelled"]
    updated_at: UtcDatetime


class RelatedPerson(CanonicalModel):
    """A client's family member, emergency contact, payer or professional contact."""

    id: str
    patient_id: str | None = Field(default=None, description="The client this person is related to")
    first_name: str | None = None
    last_name: str | None = None
    relationship: str | None = Field(default=None, description="Code as sent, e.g. DAU, SON, SPS, DOCTOR, FRND")
    relationship_display: str | None = None
    phone: str | None = None
    email: str | None = None
    address: Address | None = None
    emergency_contact: bool | None = None
    primary_contact: bool | None = None
    payer: bool | None = None
    power_of_attorney: bool | None = None
    data_quality: list[str] = Field(
        default_factory=list, description="Fields the source left empty or unusable (read as null), by name"
    )
    updated_at: UtcDatetime


class Location(CanonicalModel):
    """An agency office or branch (clients and caregivers carry its id as their locationId)."""

    id: str
    name: str | None = None
    active: bool | None = None
    phone: str | None = None
    address: Address | None = None
    data_quality: list[str] = Field(
        default_factory=list, description="Fields the source left empty or unusable (read as null), by name"
    )
    updated_at: UtcDatetime


PORTAL_OBSERVED = (
    "When the connector first saw this version of the record: the portal shows no modification time, so the "
    "portal channel compares each read with its last snapshot and stamps changed records with the read time"
)


class Episode(CanonicalModel):
    """A home-health certification period or hospice benefit period (the portal's Episode Manager)."""

    id: str
    patient_id: str
    office: str = Field(description="Branch (office) whose Episode Manager lists the episode")
    period_number: int = Field(ge=1, description="1 = the patient's first episode / benefit period")
    start_date: date
    end_date: date
    status: Literal["active", "completed", "discharged"]
    payer_id: str | None = None
    payer_name: str | None = None
    updated_at: UtcDatetime = Field(description=PORTAL_OBSERVED)


class Claim(CanonicalModel):
    """A claim in the Billing / Claims Manager: home-health RAP and end-of-episode (EOE), hospice final."""

    id: str = Field(description="Claim number")
    patient_id: str | None = Field(default=None, description="Resolved from the MRN through the office's patients")
    mrn: str | None = None
    episode_id: str | None = None
    office: str = Field(description="Branch")
    claim_type: Literal["RAP", "EOE", "final"]
    type_of_bill: str = Field(pattern=r"^\d{3,4}$", description="UB-04 type of bill, e.g. 322 (RAP), 329, 813")
    billing_period_start: date
    billing_period_end: date
    payer_name: str
    authorization_number: str | None = None
    status: Literal["not_ready", "ready", "pending_approval", "ready_to_send", "sent", "paid"]
    amount: float = Field(description="Claim amount in US dollars")
    updated_at: UtcDatetime = Field(description=PORTAL_OBSERVED)


AgingBucket = Literal["0-30", "31-60", "61-90", "91-120", "121-150", "151-180", "181-210", "211-240", "241+"]


class Unbilled(CanonicalModel):
    """Unbilled revenue on one report date, per office, payer and aging bucket (a dated snapshot)."""

    id: str = Field(description="snapshot_date|office|payer_name|aging_bucket")
    snapshot_date: date = Field(description="The report's As of date")
    office: str
    payer_name: str
    payer_type: str = Field(description="e.g. Medicare, Medicaid, Managed Care")
    aging_bucket: AgingBucket = Field(description="Days since the billing period started")
    claims: int = Field(ge=0)
    visits: int = Field(ge=0)
    amount: float = Field(description="Unbilled amount in US dollars")
    charges: float = Field(description="Gross charges in US dollars")
    updated_at: UtcDatetime = Field(description=PORTAL_OBSERVED)


class WebhookEvent(CanonicalModel):
    """A change event WellSky pushed to the webhook receiver, with its record in canonical form."""

    seq: int = Field(ge=1, description="Arrival order at the receiver; the stream's replication key")
    id: str = Field(description="Event id (redeliveries share it)")
    type: str = Field(description="e.g. appointment.changed, encounter.updated, authorization.delta")
    entity: str
    occurred_at: UtcDatetime
    received_at: UtcDatetime
    record_id: str
    record: dict[str, object] = Field(description="The changed record, canonical for its entity")


READ_ONLY_FIELDS = frozenset(
    {"data_quality", "status_code", "series_id", "tasks", "pay_rates", "bill_rates", "task_logs"}
)
"""Fields a reader reports but a writer never sends (provenance, data-quality flags, nested read detail)."""


class EntitySpec(BaseModel):
    """What the tap, target and channels need to know about one stream."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    model: type[CanonicalModel]
    primary_key: tuple[str, ...] = ("id",)
    replication_key: str = "updated_at"
    natural_key: tuple[str, ...] | None = None
    """Fields a writer matches on when a record carries no WellSky id."""
    writable: bool = False
    """The target can write this stream back (a product's dialect may narrow it)."""
    modeled_rest: bool = True
    """Served by the modeled REST/FHIR/batch surfaces of home health and hospice (False: Home Connect only)."""
    sources: tuple[str, ...] | None = None
    """Only these channels carry the entity (None: every channel that knows it)."""

    @model_validator(mode="after")
    def _writable_has_one_natural_key(self) -> EntitySpec:
        if self.writable and (self.natural_key is None or len(self.natural_key) != 1):
            raise ValueError(f"writable entity {self.name} needs exactly one natural_key field")
        return self

    @property
    def match_field(self) -> str:
        """The one natural-key field a writer looks records up by (writable entities only)."""
        assert self.natural_key is not None, f"{self.name} is not writable"
        return self.natural_key[0]


ENTITIES: dict[str, EntitySpec] = {
    spec.name: spec
    for spec in (
        EntitySpec(name="patients", model=Patient, natural_key=("mrn",), writable=True),
        EntitySpec(name="practitioners", model=Practitioner),
        EntitySpec(name="appointments", model=Appointment, natural_key=("external_id",), writable=True),
        EntitySpec(name="encounters", model=Encounter),
        EntitySpec(name="care_plans", model=CarePlan),
        EntitySpec(name="authorizations", model=Authorization),
        EntitySpec(name="referrals", model=Referral),
        EntitySpec(name="coverage", model=Coverage),
        EntitySpec(name="related_persons", model=RelatedPerson, modeled_rest=False),
        EntitySpec(name="locations", model=Location, modeled_rest=False),
        EntitySpec(name="episodes", model=Episode, sources=("portal",)),
        EntitySpec(name="claims", model=Claim, sources=("portal",)),
        EntitySpec(name="unbilled", model=Unbilled, sources=("portal",)),
    )
}

WRITABLE: tuple[str, ...] = tuple(name for name, spec in ENTITIES.items() if spec.writable)
"""The streams the target writes back, in ``ENTITIES`` order."""

MODELED_ENTITIES: dict[str, EntitySpec] = {
    name: spec for name, spec in ENTITIES.items() if spec.modeled_rest and spec.sources is None
}
"""The entities of the modeled home health / hospice API surfaces (REST, FHIR, HL7, exports); the portal-only
ones (``sources``: episodes, claims, unbilled) come through the Kinnser portal channel alone."""
