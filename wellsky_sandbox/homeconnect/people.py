"""Patients (clients, prospects) and practitioners (caregivers, applicants): search, read, create, partial PUT."""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..generator import parse_iso
from ..tenant import public
from .data import APPLICANT_STATUS, CLIENT_STATUS, canonical_client_status
from .http import HcResponse, RoutesBase
from .search import Comparator, comparator, people_filter
from .shapes import (
    Invalid,
    parse_person,
    phone_in,
    refuse_control_chars,
)


class PeopleRoutes(RoutesBase):
    # -- people -------------------------------------------------------------------------------------------
    def render_person(self, kind: str, rec: dict[str, Any]) -> dict[str, Any]:
        return self.shapes.patient(rec) if kind == "patients" else self.shapes.practitioner(rec)

    def search_people(self, kind: str, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The search body must be a JSON object.")
        count, page = self.paging(request, kind)
        filters = {k: v for k, v in body.items() if not k.startswith("_")}
        refuse_control_chars(filters)
        if self.options.active_only_quirk and set(filters) == {"active"}:
            return self.bundle([], 0)  # production pitfall 3: active alone matches nothing
        updated = comparator(filters.pop("updated", None), "updated")
        created = comparator(filters.pop("created", None), "created")
        tests = [people_filter(kind, k, v, self) for k, v in filters.items()]
        tests = [t for t in tests if t is not None]
        if not tests and created is None:
            return self._sql_page(kind, updated, count, page)
        hits = []
        for rec in self._scan(kind, updated):
            if created and not created(parse_iso(self.extras.created(kind[:-1], rec))):
                continue
            if all(t(rec) for t in tests):
                hits.append(rec)
        chunk = hits[page * count : (page + 1) * count]
        return self.bundle([self.render_person(kind, r) for r in chunk], len(hits))

    def _updated_sql(self, updated: Comparator | None) -> tuple[str, list[Any]]:
        if updated is None:
            return "", []
        return f" AND updated_at {updated.sql} ?", [int(updated.when.timestamp())]

    def _sql_page(self, kind: str, updated: Comparator | None, count: int, page: int) -> Response:
        where, args = self._updated_sql(updated)
        with self.store.lock:
            total = self.store.db.execute(
                f"SELECT count(*) FROM records WHERE entity = ?{where}", [kind, *args]
            ).fetchone()[0]
            rows = self.store.db.execute(
                f"SELECT body FROM records WHERE entity = ?{where} ORDER BY id LIMIT ? OFFSET ?",
                [kind, *args, count, page * count],
            ).fetchall()
        return self.bundle([self.render_person(kind, orjson.loads(r[0])) for r in rows], total)

    def _scan(self, kind: str, updated: Comparator | None) -> list[dict[str, Any]]:
        where, args = self._updated_sql(updated)
        with self.store.lock:
            rows = self.store.db.execute(
                f"SELECT body FROM records WHERE entity = ?{where} ORDER BY id", [kind, *args]
            ).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def get_person(self, kind: str, rec_id: str) -> Response:
        rec = self.store.get(kind, rec_id)
        if rec is None:
            raise Invalid(404, f"{'Patient' if kind == 'patients' else 'Practitioner'} {rec_id} not found.")
        return HcResponse(self.render_person(kind, rec))

    def _agency_tag(self, fields_: dict[str, Any], required: bool) -> None:
        tags = fields_.get("tags") or {}
        if "agencyId" not in tags:
            if required:
                raise Invalid(422, "'agencyId' is required.")
            return
        if tags["agencyId"] != self.extras.agency_id:
            raise Invalid(422, f"'agencyId' {tags['agencyId']} is not the agency of this token.")

    def create_person(self, kind: str, body: Any) -> Response:
        parsed = parse_person(body, creating=True)
        self._agency_tag(parsed, required=True)
        now = self.store.now()
        if kind == "patients":
            rec: dict[str, Any] = {
                "mrn": None,
                "medicare_mbi": None,
                "medicaid_id": None,
                "birth_date": None,
                "gender": "unknown",
                "phone": None,
                "address": None,
                "status": "pending",
                "coverage": [],
                "_created": now,
            }
            self._apply_patient(rec, parsed)
        else:
            if isinstance(body, dict) and body.get("ssn") is not None and not re.fullmatch(r"\d{9}", str(body["ssn"])):
                raise Invalid(422, "'ssn' must be 9 digits.")
            rec = {
                "npi": None,
                "credentials": None,
                "roles": ["aide"],
                "disciplines": ["HHA"],
                "specialties": [],
                "active": True,
                "_created": now,
                "_hc_status": 100,
            }
            self._apply_practitioner(rec, parsed)
        with self.store.transaction():
            rec["id"] = self.store.mint_id(kind)
            rec["updated_at"] = now
            self.store.put(kind, rec)
        self.tenant.notify("patient.created" if kind == "patients" else "practitioner.created", kind, rec)
        self.hub.fire("patient.created" if kind == "patients" else "practitioner.created", rec["id"])
        return HcResponse(
            {"resourceType": "Patient" if kind == "patients" else "Practitioner", "id": rec["id"]}, status_code=201
        )

    def _apply_patient(self, rec: dict[str, Any], parsed: dict[str, Any]) -> None:
        for key in ("first_name", "last_name", "birth_date", "gender", "address"):
            if key in parsed:
                rec[key] = parsed[key]
        if "phones" in parsed:
            phones = parsed["phones"]
            rec["phone"] = phone_in(phones[0][1]) if phones else None  # canonical keeps one phone
            rec["_hc_phone_use"] = phones[0][0] if phones else None
            rec["_hc_telecom"] = [{"system": "phone", "value": v, "use": u} for u, v in phones[1:]] + parsed["emails"]
        tags = parsed.get("tags") or {}
        code, _, active = self.extras.client_code(rec) if rec.get("id") else (None, None, True)
        if "status" in tags:
            try:
                code = int(tags["status"])
            except ValueError:
                code = -1
            if code not in CLIENT_STATUS:
                raise Invalid(422, f"'status' tag must be one of {', '.join(map(str, CLIENT_STATUS))}.")
        elif code is None:
            code = 80 if tags.get("isClient") == "true" else 1
        if "isClient" in tags and tags["isClient"] not in ("true", "false"):
            raise Invalid(422, '\'isClient\' tag must be "true" or "false".')
        if "active" in parsed:
            active = parsed["active"]
        rec["_hc_status"] = code
        rec["status"] = canonical_client_status(code, bool(active))
        if "locationId" in tags:
            self._location(tags["locationId"])
            rec["_hc_location"] = tags["locationId"]

    def _location(self, loc: str) -> None:
        if loc not in {x["id"] for x in self.extras.locations}:
            raise Invalid(422, f"'locationId' {loc} is not a location of this agency.")

    def _apply_practitioner(self, rec: dict[str, Any], parsed: dict[str, Any]) -> None:
        for key in ("first_name", "last_name"):
            if key in parsed:
                rec[key] = parsed[key]
        person = dict(rec.get("_hc_person") or {})
        for key in ("birth_date", "gender"):
            if key in parsed:
                person["birthDate" if key == "birth_date" else key] = parsed[key]
        if "phones" in parsed:
            phones = parsed["phones"]
            person["phone"] = phones[0][1] if phones else None
            person["phone_use"] = phones[0][0] if phones else None
            person["telecom"] = [{"system": "phone", "value": v, "use": u} for u, v in phones[1:]] + parsed["emails"]
        if "address" in parsed:
            a = parsed["address"]
            person["address"] = (
                None
                if a is None
                else {
                    "use": "home",
                    "line": [x for x in (a["line1"], a["line2"]) if x],
                    "city": a["city"],
                    "state": a["state"],
                    "postalCode": a["postal_code"],
                }
            )
        rec["_hc_person"] = person
        tags = parsed.get("tags") or {}
        if "status" in tags:
            try:
                code = int(tags["status"])
            except ValueError:
                code = -1
            if code not in APPLICANT_STATUS:
                raise Invalid(422, f"'status' tag must be one of {', '.join(map(str, APPLICANT_STATUS))}.")
            rec["_hc_status"] = code
        elif tags.get("isHired") == "false":
            rec["_hc_status"] = 10
        elif tags.get("isHired") == "true":
            rec["_hc_status"] = 100
        if "profileTags" in tags:
            ids = [t for t in tags["profileTags"].split(",") if t]
            unknown = [t for t in ids if not t.isdigit() or self.extras.profile_tag(t) is None]
            if unknown:
                raise Invalid(422, f"'profileTags' has unknown tag id(s) {','.join(unknown)}.")
            rec["_hc_profile_tags"] = ",".join(ids)
        if "locationId" in tags:
            self._location(tags["locationId"])
            rec["_hc_location"] = tags["locationId"]
        if "active" in parsed:
            rec["active"] = parsed["active"]

    def update_person(self, kind: str, rec_id: str, body: Any, deleting: bool = False) -> Response:
        existing = self.store.get(kind, rec_id)
        if existing is None:
            raise Invalid(404, f"{'Patient' if kind == 'patients' else 'Practitioner'} {rec_id} not found.")
        parsed = parse_person(body, creating=False)
        self._agency_tag(parsed, required=False)
        rec = dict(existing)
        if kind == "patients":
            self._apply_patient(rec, parsed)
        else:
            self._apply_practitioner(rec, parsed)
        rtype = "Patient" if kind == "patients" else "Practitioner"
        if rec != existing:
            changed = public(rec) != public(existing) or any(
                rec.get(k) != existing.get(k) for k in rec if k.startswith("_hc")
            )
            if changed:
                rec["updated_at"] = self.store.now()
                with self.store.transaction():
                    self.store.put(kind, rec)
                self.tenant.notify("patient.updated" if kind == "patients" else "practitioner.updated", kind, rec)
                self._fire_changes(kind, existing, rec)
        if deleting:
            return HcResponse({"success": True})
        return HcResponse({"resourceType": rtype, "id": rec_id})

    def _fire_changes(self, kind: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        prefix = "patient" if kind == "patients" else "practitioner"
        if (old["first_name"], old["last_name"]) != (new["first_name"], new["last_name"]):
            self.hub.fire(f"{prefix}.name.changed", new["id"])
        old_r, new_r = self.render_person(kind, old), self.render_person(kind, new)
        if old_r["address"] != new_r["address"]:
            self.hub.fire(f"{prefix}.address.changed", new["id"])
        if old_r["telecom"] != new_r["telecom"]:
            self.hub.fire(f"{prefix}.telecom.changed", new["id"])
        if old_r["active"] != new_r["active"]:
            self.hub.fire(f"{prefix}.deactivated.changed", new["id"])
        old_s = next(t["display"] for t in old_r["meta"]["tag"] if t["code"] == "status")
        new_s = next(t["display"] for t in new_r["meta"]["tag"] if t["code"] == "status")
        if old_s != new_s:
            self.hub.fire("prospect.status.changed" if kind == "patients" else "applicant.status.changed", new["id"])
