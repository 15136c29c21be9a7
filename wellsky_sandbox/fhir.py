"""The tenant's FHIR R4 face under ``/fhir``: CapabilityStatement, search with Bundle paging, and read.

Resources are built from the same logical records as the REST API, so a client reading through FHIR sees
exactly the data REST serves. Fields FHIR has no home for travel in extensions under ``EXT`` so the mapping
is lossless for every logical field (the connector's FHIR normalizer relies on that to reproduce the REST
records field by field). Children without a record of their own (an encounter's diagnoses, procedures and
vitals, a care plan's goals, a practitioner's roles) become separate resources with ids derived from the
parent's id and the parent's ``updated_at`` as ``meta.lastUpdated``.

With ``fhir_references="identifier"`` (a tenant option) the server behaves like a certified US Core server
holding Synthea-style data instead: a PractitionerRole names its practitioner by NPI identifier only, an
Encounter's or Appointment's practitioner is a conditional reference (``Practitioner?identifier=<npi
system>|<npi>``), Practitioner can be searched by ``identifier`` (US Core SHALL), and
``_revinclude=PractitionerRole:practitioner`` is not offered (a server cannot reverse-include roles that do not
refer to the practitioner by id). Practitioners without an NPI keep literal references.

Errors are OperationOutcome JSON: 400 for a bad search parameter (named in ``issue.expression``), 401/403 for
auth, 404 for an unknown or unexposed type or id. Like REST, every route needs a session cookie or a bearer
token, and an authenticated response may rotate the session cookie.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .app import Api, fhir_resources
from .generator import DISCIPLINES
from .security import AuthFailure
from .store import epoch
from .tenant import Tenant, public

SITE = "https://wellsky-sandbox.example/fhir"
EXT = f"{SITE}/StructureDefinition/"
SID_MRN = f"{SITE}/sid/mrn"
SID_MEDICAID = f"{SITE}/sid/medicaid"
SID_PAYER = f"{SITE}/sid/payer-id"
SID_MEMBER = f"{SITE}/sid/member-id"
SID_EXTERNAL = f"{SITE}/sid/external-id"
SID_MBI = "http://hl7.org/fhir/sid/us-mbi"
SID_NPI = "http://hl7.org/fhir/sid/us-npi"
CS_DISCIPLINE = f"{SITE}/CodeSystem/discipline"
CS_ROLE = f"{SITE}/CodeSystem/practitioner-role"
CS_UNITS = f"{SITE}/CodeSystem/authorization-units"
HCPCS = "urn:oid:2.16.840.1.113883.6.285"
CPT = "http://www.ama-assn.org/go/cpt"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
FHIR_JSON = "application/fhir+json"

APPOINTMENT_STATUS = {"scheduled": "booked", "completed": "fulfilled", "cancelled": "cancelled", "missed": "noshow"}
ENCOUNTER_STATUS = {"in_progress": "in-progress", "completed": "finished", "cancelled": "cancelled"}
REFERRAL_STATUS = {"received": "draft", "pending": "on-hold", "accepted": "active", "declined": "revoked"}
GOAL_STATUS = {  # canonical -> (lifecycleStatus, achievementStatus code or None)
    "proposed": ("proposed", None),
    "in_progress": ("active", "in-progress"),
    "achieved": ("completed", "achieved"),
    "not_achieved": ("completed", "not-achieved"),
}
AUTH_OUTCOME = {"pending": "queued", "active": "complete", "expired": "complete", "denied": "error"}
# vital field -> (observation id suffix, LOINC code, display, UCUM unit)
VITALS = {
    "temperature_f": ("temp", "8310-5", "Body temperature", "[degF]"),
    "pulse_bpm": ("pulse", "8867-4", "Heart rate", "/min"),
    "respiratory_rate": ("resp", "9279-1", "Respiratory rate", "/min"),
    "bp_systolic": ("bps", "8480-6", "Systolic blood pressure", "mm[Hg]"),
    "bp_diastolic": ("bpd", "8462-4", "Diastolic blood pressure", "mm[Hg]"),
    "spo2_pct": ("spo2", "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%"),
    "weight_lb": ("weight", "29463-7", "Body weight", "[lb_av]"),
}


# -- small builders -----------------------------------------------------------------------------------
def _ref(kind: str, rid: str | None) -> dict[str, str] | None:
    return {"reference": f"{kind}/{rid}"} if rid else None


def _meta(rec: dict[str, Any]) -> dict[str, str]:
    return {"lastUpdated": rec["updated_at"]}


def _ext(name: str, **value: Any) -> dict[str, Any]:
    return {"url": EXT + name, **value}


def _address(addr: dict[str, Any] | None, use: str | None = "home") -> dict[str, Any] | None:
    if not addr:
        return None
    out: dict[str, Any] = {"line": [x for x in (addr.get("line1"), addr.get("line2")) if x]}
    if use:
        out["use"] = use
    out.update(city=addr["city"], state=addr["state"], postalCode=addr["postal_code"])
    return out


def _discipline(code: str) -> dict[str, Any]:
    return {"coding": [{"system": CS_DISCIPLINE, "code": code}]}


def _service_code(code: str) -> dict[str, Any]:
    """A service code is a discipline (``SN``) or an HCPCS code (``G0299``); the system says which."""
    return {"coding": [{"system": CS_DISCIPLINE if code in DISCIPLINES else HCPCS, "code": code}]}


def _payer(payer_id: str, payer_name: str) -> dict[str, Any]:
    return {"identifier": {"system": SID_PAYER, "value": payer_id}, "display": payer_name}


def _clean(resource: dict[str, Any]) -> dict[str, Any]:
    """Drop empty members: FHIR forbids ``null`` and empty arrays/objects."""
    return {k: v for k, v in resource.items() if v is not None and v != [] and v != {}}


# -- logical record -> resources ------------------------------------------------------------------------
def patient(rec: dict[str, Any]) -> dict[str, Any]:
    identifiers = []
    if rec.get("mrn"):
        identifiers.append(
            {
                "use": "usual",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": SID_MRN,
                "value": rec["mrn"],
            }
        )
    if rec.get("medicare_mbi"):
        identifiers.append({"system": SID_MBI, "value": rec["medicare_mbi"]})
    if rec.get("medicaid_id"):
        identifiers.append({"system": SID_MEDICAID, "value": rec["medicaid_id"]})
    extensions = [_ext("patient-status", valueCode=rec["status"])]
    for cov in rec.get("coverage") or []:
        extensions.append(
            _ext(
                "patient-coverage",
                extension=[
                    {"url": "payer-id", "valueString": cov["payer_id"]},
                    {"url": "payer-name", "valueString": cov["payer_name"]},
                    {"url": "member-id", "valueString": cov["member_id"]},
                    {"url": "order", "valuePositiveInt": cov["order"]},
                ],
            )
        )
    return _clean(
        {
            "resourceType": "Patient",
            "id": rec["id"],
            "meta": _meta(rec),
            "extension": extensions,
            "identifier": identifiers,
            "active": rec["status"] in ("pending", "active"),
            "name": [{"use": "official", "family": rec["last_name"], "given": [rec["first_name"]]}],
            "telecom": [{"system": "phone", "value": rec["phone"], "use": "home"}] if rec.get("phone") else None,
            "gender": rec["gender"],
            "birthDate": rec["birth_date"],
            "address": [_address(rec["address"])] if rec.get("address") else None,
        }
    )


def practitioner(rec: dict[str, Any]) -> dict[str, Any]:
    return _clean(
        {
            "resourceType": "Practitioner",
            "id": rec["id"],
            "meta": _meta(rec),
            "identifier": [{"system": SID_NPI, "value": rec["npi"]}] if rec.get("npi") else None,
            "active": rec["active"],
            "name": [{"family": rec["last_name"], "given": [rec["first_name"]]}],
            "qualification": [{"code": {"text": rec["credentials"]}}] if rec.get("credentials") else None,
        }
    )


def practitioner_role(rec: dict[str, Any]) -> dict[str, Any]:
    """Roles as ``code``; disciplines (coded) and free-text specialties as ``specialty``."""
    specialty = [_discipline(d) for d in rec.get("disciplines") or []]
    specialty += [{"text": s} for s in rec.get("specialties") or []]
    return _clean(
        {
            "resourceType": "PractitionerRole",
            "id": rec["id"],
            "meta": _meta(rec),
            "active": rec["active"],
            "practitioner": _ref("Practitioner", rec["id"]),
            "code": [{"coding": [{"system": CS_ROLE, "code": r}]} for r in rec.get("roles") or []],
            "specialty": specialty,
        }
    )


def appointment(rec: dict[str, Any]) -> dict[str, Any]:
    participants = [{"actor": _ref("Patient", rec["patient_id"]), "status": "accepted"}]
    if rec.get("practitioner_id"):
        participants.append({"actor": _ref("Practitioner", rec["practitioner_id"]), "status": "accepted"})
    extensions = []
    if rec.get("payer_id"):
        extensions.append(_ext("payer-id", valueString=rec["payer_id"]))
    if rec.get("location"):
        extensions.append(_ext("appointment-location", valueAddress=_address(rec["location"], use=None)))
    return _clean(
        {
            "resourceType": "Appointment",
            "id": rec["id"],
            "meta": _meta(rec),
            "extension": extensions,
            "identifier": [{"system": SID_EXTERNAL, "value": rec["external_id"]}] if rec.get("external_id") else None,
            "status": APPOINTMENT_STATUS[rec["status"]],
            "serviceType": [_discipline(rec["discipline"]), _service_code(rec["service_code"])],
            "start": rec["start"],
            "end": rec["end"],
            "participant": participants,
        }
    )


def _condition_id(enc_id: str, rank: int) -> str:
    return f"{enc_id}-dx-{rank}"


def encounter(rec: dict[str, Any]) -> dict[str, Any]:
    extensions = [_ext("encounter-finalized", valueBoolean=rec["finalized"])]
    if rec.get("note_summary") is not None:
        extensions.append(_ext("encounter-note-summary", valueString=rec["note_summary"]))
    if rec.get("vitals") is not None:
        extensions.append(_ext("encounter-vitals-recorded", valueBoolean=True))
    period = {"start": rec["start"], **({"end": rec["end"]} if rec.get("end") else {})}
    return _clean(
        {
            "resourceType": "Encounter",
            "id": rec["id"],
            "meta": _meta(rec),
            "extension": extensions,
            "status": ENCOUNTER_STATUS[rec["status"]],
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "HH",
                "display": "home health",
            },
            "serviceType": _discipline(rec["discipline"]),
            "subject": _ref("Patient", rec["patient_id"]),
            "participant": [{"individual": _ref("Practitioner", rec["practitioner_id"])}]
            if rec.get("practitioner_id")
            else None,
            "appointment": [_ref("Appointment", rec["appointment_id"])] if rec.get("appointment_id") else None,
            "period": period,
            "diagnosis": [
                {"condition": _ref("Condition", _condition_id(rec["id"], d["rank"])), "rank": d["rank"]}
                for d in rec.get("diagnoses") or []
            ],
        }
    )


def conditions(rec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for d in rec.get("diagnoses") or []:
        coding = {
            "system": ICD10CM,
            "code": d["code"],
            **({"display": d["description"]} if d.get("description") else {}),
        }
        out.append(
            {
                "resourceType": "Condition",
                "id": _condition_id(rec["id"], d["rank"]),
                "meta": _meta(rec),
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                "code": "encounter-diagnosis",
                            }
                        ]
                    }
                ],
                "code": {"coding": [coding]},
                "subject": _ref("Patient", rec["patient_id"]),
                "encounter": _ref("Encounter", rec["id"]),
            }
        )
    return out


def procedures(rec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, p in enumerate(rec.get("procedures") or [], start=1):
        coding = {"system": HCPCS if p["system"] == "HCPCS" else CPT, "code": p["code"]}
        if p.get("description"):
            coding["display"] = p["description"]
        out.append(
            {
                "resourceType": "Procedure",
                "id": f"{rec['id']}-proc-{i}",
                "meta": _meta(rec),
                "extension": [_ext("procedure-sequence", valuePositiveInt=i)],
                "status": "completed",
                "code": {"coding": [coding]},
                "subject": _ref("Patient", rec["patient_id"]),
                "encounter": _ref("Encounter", rec["id"]),
            }
        )
    return out


def observations(rec: dict[str, Any]) -> list[dict[str, Any]]:
    vitals = rec.get("vitals") or {}
    out = []
    for name, (suffix, loinc, display, unit) in VITALS.items():
        value = vitals.get(name)
        if value is None:
            continue
        out.append(
            {
                "resourceType": "Observation",
                "id": f"{rec['id']}-vs-{suffix}",
                "meta": _meta(rec),
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "vital-signs",
                            }
                        ]
                    }
                ],
                "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}]},
                "subject": _ref("Patient", rec["patient_id"]),
                "encounter": _ref("Encounter", rec["id"]),
                "effectiveDateTime": rec["start"],
                "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
            }
        )
    return out


def care_plan(rec: dict[str, Any]) -> dict[str, Any]:
    period = {"start": rec["period_start"], **({"end": rec["period_end"]} if rec.get("period_end") else {})}
    activities = []
    for iv in rec.get("interventions") or []:
        detail: dict[str, Any] = {
            "status": "in-progress",
            "code": _discipline(iv["discipline"]),
            "description": iv["description"],
        }
        if iv.get("frequency"):
            detail["scheduledString"] = iv["frequency"]
        activities.append({"detail": detail})
    outcomes = [
        _ext(
            "careplan-outcome",
            extension=[
                {"url": "description", "valueString": o["description"]},
                {"url": "achieved", "valueBoolean": o["achieved"]},
                {"url": "recorded-on", "valueDate": o["recorded_on"]},
            ],
        )
        for o in rec.get("outcomes") or []
    ]
    return _clean(
        {
            "resourceType": "CarePlan",
            "id": rec["id"],
            "meta": _meta(rec),
            "extension": outcomes,
            "status": rec["status"],
            "intent": "plan",
            "subject": _ref("Patient", rec["patient_id"]),
            "period": period,
            "goal": [_ref("Goal", f"{rec['id']}-goal-{i}") for i in range(1, len(rec.get("goals") or []) + 1)],
            "activity": activities,
        }
    )


def goals(rec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, g in enumerate(rec.get("goals") or [], start=1):
        lifecycle, achievement = GOAL_STATUS[g["status"]]
        out.append(
            _clean(
                {
                    "resourceType": "Goal",
                    "id": f"{rec['id']}-goal-{i}",
                    "meta": _meta(rec),
                    "lifecycleStatus": lifecycle,
                    "achievementStatus": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/goal-achievement",
                                "code": achievement,
                            }
                        ]
                    }
                    if achievement
                    else None,
                    "description": {"text": g["description"]},
                    "subject": _ref("Patient", rec["patient_id"]),
                    "target": [{"dueDate": g["target_date"]}] if g.get("target_date") else None,
                }
            )
        )
    return out


def coverage(rec: dict[str, Any]) -> dict[str, Any]:
    period = {"start": rec["period_start"], **({"end": rec["period_end"]} if rec.get("period_end") else {})}
    plan = (
        [
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "plan"}]
                },
                "value": rec["plan_name"],
                "name": rec["plan_name"],
            }
        ]
        if rec.get("plan_name")
        else None
    )
    return _clean(
        {
            "resourceType": "Coverage",
            "id": rec["id"],
            "meta": _meta(rec),
            "status": rec["status"],
            "subscriberId": rec["member_id"],
            "beneficiary": _ref("Patient", rec["patient_id"]),
            "period": period,
            "payor": [_payer(rec["payer_id"], rec["payer_name"])],
            "class": plan,
            "order": rec["order"],
        }
    )


def claim_response(rec: dict[str, Any]) -> dict[str, Any]:
    """A payer prior authorization as a ``use=preauthorization`` ClaimResponse with ``preAuthRef``."""

    def units(code: str, value: int) -> dict[str, Any]:
        return {"category": {"coding": [{"system": CS_UNITS, "code": code}]}, "value": value}

    adjudication = [units("authorized", rec["units_authorized"]), units("used", rec["units_used"])]
    return {
        "resourceType": "ClaimResponse",
        "id": rec["id"],
        "meta": _meta(rec),
        "extension": [
            _ext("authorization-status", valueCode=rec["status"]),
            _ext("unit-type", valueCode=rec["unit_type"]),
            _ext("unit-rounding", valueCode=rec.get("rounding", "nearest")),
        ],
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "use": "preauthorization",
        "patient": _ref("Patient", rec["patient_id"]),
        "created": rec["updated_at"],
        "insurer": _payer(rec["payer_id"], rec["payer_name"]),
        "outcome": AUTH_OUTCOME[rec["status"]],
        "preAuthRef": rec["id"],
        "preAuthPeriod": {"start": rec["start_date"], "end": rec["end_date"]},
        **(
            {
                "addItem": [
                    {
                        "productOrService": _service_code(code),
                        "quantity": {"value": rec["units_authorized"], "unit": rec["unit_type"]},
                        "adjudication": adjudication,
                    }
                    for code in rec["service_codes"]
                ]
            }
            if rec["service_codes"]
            else {}
        ),
        "adjudication": adjudication,
        "insurance": [
            {
                "sequence": 1,
                "focal": True,
                "coverage": {"identifier": {"system": SID_MEMBER, "value": rec["member_id"]}},
            }
        ],
    }


def service_request(rec: dict[str, Any]) -> dict[str, Any]:
    requester: dict[str, Any] = {"display": rec["source_name"]}
    if rec.get("source_npi"):
        requester["identifier"] = {"system": SID_NPI, "value": rec["source_npi"]}
    extensions = [_ext("referral-accepted-date", valueDate=rec["accepted_date"])] if rec.get("accepted_date") else None
    return _clean(
        {
            "resourceType": "ServiceRequest",
            "id": rec["id"],
            "meta": _meta(rec),
            "extension": extensions,
            "status": REFERRAL_STATUS[rec["status"]],
            "intent": "order",
            "priority": rec["priority"],
            "subject": _ref("Patient", rec["patient_id"]),
            "authoredOn": rec["received_date"],
            "requester": requester,
            "reasonCode": [{"text": rec["reason"]}],
        }
    )


Builder = Callable[[dict[str, Any]], list[dict[str, Any]]]


def _one(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Builder:
    return lambda rec: [fn(rec)]


# type -> (logical entity, builder producing the resources of this type for one record, patient-filterable)
TYPES: dict[str, tuple[str, Builder, bool]] = {
    "Patient": ("patients", _one(patient), False),
    "Practitioner": ("practitioners", _one(practitioner), False),
    "PractitionerRole": ("practitioners", _one(practitioner_role), False),
    "Appointment": ("appointments", _one(appointment), True),
    "Encounter": ("encounters", _one(encounter), True),
    "Condition": ("encounters", conditions, True),
    "Procedure": ("encounters", procedures, True),
    "Observation": ("encounters", observations, True),
    "CarePlan": ("care_plans", _one(care_plan), True),
    "Goal": ("care_plans", goals, True),
    "Coverage": ("coverage", _one(coverage), True),
    "ClaimResponse": ("authorizations", _one(claim_response), True),
    "ServiceRequest": ("referrals", _one(service_request), True),
}
DERIVED = {"PractitionerRole", "Condition", "Procedure", "Observation", "Goal"}
"""Types whose resources are children of another type's record (several per record, or a 1:1 companion)."""
REVINCLUDES = {
    "Practitioner": {"PractitionerRole:practitioner": "PractitionerRole"},
    "Encounter": {
        "Condition:encounter": "Condition",
        "Procedure:encounter": "Procedure",
        "Observation:encounter": "Observation",
    },
}
INCLUDES = {"CarePlan": {"CarePlan:goal": "Goal"}}
SEARCH_PARAMS = ("_lastUpdated", "_count", "_sort", "_cursor", "_include", "_revinclude")
DEFAULT_COUNT = 100
MAX_COUNT = 1000


