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

from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _require_utc(value: datetime) -> datetime:
    """Refuse naive datetimes: a timestamp without an offset is ambiguous across agencies' time zones."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a UTC offset (e.g. 2026-01-31T14:00:00Z)")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]

Discipline = Literal["SN", "PT", "OT", "ST", "MSW", "HHA"]
"""Home-health disciplines; personal-care caregivers are HHA (aides)."""

Gender = Literal["male", "female", "other", "unknown"]


class CanonicalModel(BaseModel):
    """Base of every canonical shape.

    Reads are lenient: only a record's key and replication timestamp are required, every other field may be
    null (the record then says why in ``data_quality``). ``expected`` names the fields a complete record has:
    a read that cannot fill one flags it, and a write must carry all of them (strict on write).
    """

    # defer_build: a model's validator is built when a record first needs it, not at import (a no-change
    # incremental validates nothing; building ~30 models was a visible part of every start, issue 27)
    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=True, defer_build=True)
    expected: ClassVar[tuple[str, ...]] = ()
    read_only: ClassVar[tuple[str, ...]] = ()
    """Fields only standard feeds (FHIR US Core, Da Vinci PAS, HL7) carry: WellSky's write API, reports and
    exports have no place for them, so writes leave them out and report/export readers do not expect them."""


class DataQualityFlag(CanonicalModel):
    """One field of a read record that could not be mapped, and why (the reason never quotes the value)."""

    field: str = Field(description="Dotted canonical field path, e.g. discipline or diagnoses.0.code")
    kind: Literal["missing", "unmapped_code", "invalid", "unresolved_reference"] = Field(
        description="missing: the source did not carry it; unmapped_code: a code with no canonical equivalent; "
        "invalid: present but failed validation; unresolved_reference: a reference that could not be resolved"
    )
    reason: str


DataQuality = Annotated[
    list[DataQualityFlag],
    Field(description="Fields of this record that could not be mapped from the source (null in the record), and why"),
]


class Record(CanonicalModel):
    """A top-level canonical record: an entity read from WellSky, with its data-quality flags."""

    data_quality: DataQuality = Field(default_factory=list)


DELETED_AT = "_sdc_deleted_at"
"""The Singer convention for a deleted record (singer-sdk targets and target-postgres soft- or hard-delete on it)."""


class Deletable(Record):
    """A stream a channel can report deletions on: a deleted record arrives with its key, its client and
    ``_sdc_deleted_at`` set (every other field null). See docs/deletions.md for which channels can know."""

    model_config = ConfigDict(populate_by_name=True)

    sdc_deleted_at: UtcDatetime | None = Field(
        default=None,
        alias=DELETED_AT,
        description="When the connector found the record deleted in WellSky (null: the record exists)",
    )


class Address(CanonicalModel):
    expected = ("line1", "city", "state", "postal_code")

    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    state: str | None = Field(default=None, min_length=2, max_length=2, description="USPS two-letter state code")
    postal_code: str | None = None


class Coding(CanonicalModel):
    """A code from a standard vocabulary, as the source sent it."""

    system: str | None = Field(default=None, description="Code system URI or HL7 table, e.g. http://snomed.info/sct")
    code: str | None = None
    display: str | None = None


class PatientCoverage(CanonicalModel):
    """The payers on a patient's face sheet, in order of benefits."""

    expected = ("payer_id", "payer_name", "member_id", "order")

    payer_id: str | None = None
    payer_name: str | None = None
    member_id: str | None = None
    order: int | None = Field(default=None, ge=1, description="1 = primary, 2 = secondary, ...")


class Patient(Deletable):
    expected = ("first_name", "last_name", "birth_date", "gender", "status")
    read_only = ("deceased", "deceased_at", "race", "ethnicity", "merged_ids")

    id: str
    mrn: str | None = Field(default=None, description="Agency medical record number; natural key for writes")
    medicare_mbi: str | None = None
    medicaid_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    birth_date: date | None = None
    gender: Gender | None = None
    phone: str | None = None
    address: Address | None = None
    status: Literal["pending", "active", "discharged", "inactive"] | None = None
    status_code: str | None = Field(
        default=None, description="The product's own status code as sent (e.g. Home Connect client status 80)"
    )
    coverage: list[PatientCoverage] = Field(default_factory=list)
    deceased: bool | None = Field(default=None, description="True when the source reports the patient deceased")
    deceased_at: UtcDatetime | None = Field(default=None, description="Date/time of death when the source gives one")
    race: list[str] = Field(
        default_factory=list, description="CDC Race & Ethnicity codes (US Core race extension, ombCategory + detailed)"
    )
    ethnicity: list[str] = Field(
        default_factory=list, description="CDC Race & Ethnicity codes (US Core ethnicity extension)"
    )
    merged_ids: list[str] = Field(
        default_factory=list, description="Ids of patient records merged into this one (HL7 ADT^A40 survivor)"
    )
    updated_at: UtcDatetime


