"""Personal care's Home Connect record shapes -> canonical records (reading).

Follows ``docs/facts/wellsky-home-connect.md`` (the sourced fact sheet; section numbers in comments). Home
Connect speaks a FHIR-flavoured JSON of its own: ``meta.tag`` lists of ``{code, display}`` with every display a
string, ``name``/``telecom``/``address`` lists, times in UTC with ``+00:00``, and integer ids.

Reading is lenient: a record is refused only when its id (or a time its key is built from) is unusable; any
other gap becomes null and its field name goes into the record's ``data_quality`` list.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from ...errors import NormalizationError
from ...normalize.validation import validated

CLIENT_STATUS: dict[str, str] = {
    "1": "New Lead",
    "10": "Initial Phone Call",
    "20": "Assessment Scheduled",
    "30": "Assessment Performed",
    "40": "Wants to Meet Candidates",
    "50": "Needs Contract",
    "60": "Expecting Signature",
    "70": "Ready to Schedule",
    "80": "Care Started",
    "90": "Closed-Lost",
    "100": "Closed-Won",
}
APPLICANT_STATUS: dict[str, str] = {
    "10": "New Applicant",
    "15": "Phone Screen",
    "18": "Interview Scheduled",
    "20": "Interview Completed",
    "25": "Conditional Offer",
    "30": "Skills",
    "40": "Background",
    "50": "References",
    "60": "Offer",
    "70": "Paperwork",
    "80": "Orientation",
    "90": "Not Hired",
    "100": "Hired",
    "110": "Application Completed",
}
APPOINTMENT_STATUS = {"SCHEDULED": "scheduled", "COMPLETED": "completed", "CANCELLED": "cancelled"}
ENCOUNTER_STATUS = {"COMPLETE": "completed", "IN_PROGRESS": "in_progress"}
GENDER = {"male": "male", "female": "female", "other": "other", "unknown": "unknown", "m": "male", "f": "female"}
PHONE_USE_ORDER = ("mobile", "home", "work")



# -- small readers ------------------------------------------------------------------------------------------
class _Refuse(Exception):
    """The record's key is unusable: it cannot be emitted at all."""

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason


def tags(resource: dict[str, Any]) -> dict[str, str]:
    """``meta.tag`` as {code: display}; displays are strings on the wire (booleans "true"/"false" too)."""
    meta = resource.get("meta")
    out: dict[str, str] = {}
    if isinstance(meta, dict) and isinstance(meta.get("tag"), list):
        for tag in meta["tag"]:
            if isinstance(tag, dict) and isinstance(tag.get("code"), str) and tag.get("display") is not None:
                out[tag["code"]] = str(tag["display"])
    return out


def _flag(flags: list[str], name: str) -> None:
    if name not in flags:
        flags.append(name)