class FhirProblem(Exception):
    """Becomes an OperationOutcome; ``expression`` names the offending parameter."""

    def __init__(self, status: int, code: str, message: str, expression: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.expression = status, code, message, expression


def outcome(status: int, code: str, message: str, expression: str | None = None) -> Response:
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": message}
    if expression:
        issue["expression"] = [expression]
    body = {"resourceType": "OperationOutcome", "issue": [issue]}
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON)


def _encode_cursor(kind: str, updated_at: int, rid: str, skip: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([kind, updated_at, rid, skip])).decode().rstrip("=")


def _decode_cursor(kind: str, value: str) -> tuple[int, str, int]:
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        got, updated_at, rid, skip = decoded
    except Exception:
        raise FhirProblem(
            400, "invalid", "_cursor is not valid; follow the Bundle's next link unchanged", "_cursor"
        ) from None
    if got != kind or not isinstance(updated_at, int) or not isinstance(rid, str) or not isinstance(skip, int):
        raise FhirProblem(400, "invalid", f"_cursor was not issued for a {kind} search", "_cursor")
    return updated_at, rid, skip


def parse_last_updated(value: str) -> int:
    """``gt``/``ge`` + a FHIR date or instant -> the smallest epoch second that matches (store is whole seconds)."""
    if value[:2] not in ("gt", "ge"):
        raise FhirProblem(
            400,
            "not-supported",
            "_lastUpdated supports the prefixes gt and ge only, e.g. _lastUpdated=ge2026-01-31T00:00:00Z",
            "_lastUpdated",
        )
    return _first_second(value, exclusive="gt", example="ge2026-01-31T00:00:00Z")