class Practitioner(Deletable):
    expected = ("first_name", "last_name")

    id: str
    npi: str | None = Field(default=None, pattern=r"^\d{10}$")
    first_name: str | None = None
    last_name: str | None = None
    credentials: str | None = Field(default=None, description="e.g. RN, LPN, PT, OTR, HHA")
    roles: list[str] = Field(default_factory=list, description="e.g. clinician, case_manager, aide")
    disciplines: list[Discipline] = Field(default_factory=list)
    specialties: list[str] = Field(default_factory=list)
    active: bool = True
    status_code: str | None = Field(
        default=None, description="The product's own status code as sent (e.g. Home Connect applicant status 100)"
    )
    updated_at: UtcDatetime


class ShiftTask(CanonicalModel):
    id: str
    description: str | None = None
    status: Literal["complete", "not_complete"] | None = None


class AppointmentResource(CanonicalModel):
    """A person or thing booked for a visit besides its practitioner (HL7 AIG, further AIPs)."""

    id: str | None = Field(default=None, description="The sender's resource id (AIG-3.1, AIP-3.1)")
    name: str | None = None
    type: str | None = Field(default=None, description="Resource type or role code as sent (AIG-4, AIP-4)")
    kind: Literal["personnel", "general"] = Field(
        default="general", description="personnel (HL7 AIP) or any other resource (HL7 AIG: equipment, aides)"
    )


class Appointment(Deletable):
    """A scheduled visit (home health), hospice visit, or shift (personal care)."""

    expected = ("patient_id", "start", "end", "status", "discipline", "service_code")
    read_only = ("location_name", "resources")

    id: str
    series_id: str | None = Field(
        default=None,
        description="Source id shared by every occurrence of a recurring shift (Home Connect); id is then "
        "'<series_id>@<start>' so each occurrence has its own stable key",
    )
    external_id: str | None = Field(
        default=None, description="Id in the system that booked it; natural key for writes when set"
    )
    patient_id: str | None = None
    practitioner_id: str | None = None
    payer_id: str | None = Field(default=None, description="Payer whose authorization covers the visit")
    start: UtcDatetime | None = None
    end: UtcDatetime | None = None
    status: Literal["scheduled", "completed", "cancelled", "missed"] | None = None
    discipline: Discipline | None = None
    service_code: str | None = Field(
        default=None, description="HCPCS code billed for the visit, e.g. G0299 (SN), G0151 (PT), T1019"
    )
    location: Address | None = None
    location_name: str | None = Field(
        default=None, description="Named place of the visit (FHIR Location display / HL7 AIL-3), when given"
    )
    tasks: list[ShiftTask] = Field(default_factory=list, description="Tasks planned for the shift (Home Connect)")
    resources: list[AppointmentResource] = Field(
        default_factory=list, description="Other people and things booked for the visit (HL7 AIG, further AIP)"
    )
    updated_at: UtcDatetime


class Diagnosis(CanonicalModel):
    expected = ("code", "rank")

    code: str | None = Field(default=None, description="ICD-10-CM code, e.g. I50.9")
    description: str | None = None
    rank: int | None = Field(default=None, ge=1, description="1 = primary diagnosis")


class Procedure(CanonicalModel):
    expected = ("code", "system")

    code: str | None = None
    system: Literal["HCPCS", "CPT"] | None = None
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


class Encounter(Deletable):
    """A documented visit: what was done, found and billed."""

    expected = ("patient_id", "start", "discipline", "status", "finalized")
    read_only = ("encounter_class", "encounter_type")

    id: str
    patient_id: str | None = None
    practitioner_id: str | None = None
    appointment_id: str | None = None
    start: UtcDatetime | None = None
    end: UtcDatetime | None = None
    discipline: Discipline | None = None
    status: Literal["in_progress", "completed", "cancelled"] | None = None
    encounter_class: str | None = Field(
        default=None, description="HL7 v3 ActCode class of the encounter, e.g. HH (home health), AMB, VR"
    )
    encounter_type: Coding | None = Field(default=None, description="The first Encounter.type coding")
    diagnoses: list[Diagnosis] = Field(default_factory=list)
    procedures: list[Procedure] = Field(default_factory=list)
    vitals: Vitals | None = None
    note_summary: str | None = None
    finalized: bool | None = None
    pay_rates: list[Rate] = Field(default_factory=list, description="Caregiver pay rates of a care log")
    bill_rates: list[Rate] = Field(default_factory=list, description="Client bill rates of a care log")
    task_logs: list[TaskLog] = Field(default_factory=list, description="Shift notes recorded on a care log")
    updated_at: UtcDatetime


