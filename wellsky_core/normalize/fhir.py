"""FHIR R4 resources (JSON dicts) -> canonical records.

WellSky's FHIR face carries every canonical field: standard elements where FHIR has a home for them and
extensions under :data:`EXT` where it has none (patient status and face-sheet coverage, appointment payer and
location, encounter note summary and finalized flag, authorization status and unit rules...). Child data of
one canonical record arrives as separate resources (an encounter's Conditions, Procedures and Observations, a
care plan's Goals, a practitioner's PractitionerRole), so the functions here take the parent resource plus its
children and return one canonical record.

Every function returns ``Model.model_validate(...).model_dump(mode="json")`` and raises
:class:`~wellsky_core.errors.NormalizationError` naming the entity and field (never the value) on bad input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

from wellsky_core.errors import NormalizationError
from wellsky_core.normalize.validation import validated

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
LOINC = "http://loinc.org"

APPOINTMENT_STATUS = {
    "proposed": "scheduled",
    "pending": "scheduled",
    "booked": "scheduled",
    "arrived": "scheduled",
    "checked-in": "scheduled",
    "waitlist": "scheduled",
    "fulfilled": "completed",
    "cancelled": "cancelled",
    "entered-in-error": "cancelled",
    "noshow": "missed",
}
ENCOUNTER_STATUS = {
    "planned": "in_progress",
    "arrived": "in_progress",
    "triaged": "in_progress",
    "in-progress": "in_progress",
    "onleave": "in_progress",
    "finished": "completed",
    "cancelled": "cancelled",
    "entered-in-error": "cancelled",
}
REFERRAL_STATUS = {"draft": "received", "on-hold": "pending", "active": "accepted", "revoked": "declined"}
GOAL_ACHIEVEMENT = {
    "in-progress": "in_progress",
    "improving": "in_progress",
    "worsening": "in_progress",
    "no-change": "in_progress",
    "sustaining": "in_progress",
    "achieved": "achieved",
    "not-achieved": "not_achieved",
    "no-progress": "not_achieved",
    "not-attainable": "not_achieved",
}
GOAL_LIFECYCLE = {
    "proposed": "proposed",
    "planned": "proposed",
    "accepted": "proposed",
    "active": "in_progress",
    "on-hold": "in_progress",
    "completed": "achieved",
    "cancelled": "not_achieved",
    "rejected": "not_achieved",
}
VITAL_CODES = {
    "8310-5": "temperature_f",
    "8867-4": "pulse_bpm",
    "9279-1": "respiratory_rate",
    "8480-6": "bp_systolic",
    "8462-4": "bp_diastolic",
    "59408-5": "spo2_pct",
    "2708-6": "spo2_pct",
    "29463-7": "weight_lb",
}
INTEGER_VITALS = frozenset({"pulse_bpm", "respiratory_rate", "bp_systolic", "bp_diastolic", "spo2_pct"})

ENTITY_TYPES: dict[str, str] = {
    "patients": "Patient",
    "practitioners": "Practitioner",
    "appointments": "Appointment",
    "encounters": "Encounter",
    "care_plans": "CarePlan",
    "authorizations": "ClaimResponse",
    "referrals": "ServiceRequest",
    "coverage": "Coverage",
}
"""The FHIR resource type that carries each canonical entity."""


# -- helpers ----------------------------------------------------------------------------------------------
class _Reader:
    """Field access on one resource that fails with a NormalizationError naming the canonical field."""

    def __init__(self, entity: str, resource: Mapping[str, Any]) -> None:
        self.entity = entity
        self.res = resource
        rid = resource.get("id")
        self.id = rid if isinstance(rid, str) else None

    def fail(self, field: str, reason: str) -> NoReturn:
        raise NormalizationError(self.entity, field, reason, record_id=self.id)

    def ext(self, name: str, value_key: str, field: str, *, required: bool = False) -> Any:
        for item in self.res.get("extension") or []:
            if isinstance(item, Mapping) and item.get("url") == EXT + name:
                if value_key not in item:
                    self.fail(field, f"extension {name} has no {value_key}")
                return item[value_key]
        if required:
            self.fail(field, f"missing extension {EXT}{name}")
        return None

    def exts(self, name: str) -> list[Mapping[str, Any]]:
        return [i for i in self.res.get("extension") or [] if isinstance(i, Mapping) and i.get("url") == EXT + name]

    def ref(self, value: Any, kind: str, field: str, *, required: bool = True) -> str | None:
        """``{"reference": "Patient/123"}`` (relative or absolute) -> ``"123"``."""
        if value is None:
            if required:
                self.fail(field, f"missing {kind} reference")
            return None
        ref = value.get("reference") if isinstance(value, Mapping) else None
        if not isinstance(ref, str):
            self.fail(field, f"expected a {kind} reference")
        parts = ref.rstrip("/").split("/")
        if len(parts) < 2 or parts[-2] != kind or not parts[-1]:
            self.fail(field, f"reference is not to a {kind}")
        return parts[-1]

    def get(self, key: str, field: str) -> Any:
        value = self.res.get(key)
        if value is None:
            self.fail(field, f"missing {self.res.get('resourceType', 'resource')}.{key}")
        return value

    def updated_at(self) -> Any:
        meta = self.res.get("meta")
        if not isinstance(meta, Mapping) or not meta.get("lastUpdated"):
            self.fail("updated_at", "missing meta.lastUpdated")
        return meta["lastUpdated"]


def _codes(concept: Any, system: str | None = None) -> list[str]:
    if not isinstance(concept, Mapping):
        return []
    return [
        c["code"]
        for c in concept.get("coding") or []
        if isinstance(c, Mapping) and c.get("code") and (system is None or c.get("system") == system)
    ]


def _first_code(concept: Any, system: str | None = None) -> str | None:
    codes = _codes(concept, system)
    return codes[0] if codes else None


def _identifier(identifiers: Any, system: str) -> str | None:
    for ident in identifiers or []:
        if isinstance(ident, Mapping) and ident.get("system") == system and ident.get("value"):
            return str(ident["value"])
    return None


def _address(addr: Any) -> dict[str, Any] | None:
    if not isinstance(addr, Mapping):
        return None
    lines = [x for x in addr.get("line") or [] if x]
    return {
        "line1": lines[0] if lines else None,
        "line2": lines[1] if len(lines) > 1 else None,
        "city": addr.get("city"),
        "state": addr.get("state"),
        "postal_code": addr.get("postalCode"),
    }


def _sub(extension: Mapping[str, Any], url: str, value_key: str) -> Any:
    for item in extension.get("extension") or []:
        if isinstance(item, Mapping) and item.get("url") == url:
            return item.get(value_key)
    return None


def _period(value: Any) -> tuple[Any, Any]:
    if not isinstance(value, Mapping):
        return None, None
    return value.get("start"), value.get("end")


# -- one function per entity ----------------------------------------------------------------------------------
def patient(res: Mapping[str, Any]) -> dict[str, Any]:
    r = _Reader("patients", res)
    names = res.get("name") or []
    name = next((n for n in names if isinstance(n, Mapping) and n.get("use") == "official"), None) or (
        names[0] if names else {}
    )
    given = name.get("given") or [] if isinstance(name, Mapping) else []
    phone = next(
        (t.get("value") for t in res.get("telecom") or [] if isinstance(t, Mapping) and t.get("system") == "phone"),
        None,
    )
    addresses = res.get("address") or []
    home = next((a for a in addresses if isinstance(a, Mapping) and a.get("use") == "home"), None)
    status = r.ext("patient-status", "valueCode", "status")
    if status is None:
        status = "active" if res.get("active", True) else "inactive"
    coverage = [
        {
            "payer_id": _sub(e, "payer-id", "valueString"),
            "payer_name": _sub(e, "payer-name", "valueString"),
            "member_id": _sub(e, "member-id", "valueString"),
            "order": _sub(e, "order", "valuePositiveInt"),
        }
        for e in r.exts("patient-coverage")
    ]
    data = {
        "id": r.get("id", "id"),
        "mrn": _identifier(res.get("identifier"), SID_MRN),
        "medicare_mbi": _identifier(res.get("identifier"), SID_MBI),
        "medicaid_id": _identifier(res.get("identifier"), SID_MEDICAID),
        "first_name": given[0] if given else None,
        "last_name": name.get("family") if isinstance(name, Mapping) else None,
        "birth_date": res.get("birthDate"),
        "gender": res.get("gender"),
        "phone": phone,
        "address": _address(home or (addresses[0] if addresses else None)),
        "status": status,
        "coverage": coverage,
        "updated_at": r.updated_at(),
    }
    return validated("patients", data, r.id)


def practitioner(res: Mapping[str, Any], role: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Practitioner plus its PractitionerRole (roles as ``code``; disciplines and specialties as ``specialty``)."""
    r = _Reader("practitioners", res)
    names = res.get("name") or [{}]
    name = names[0] if isinstance(names[0], Mapping) else {}
    given = name.get("given") or []
    quals = [q for q in res.get("qualification") or [] if isinstance(q, Mapping)]
    credentials = None
    if quals:
        code = quals[0].get("code") or {}
        credentials = code.get("text") or _first_code(code)
    roles: list[str] = []
    disciplines: list[str] = []
    specialties: list[str] = []
    if role is not None:
        for concept in role.get("code") or []:
            roles.extend(_codes(concept, CS_ROLE) or ([concept["text"]] if concept.get("text") else []))
        for concept in role.get("specialty") or []:
            coded = _codes(concept, CS_DISCIPLINE)
            if coded:
                disciplines.extend(coded)
            elif concept.get("text"):
                specialties.append(concept["text"])
    data = {
        "id": r.get("id", "id"),
        "npi": _identifier(res.get("identifier"), SID_NPI),
        "first_name": given[0] if given else None,
        "last_name": name.get("family"),
        "credentials": credentials,
        "roles": roles,
        "disciplines": disciplines,
        "specialties": specialties,
        "active": res.get("active", True),
        "updated_at": r.updated_at(),
    }
    return validated("practitioners", data, r.id)


