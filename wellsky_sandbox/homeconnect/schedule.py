"""Shifts (appointments), care logs (encounters), clock-in/out, shift tasks, profile tags and task logs."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..generator import iso, parse_iso
from .http import HcResponse, RoutesBase
from .search import appointment_window, comparator, person_ids, yyyymmdd
from .shapes import (
    ENCOUNTER_STATUS,
    Invalid,
    check_datetime,
    refuse_control_chars,
)

RATE_METHODS = ("Hourly", "notBillable", "notPayable", "perVisit", "liveIn")


class ScheduleRoutes(RoutesBase):
    # -- appointments -------------------------------------------------------------------------------------
    def _by_person(self, entity: str, client: str | None, caregiver: str | None) -> list[dict[str, Any]]:
        if client is not None:
            recs = self.store.find(entity, patient_id=client)
            return [r for r in recs if caregiver is None or r.get("practitioner_id") == caregiver]
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT body FROM records INDEXED BY hc_records_by_caregiver WHERE entity = ? AND "
                "json_extract(CAST(body AS TEXT), '$.practitioner_id') = ?",
                (entity, caregiver),
            ).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def search_appointments(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The search body must be a JSON object.")
        count, page = self.paging(request, "appointment")
        client, caregiver = person_ids(body)
        lo, hi = appointment_window(body)
        updated = comparator(body.get("updated"), "updated") if self.options.comparators_everywhere else None
        hits = [
            r
            for r in self._by_person("appointments", client, caregiver)
            if lo <= parse_iso(r["start"]).date() <= hi and (updated is None or updated(parse_iso(r["updated_at"])))
        ]
        hits.sort(key=lambda r: (r["start"], r["id"]))
        chunk = hits[page * count : (page + 1) * count]
        extra = {"total": len(hits)} if self.options.appointment_total else {}
        return self.bundle([self.shapes.appointment(r) for r in chunk], len(hits), **extra)

    def occurrences(self, appt_id: str) -> list[dict[str, Any]]:
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT body FROM records INDEXED BY hc_records_by_series WHERE entity = 'appointments' AND "
                "json_extract(CAST(body AS TEXT), '$._series') = ?",
                (appt_id,),
            ).fetchall()
        recs = [orjson.loads(r[0]) for r in rows]
        own = self.store.get("appointments", appt_id)
        if own is not None and not own.get("_series"):
            recs.append(own)
        return recs

    def nearest(self, appt_id: str, when: datetime | None = None) -> dict[str, Any] | None:
        """A recurring shift's id names the series; the occurrence nearest to ``when`` (default now) answers."""
        recs = self.occurrences(appt_id)
        if not recs:
            return None
        when = when or datetime.now(UTC)
        return min(recs, key=lambda r: (abs((parse_iso(r["start"]) - when).total_seconds()), r["id"]))

    def get_appointment(self, appt_id: str) -> Response:
        rec = self.nearest(appt_id)
        if rec is None:
            raise Invalid(404, f"Appointment {appt_id} not found.")
        return HcResponse(self.shapes.appointment(rec))

    def write_appointment(self, appt_id: str | None, body: Any) -> Response:
        """Only behind ``appointment_writes`` (no source confirms these routes); models REF's 2026-02-04 text."""
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        existing = None
        if appt_id is not None:
            existing = self.nearest(appt_id)
            if existing is None:
                raise Invalid(404, f"Appointment {appt_id} not found.")
        rec = (
            dict(existing)
            if existing
            else {
                "external_id": None,
                "payer_id": None,
                "status": "scheduled",
                "discipline": "HHA",
                "service_code": "T1019",
                "location": None,
                "practitioner_id": None,
            }
        )
        if "client" in body or existing is None:
            client = (body.get("client") or {}).get("id") if isinstance(body.get("client"), dict) else None
            if client is None or self.store.get("patients", str(client)) is None:
                raise Invalid(422, "'client.id' must name an existing client.")
            rec["patient_id"] = str(client)
        if "caregiver" in body:
            cg = (body.get("caregiver") or {}).get("id") if isinstance(body.get("caregiver"), dict) else None
            if cg is not None and self.store.get("practitioners", str(cg)) is None:
                raise Invalid(422, "'caregiver.id' must name an existing caregiver.")
            rec["practitioner_id"] = None if cg is None else str(cg)
        for key in ("start", "end"):
            if key in body or existing is None:
                rec[key] = check_datetime(body.get(key), key)
        if parse_iso(rec["end"]) <= parse_iso(rec["start"]):
            raise Invalid(422, "'end' must be after 'start'.")
        if "status" in body:
            status = {"SCHEDULED": "scheduled", "COMPLETED": "completed", "CANCELLED": "cancelled"}.get(body["status"])
            if status is None:
                raise Invalid(422, "'status' must be SCHEDULED, COMPLETED or CANCELLED.")
            rec["status"] = status
        if existing is not None and rec == existing:
            return HcResponse({"resourceType": "Appointment", "id": appt_id})
        with self.store.transaction():
            if existing is None:
                rec["id"] = self.store.mint_id("appointments")
            rec["updated_at"] = self.store.now()
            self.store.put("appointments", rec)
        self.tenant.notify("appointment.created" if existing is None else "appointment.changed", "appointments", rec)
        return HcResponse(
            {"resourceType": "Appointment", "id": self.shapes.appointment_id(rec)},
            status_code=201 if existing is None else 200,
        )

    # -- encounters (care logs) ---------------------------------------------------------------------------
    def search_encounters(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The search body must be a JSON object.")
        count, page = self.paging(request, "encounter")
        client, caregiver = person_ids(body)
        lo = yyyymmdd(body["startDate"], "startDate") if body.get("startDate") not in (None, "") else date.min
        hi = yyyymmdd(body["endDate"], "endDate") if body.get("endDate") not in (None, "") else date.max
        if lo > hi:
            raise Invalid(422, "'endDate' must not be before 'startDate'.")
        updated = comparator(body.get("updated"), "updated") if self.options.comparators_everywhere else None
        hits = [
            r
            for r in self._by_person("encounters", client, caregiver)
            if lo <= parse_iso(r["start"]).date() <= hi and (updated is None or updated(parse_iso(r["updated_at"])))
        ]
        key = request.query_params.get("_sort", "startDate")
        hits.sort(
            key=lambda r: (r["end"] or "" if key.lstrip("-") == "endDate" else r["start"], r["id"]),
            reverse=key.startswith("-"),
        )
        chunk = hits[page * count : (page + 1) * count]
        return self.bundle([self.shapes.encounter(r) for r in chunk], len(hits))

    def get_encounter(self, enc_id: str) -> Response:
        rec = self.store.get("encounters", enc_id)
        if rec is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")
        return HcResponse(self.shapes.encounter(rec))

    def create_encounter(self, body: Any) -> Response:
        """The flat, non-FHIR care-log create body (fact sheet section 3, "Encounter create")."""
        fields_ = self._flat_encounter(body, creating=True)
        rec = self._new_encounter(*fields_[:6])
        rec["_hc_rates"] = fields_[6]
        with self.store.transaction():
            rec["id"] = self.store.mint_id("encounters")
            self.store.put("encounters", rec)
        self.tenant.notify("encounter.updated", "encounters", rec)
        return HcResponse({"resourceType": "Encounter", "id": rec["id"]}, status_code=201)

    def update_encounter(self, enc_id: str, body: Any) -> Response:
        """``PUT /v1/encounter/{id}/``: the create body's fields, each optional (a partial update)."""
        existing = self.store.get("encounters", enc_id)
        if existing is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        current = {
            "agencyId": self.extras.agency_id,
            "patientId": existing["patient_id"],
            "practitionerId": existing["practitioner_id"],
            "startDateTime": existing["start"],
            "endDateTime": existing.get("end"),
            "status": ENCOUNTER_STATUS.get(existing["status"], "COMPLETE"),
        }
        patient, caregiver, _, start, end, status, rates = self._flat_encounter({**current, **body}, creating=False)
        rec = {**existing, "patient_id": patient, "practitioner_id": caregiver, "start": start, "end": end}
        rec.update(status=status, finalized=status == "completed")
        if any(k.endswith(("RateMethod", "RateId")) for k in body):
            rec["_hc_rates"] = rates
        if rec != existing:
            rec["updated_at"] = self.store.now()
            with self.store.transaction():
                self.store.put("encounters", rec)
            self.tenant.notify("encounter.updated", "encounters", rec)
        return HcResponse({"resourceType": "Encounter", "id": enc_id})

    def delete_encounter(self, enc_id: str) -> Response:
        """``DELETE /v1/encounter/{id}/`` (fact sheet §2): a care log entered in error is gone, not cancelled."""
        if self.store.get("encounters", enc_id) is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")
        with self.store.transaction():
            self.store.delete("encounters", enc_id)
        return HcResponse({"success": True})

    def _flat_encounter(self, body: Any, *, creating: bool) -> tuple[Any, ...]:
        """Validate a flat care-log body: (patient, caregiver, appointment, start, end, status, rates)."""
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        status = {"COMPLETE": "completed", "IN_PROGRESS": "in_progress"}.get(body.get("status") or "COMPLETE")
        if status is None:
            raise Invalid(422, "'status' must be COMPLETE or IN_PROGRESS.")
        required = ["agencyId", "patientId", "practitionerId", "startDateTime"]
        if status == "completed":
            required.append("endDateTime")
        for key in required:
            if body.get(key) in (None, ""):
                raise Invalid(422, f"'{key}' is required.")
        if str(body["agencyId"]) != self.extras.agency_id:
            raise Invalid(422, f"'agencyId' {body['agencyId']} is not the agency of this token.")
        patient = self.store.get("patients", str(body["patientId"]))
        if patient is None:
            raise Invalid(422, f"'patientId' {body['patientId']} is not a client of this agency.")
        if self.store.get("practitioners", str(body["practitionerId"])) is None:
            raise Invalid(422, f"'practitionerId' {body['practitionerId']} is not a caregiver of this agency.")
        start = check_datetime(body["startDateTime"], "startDateTime")
        end = check_datetime(body["endDateTime"], "endDateTime") if body.get("endDateTime") else None
        if end is not None and parse_iso(end) <= parse_iso(start):
            raise Invalid(422, "'endDateTime' must be after 'startDateTime'.")
        rates: dict[str, Any] = {"payRate": [], "billRate": []}
        for side in ("bill", "pay"):
            method = body.get(f"{side}RateMethod")
            if method is None:
                continue
            if method not in RATE_METHODS:
                raise Invalid(422, f"'{side}RateMethod' must be one of {', '.join(RATE_METHODS)}.")
            rate_id = body.get(f"{side}RateId")
            if method not in ("notBillable", "notPayable") and not isinstance(rate_id, int | str):
                raise Invalid(422, f"'{side}RateId' is required with {side}RateMethod {method}.")
            rates[f"{side}Rate"] = [{"id": rate_id, "amount": None, "method": method}]
        return patient["id"], str(body["practitionerId"]), None, start, end, status, rates

    def _new_encounter(
        self, patient_id: str, caregiver: str | None, appt_id: str | None, start: str, end: str | None, status: str
    ) -> dict[str, Any]:
        return {
            "patient_id": patient_id,
            "practitioner_id": caregiver,
            "appointment_id": appt_id,
            "start": start,
            "end": end,
            "discipline": "HHA",
            "status": status,
            "diagnoses": [],
            "procedures": [{"code": "T1019", "system": "HCPCS", "description": None}],
            "vitals": None,
            "note_summary": None,
            "finalized": status == "completed",
            "updated_at": self.store.now(),
        }

    def _encounter_for(self, appt: dict[str, Any]) -> dict[str, Any] | None:
        return next(
            (
                e
                for e in self.store.find("encounters", patient_id=appt["patient_id"])
                if e.get("appointment_id") == appt["id"]
            ),
            None,
        )

    def clock_in(self, appt_id: str, body: Any) -> Response:
        """Idempotent: a repeat clock-in on the same shift returns the care log it already opened."""
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        period = body.get("period") or {}
        start = (
            check_datetime(period["start"], "period.start")
            if isinstance(period, dict) and period.get("start")
            else None
        )
        position = body.get("position")
        if position is not None and not (
            isinstance(position, dict)
            and all(isinstance(position.get(k), int | float) for k in ("latitude", "longitude"))
        ):
            raise Invalid(422, "'position' must be {latitude, longitude} numbers.")
        appt = self.nearest(appt_id, parse_iso(start) if start else None)
        if appt is None:
            raise Invalid(404, f"Appointment {appt_id} not found.")
        if appt["status"] == "cancelled":
            raise Invalid(422, f"Appointment {appt_id} is cancelled.")
        enc = self._encounter_for(appt)
        if enc is None:
            enc = self._new_encounter(
                appt["patient_id"],
                appt.get("practitioner_id"),
                appt["id"],
                start or iso(datetime.now(UTC)),
                None,
                "in_progress",
            )
            with self.store.transaction():
                enc["id"] = self.store.mint_id("encounters")
                self.store.put("encounters", enc)
            self.tenant.notify("encounter.updated", "encounters", enc)
        return HcResponse(clock_reply(enc))

    def clock_out(self, enc_id: str, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        enc = self.store.get("encounters", enc_id)
        if enc is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")  # e.g. an appointment id was sent
        if enc["status"] == "completed" and enc.get("end"):
            return HcResponse({"success": True})  # idempotent: already out, nothing changes
        period = body.get("period") or {}
        end = (
            check_datetime(period["end"], "period.end")
            if isinstance(period, dict) and period.get("end")
            else iso(datetime.now(UTC))
        )
        if parse_iso(end) < parse_iso(enc["start"]):
            raise Invalid(422, "'period.end' must not be before the clock-in time.")
        mileage = body.get("mileage")
        if mileage is not None and (isinstance(mileage, bool) or not isinstance(mileage, int | float) or mileage < 0):
            raise Invalid(422, "'mileage' must be a non-negative number.")
        enc.update(end=end, status="completed", finalized=True, updated_at=self.store.now())
        if body.get("generalComment"):
            enc["note_summary"] = str(body["generalComment"])
        with self.store.transaction():
            self.store.put("encounters", enc)
            appt = self.store.get("appointments", enc["appointment_id"]) if enc.get("appointment_id") else None
            if appt is not None and appt["status"] == "scheduled":
                appt.update(status="completed", updated_at=enc["updated_at"])
                self.store.put("appointments", appt)
        self.tenant.notify("encounter.updated", "encounters", enc)
        self.hub.fire("encounter.clockout.changed", enc["id"])
        return HcResponse({"success": True})

    # -- tasks of a shift, profile tags ---------------------------------------------------------------------
    def update_task(self, enc_id: str, task_id: str, body: Any) -> Response:
        """``PUT /v1/encounter/{encId}/task/{taskId}/``: NOT_COMPLETE needs a comment (fact sheet section 4)."""
        enc = self.store.get("encounters", enc_id)
        if enc is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")
        appt = self.store.get("appointments", enc["appointment_id"]) if enc.get("appointment_id") else None
        tasks = {str(t["id"]): t for t in (self.shapes.appointment(appt)["tasks"] if appt else [])}
        if task_id not in tasks:
            raise Invalid(404, f"Task {task_id} is not a task of encounter {enc_id}.")
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        if body.get("status") not in ("COMPLETE", "NOT_COMPLETE"):
            raise Invalid(422, "'status' must be COMPLETE or NOT_COMPLETE.")
        if body["status"] == "NOT_COMPLETE" and not (isinstance(body.get("comment"), str) and body["comment"].strip()):
            raise Invalid(422, "'comment' is required when status is NOT_COMPLETE.")
        override = {"status": body["status"], "comment": body.get("comment")}
        assert appt is not None  # a task was found, so the care log has its shift
        self.extras.put("task", f"{appt['id']}:{task_id}", appt["id"], override)
        return HcResponse({"success": True})

    def get_profile_tag(self, tag_id: str) -> Response:
        tag = self.extras.profile_tag(tag_id)
        if tag is None:
            raise Invalid(404, f"ProfileTag {tag_id} not found.")
        return HcResponse(tag)

    def write_profile_tag(self, tag_id: str | None, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        existing = self.extras.profile_tag(tag_id) if tag_id else None
        if tag_id and existing is None:
            raise Invalid(404, f"ProfileTag {tag_id} not found.")
        name = body.get("name", (existing or {}).get("name"))
        if not isinstance(name, str) or not name.strip():
            raise Invalid(422, "'name' is required.")
        new_id = tag_id or str(self.extras.next_id("profiletag") + 1000)
        self.extras.put("profiletag", new_id, None, {"resourceType": "ProfileTag", "id": new_id, "name": name})
        return HcResponse({"resourceType": "ProfileTag", "id": new_id}, status_code=200 if existing else 201)

    # -- task logs ----------------------------------------------------------------------------------------
    def task_logs(self, enc_id: str) -> Response:
        if self.store.get("encounters", enc_id) is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")
        logs = self.extras.children("tasklog", enc_id)
        return HcResponse({"resourceType": "Bundle", "type": "searchset", "total": len(logs), "entry": logs})

    def write_task_log(self, enc_id: str, log_id: str | None, body: Any) -> Response:
        if self.store.get("encounters", enc_id) is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        existing = None
        if log_id is not None:
            existing = self.extras.get("tasklog", log_id)
            if existing is None or log_id not in {str(x["id"]) for x in self.extras.children("tasklog", enc_id)}:
                raise Invalid(404, f"TaskLog {log_id} not found on encounter {enc_id}.")
        if existing is None and body.get("resourceType") != "TaskLog":
            raise Invalid(422, "'resourceType' must be TaskLog.")
        log = dict(existing or {"comment": None, "description": None, "status": "COMPLETE"})
        for key in ("title", "description", "comment"):
            if key in body:
                if body[key] is not None and not isinstance(body[key], str):
                    raise Invalid(422, f"'{key}' must be a string.")
                log[key] = body[key]
        if not log.get("title"):
            raise Invalid(422, "'title' is required.")
        if "status" in body:
            if body["status"] not in ("COMPLETE", "NOT_COMPLETE"):
                raise Invalid(422, "'status' must be COMPLETE or NOT_COMPLETE.")
            log["status"] = body["status"]
        if log["status"] == "NOT_COMPLETE" and not log.get("comment"):
            raise Invalid(422, "'comment' is required when status is NOT_COMPLETE.")
        for key in ("show_in_family_room", "message_for_next_caregiver"):
            if key in body:
                if not isinstance(body[key], bool):
                    raise Invalid(422, f"'{key}' must be true or false.")
                log[key] = body[key]
        log["recorded"] = (
            check_datetime(body["recorded"], "recorded").replace("Z", "+00:00")
            if body.get("recorded")
            else log.get("recorded") or iso(datetime.now(UTC)).replace("Z", "+00:00")
        )
        log["id"] = existing["id"] if existing else self.extras.next_id("tasklog")
        self.extras.put("tasklog", str(log["id"]), enc_id, log)
        if existing:
            return HcResponse({"success": True})
        out_id: int | str = str(log["id"]) if self.options.tasklog_id_string else log["id"]
        return HcResponse({"success": True, "taskLogId": out_id}, status_code=201)


def clock_reply(enc: dict[str, Any]) -> dict[str, Any]:
    """The clock-in answer shape (fact sheet section 4)."""
    done = enc["status"] == "completed" and bool(enc.get("end"))
    return {
        "clockedOut": done,
        "id": int(enc["id"]),
        "period": {
            "start": enc["start"].replace("Z", "+00:00"),
            "end": enc["end"].replace("Z", "+00:00") if enc.get("end") else None,
        },
        "resourceType": "Encounter",
        "status": ENCOUNTER_STATUS.get(enc["status"], "COMPLETE"),
        "success": True,
    }
