"""Canonical record -> Home Connect JSON (fact sheet section 3), and Home Connect write bodies -> canonical fields.

Validation follows section 4 of the fact sheet: phones are exactly 10 digits with a first digit 2-9 (work
phones may add ``x`` and 1-6 digits), dates ``YYYY-MM-DD``, datetimes ``YYYY-MM-DDTHH:MM:SS`` (offset optional,
naive taken as UTC), and code points below 32 other than tab, CR and LF are refused anywhere in a body.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

from ..generator import gender_of, iso
from .data import MARITAL, Extras, rng_for

PHONE_RE = re.compile(r"[2-9]\d{9}")
WORK_PHONE_RE = re.compile(r"[2-9]\d{9}(x\d{1,6})?")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
ENGLISH = {"code": "en-us", "display": "English"}
GENDERS = ("male", "female", "other", "unknown")
APPOINTMENT_STATUS = {
    "scheduled": "SCHEDULED",
    "completed": "COMPLETED",
    "cancelled": "CANCELLED",
    "missed": "CANCELLED",
}
ENCOUNTER_STATUS = {"completed": "COMPLETE", "in_progress": "IN_PROGRESS"}


class Invalid(ValueError):
    """A Home Connect request the API refuses: ``status`` (400/404/422) and the ``{"error": ...}`` message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def utc(value: str | None) -> str | None:
    """Canonical ``...Z`` -> Home Connect ``...+00:00``."""
    return None if value is None else value.replace("Z", "+00:00")


def tag(code: str, display: Any) -> dict[str, str]:
    """Every ``meta.tag`` display is a string, booleans and numbers included (fact sheet section 3)."""
    if isinstance(display, bool):
        display = "true" if display else "false"
    return {"code": code, "display": str(display)}


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {
        t.get("code"): t.get("display") for t in (resource.get("meta") or {}).get("tag") or [] if isinstance(t, dict)
    }


def phone_out(canonical: str | None) -> str | None:
    if canonical is None:
        return None
    digits = re.sub(r"\D", "", canonical)
    return digits or None


def phone_in(hc: str) -> str:
    return f"({hc[:3]}) {hc[3:6]}-{hc[6:10]}" + (hc[10:] if len(hc) > 10 else "")


