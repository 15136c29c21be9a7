"""Write-back to WellSky Personal Care through the documented Home Connect writes (fact sheet §4).

- **patients**: ``POST /v1/patients/`` to create, ``PUT /v1/patients/{id}/`` as a partial update of the changed
  fields only, both carrying the ``agencyId`` meta.tag. A record without a WellSky id is matched on its natural
  key — last name, first name and birth date, looked up with the documented ``last_name``/``first_name`` search
  filters — so a re-run, or a tap -> target round trip, creates nothing twice. Home Connect has no
  idempotency key, so a create whose answer is lost is never blindly resent (the transport does not retry a
  POST that may have landed); the next run finds the record by its natural key.
- **evv_clock**: clock-in (``POST /v1/encounter/{shiftId}/clockin/``) and clock-out
  (``PUT /v1/encounter/{careLogId}/clockout/``), both idempotent on the server: a repeat returns what the
  first one did.
- **appointments**: no source confirms appointment writes, so the stream is refused up front with one line
  (:data:`APPOINTMENT_WRITES_REFUSED`) unless ``home_connect_appointment_writes`` says the tenant has them.

Every record is validated against the documented rules (10-digit phones, dates, no control characters) before a
byte is sent; a refusal names the field and the fix, never the value.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...connection import Connection
from ...errors import NormalizationError, RemoteError, WriteRefused
from ...http.policy import write_run_stops
from ...idempotency import idempotency_key
from ...models import READ_ONLY_FIELDS, UtcDatetime
from ...write_hashes import WriteHashLedger
from ...writes import (
    Action,
    WriteResult,
    _tenant_secret,
    unreadable_answer,
    update_basis,
    validate_for_write,
    written_body,
)
from .normalize import tags, to_canonical
from .write_rules import WriteInvalid, check_text, patient_body

log = logging.getLogger(__name__)

EVV_STREAM = "evv_clock"
NOT_STORED = ("mrn", "medicare_mbi", "medicaid_id", "coverage")
"""Canonical patient fields Home Connect has no place for: ignored on write (said once per run)."""
APPOINTMENT_WRITES_REFUSED = (
    "appointments cannot be written to WellSky Personal Care: Home Connect documents no appointment writes "
    "(the vendor API lists only appointment _search); no record of the stream is sent. If your tenant does "
    "expose POST/PUT /v1/appointment/, set home_connect_appointment_writes=true"
)


class ClockEvent(BaseModel):
    """One EVV visit verification: clock in on a shift, and optionally clock out of the care log it opened."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    appointment_id: str = Field(min_length=1, description="The shift id (an appointments record's id or series_id)")
    clock_in: UtcDatetime
    clock_out: UtcDatetime | None = None
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    comment: str | None = None
    mileage: float | None = Field(default=None, ge=0)
    mileage_description: str | None = None


class HomeConnectWriter:
    """Writes canonical records to one Home Connect tenant. Thread-safe; share one per run."""

    def __init__(
        self,
        connection: Connection,
        *,
        dry_run: bool = False,
        write_hashes: WriteHashLedger | None = None,
        authorization_policy: str = "off",
        key_hash_secret: bytes | None = None,
        appointment_writes: bool | None = None,
    ) -> None:
        """Same arguments as ``writes.RecordWriter`` (Home Connect has no payer authorizations to check);
        ``appointment_writes`` defaults to the target's ``home_connect_appointment_writes`` setting."""
        if appointment_writes is None:
            appointment_writes = bool(getattr(connection.config, "home_connect_appointment_writes", False))
        self.connection = connection
        self._key_hash_secret = key_hash_secret or _tenant_secret(connection)
        self.client = connection.client
        self.dry_run = dry_run
        self.write_hashes = write_hashes
        self.appointment_writes = appointment_writes
        self.tenant_key = connection.config.base_url or "tenant"
        self._agency: str | None = connection.config.agency_id
        self._lock = threading.Lock()
        self._warned_not_stored = False

    @property
    def writable(self) -> tuple[str, ...]:
        return ("patients", EVV_STREAM, *(("appointments",) if self.appointment_writes else ()))

    def refusal(self, stream: str) -> str | None:
        """The one line that refuses a whole stream up front, or None when it can be written."""
        if stream == "appointments" and not self.appointment_writes:
            return APPOINTMENT_WRITES_REFUSED
        return None

    @staticmethod
    def group_key(stream: str, record: dict[str, Any], line: int) -> str:
        """Records that could touch the same WellSky record are written one after the other, in input order."""
        if stream == "patients" and isinstance(record, dict):
            if record.get("id"):
                return f"i:{record['id']}"
            if record.get("last_name") or record.get("first_name"):
                return f"n:{_natural(record)}"
        if stream == EVV_STREAM and isinstance(record, dict) and record.get("appointment_id"):
            return f"s:{str(record['appointment_id']).split('@', 1)[0]}"
        return f"l:{line}"

    def prime(self, entity: str, records: list[dict[str, Any]]) -> None:
        """Natural keys are looked up per record (Home Connect searches by name; no bulk scan pays off)."""

    # -- agency -------------------------------------------------------------------------------------------
    def agency_id(self) -> str:
        """``agency_id`` from the config, else the agencyId tag of the tenant's own records (one request)."""
        with self._lock:
            if self._agency is None:
                from .channel import search_path

                for resource in ("patients", "practitioners"):
                    bundle = self.client.post_read_json(search_path(resource), {"_count": 1, "_page": 0}, {})
                    entries = bundle.get("entry") if isinstance(bundle, dict) else None
                    if entries and isinstance(entries[0], dict):
                        found = tags(entries[0].get("resource", entries[0])).get("agencyId")
                        if found:
                            self._agency = found
                            break
                if self._agency is None:
                    raise WriteRefused(
                        "agency_unknown",
                        "cannot tell this tenant's agency id (no record carries an agencyId tag); set `agency_id`",
                    )
            return self._agency

    # -- entry point ----------------------------------------------------------------------------------------
    def write(self, stream: str, record: dict[str, Any]) -> WriteResult:
        result = self._write(stream, record)
        if result.idempotency_key is None:
            result.idempotency_key = self.write_key(stream, record)
        return result

    def write_key(self, stream: str, record: dict[str, Any]) -> str:
        """The audit's idempotency key of a create, a clock event or a write that changed nothing: the same record
        sent again (a replayed batch, a re-run) has the same key, so the audit trail correlates them. An update's
        key is bound to the values it replaces (``_write_patient``). Home Connect honours no Idempotency-Key
        header, so it is never sent (a POST that may have landed is still never retried blindly)."""
        body = {k: v for k, v in record.items() if k not in READ_ONLY_FIELDS} if isinstance(record, dict) else {}
        return idempotency_key(self.tenant_key, stream, self.group_key(stream, record, 0), body)

    def _write(self, stream: str, record: dict[str, Any]) -> WriteResult:
        try:
            if stream == "patients":
                return self._write_patient(record)
            if stream == EVV_STREAM:
                return self._write_clock(record)
            if stream == "appointments" and self.appointment_writes:
                return self._write_appointment(record)
            raise ValueError(f"{stream} is not writable to Home Connect")
        except WriteRefused as exc:
            return WriteResult.refused(stream, exc, wellsky_id=_rid(record))
        except WriteInvalid as exc:  # our own rule (names the field and the fix)
            return WriteResult.refused(stream, WriteRefused("validation_error", str(exc)), wellsky_id=_rid(record))
        except RemoteError as exc:
            if write_run_stops(exc):
                raise
            return WriteResult.refused(stream, exc, wellsky_id=_rid(record))

    # -- patients ---------------------------------------------------------------------------------------------
    def _write_patient(self, record: dict[str, Any]) -> WriteResult:
        desired = validate_for_write("patients", record)
        ignored = [k for k in NOT_STORED if desired.pop(k, None) not in (None, [])]
        if ignored and not self._warned_not_stored:
            self._warned_not_stored = True
            log.warning("Home Connect has no field for %s; those values are not written", ", ".join(ignored))
        patient_body(desired, "0", create=not desired.get("id"))  # every documented rule, before any request
        key_hash = self._key_hash(desired)
        ledger_key = f"i:{desired['id']}" if desired.get("id") else f"n:{_natural(desired)}"
        digest = self.write_hashes.digest(desired) if self.write_hashes is not None else ""
        if self.write_hashes is not None:
            known = self.write_hashes.lookup(self.tenant_key, "patients", ledger_key)
            if known is not None and known[0] == digest:
                return WriteResult("patients", "unchanged", wellsky_id=known[1], key_hash=key_hash,
                                   reason="same as the last write (write ledger)")
        existing = self._resolve(desired)
        if existing is not None:
            changes = _changes(existing, desired)
            if not changes:
                result = WriteResult("patients", "unchanged", wellsky_id=existing["id"], key_hash=key_hash)
            else:
                body = patient_body(changes, self.agency_id(), create=False)
                if self.dry_run:
                    return WriteResult("patients", "would_update", wellsky_id=existing["id"], key_hash=key_hash)
                response = self.client.request("PUT", _path(existing["id"]), json=body, expected=(400, 404, 422))
                result = self._answer("updated", response, existing["id"], key_hash)
                # the key of one intended write: the change and the values it replaces (a replay shares it,
                # B -> A never reuses A -> B's). Home Connect shows no record version (its `updated_at` is our
                # read time), so a second A -> B after B -> A shares the first's key; harmless, as no key is
                # sent (the audit correlates by it only)
                was = update_basis(existing, changes)["was"]
                result.idempotency_key = idempotency_key(
                    self.tenant_key, "patients", existing["id"], changes, based_on=was
                )
        else:
            body = patient_body(desired, self.agency_id(), create=True)
            if self.dry_run:
                return WriteResult("patients", "would_create", key_hash=key_hash)
            response = self.client.request("POST", "/v1/patients/", json=body, expected=(400, 409, 422))
            created = _answered_id(response, PATIENT_LOOKUP) if response.status_code < 300 else None
            result = self._answer("created", response, created, key_hash)
        if self.write_hashes is not None and result.action in ("created", "updated", "unchanged"):
            self.write_hashes.remember(self.tenant_key, "patients", ledger_key, digest, result.wellsky_id)
        return result

    def _key_hash(self, desired: dict[str, Any]) -> str:
        """A keyed hash (HMAC-SHA256, per-tenant secret, as ``RecordWriter``) of the WellSky id or the natural key:
        the audit correlates writes, but nobody holding it can test a guessed name and birth date against it."""
        natural = desired.get("id") or _natural(desired)
        return hmac.new(self._key_hash_secret, str(natural).encode(), hashlib.sha256).hexdigest()[:32]

    def _get(self, rid: str) -> dict[str, Any] | None:
        response = self.client.request("GET", _path(rid), expected=(404,))
        if response.status_code == 404:
            return None
        return to_canonical("patients", response.json(), datetime.now(UTC))

    def _resolve(self, desired: dict[str, Any]) -> dict[str, Any] | None:
        if desired.get("id"):
            found = self._get(desired["id"])
            if found is None:
                raise WriteRefused(
                    "unknown_id",
                    f"patients id {desired['id']} does not exist in this tenant; drop the id to create the client "
                    "or fix it",
                )
            return found
        from .channel import search_pages

        body = {"last_name": desired["last_name"], "first_name": desired["first_name"]}
        matches: list[dict[str, Any]] = []
        first_page = self.connection.config.home_connect_first_page
        # the name search is narrow; page in case of common names
        for entries in search_pages(self.client, "patients", body, first_page=first_page):
            now = datetime.now(UTC)
            for entry in entries:
                candidate = to_canonical("patients", entry, now)
                same_name = (candidate["last_name"].lower(), candidate["first_name"].lower()) == (
                    desired["last_name"].lower(), desired["first_name"].lower()
                )
                if same_name and candidate["birth_date"] == desired.get("birth_date"):
                    matches.append(candidate)
        if len(matches) > 1:
            raise WriteRefused(
                "ambiguous_natural_key",
                f"{len(matches)} existing clients share this name and birth date; merge them in WellSky or send "
                "the WellSky id",
            )
        return matches[0] if matches else None

    def _answer(self, action: Action, response: Any, rid: str | None, key_hash: str | None) -> WriteResult:
        if response.status_code >= 400:
            return _refused("patients", response, wellsky_id=rid, key_hash=key_hash)
        return WriteResult("patients", action, wellsky_id=rid, key_hash=key_hash)

    # -- EVV clock-in / clock-out -------------------------------------------------------------------------------
    def _write_clock(self, record: dict[str, Any]) -> WriteResult:
        try:
            event = ClockEvent.model_validate(record)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False)
            ]
            raise WriteRefused("validation_error", "clock event is invalid: " + "; ".join(problems)) from None
        check_text(event.comment, "comment")
        check_text(event.mileage_description, "mileage_description")
        if event.clock_out is not None and event.clock_out < event.clock_in:
            raise WriteRefused("validation_error", "clock_out: must not be before clock_in")
        if (event.latitude is None) != (event.longitude is None):
            raise WriteRefused("validation_error", "latitude/longitude: send both or neither")
        shift_id = event.appointment_id.split("@", 1)[0]  # an occurrence key "<shift>@<start>" names its shift
        position = (
            {"latitude": event.latitude, "longitude": event.longitude} if event.latitude is not None else None
        )
        if self.dry_run:
            return WriteResult(EVV_STREAM, "would_create", wellsky_id=None)
        body: dict[str, Any] = {"resourceType": "Encounter", "period": {"start": _wire_time(event.clock_in)}}
        if position:
            body["position"] = position
        response = self.client.request(
            "POST", _by_id("encounter", shift_id, "appointment_id") + "clockin/", json=body, expected=(400, 404, 422)
        )
        if response.status_code >= 400:
            return _refused(EVV_STREAM, response)
        reply = written_body(response, looked_up_by=SHIFT_LOOKUP)
        carelog = _answered_id(response, SHIFT_LOOKUP, reply)
        opened_before = (reply.get("period") or {}).get("start") not in (None, body["period"]["start"]) or bool(
            reply.get("clockedOut")
        )
        action: Action = "unchanged" if opened_before else "created"
        if event.clock_out is not None and not reply.get("clockedOut"):
            out: dict[str, Any] = {"period": {"end": _wire_time(event.clock_out)}}
            if position:
                out["position"] = position
            if event.comment:
                out["generalComment"] = event.comment
            if event.mileage is not None:
                out["mileage"] = event.mileage
            if event.mileage_description:
                out["mileageDescription"] = event.mileage_description
            response = self.client.request(
                "PUT", _by_id("encounter", carelog, "id") + "clockout/", json=out, expected=(400, 404, 422)
            )
            if response.status_code >= 400:
                return _refused(EVV_STREAM, response, wellsky_id=carelog)
            action = "updated" if action == "unchanged" else action
        return WriteResult(EVV_STREAM, action, wellsky_id=carelog)

    # -- appointments (only when the tenant is known to have them) ------------------------------------------------
    def _write_appointment(self, record: dict[str, Any]) -> WriteResult:
        desired = validate_for_write("appointments", record)
        body: dict[str, Any] = {
            "resourceType": "Appointment",
            "client": {"id": desired["patient_id"]},
            "start": _wire_time(datetime.fromisoformat(desired["start"].replace("Z", "+00:00"))),
            "end": _wire_time(datetime.fromisoformat(desired["end"].replace("Z", "+00:00"))),
            "status": {"scheduled": "SCHEDULED", "completed": "COMPLETED", "cancelled": "CANCELLED"}.get(
                desired["status"], "SCHEDULED"
            ),
        }
        if desired.get("practitioner_id"):
            body["caregiver"] = {"id": desired["practitioner_id"]}
        check_text(body, "appointment")
        series = str(desired.get("series_id") or desired.get("id") or "").split("@", 1)[0] or None
        if self.dry_run:
            return WriteResult("appointments", "would_update" if series else "would_create", wellsky_id=series)
        if series:
            path = _by_id("appointment", series, "series_id")
            response = self.client.request("PUT", path, json=body, expected=(400, 404, 422))
            action: Action = "updated"
        else:
            response = self.client.request("POST", "/v1/appointment/", json=body, expected=(400, 422))
            action = "created"
        if response.status_code >= 400:
            return _refused("appointments", response, wellsky_id=series)
        if series:  # an update names its series already; what the answer says about it is not needed
            written_body(response, looked_up_by=SHIFT_LOOKUP)
            return WriteResult("appointments", action, wellsky_id=series)
        return WriteResult("appointments", action, wellsky_id=_answered_id(response, SHIFT_LOOKUP))