class Goal(CanonicalModel):
    expected = ("description", "status")

    description: str | None = None
    status: Literal["proposed", "in_progress", "achieved", "not_achieved"] | None = None
    target_date: date | None = None


class Intervention(CanonicalModel):
    expected = ("description", "discipline")

    description: str | None = None
    discipline: Discipline | None = None
    frequency: str | None = Field(default=None, description="Visit frequency as ordered, e.g. 2W4 (2/week for 4 weeks)")


class CarePlanActivity(CanonicalModel):
    """One planned activity of a care plan as the source states it (FHIR CarePlan.activity)."""

    expected = ("status",)

    description: str | None = None
    code: Coding | None = None
    status: (
        Literal[
            "not_started",
            "scheduled",
            "in_progress",
            "on_hold",
            "completed",
            "cancelled",
            "stopped",
            "unknown",
            "entered_in_error",
        ]
        | None
    ) = None
    reference: str | None = Field(
        default=None, description="The resource the activity points at, e.g. ServiceRequest/12"
    )


class Outcome(CanonicalModel):
    expected = ("description", "achieved", "recorded_on")

    description: str | None = None
    achieved: bool | None = None
    recorded_on: date | None = None


class CarePlan(Deletable):
    expected = ("patient_id", "status", "period_start")
    read_only = ("activities",)

    id: str
    patient_id: str | None = None
    status: Literal["draft", "active", "completed", "revoked"] | None = None
    period_start: date | None = None
    period_end: date | None = None
    goals: list[Goal] = Field(default_factory=list)
    interventions: list[Intervention] = Field(default_factory=list)
    activities: list[CarePlanActivity] = Field(default_factory=list)
    outcomes: list[Outcome] = Field(default_factory=list)
    updated_at: UtcDatetime


class AuthorizationItem(CanonicalModel):
    """One authorized service line (FHIR ClaimResponse.addItem / Da Vinci PAS item)."""

    expected = ("service_code",)

    service_code: str | None = None
    units_authorized: float | None = Field(default=None, ge=0)
    units_used: float | None = Field(default=None, ge=0)
    start_date: date | None = None
    end_date: date | None = None


class Authorization(Deletable):
    """A payer's prior authorization: which services, how many units, over which dates."""

    expected = (
        "patient_id",
        "payer_id",
        "payer_name",
        "member_id",
        "unit_type",
        "units_authorized",
        "start_date",
        "end_date",
        "status",
    )
    read_only = ("authorization_number", "items")

    id: str
    authorization_number: str | None = Field(
        default=None, description="The payer's prior-authorization number (ClaimResponse.preAuthRef)"
    )
    patient_id: str | None = None
    payer_id: str | None = None
    payer_name: str | None = None
    member_id: str | None = None
    service_codes: list[str] = Field(
        default_factory=list, description="Disciplines and/or HCPCS codes the authorization covers"
    )
    items: list[AuthorizationItem] = Field(default_factory=list, description="Item-level services and units")
    unit_type: Literal["visit", "hour", "15min"] | None = None
    rounding: Literal["up", "down", "nearest"] = Field(
        default="nearest", description="Payer rule for rounding hour and 15-minute units"
    )
    units_authorized: int | None = Field(default=None, ge=0)
    units_used: int | None = Field(default=None, ge=0)
    start_date: date | None = None
    end_date: date | None = None
    status: Literal["pending", "active", "expired", "denied"] | None = None
    updated_at: UtcDatetime


class Referral(Deletable):
    expected = ("patient_id", "source_name", "reason", "priority", "status", "received_date")

    id: str
    patient_id: str | None = None
    source_name: str | None = Field(default=None, description="Referring physician or facility")
    source_npi: str | None = None
    reason: str | None = None
    priority: Literal["routine", "urgent", "stat"] | None = None
    status: Literal["received", "accepted", "declined", "pending"] | None = None
    received_date: date | None = None
    accepted_date: date | None = None
    updated_at: UtcDatetime


class Coverage(Deletable):
    expected = ("patient_id", "payer_id", "payer_name", "member_id", "order", "period_start", "status")

    id: str
    patient_id: str | None = None
    payer_id: str | None = None
    payer_name: str | None = None
    plan_name: str | None = None
    member_id: str | None = None
    order: int | None = Field(default=None, ge=1)
    period_start: date | None = None
    period_end: date | None = None
    status: Literal["active", "cancelled"] | None = None
    updated_at: UtcDatetime