def appointment(res: Mapping[str, Any]) -> dict[str, Any]:
    r = _Reader("appointments", res)
    patient_id = practitioner_id = None
    for part in res.get("participant") or []:
        actor = part.get("actor") if isinstance(part, Mapping) else None
        ref = actor.get("reference", "") if isinstance(actor, Mapping) else ""
        if "Patient/" in ref and patient_id is None:
            patient_id = r.ref(actor, "Patient", "patient_id")
        elif "Practitioner/" in ref and practitioner_id is None:
            practitioner_id = r.ref(actor, "Practitioner", "practitioner_id")
    if patient_id is None:
        r.fail("patient_id", "no participant references a Patient")
    services = res.get("serviceType") or []
    discipline = next((c for s in services for c in _codes(s, CS_DISCIPLINE)), None)
    service_code = next((c for s in services for c in _codes(s, HCPCS)), None)
    status = r.get("status", "status")
    if status not in APPOINTMENT_STATUS:
        r.fail("status", "unknown Appointment.status")
    data = {
        "id": r.get("id", "id"),
        "external_id": _identifier(res.get("identifier"), SID_EXTERNAL),
        "patient_id": patient_id,
        "practitioner_id": practitioner_id,
        "payer_id": r.ext("payer-id", "valueString", "payer_id"),
        "start": res.get("start"),
        "end": res.get("end"),
        "status": APPOINTMENT_STATUS[status],
        "discipline": discipline,
        "service_code": service_code,
        "location": _address(r.ext("appointment-location", "valueAddress", "location")),
        "updated_at": r.updated_at(),
    }
    return validated("appointments", data, r.id)