def parse_upper_bound(value: str) -> int:
    """``lt``/``le`` + a FHIR date or instant -> the smallest epoch second that no longer matches."""
    return _first_second(value, exclusive="le", example="lt2026-02-01T00:00:00Z")


def _first_second(value: str, *, exclusive: str, example: str) -> int:
    """The epoch second a ``_lastUpdated`` bound starts at; ``exclusive`` is the prefix (gt, le) that moves a date
    to the next day and an instant to the next whole second."""
    prefix, raw = value[:2], value[2:]
    try:
        if len(raw) == 10:  # a date: the whole day is the unit of comparison
            day = datetime.fromisoformat(raw).replace(tzinfo=UTC)
            return int((day + timedelta(days=1 if prefix == exclusive else 0)).timestamp())
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if moment.utcoffset() is None:
            raise ValueError("no offset")
    except ValueError:
        pair = "gt|ge" if example.startswith("ge") else "lt|le"
        raise FhirProblem(
            400,
            "invalid",
            f"_lastUpdated must be {pair} followed by a date or an instant with offset, e.g. {example}",
            "_lastUpdated",
        ) from None
    seconds = moment.timestamp()
    return math.floor(seconds) + 1 if prefix == exclusive else math.ceil(seconds)


def parse_last_updated_range(values: list[str]) -> tuple[int | None, int | None]:
    """Search ``_lastUpdated`` values (ANDed, at most one lower ``gt|ge`` and one upper ``lt|le`` bound) ->
    ``(since, before)``: epoch seconds, ``since`` inclusive, ``before`` exclusive."""
    since: int | None = None
    before: int | None = None
    for value in values:
        if value[:2] in ("lt", "le"):
            if before is not None:
                raise FhirProblem(400, "invalid", "_lastUpdated may have one upper bound (lt|le)", "_lastUpdated")
            before = parse_upper_bound(value)
        else:
            if since is not None:
                raise FhirProblem(400, "invalid", "_lastUpdated may have one lower bound (gt|ge)", "_lastUpdated")
            since = parse_last_updated(value)
    return since, before