def _id(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def _ref_id(ref: Any, kind: str) -> str | None:
    """``{"reference": "Patient/123"}`` -> "123"."""
    if isinstance(ref, dict):
        ref = ref.get("reference")
    if isinstance(ref, str) and ref.startswith(kind + "/") and ref[len(kind) + 1 :]:
        return ref[len(kind) + 1 :]
    return None


def parse_time(value: Any) -> datetime | None:
    """An ISO timestamp in UTC; naive values are UTC (§6: "naive datetimes taken as UTC")."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(resource: dict[str, Any], key: str, flags: list[str], label: str | None = None) -> str | None:
    raw = resource.get(key)
    parsed = parse_time(raw)
    if parsed is None:
        if raw is not None:
            _flag(flags, label or key)
        return None
    return iso(parsed)


def updated_at(resource: dict[str, Any], observed_at: datetime) -> str:
    """The record's own change time when it carries one (``meta.lastUpdated`` or ``updated``), else the time this
    sync observed it: Home Connect records usually carry none, so the observation time is the honest stamp."""
    meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
    for raw in (meta.get("lastUpdated"), resource.get("updated")):
        parsed = parse_time(raw)
        if parsed is not None:
            return iso(parsed)
    return iso(observed_at)


def _names(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    names = resource.get("name")
    if isinstance(names, dict):
        names = [names]
    if not isinstance(names, list) or not names:
        return None, None
    chosen = next((n for n in names if isinstance(n, dict) and n.get("use") == "official"), None)
    chosen = chosen or next((n for n in names if isinstance(n, dict)), None) or {}
    given = chosen.get("given")
    first = " ".join(g for g in given if isinstance(g, str) and g) if isinstance(given, list) else given
    family = chosen.get("family")
    if isinstance(family, list):
        family = " ".join(f for f in family if isinstance(f, str))
    return (first or None) if isinstance(first, str) else None, (family or None) if isinstance(family, str) else None


def _telecom(resource: dict[str, Any], system: str) -> str | None:
    items = [t for t in resource.get("telecom") or [] if isinstance(t, dict) and t.get("system") == system]
    items = [t for t in items if isinstance(t.get("value"), str) and t["value"].strip()]
    if not items:
        return None
    ranked = sorted(items, key=lambda t: PHONE_USE_ORDER.index(t["use"]) if t.get("use") in PHONE_USE_ORDER else 9)
    return str(ranked[0]["value"]).strip()


def _address(resource: dict[str, Any], flags: list[str]) -> dict[str, Any] | None:
    items = resource.get("address")
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        return None
    raw = next((a for a in items if isinstance(a, dict) and a.get("use") == "home"), None)
    raw = raw or next((a for a in items if isinstance(a, dict)), None)
    if raw is None:
        return None
    lines = raw.get("line") if isinstance(raw.get("line"), list) else [raw.get("line")]
    lines = [ln for ln in lines if isinstance(ln, str) and ln.strip()]
    state = raw.get("state")
    address = {
        "line1": lines[0] if lines else None,
        "line2": ", ".join(lines[1:]) or None,
        "city": raw.get("city"),
        "state": state.upper() if isinstance(state, str) and len(state.strip()) == 2 else None,
        "postal_code": raw.get("postalCode"),
    }
    if not all(isinstance(address[k], str) and address[k] for k in ("line1", "city", "state", "postal_code")):
        _flag(flags, "address")  # an incomplete address is reported, never half-filled
        return None
    return address


def _birth_date(resource: dict[str, Any], flags: list[str]) -> str | None:
    raw = resource.get("birthDate")
    if raw in (None, ""):
        _flag(flags, "birth_date")
        return None
    try:
        return date.fromisoformat(str(raw)[:10]).isoformat()
    except ValueError:
        _flag(flags, "birth_date")
        return None


def _gender(resource: dict[str, Any], flags: list[str]) -> str:
    raw = resource.get("gender")
    value = GENDER.get(raw.lower()) if isinstance(raw, str) else None
    if value is None:
        _flag(flags, "gender")
        return "unknown"
    return value


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


# -- status codes --------------------------------------------------------------------------------------------
def client_status(code: str | None, active: bool | None, is_client: bool | None) -> str | None:
    """Client status code (§3) plus the ``active`` flag -> canonical status; None when nothing usable was sent.

    1-70 are the sales pipeline (a prospect: pending, or inactive once deactivated), 90 "Closed-Lost" a lead
    that never became a client (inactive), 80 "Care Started" and 100 "Closed-Won" are clients (active, or
    discharged once deactivated). Without a code, ``isClient`` and ``active`` decide the same way.
    """
    if code is not None and code.isdigit():
        number = int(code)
        if number == 90:
            return "inactive"
        if number < 80:
            return "inactive" if active is False else "pending"
        return "discharged" if active is False else "active"
    if is_client is False:
        return "inactive" if active is False else "pending"
    if active is None:
        return None
    return "active" if active else "discharged"


# -- native -> canonical -------------------------------------------------------------------------------------
Mapper = Callable[[dict[str, Any], datetime, dict[str, Any]], dict[str, Any]]


def _patient(res: dict[str, Any], observed: datetime, hint: dict[str, Any]) -> dict[str, Any]:
    flags: list[str] = []
    tag = tags(res)
    first, last = _names(res)
    code = tag.get("status")
    active = _bool(res.get("active"))
    status = client_status(code, active, _bool(tag.get("isClient")))
    if status is None:
        _flag(flags, "status")
        status = "inactive" if active is False else "pending"
    if code is not None and code not in CLIENT_STATUS:
        _flag(flags, "status_code")
    if first is None:
        _flag(flags, "first_name")
    if last is None:
        _flag(flags, "last_name")
    return {
        "id": res["id"],
        "first_name": first or "",
        "last_name": last or "",
        "birth_date": _birth_date(res, flags),
        "gender": _gender(res, flags),
        "phone": _telecom(res, "phone"),
        "address": _address(res, flags),
        "status": status,
        "status_code": code,
        "data_quality": flags,
        "updated_at": updated_at(res, observed),
    }


CREDENTIAL_TAGS = frozenset({"HHA", "CNA", "LPN", "LVN", "RN", "PCA", "HCA", "CMA"})
"""Profile-tag names agencies give a caregiver's certification: read as ``credentials``, not as a specialty."""


def _profile(ids: str, name_of: Any) -> tuple[str | None, list[str]]:
    """(credentials, specialties) from a ``profileTags`` id list; ``name_of`` resolves an id to the tag's name
    (the channel's ``GET /v1/profileTags/{id}/``). An id it cannot name stays ``profile_tag:<id>``."""
    credentials: str | None = None
    specialties: list[str] = []
    for tag_id in (t.strip() for t in ids.split(",") if t.strip()):
        name = name_of(tag_id) if name_of is not None else None
        if name is None:
            specialties.append(f"profile_tag:{tag_id}")
        elif name.upper() in CREDENTIAL_TAGS and credentials is None:
            credentials = name.upper()
        else:
            specialties.append(name)
    return credentials, specialties


def _practitioner(res: dict[str, Any], observed: datetime, hint: dict[str, Any]) -> dict[str, Any]:
    flags: list[str] = []
    tag = tags(res)
    first, last = _names(res)
    hired = _bool(tag.get("isHired"))
    code = tag.get("status")
    if hired is None:
        hired = code == "100" if code is not None else None
    if hired is None:
        _flag(flags, "roles")
    active = _bool(res.get("active"))
    if active is None:
        _flag(flags, "active")
    if code is not None and code not in APPLICANT_STATUS:
        _flag(flags, "status_code")
    if first is None:
        _flag(flags, "first_name")
    if last is None:
        _flag(flags, "last_name")
    credentials, specialties = _profile(tag.get("profileTags", ""), hint.get("profile_tag_name"))
    return {
        "id": res["id"],
        "first_name": first or "",
        "last_name": last or "",
        "roles": [] if hired is None else ["caregiver"] if hired else ["applicant"],
        "disciplines": ["HHA"],
        "credentials": credentials,
        "specialties": specialties,
        "active": active if active is not None else bool(hired),
        "status_code": code,
        "data_quality": flags,
        "updated_at": updated_at(res, observed),
    }


def occurrence_id(series_id: str, start: str) -> str:
    """The stable key of one occurrence: recurring shifts share the source id, so the start time joins it."""
    return f"{series_id}@{start}"


def _appointment(res: dict[str, Any], observed: datetime, hint: dict[str, Any]) -> dict[str, Any]:
    flags: list[str] = []
    start = _time(res, "start", flags)
    if start is None:
        raise _Refuse("start", "missing or not an ISO timestamp; it is part of the occurrence key")
    end = _time(res, "end", flags)
    if end is None:
        _flag(flags, "end")
        end = start
    patient = _id((res.get("client") or {}).get("id") if isinstance(res.get("client"), dict) else None)
    patient = patient or hint.get("client_id")
    if patient is None:
        raise _Refuse("client.id", "missing; a shift must name its client")
    caregiver = res.get("caregiver") if isinstance(res.get("caregiver"), dict) else {}
    raw_status = res.get("status")
    status = APPOINTMENT_STATUS.get(raw_status.upper()) if isinstance(raw_status, str) else None
    if status is None:
        _flag(flags, "status")
        status = "scheduled"
    tasks = []
    for task in res.get("tasks") or []:
        if isinstance(task, dict) and _id(task.get("id")):
            task_status = str(task.get("status") or "").upper()
            tasks.append(
                {
                    "id": _id(task.get("id")),
                    "description": task.get("description") if isinstance(task.get("description"), str) else None,
                    "status": {"COMPLETE": "complete", "NOT_COMPLETE": "not_complete"}.get(task_status),
                }
            )
    return {
        "id": occurrence_id(res["id"], start),
        "series_id": res["id"],
        "patient_id": patient,
        "practitioner_id": _id(caregiver.get("id")),
        "start": start,
        "end": end,
        "status": status,
        "discipline": "HHA",
        "tasks": tasks,
        "data_quality": flags,
        "updated_at": updated_at(res, observed),
    }


def _rates(value: Any) -> list[dict[str, Any]]:
    out = []
    for rate in value if isinstance(value, list) else []:
        if isinstance(rate, dict):
            amount = rate.get("amount")
            try:
                amount = float(amount) if amount is not None and not isinstance(amount, bool) else None
            except (TypeError, ValueError):
                amount = None
            out.append({"id": _id(rate.get("id")), "amount": amount, "method": rate.get("method")})
    return out


def task_logs(bundle: Any) -> list[dict[str, Any]]:
    """The TaskLog list (§3: a Bundle whose entries are the logs themselves, counted by ``total``)."""
    out = []
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        item = entry.get("resource", entry) if isinstance(entry, dict) else None
        if not isinstance(item, dict) or _id(item.get("id")) is None:
            continue
        recorded = parse_time(item.get("recorded"))
        out.append(
            {
                "id": _id(item.get("id")),
                "title": item.get("title") if isinstance(item.get("title"), str) else None,
                "description": item.get("description") if isinstance(item.get("description"), str) else None,
                "status": str(item["status"]) if item.get("status") is not None else None,
                "comment": item.get("comment") if isinstance(item.get("comment"), str) else None,
                "recorded": iso(recorded) if recorded else None,
            }
        )
    return out


def _encounter(res: dict[str, Any], observed: datetime, hint: dict[str, Any]) -> dict[str, Any]:
    flags: list[str] = []
    period = res.get("period") if isinstance(res.get("period"), dict) else {}
    start = _time(period, "start", flags, "start")
    if start is None:
        raise _Refuse("period.start", "missing or not an ISO timestamp; a care log without a clock-in is unusable")
    end = _time(period, "end", flags, "end")
    patient = _ref_id(res.get("subject"), "Patient") or hint.get("client_id")
    if patient is None:
        raise _Refuse("subject.reference", "missing; a care log must name its client (Patient/{id})")
    participant = res.get("participant")
    individuals = participant.get("Individual") if isinstance(participant, dict) else participant
    caregiver = None
    for item in individuals if isinstance(individuals, list) else []:
        caregiver = caregiver or _ref_id(item if isinstance(item, dict) else None, "Practitioner")
    raw_status = res.get("status")
    status = ENCOUNTER_STATUS.get(raw_status.upper()) if isinstance(raw_status, str) else None
    if status is None:
        _flag(flags, "status")
        status = "completed" if end else "in_progress"
    rates = res.get("rates") if isinstance(res.get("rates"), dict) else {}
    return {
        "id": res["id"],
        "patient_id": patient,
        "practitioner_id": caregiver,
        "appointment_id": _ref_id(res.get("appointment"), "Appointment"),
        "start": start,
        "end": end,
        "discipline": "HHA",
        "status": status,
        "finalized": status == "completed",
        "pay_rates": _rates(rates.get("payRate")),
        "bill_rates": _rates(rates.get("billRate")),
        "task_logs": hint.get("task_logs", []),
        "data_quality": flags,
        "updated_at": updated_at(res, observed),
    }


def _related_person(res: dict[str, Any], observed: datetime, hint: dict[str, Any]) -> dict[str, Any]:
    flags: list[str] = []
    first, last = _names(res)
    relationship = res.get("relationship")
    if isinstance(relationship, list):  # FHIR's own spelling; Home Connect sends an object (§3)
        relationship = relationship[0] if relationship else None
    coding = relationship.get("coding") if isinstance(relationship, dict) else None
    code = coding[0] if isinstance(coding, list) and coding and isinstance(coding[0], dict) else {}
    patient = _ref_id(res.get("patient"), "Patient") or hint.get("client_id")
    if patient is None:
        _flag(flags, "patient_id")
    return {
        "id": res["id"],
        "patient_id": patient,
        "first_name": first,
        "last_name": last,
        "relationship": str(code["code"]) if code.get("code") is not None else None,
        "relationship_display": str(code["display"]) if code.get("display") is not None else None,
        "phone": _telecom(res, "phone"),
        "email": _telecom(res, "email"),
        "address": _address(res, flags),
        "emergency_contact": _bool(res.get("emergencyContact")),
        "primary_contact": _bool(res.get("primaryContact")),
        "payer": _bool(res.get("payer")),
        "power_of_attorney": _bool(res.get("poa")),
        "data_quality": flags,
        "updated_at": updated_at(res, observed),
    }


def _location(res: dict[str, Any], observed: datetime, hint: dict[str, Any]) -> dict[str, Any]:
    """No field-level shape is published for Location (§3), so only FHIR-standard fields are read."""
    flags: list[str] = []
    name = res.get("name")
    status = res.get("status")
    active = _bool(res.get("active"))
    if active is None and isinstance(status, str):
        active = status.lower() == "active"
    return {
        "id": res["id"],
        "name": name if isinstance(name, str) and name else None,
        "active": active,
        "phone": _telecom(res, "phone"),
        "address": _address(res, flags),
        "data_quality": flags,
        "updated_at": updated_at(res, observed),
    }


MAPPERS: dict[str, Mapper] = {
    "patients": _patient,
    "practitioners": _practitioner,
    "appointments": _appointment,
    "encounters": _encounter,
    "related_persons": _related_person,
    "locations": _location,
}


def to_canonical(
    entity: str, resource: Any, observed_at: datetime, **hint: Any
) -> dict[str, Any]:
    """One Home Connect resource -> one validated canonical record (JSON-ready).

    ``hint`` carries what the request already knows (``client_id`` of a per-client search, a care log's
    ``task_logs``). Raises :class:`NormalizationError` naming the field, never the value.
    """
    if not isinstance(resource, dict):
        raise NormalizationError(entity, "$", "resource is not a JSON object")
    rid = _id(resource.get("id"))
    if rid is None:
        raise NormalizationError(entity, "id", "missing or not a string/integer id")
    try:
        fields = MAPPERS[entity]({**resource, "id": rid}, observed_at, hint)
    except _Refuse as bad:
        raise NormalizationError(entity, bad.field, bad.reason, record_id=rid) from None
    return validated(entity, fields, rid)  # the names in fields["data_quality"] become flags


__all__ = [
    "APPLICANT_STATUS",
    "CLIENT_STATUS",
    "client_status",
    "iso",
    "occurrence_id",
    "parse_time",
    "tags",
    "task_logs",
    "to_canonical",
    "updated_at",
]