class RelatedPerson(Deletable):
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
    updated_at: UtcDatetime


class Location(Deletable):
    """An agency office or branch (clients and caregivers carry its id as their locationId)."""

    id: str
    name: str | None = None
    active: bool | None = None
    phone: str | None = None
    address: Address | None = None
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
    | {"sdc_deleted_at", DELETED_AT}
    | {f for model in (Patient, Appointment, Encounter, CarePlan, Authorization) for f in model.read_only}
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
    description: str = ""
    """What the stream holds, for catalogs and generated stream classes."""

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
        EntitySpec(
            name="patients", model=Patient, natural_key=("mrn",), writable=True,
            description="Patients (personal care: clients) with identifiers, demographics and payers.",
        ),
        EntitySpec(
            name="practitioners", model=Practitioner,
            description="Clinicians, hospice staff and caregivers with NPI, roles and disciplines.",
        ),
        EntitySpec(
            name="appointments", model=Appointment, natural_key=("external_id",), writable=True,
            description="Scheduled visits and shifts.",
        ),
        EntitySpec(name="encounters", model=Encounter, description="Documented visits (personal care: care logs)."),
        EntitySpec(name="care_plans", model=CarePlan, description="Plans of care with goals, interventions, outcomes."),
        EntitySpec(
            name="authorizations", model=Authorization,
            description="Payer prior authorizations: services, units authorized and used, date range.",
        ),
        EntitySpec(name="referrals", model=Referral, description="Incoming referrals."),
        EntitySpec(name="coverage", model=Coverage, description="Insurance coverage per patient and payer."),
        EntitySpec(
            name="related_persons", model=RelatedPerson, modeled_rest=False,
            description="Clients' family, emergency and professional contacts (personal care).",
        ),
        EntitySpec(
            name="locations", model=Location, modeled_rest=False,
            description="Agency offices and branches (personal care).",
        ),
        EntitySpec(
            name="episodes", model=Episode, sources=("portal",),
            description="Certification periods (home health) and benefit periods (hospice), from the portal.",
        ),
        EntitySpec(
            name="claims", model=Claim, sources=("portal",),
            description="RAP, end-of-episode and hospice claims: period, type of bill, payer, status (portal).",
        ),
        EntitySpec(
            name="unbilled", model=Unbilled, sources=("portal",),
            description="The Unbilled report as a dated snapshot per office, payer and aging bucket (portal).",
        ),
    )
}

WRITABLE: tuple[str, ...] = tuple(name for name, spec in ENTITIES.items() if spec.writable)
"""The streams the target writes back, in ``ENTITIES`` order."""

MODELED_ENTITIES: dict[str, EntitySpec] = {
    name: spec for name, spec in ENTITIES.items() if spec.modeled_rest and spec.sources is None
}
"""The entities of the modeled home health / hospice API surfaces (REST, FHIR, HL7, exports); the portal-only
ones (``sources``: episodes, claims, unbilled) come through the Kinnser portal channel alone."""


_STRICT: dict[type[CanonicalModel], type[CanonicalModel]] = {}


def strict_variant(model: type[CanonicalModel]) -> type[CanonicalModel]:
    """``model`` as writes need it: every ``expected`` field required and non-null, nested models likewise.

    Reads are lenient (null + data-quality flag); a write must carry a complete record (strict on write).
    """
    if model in _STRICT:
        return _STRICT[model]
    import copy
    import types
    import typing

    from pydantic import create_model
    from pydantic_core import PydanticUndefined

    def swap(annotation: Any) -> Any:
        if isinstance(annotation, type) and issubclass(annotation, CanonicalModel):
            return strict_variant(annotation)
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is list and args:
            return list[swap(args[0])]  # type: ignore[misc]
        if origin in (typing.Union, types.UnionType) and args:
            swapped = tuple(swap(a) for a in args)
            return typing.Union[swapped]  # noqa: UP007 - built from a tuple
        return annotation

    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = swap(info.annotation)
        new = copy.copy(info)
        if name in model.expected:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if typing.get_origin(annotation) in (typing.Union, types.UnionType) and args:
                annotation = args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007
            new.default = PydanticUndefined
            new.default_factory = None
        new.annotation = annotation
        fields[name] = (annotation, new)
    strict = create_model(  # type: ignore[call-overload]
        f"{model.__name__}Strict", __base__=CanonicalModel, __doc__=model.__doc__, **fields
    )
    strict.expected = model.expected
    _STRICT[model] = strict
    return strict  # type: ignore[no-any-return]