def address_out(addr: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not addr:
        return []
    lines = [addr["line1"]] + ([addr["line2"]] if addr.get("line2") else [])
    return [
        {"use": "home", "line": lines, "city": addr["city"], "state": addr["state"], "postalCode": addr["postal_code"]}
    ]


class Shapes:
    """Renders the canonical store in Home Connect shapes for one tenant."""

    def __init__(self, extras: Extras, store: Any) -> None:
        self.extras = extras
        self.store = store
        self.communication_ref = False  # option communication=ref: REF's create-body coding[] on practitioners

    def _meta(self, kind: str, rec: dict[str, Any], tags: list[dict[str, str]]) -> dict[str, Any]:
        return {"lastUpdated": utc(rec["updated_at"]), "tag": tags}

    def patient(self, rec: dict[str, Any]) -> dict[str, Any]:
        ex = self.extras
        code, is_client, active = ex.client_code(rec)
        person = ex.person_extras("patient", rec["id"])
        marital = rec.get("_hc_marital") or person["marital"]
        use = rec.get("_hc_phone_use") or "home"
        telecom = [{"system": "phone", "value": phone_out(rec["phone"]), "use": use}] if rec.get("phone") else []
        telecom += rec.get("_hc_telecom", [])
        return {
            "resourceType": "Patient",
            "id": rec["id"],
            "active": active,
            "meta": self._meta(
                "patient",
                rec,
                [
                    tag("agencyId", ex.agency_id),
                    tag("isClient", is_client),
                    tag("status", code),
                    tag("locationId", rec.get("_hc_location") or ex.location_id("patient", rec["id"])),
                ],
            ),
            "name": [{"use": "official", "family": rec["last_name"], "given": [rec["first_name"]]}],
            "telecom": telecom,
            "address": address_out(rec.get("address")),
            "gender": rec.get("gender"),
            "birthDate": rec.get("birth_date"),
            "maritalStatus": [{"coding": [{"code": marital, "display": MARITAL[marital]}]}],
            "communication": [{"coding": [ENGLISH]}],
        }

    def practitioner(self, rec: dict[str, Any]) -> dict[str, Any]:
        ex = self.extras
        code, hired = ex.caregiver_code(rec)
        person = {
            **ex.person_extras("practitioner", rec["id"]),
            "gender": gender_of(rec["first_name"]),  # consistent with the name (the canonical record has none)
            **(rec.get("_hc_person") or {}),
        }
        return {
            "resourceType": "Practitioner",
            "id": rec["id"],
            "active": bool(rec["active"]),
            "meta": self._meta(
                "practitioner",
                rec,
                [
                    tag("agencyId", ex.agency_id),
                    tag("isHired", hired),
                    tag("status", code),
                    tag("profileTags", rec.get("_hc_profile_tags", ex.profile_tags(rec))),
                    tag("locationId", rec.get("_hc_location") or ex.location_id("practitioner", rec["id"])),
                ],
            ),
            "name": [{"use": "official", "family": rec["last_name"], "given": [rec["first_name"]]}],
            "telecom": (
                [{"system": "phone", "value": person["phone"], "use": person.get("phone_use") or "mobile"}]
                if person.get("phone")
                else []
            )
            + person.get("telecom", []),
            "address": [person["address"]] if person.get("address") else [],
            "gender": person.get("gender"),
            "birthDate": person.get("birthDate"),
            # the production reader (SYNC, H) expects FHIR language.coding[] with preferred; REF (M) shows coding[]
            "communication": [{"coding": [ENGLISH]}]
            if self.communication_ref
            else [{"language": {"coding": [ENGLISH]}, "preferred": True}],
        }

    @staticmethod
    def appointment_id(rec: dict[str, Any]) -> str:
        """Recurring shifts share the series' first id (fact sheet section 3)."""
        return rec.get("_series") or rec["id"]

    def appointment(self, rec: dict[str, Any]) -> dict[str, Any]:
        r = rng_for(self.extras.seed, "shift", rec["id"])
        lat, lon = 32.7 + r.uniform(-0.3, 0.3), -96.8 + r.uniform(-0.3, 0.3)
        tasks = r.sample(_TASK_NAMES, k=r.randint(1, 3))
        done = rec["status"] == "completed"
        return {
            "resourceType": "Appointment",
            "id": self.appointment_id(rec),
            "client": {"id": rec["patient_id"]},
            "caregiver": {"id": rec["practitioner_id"]} if rec.get("practitioner_id") else None,
            "start": utc(rec["start"]),
            "end": utc(rec["end"]),
            "status": APPOINTMENT_STATUS[rec["status"]],
            "position": {"latitude": round(lat, 6), "longitude": round(lon, 6)},
            "scheduledItems": [{"id": 500 + i, "name": t} for i, t in enumerate(tasks)],
            "tasks": [self._task(rec["id"], 600 + i, t, done) for i, t in enumerate(tasks)],
        }

    def _task(self, appt_id: str, task_id: int, description: str, done: bool) -> dict[str, Any]:
        task = {"id": task_id, "description": description, "status": "COMPLETE" if done else "NOT_COMPLETE"}
        override = self.extras.get("task", f"{appt_id}:{task_id}")
        if override:
            task["status"] = override["status"]
            if override.get("comment"):
                task["comment"] = override["comment"]
        return task

    def encounter(self, rec: dict[str, Any]) -> dict[str, Any]:
        patient = self.store.get("patients", rec["patient_id"])
        caregiver = self.store.get("practitioners", rec["practitioner_id"]) if rec.get("practitioner_id") else None
        appt = self.store.get("appointments", rec["appointment_id"]) if rec.get("appointment_id") else None
        return {
            "resourceType": "Encounter",
            "id": rec["id"],
            "status": ENCOUNTER_STATUS.get(rec["status"], "COMPLETE"),
            "subject": {"reference": f"Patient/{rec['patient_id']}", "display": _display(patient)},
            "participant": {
                "Individual": [{"reference": f"Practitioner/{rec['practitioner_id']}", "display": _display(caregiver)}]
                if caregiver
                else []
            },
            "appointment": {"reference": f"Appointment/{self.appointment_id(appt)}"} if appt else None,
            "period": {"start": utc(rec["start"]), "end": utc(rec.get("end"))},
            "rates": rec.get("_hc_rates") or self.extras.rates(rec["id"]),
        }


_TASK_NAMES = (
    "Bathing",
    "Meal Preparation",
    "Medication Reminder",
    "Light Housekeeping",
    "Companionship",
    "Transfers",
    "Laundry",
    "Errands",
)


def _display(rec: dict[str, Any] | None) -> str | None:
    return f"{rec['first_name']} {rec['last_name']}" if rec else None


# -- write validation -------------------------------------------------------------------------------------
def refuse_control_chars(value: Any, path: str = "") -> None:
    """Code points below 32 are refused except tab, CR and LF (fact sheet section 6)."""
    if isinstance(value, str):
        hit = CONTROL_RE.search(value)
        if hit:
            raise Invalid(
                400,
                f"'{path or 'body'}' contains the control character U+{ord(hit.group()):04X}; "
                "only tab, CR and LF are allowed below U+0020.",
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            refuse_control_chars(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            refuse_control_chars(v, f"{path}[{i}]")


def check_date(value: Any, field: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise Invalid(422, f"'{field}' must be a date as YYYY-MM-DD.")
    try:
        date.fromisoformat(value)
    except ValueError:
        raise Invalid(422, f"'{field}' is not a valid calendar date.") from None
    return value


def check_datetime(value: Any, field: str) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` with an optional offset; naive is UTC. Returns canonical ``...Z``."""
    if not isinstance(value, str) or not re.fullmatch(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?", value
    ):
        raise Invalid(422, f"'{field}' must be a datetime as YYYY-MM-DDTHH:MM:SS (UTC unless an offset is given).")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(422, f"'{field}' is not a valid datetime.") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return iso(dt)


def check_phone(value: Any, field: str, use: str | None) -> str:
    pattern = WORK_PHONE_RE if use == "work" else PHONE_RE
    if not isinstance(value, str) or not pattern.fullmatch(value):
        extra = " (work phones may add x and 1-6 digits)" if use == "work" else ""
        raise Invalid(422, f"'{field}' must be exactly 10 digits without country code, first digit not 0 or 1{extra}.")
    return value


def parse_person(body: Any, *, creating: bool) -> dict[str, Any]:
    """A Patient/Practitioner write body -> the fields it sets (Home Connect spellings, validated).

    Returns keys: first_name, last_name, birth_date, gender, phones [(use, value)], emails [telecom], address,
    active, tags {code: display}. Absent keys were not supplied (PUT is a partial update).
    """
    if not isinstance(body, dict):
        raise Invalid(400, "The request body must be a JSON object.")
    refuse_control_chars(body)
    out: dict[str, Any] = {}
    if "name" in body:
        names = body["name"]
        if not isinstance(names, list) or not names or not isinstance(names[0], dict):
            raise Invalid(422, "'name' must be a list of {family, given[]} objects.")
        name = names[0]
        given = name.get("given")
        if not isinstance(name.get("family"), str) or not name["family"].strip():
            raise Invalid(422, "'family' in 'name' is required.")
        if not isinstance(given, list) or not given or not isinstance(given[0], str) or not given[0].strip():
            raise Invalid(422, "'given' in 'name' is required.")
        out["last_name"], out["first_name"] = name["family"].strip(), given[0].strip()
    elif creating:
        raise Invalid(422, "'name' is required.")
    if "birthDate" in body and body["birthDate"] is not None:
        out["birth_date"] = check_date(body["birthDate"], "birthDate")
    if "gender" in body and body["gender"] is not None:
        if body["gender"] not in GENDERS:
            raise Invalid(422, f"'gender' must be one of {', '.join(GENDERS)}.")
        out["gender"] = body["gender"]
    if "telecom" in body:
        if not isinstance(body["telecom"], list):
            raise Invalid(422, "'telecom' must be a list of {system, value, use} objects.")
        phones, emails = [], []
        for i, t in enumerate(body["telecom"]):
            if not isinstance(t, dict) or t.get("system") not in ("phone", "email"):
                raise Invalid(422, f"'telecom[{i}].system' must be phone or email.")
            if t["system"] == "phone":
                phones.append(
                    (t.get("use") or "home", check_phone(t.get("value"), f"telecom[{i}].value", t.get("use")))
                )
            elif not isinstance(t.get("value"), str) or "@" not in t["value"]:
                raise Invalid(422, f"'telecom[{i}].value' must be an email address.")
            else:
                emails.append({"system": "email", "value": t["value"], "use": t.get("use") or "home"})
        out["phones"], out["emails"] = phones, emails
    if "address" in body:
        addrs = body["address"]
        if not isinstance(addrs, list):
            raise Invalid(422, "'address' must be a list of {line[], city, state, postalCode} objects.")
        out["address"] = None
        if addrs:
            a = addrs[0]
            if not isinstance(a, dict):
                raise Invalid(422, "'address[0]' must be an object.")
            lines = a.get("line") or []
            for key in ("city", "state", "postalCode"):
                if not isinstance(a.get(key), str) or not a[key]:
                    raise Invalid(422, f"'{key}' in 'address' is required.")
            if not isinstance(lines, list) or not lines or not all(isinstance(x, str) for x in lines):
                raise Invalid(422, "'line' in 'address' must be a non-empty list of strings.")
            out["address"] = {
                "line1": lines[0],
                "line2": lines[1] if len(lines) > 1 else None,
                "city": a["city"],
                "state": a["state"],
                "postal_code": a["postalCode"],
            }
    if "active" in body:
        active = body["active"]
        if isinstance(active, str) and active in ("true", "false"):
            active = active == "true"
        if not isinstance(active, bool):
            raise Invalid(422, "'active' must be true or false.")
        out["active"] = active
    if "meta" in body:
        meta = body["meta"]
        if not isinstance(meta, dict) or not isinstance(meta.get("tag", []), list):
            raise Invalid(422, "'meta.tag' must be a list of {code, display} objects.")
        tags = {}
        for i, t in enumerate(meta.get("tag", [])):
            if not isinstance(t, dict) or not isinstance(t.get("code"), str) or not isinstance(t.get("display"), str):
                raise Invalid(422, f"'meta.tag[{i}]' must be {{code, display}} with string values.")
            tags[t["code"]] = t["display"]
        out["tags"] = tags
    return out
