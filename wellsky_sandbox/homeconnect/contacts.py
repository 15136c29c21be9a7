"""Related persons (a client's contacts): by patient, search, create, partial PUT, delete."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..generator import parse_iso
from .http import HcResponse, RoutesBase
from .search import comparator
from .shapes import (
    Invalid,
    check_phone,
    refuse_control_chars,
)


class ContactRoutes(RoutesBase):
    # -- related persons ----------------------------------------------------------------------------------
    def contacts_of(self, request: Request, patient_id: str) -> Response:
        if self.store.get("patients", patient_id) is None:
            raise Invalid(404, f"Patient {patient_id} not found.")
        contacts = self.extras.children("relatedperson", patient_id)
        return self.bundle(contacts, len(contacts))

    def search_contacts(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The search body must be a JSON object.")
        count, page = self.paging(request, "relatedperson")
        refuse_control_chars(body)
        updated = comparator(body.get("updated"), "updated")
        created = comparator(body.get("created"), "created")
        patient = body.get("patient")
        if not (created or body.get("name") or body.get("phone")):
            contacts, total = self.extras.page(
                "relatedperson",
                parent=None if patient in (None, "") else str(patient),
                updated=None if updated is None else (updated.sql, int(updated.when.timestamp())),
                limit=count,
                offset=page * count,
            )
            return self.bundle(contacts, total)
        source = (
            self.extras.children("relatedperson", str(patient))
            if patient not in (None, "")
            else list(self.extras.all("relatedperson"))
        )
        name = str(body.get("name") or "").lower()
        phone = re.sub(r"\D", "", str(body.get("phone") or ""))
        hits = []
        for c in source:
            if updated and not updated(parse_iso(c["meta"]["lastUpdated"])):
                continue
            if created and not created(parse_iso(c["_created"])):
                continue
            if name and name not in " ".join([*c["name"][0].get("given", []), c["name"][0].get("family", "")]).lower():
                continue
            if phone and phone not in {t.get("value") for t in c.get("telecom", [])}:
                continue
            hits.append(c)
        return self.bundle(hits[page * count : (page + 1) * count], len(hits))

    def write_contact(self, contact_id: str | None, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        existing = self.extras.get("relatedperson", contact_id) if contact_id else None
        if contact_id and existing is None:
            raise Invalid(404, f"RelatedPerson {contact_id} not found.")
        contact = dict(
            existing
            or {
                "resourceType": "RelatedPerson",
                "telecom": [],
                "address": [],
                "emergencyContact": False,
                "primaryContact": False,
                "payer": False,
                "poa": False,
            }
        )
        if existing is None or "patient" in body:
            ref = (body.get("patient") or {}).get("reference") if isinstance(body.get("patient"), dict) else None
            pid = ref.split("/", 1)[1] if isinstance(ref, str) and ref.startswith("Patient/") else None
            if pid is None or self.store.get("patients", pid) is None:
                raise Invalid(422, "'patient.reference' must be Patient/{id} of an existing client.")
            contact["patient"] = {"reference": ref}
        if existing is None or "name" in body:
            names = body.get("name")
            if not (
                isinstance(names, list)
                and names
                and isinstance(names[0], dict)
                and isinstance(names[0].get("family"), str)
                and names[0]["family"].strip()
            ):
                raise Invalid(422, "'family' in 'name' is required.")
            contact["name"] = [
                {"given": [g for g in names[0].get("given") or [] if isinstance(g, str)], "family": names[0]["family"]}
            ]
        if "relationship" in body:
            rel = body["relationship"]
            coding = rel.get("coding") if isinstance(rel, dict) else None
            if not (isinstance(coding, list) and coding and isinstance(coding[0], dict) and coding[0].get("code")):
                raise Invalid(422, "'relationship' must be {coding: [{code, display}]} (an object, not a list).")
            contact["relationship"] = {"coding": [{"code": coding[0]["code"], "display": coding[0].get("display")}]}
        if "telecom" in body:
            if not isinstance(body["telecom"], list):
                raise Invalid(422, "'telecom' must be a list of {system, value, use} objects.")
            for i, t in enumerate(body["telecom"]):
                if isinstance(t, dict) and t.get("system") == "phone":
                    check_phone(t.get("value"), f"telecom[{i}].value", t.get("use"))
            contact["telecom"] = body["telecom"]
        for key in ("emergencyContact", "primaryContact", "payer", "poa"):
            if key in body:
                if not isinstance(body[key], bool):
                    raise Invalid(422, f"'{key}' must be true or false.")
                contact[key] = body[key]
        if "address" in body:
            contact["address"] = body["address"] if isinstance(body["address"], list) else [body["address"]]
        now = self.store.now().replace("Z", "+00:00")
        contact["id"] = contact_id or str(self.extras.next_id("relatedperson"))
        contact["meta"] = {"lastUpdated": now}
        contact["_created"] = (existing or {}).get("_created", now)
        pid = contact["patient"]["reference"].split("/", 1)[1]
        self.extras.put("relatedperson", contact["id"], pid, contact, int(parse_iso(now).timestamp()))
        return HcResponse({"resourceType": "RelatedPerson", "id": contact["id"]}, status_code=200 if existing else 201)

    def delete_contact(self, patient_id: str, contact_id: str) -> Response:
        ids = {c["id"] for c in self.extras.children("relatedperson", patient_id)}
        if contact_id not in ids:
            raise Invalid(404, f"RelatedPerson {contact_id} is not a contact of patient {patient_id}.")
        self.extras.delete("relatedperson", contact_id)
        return HcResponse({"success": True})