def practitioner_npis(store: Any) -> dict[str, str]:
    """Practitioner id -> NPI (identifier-reference mode; practitioners are few, read per request)."""
    return {p["id"]: p["npi"] for p in store.iter_all("practitioners") if p.get("npi")}


def by_identifier(resource: dict[str, Any], npis: dict[str, str]) -> dict[str, Any]:
    """A resource as a US Core server refers to practitioners: by NPI identifier instead of by id."""
    kind = resource["resourceType"]

    def conditional(ref: Any) -> Any:
        rid = ref.get("reference", "").removeprefix("Practitioner/") if isinstance(ref, dict) else ""
        if isinstance(ref, dict) and ref.get("reference", "").startswith("Practitioner/") and rid in npis:
            return {"reference": f"Practitioner?identifier={SID_NPI}|{npis[rid]}"}
        return ref

    if kind == "PractitionerRole" and resource["practitioner"]["reference"].removeprefix("Practitioner/") in npis:
        rid = resource["practitioner"]["reference"].removeprefix("Practitioner/")
        return {**resource, "practitioner": {"identifier": {"system": SID_NPI, "value": npis[rid]}}}
    if kind == "Encounter" and resource.get("participant"):
        return {**resource, "participant": [{**p, "individual": conditional(p.get("individual"))}
                                            for p in resource["participant"]]}
    if kind == "Appointment":
        return {**resource, "participant": [{**p, "actor": conditional(p.get("actor"))}
                                            for p in resource["participant"]]}
    return resource