def encounter(
    res: Mapping[str, Any],
    conditions: Mapping[str, Mapping[str, Any]],
    procedures: Iterable[Mapping[str, Any]] = (),
    observations: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """An Encounter with its Conditions (by reference, from ``Encounter.diagnosis``), Procedures and vitals.

    ``conditions`` maps ``"Condition/<id>"`` to the resource; a diagnosis whose Condition is missing is an error
    (a silently shorter diagnosis list would be wrong data, not less data).
    """
    r = _Reader("encounters", res)
    diagnoses = []
    for i, dx in enumerate(res.get("diagnosis") or []):
        cid = r.ref(dx.get("condition") if isinstance(dx, Mapping) else None, "Condition", f"diagnoses.{i}")
        cond = conditions.get(f"Condition/{cid}")
        if cond is None:
            r.fail(f"diagnoses.{i}", "the referenced Condition was not returned with the Encounter")
        coding = next(iter((cond.get("code") or {}).get("coding") or []), {})
        diagnoses.append({"code": coding.get("code"), "description": coding.get("display"), "rank": dx.get("rank")})
    procs = []
    ordered = sorted(
        procedures,
        key=lambda p: _Reader("encounters", p).ext("procedure-sequence", "valuePositiveInt", "procedures") or 0,
    )
    for proc in ordered:
        coding = next(iter((proc.get("code") or {}).get("coding") or []), {})
        system = {HCPCS: "HCPCS", CPT: "CPT"}.get(coding.get("system", ""))
        if system is None:
            r.fail("procedures", "Procedure.code is neither HCPCS nor CPT")
        procs.append({"code": coding.get("code"), "system": system, "description": coding.get("display")})
    vitals: dict[str, Any] = {}
    for obs in observations:
        name = next((VITAL_CODES[c] for c in _codes(obs.get("code"), LOINC) if c in VITAL_CODES), None)
        quantity = obs.get("valueQuantity")
        if name is None or not isinstance(quantity, Mapping) or quantity.get("value") is None:
            continue
        value = quantity["value"]
        if name in INTEGER_VITALS:
            if float(value) != int(value):
                r.fail(f"vitals.{name}", "expected a whole number")
            value = int(value)
        vitals[name] = value
    recorded = r.ext("encounter-vitals-recorded", "valueBoolean", "vitals")
    status = r.get("status", "status")
    if status not in ENCOUNTER_STATUS:
        r.fail("status", "unknown Encounter.status")
    participants = res.get("participant") or []
    individual = next(
        (p.get("individual") for p in participants if isinstance(p, Mapping) and p.get("individual")), None
    )
    appointments = res.get("appointment") or []
    start, end = _period(res.get("period"))
    data = {
        "id": r.get("id", "id"),
        "patient_id": r.ref(res.get("subject"), "Patient", "patient_id"),
        "practitioner_id": r.ref(individual, "Practitioner", "practitioner_id", required=False),
        "appointment_id": r.ref(appointments[0], "Appointment", "appointment_id") if appointments else None,
        "start": start,
        "end": end,
        "discipline": _first_code(res.get("serviceType"), CS_DISCIPLINE),
        "status": ENCOUNTER_STATUS[status],
        "diagnoses": diagnoses,
        "procedures": procs,
        "vitals": vitals if vitals or recorded else None,
        "note_summary": r.ext("encounter-note-summary", "valueString", "note_summary"),
        "finalized": r.ext("encounter-finalized", "valueBoolean", "finalized", required=True),
        "updated_at": r.updated_at(),
    }
    return validated("encounters", data, r.id)


def _goal(goal: Mapping[str, Any]) -> dict[str, Any]:
    achievement = _first_code(goal.get("achievementStatus"))
    status = GOAL_ACHIEVEMENT.get(achievement or "") or GOAL_LIFECYCLE.get(goal.get("lifecycleStatus", ""))
    targets = [t for t in goal.get("target") or [] if isinstance(t, Mapping) and t.get("dueDate")]
    return {
        "description": (goal.get("description") or {}).get("text"),
        "status": status,
        "target_date": targets[0]["dueDate"] if targets else None,
    }


def care_plan(res: Mapping[str, Any], goals: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A CarePlan with its Goals (``goals`` maps ``"Goal/<id>"`` to the resource, from ``_include``)."""
    r = _Reader("care_plans", res)
    goal_records = []
    for i, ref in enumerate(res.get("goal") or []):
        gid = r.ref(ref, "Goal", f"goals.{i}")
        goal = goals.get(f"Goal/{gid}")
        if goal is None:
            r.fail(f"goals.{i}", "the referenced Goal was not returned with the CarePlan")
        goal_records.append(_goal(goal))
    interventions = []
    for activity in res.get("activity") or []:
        detail = activity.get("detail") if isinstance(activity, Mapping) else None
        if not isinstance(detail, Mapping):
            continue
        interventions.append(
            {
                "description": detail.get("description"),
                "discipline": _first_code(detail.get("code"), CS_DISCIPLINE),
                "frequency": detail.get("scheduledString"),
            }
        )
    outcomes = [
        {
            "description": _sub(e, "description", "valueString"),
            "achieved": _sub(e, "achieved", "valueBoolean"),
            "recorded_on": _sub(e, "recorded-on", "valueDate"),
        }
        for e in r.exts("careplan-outcome")
    ]
    start, end = _period(res.get("period"))
    data = {
        "id": r.get("id", "id"),
        "patient_id": r.ref(res.get("subject"), "Patient", "patient_id"),
        "status": res.get("status"),
        "period_start": start,
        "period_end": end,
        "goals": goal_records,
        "interventions": interventions,
        "outcomes": outcomes,
        "updated_at": r.updated_at(),
    }
    return validated("care_plans", data, r.id)


def coverage(res: Mapping[str, Any]) -> dict[str, Any]:
    r = _Reader("coverage", res)
    payors = res.get("payor") or [None]
    payor = payors[0] if isinstance(payors[0], Mapping) else {}
    plan = next(
        (c for c in res.get("class") or [] if isinstance(c, Mapping) and "plan" in _codes(c.get("type"))),
        None,
    )
    start, end = _period(res.get("period"))
    data = {
        "id": r.get("id", "id"),
        "patient_id": r.ref(res.get("beneficiary"), "Patient", "patient_id"),
        "payer_id": (payor.get("identifier") or {}).get("value"),
        "payer_name": payor.get("display"),
        "plan_name": (plan.get("name") or plan.get("value")) if plan else None,
        "member_id": res.get("subscriberId"),
        "order": res.get("order"),
        "period_start": start,
        "period_end": end,
        "status": res.get("status"),
        "updated_at": r.updated_at(),
    }
    return validated("coverage", data, r.id)


def authorization(res: Mapping[str, Any]) -> dict[str, Any]:
    """A ``use=preauthorization`` ClaimResponse: units from the header adjudication, codes from ``addItem``."""
    r = _Reader("authorizations", res)
    if res.get("use") != "preauthorization":
        r.fail("id", "ClaimResponse.use is not preauthorization")
    units: dict[str, Any] = {}
    for adj in res.get("adjudication") or []:
        code = _first_code(adj.get("category"), CS_UNITS) if isinstance(adj, Mapping) else None
        if code:
            units[code] = adj.get("value")
    for code, field in (("authorized", "units_authorized"), ("used", "units_used")):
        value = units.get(code)
        if value is None:
            r.fail(field, f"no adjudication with category {code}")
        if float(value) != int(value):
            r.fail(field, "expected a whole number of units")
        units[code] = int(value)
    insurer = res.get("insurer") if isinstance(res.get("insurer"), Mapping) else {}
    member = None
    for ins in res.get("insurance") or []:
        ident = ((ins.get("coverage") or {}).get("identifier") or {}) if isinstance(ins, Mapping) else {}
        if ident.get("system") == SID_MEMBER:
            member = ident.get("value")
            break
    start, end = _period(res.get("preAuthPeriod"))
    data = {
        "id": r.get("id", "id"),
        "patient_id": r.ref(res.get("patient"), "Patient", "patient_id"),
        "payer_id": (insurer.get("identifier") or {}).get("value"),
        "payer_name": insurer.get("display"),
        "member_id": member,
        "service_codes": [c for item in res.get("addItem") or [] for c in _codes(item.get("productOrService"))[:1]],
        "unit_type": r.ext("unit-type", "valueCode", "unit_type", required=True),
        "rounding": r.ext("unit-rounding", "valueCode", "rounding") or "nearest",
        "units_authorized": units["authorized"],
        "units_used": units["used"],
        "start_date": start,
        "end_date": end,
        "status": r.ext("authorization-status", "valueCode", "status", required=True),
        "updated_at": r.updated_at(),
    }
    return validated("authorizations", data, r.id)


def referral(res: Mapping[str, Any]) -> dict[str, Any]:
    r = _Reader("referrals", res)
    requester = res.get("requester") if isinstance(res.get("requester"), Mapping) else {}
    ident = requester.get("identifier") or {}
    reasons = [c.get("text") or _first_code(c) for c in res.get("reasonCode") or [] if isinstance(c, Mapping)]
    status = r.get("status", "status")
    if status not in REFERRAL_STATUS:
        r.fail("status", "ServiceRequest.status has no referral equivalent")
    data = {
        "id": r.get("id", "id"),
        "patient_id": r.ref(res.get("subject"), "Patient", "patient_id"),
        "source_name": requester.get("display"),
        "source_npi": ident.get("value") if ident.get("system") == SID_NPI else None,
        "reason": reasons[0] if reasons else None,
        "priority": "stat" if res.get("priority") == "asap" else res.get("priority", "routine"),
        "status": REFERRAL_STATUS[status],
        "received_date": (res.get("authoredOn") or "")[:10] or None,
        "accepted_date": r.ext("referral-accepted-date", "valueDate", "accepted_date"),
        "updated_at": r.updated_at(),
    }
    return validated("referrals", data, r.id)


SIMPLE: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "patients": patient,
    "appointments": appointment,
    "authorizations": authorization,
    "referrals": referral,
    "coverage": coverage,
}
"""Entities whose canonical record is exactly one resource."""