# -- helpers ------------------------------------------------------------------------------------------------------
def _path(rid: str) -> str:
    return _by_id("patients", rid, "id")


def _by_id(resource: str, rid: str, field: str) -> str:
    """``/v1/{resource}/{id}/`` for an id from the input or a reply: validated and quoted, else refused."""
    from .channel import record_path

    try:
        return record_path(resource, rid)
    except NormalizationError:
        raise WriteRefused(
            "validation_error", f"{field}: is not a Home Connect id (letters, digits, '.', '-', '_')"
        ) from None


def _rid(record: Any) -> str | None:
    return str(record.get("id")) if isinstance(record, dict) and record.get("id") is not None else None


PATIENT_LOOKUP = "name and birth date"
SHIFT_LOOKUP = "client and start time"


def _answered_id(response: Any, looked_up_by: str, body: dict[str, Any] | None = None) -> str:
    """The id a successful write answered with, or the run stops: a write whose record id is unknown is not
    reported as done with a guessed one."""
    body = written_body(response, looked_up_by=looked_up_by) if body is None else body
    rid = body.get("id")
    if rid in (None, ""):
        raise unreadable_answer(response, "carries no record id", looked_up_by=looked_up_by)
    return str(rid)


def _natural(desired: dict[str, Any]) -> str:
    last, first = str(desired.get("last_name") or "").lower(), str(desired.get("first_name") or "").lower()
    return f"{last}|{first}|{desired.get('birth_date')}"


def _digits(phone: Any) -> Any:
    return "".join(c for c in phone if c.isdigit()) if isinstance(phone, str) else phone


def _changes(existing: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The fields whose value differs from what the tenant holds (phones compared by their digits)."""
    out = {}
    for key, value in desired.items():
        if key in ("id", "updated_at"):
            continue
        have = existing.get(key)
        if key == "phone" and _digits(have) == _digits(value):
            continue
        if _without_nulls(have) != _without_nulls(value):
            out[key] = value
    return out


def _without_nulls(value: Any) -> Any:
    """An address sent without ``line2`` equals one read back with ``line2: null``."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _wire_time(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS+00:00``: the documented datetime shape, in UTC."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _refused(stream: str, response: Any, **fields: Any) -> WriteResult:
    """A refused write described by status, allow-listed code, request id and our fix (``RemoteError.from_response``):
    never the server's message, which may name a patient the request did not carry (``disclosure``)."""
    return WriteResult.refused(stream, RemoteError.from_response(response), **fields)