class Fhir:
    """Request handlers for one tenant's FHIR endpoint."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.api = Api(tenant)
        self.exposed = set(fhir_resources(tenant.product))
        self.identifier_references = tenant.config.fhir_references == "identifier"
        if tenant.config.fhir_references not in ("literal", "identifier"):
            raise ValueError("fhir_references must be 'literal' or 'identifier'")

    def _revincludes(self, kind: str) -> dict[str, str]:
        offered = {k: v for k, v in REVINCLUDES.get(kind, {}).items() if v in self.exposed}
        if self.identifier_references:
            offered.pop("PractitionerRole:practitioner", None)
        return offered

    def _type(self, name: str) -> str:
        if name not in TYPES or name not in self.exposed:
            raise FhirProblem(
                404,
                "not-supported",
                f"resource type {name} is not supported by this {self.tenant.product} tenant; "
                f"see /fhir/metadata for: {', '.join(sorted(self.exposed))}",
            )
        return name

    async def _guard(self, request: Request, handler: Callable[[], Response]) -> Response:
        try:
            _, rotated = self.api.authenticate(request)
            return self.api.with_cookie(handler(), rotated)
        except AuthFailure as exc:
            return outcome(exc.status, "login" if exc.status == 401 else "forbidden", exc.message)
        except FhirProblem as exc:
            return outcome(exc.status, exc.code, exc.message, exc.expression)

    # -- metadata -------------------------------------------------------------------------------------
    def capability(self) -> dict[str, Any]:
        resources = []
        for name in fhir_resources(self.tenant.product):
            params = [
                {"name": "_lastUpdated", "type": "date", "documentation": "gt|ge|lt|le (one lower, one upper bound)"},
                {"name": "_count", "type": "number"},
                {"name": "_sort", "type": "string", "documentation": "_lastUpdated only"},
            ]
            if TYPES[name][2]:
                params.append({"name": "patient", "type": "reference"})
            if name == "Practitioner" and self.identifier_references:
                params.append({"name": "identifier", "type": "token", "documentation": "system|value, comma = or"})
            entry: dict[str, Any] = {
                "type": name,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": params,
            }
            includes = [k for k, v in INCLUDES.get(name, {}).items() if v in self.exposed]
            revincludes = list(self._revincludes(name))
            if includes:
                entry["searchInclude"] = includes
            if revincludes:
                entry["searchRevInclude"] = revincludes
            resources.append(entry)
        statement = {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-01-01",
            "publisher": "WellSky sandbox",
            "kind": "instance",
            "software": {"name": "wellsky-sandbox", "version": "0.1"},
            "implementation": {"description": f"{self.tenant.config.name} ({self.tenant.product})"},
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [{"mode": "server", "resource": resources}],
        }
        from .bulk import advertise  # $export and SMART discovery live in their own module

        return advertise(statement, self.tenant.product)

    async def metadata(self, request: Request) -> Response:
        return await self._guard(request, lambda: _fhir_response(self.capability()))

    # -- read -----------------------------------------------------------------------------------------
    async def read(self, request: Request) -> Response:
        def run() -> Response:
            kind = self._type(request.path_params["type"])
            rid = request.path_params["rid"]
            entity, build, _ = TYPES[kind]
            parent_id = rid
            if kind in DERIVED and kind != "PractitionerRole":
                marker = {"Condition": "-dx-", "Procedure": "-proc-", "Observation": "-vs-", "Goal": "-goal-"}[kind]
                parent_id = rid.rpartition(marker)[0] if marker in rid else ""
            rec = self.tenant.store.get(entity, parent_id) if parent_id else None
            found = [r for r in build(public(rec)) if r["id"] == rid] if rec else []
            if not found:
                raise FhirProblem(404, "not-found", f"{kind}/{rid} is not known")
            if self.identifier_references:
                return _fhir_response(by_identifier(found[0], practitioner_npis(self.tenant.store)))
            return _fhir_response(found[0])

        return await self._guard(request, run)

    # -- search ---------------------------------------------------------------------------------------
    async def search(self, request: Request) -> Response:
        return await self._guard(request, lambda: self._search(request))

    def _search(self, request: Request) -> Response:
        kind = self._type(request.path_params["type"])
        entity, build, by_patient = TYPES[kind]
        q = request.query_params
        allowed = set(SEARCH_PARAMS) | ({"patient"} if by_patient else set())
        if kind == "Practitioner" and self.identifier_references:
            allowed.add("identifier")
        for name in q:
            if name not in allowed:
                raise FhirProblem(
                    400,
                    "not-supported",
                    f"search parameter {name} is not supported on {kind}; use {', '.join(sorted(allowed))}",
                    name,
                )
        for name in ("_count", "_sort", "_cursor", "patient", "identifier"):
            if len(q.getlist(name)) > 1:
                raise FhirProblem(400, "invalid", f"{name} may be given only once", name)
        since, before = parse_last_updated_range([v for v in q.getlist("_lastUpdated") if v])
        try:
            count = int(q.get("_count", DEFAULT_COUNT))
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_COUNT:
            raise FhirProblem(400, "invalid", f"_count must be an integer from 1 to {MAX_COUNT}", "_count")
        if q.get("_sort", "_lastUpdated") != "_lastUpdated":
            raise FhirProblem(400, "not-supported", "_sort supports _lastUpdated (ascending) only", "_sort")
        extra: list[str] = []
        for param, table in (("_include", INCLUDES), ("_revinclude", REVINCLUDES)):
            options = (self._revincludes(kind) if param == "_revinclude"
                       else {k: v for k, v in table.get(kind, {}).items() if v in self.exposed})
            for value in q.getlist(param):
                if value not in options:
                    hint = ", ".join(options) or "none on this type"
                    raise FhirProblem(400, "not-supported", f"{param}={value} is not supported; use {hint}", param)
                extra.append(options[value])
        filters = {}
        if q.get("patient"):
            pid = q["patient"].removeprefix("Patient/")
            if not pid:
                raise FhirProblem(400, "invalid", "patient must be a Patient id or Patient/<id>", "patient")
            filters["patient_id"] = pid
        if q.get("identifier"):
            filters["identifier"] = q["identifier"]
        cursor = _decode_cursor(kind, q["_cursor"]) if q.get("_cursor") else None

        if "identifier" in filters:
            matches, included, nxt = self._identified(filters["identifier"]), [], None
        else:
            matches, included, nxt = self._page(kind, entity, build, since, cursor, count, filters, extra, before)
        if self.identifier_references:
            npis = practitioner_npis(self.tenant.store)
            matches = [by_identifier(r, npis) for r in matches]
            included = [by_identifier(r, npis) for r in included]
        base = str(request.base_url).rstrip("/")
        entries = [
            {"fullUrl": f"{base}/fhir/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": mode}}
            for mode, group in (("match", matches), ("include", included))
            for r in group
        ]
        links = [{"relation": "self", "url": str(request.url)}]
        if nxt is not None:
            params = [(k, v) for k, v in q.multi_items() if k != "_cursor"]
            params.append(("_cursor", _encode_cursor(kind, *nxt)))
            links.append({"relation": "next", "url": str(request.url.replace(query=urlencode(params)))})
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "link": links,
            "entry": entries,
        }
        if not entries:
            del bundle["entry"]
        return _fhir_response(bundle)

    def _identified(self, value: str) -> list[dict[str, Any]]:
        """``Practitioner?identifier=system|value[,system|value…]`` (a value without ``system|`` matches any
        system); one page, as US Core servers answer a token search."""
        wanted = []
        for part in value.split(","):
            system, bar, code = part.rpartition("|")
            if not code:
                raise FhirProblem(400, "invalid", "identifier must be system|value (comma-separated)", "identifier")
            wanted.append((system if bar else None, code))
        out = []
        for rec in self.tenant.store.iter_all("practitioners"):
            npi = rec.get("npi")
            if npi and any(code == npi and system in (None, SID_NPI) for system, code in wanted):
                out.append(practitioner(public(rec)))
        return out

    def _page(
        self,
        kind: str,
        entity: str,
        build: Builder,
        since: int | None,
        cursor: tuple[int, str, int] | None,
        count: int,
        filters: dict[str, str],
        extra: list[str],
        before: int | None = None,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], tuple[int, str, int] | None]:
        """Up to ``count`` resources in (updated_at, id, child index) order, the includes, and the next cursor.

        A cursor ``(updated_at, id, skip)`` resumes inside record ``id`` after ``skip`` children when ``skip`` > 0,
        else after that record. A record changed since the cursor was issued reappears later in the order.
        """
        store = self.tenant.store
        matches: list[dict[str, Any]] = []
        included: list[dict[str, Any]] = []

        def add(rec: dict[str, Any], skip: int) -> tuple[int, str, int] | None:
            rec = public(rec)
            children = build(rec)[skip:]
            room = count - len(matches)
            matches.extend(children[:room])
            for other in extra:
                included.extend(TYPES[other][1](rec))
            if len(children) > room:
                return epoch(rec["updated_at"]), rec["id"], skip + room
            return None

        after: tuple[int, str] | None = None
        if cursor is not None:
            updated_at, rid, skip = cursor
            after = (updated_at, rid)
            if skip:
                rec = store.get(entity, rid)
                fresh = rec is not None and epoch(rec["updated_at"]) == updated_at
                if fresh and (since is None or updated_at >= since) and (before is None or updated_at < before):
                    stop = add(rec, skip)
                    if stop:
                        return matches, included, stop
                    if len(matches) >= count:  # the page ends exactly with this record's last child
                        return matches, included, (updated_at, rid, 0)
        while len(matches) < count:
            records, more = store.page(
                entity, since=since, before=before, cursor=after, limit=count, filters=filters
            )
            for i, rec in enumerate(records):
                stop = add(rec, 0)
                if stop:
                    return matches, included, stop
                after = (epoch(rec["updated_at"]), rec["id"])
                if len(matches) >= count:
                    if i + 1 < len(records) or more:
                        return matches, included, (*after, 0)
                    return matches, included, None
            if more is None:
                return matches, included, None
        return matches, included, None


def _fhir_response(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type=FHIR_JSON)


def routes(tenant: Tenant) -> list[BaseRoute]:
    """Mounted by ``app.build_app`` ahead of the REST catch-all routes."""
    fhir = Fhir(tenant)
    return [
        Route("/fhir/metadata", fhir.metadata, methods=["GET"]),
        Route("/fhir/{type}", fhir.search, methods=["GET"]),
        Route("/fhir/{type}/{rid}", fhir.read, methods=["GET"]),
    ]


__all__ = ["EXT", "TYPES", "FhirProblem", "routes"]
