"""Personal care (formerly ClearCare): WellSky's "Home Connect" partner API — its record shapes <-> canonical
records, its write rules, and the product facts the connector follows (host, token, streams, rate budget).

Everything here follows ``/work/shared/wellsky-home-connect.md`` (the sourced fact sheet; section numbers in
comments). Home Connect speaks a FHIR-flavoured JSON of its own: ``meta.tag`` lists of ``{code, display}`` with
every display a string, ``name``/``telecom``/``address`` lists, times in UTC with ``+00:00``, and integer ids.

Reading is lenient: a record is refused only when its id (or a time its key is built from) is unusable; any
other gap becomes null and its field name goes into the record's ``data_quality`` list. Writing is strict:
:func:`patient_body` validates every field by the documented rules (§4) before a byte is sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from ..errors import NormalizationError
from ..normalize.validation import validated
from .base import Dialect

PRODUCTION_URL = "https://connect.clearcareonline.com"
TOKEN_PATH = "/oauth/accesstoken"
API_ROOT = "/v1"
MAX_COUNT = 100
"""``_count`` maximum (§2 paging)."""
RATE_BUDGET = 100.0
"""Requests per second the vendor asks partners to stay under (§6)."""
TOKEN_RENEW_MARGIN_SECONDS = 300.0
"""Production refreshes the one-hour token five minutes early (§1)."""

UNAVAILABLE: dict[str, str] = {
    "care_plans": "Home Connect has no bulk care-plan read: care plans are only reachable per client "
    "(/v1/careplan/activity/{patientId}/) and carry no plan period, goals or outcomes",
    "authorizations": "Home Connect exposes no payer authorizations (no resource in the vendor API)",
    "referrals": "Home Connect exposes referral *sources* (POST-only collection), not referrals",
    "coverage": "Home Connect exposes no insurance coverage resource",
}
"""Canonical streams this API does not have, with the reason reported to the user (never faked)."""

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
CANONICAL_TO_CLIENT_STATUS = {"pending": "1", "active": "80", "inactive": "90", "discharged": "80"}
"""For creates and status changes: the code each canonical status is written as (inverse of client_status)."""

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
    specialties = [t.strip() for t in tag.get("profileTags", "").split(",") if t.strip()]
    return {
        "id": res["id"],
        "first_name": first or "",
        "last_name": last or "",
        "roles": [] if hired is None else ["caregiver"] if hired else ["applicant"],
        "disciplines": ["HHA"],
        "specialties": [f"profile_tag:{t}" for t in specialties],
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


# -- canonical -> native (writes, §4) --------------------------------------------------------------------------
class WriteInvalid(ValueError):
    """A canonical record that breaks a documented Home Connect write rule; names the field and the fix."""

    def __init__(self, field: str, fix: str) -> None:
        self.field = field
        super().__init__(f"{field}: {fix}")


_PHONE_FORMATTING = re.compile(r"[\s().\-]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def valid_phone(value: str, field: str = "phone") -> str:
    """Exactly 10 digits, no country code, first digit 2-9 (§4); spaces, dots, dashes and brackets are dropped."""
    digits = _PHONE_FORMATTING.sub("", value)
    if not re.fullmatch(r"[2-9]\d{9}", digits):
        raise WriteInvalid(field, "must be a 10-digit US number without country code, first digit 2-9 "
                                  "(e.g. 3035550123)")
    return digits


def check_text(value: Any, field: str) -> None:
    """Code points below 32 are refused except tab, CR and LF (§6)."""
    if isinstance(value, str) and _CONTROL.search(value):
        raise WriteInvalid(field, "contains a control character (below U+0020 other than tab, CR, LF); remove it")
    if isinstance(value, dict):
        for key, item in value.items():
            check_text(item, f"{field}.{key}")
    if isinstance(value, list):
        for n, item in enumerate(value):
            check_text(item, f"{field}[{n}]")


def agency_tag(agency_id: str) -> dict[str, str]:
    return {"code": "agencyId", "display": str(agency_id)}


def patient_body(changes: dict[str, Any], agency_id: str, *, create: bool) -> dict[str, Any]:
    """Canonical patient fields -> the body of ``POST /v1/patients/`` (create) or ``PUT /v1/patients/{id}/``
    (partial update: only the fields given change, §4). Validates every documented rule first."""
    check_text(changes, "patient")
    body: dict[str, Any] = {"resourceType": "Patient"}
    tag_list = [agency_tag(agency_id)]
    if "first_name" in changes or "last_name" in changes:
        body["name"] = [{"use": "official", "family": changes.get("last_name"), "given": [changes.get("first_name")]}]
    if "birth_date" in changes and changes["birth_date"] is not None:
        try:
            body["birthDate"] = date.fromisoformat(str(changes["birth_date"])).isoformat()
        except ValueError:
            raise WriteInvalid("birth_date", "must be a date YYYY-MM-DD") from None
    if "gender" in changes:
        body["gender"] = changes["gender"]
    if "phone" in changes:
        body["telecom"] = (
            [{"system": "phone", "value": valid_phone(changes["phone"]), "use": "mobile"}] if changes["phone"] else []
        )
    if "address" in changes:
        addr = changes["address"]
        body["address"] = (
            [
                {
                    "use": "home",
                    "line": [p for p in (addr.get("line1"), addr.get("line2")) if p],
                    "city": addr.get("city"),
                    "state": addr.get("state"),
                    "postalCode": addr.get("postal_code"),
                }
            ]
            if addr
            else []
        )
    if "status" in changes:
        status = changes["status"]
        body["active"] = status in ("active", "pending")  # discharged = client code 80 + active false
        tag_list += [
            {"code": "status", "display": CANONICAL_TO_CLIENT_STATUS[status]},
            {"code": "isClient", "display": "false" if status == "pending" else "true"},
        ]
    if create:
        missing = [f for f in ("first_name", "last_name", "birth_date", "status") if not changes.get(f)]
        if missing:
            raise WriteInvalid(missing[0], "is required to create a Home Connect client")
    body["meta"] = {"tag": tag_list}
    return body


DIALECT = Dialect(
    product="personal_care",
    streams=frozenset({"patients", "practitioners", "appointments", "encounters", "related_persons", "locations"}),
    writable=frozenset({"patients"}),
    unavailable=UNAVAILABLE,
    api_channel="wellsky_core.channels.home_connect:HomeConnectChannel",
    writer="wellsky_core.home_connect_writes:HomeConnectWriter",
    has_tenant_endpoint=False,
    default_base_url=PRODUCTION_URL,
    api_root=API_ROOT,
    token_path=TOKEN_PATH,
    auth_methods=("oauth_client_credentials",),
    token_renew_margin_seconds=TOKEN_RENEW_MARGIN_SECONDS,
    rate_budget=RATE_BUDGET,
)

__all__ = [
    "API_ROOT",
    "DIALECT",
    "MAX_COUNT",
    "PRODUCTION_URL",
    "RATE_BUDGET",
    "TOKEN_PATH",
    "UNAVAILABLE",
    "WriteInvalid",
    "client_status",
    "occurrence_id",
    "patient_body",
    "tags",
    "task_logs",
    "to_canonical",
]
