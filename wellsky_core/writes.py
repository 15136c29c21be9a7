"""Idempotent write-back of canonical patients and appointments (the target's engine, kept in the core).

For each record: validate it, find the record it refers to (WellSky id, else natural key: MRN / external
id), skip it when nothing changed, check the payer authorization for bookings, then create or update with a
deterministic ``Idempotency-Key``. A re-run, a replayed batch or an overlapping run therefore creates
nothing twice: the natural-key lookup finds what an earlier run created, and the server replays the original
response for a write it already committed but whose answer was lost.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ValidationError, create_model

from .audit import tenant_secret
from .channels.rest import MAX_PAGE_SIZE as REST_MAX_PAGE_SIZE
from .channels.rest import rest_pages
from .connection import Connection
from .disclosure import public_message, safe_code
from .errors import AuthorizationRefused, RemoteError, WriteAborted, WriteOutcomeUnknown, WriteRefused, server_code
from .http.policy import write_run_stops
from .idempotency import idempotency_key
from .models import DELETED_AT, ENTITIES, READ_ONLY_FIELDS, WRITABLE, UtcDatetime, strict_variant
from .normalize.native import to_canonical, to_native
from .products import dialect
from .redaction import redact
from .scheduling import AuthorizationUnitLedger, Reservation, current_charge
from .write_hashes import WriteHashLedger, keyed_hash

log = logging.getLogger(__name__)

PRIME_MIN_RECORDS = 200
"""Below this many natural-key lookups in a batch, per-record lookups are cheaper than scanning the entity."""
Action = Literal[
    "created", "updated", "replayed", "unchanged", "rejected", "failed", "would_create", "would_update"
]
"""``replayed``: the tenant answered an earlier send of the same key (another run's, or an earlier run's);
``failed``: the run stopped on this write, which may or may not have been applied (its key is logged)."""


@dataclass
class WriteResult:
    stream: str
    action: Action
    wellsky_id: str | None = None
    idempotency_key: str | None = None
    reason: str | None = None
    code: str | None = None
    warnings: list[str] = field(default_factory=list)
    key_hash: str | None = None
    """A hash of the natural key: lets the audit trail correlate writes without holding an MRN."""

    def __post_init__(self) -> None:
        # The audit and the dead letters show ``code`` and ``reason``: only allow-listed codes, redacted text.
        self.code = safe_code(self.code)
        self.reason = redact(self.reason, keyed_values=False) if self.reason else self.reason

    @classmethod
    def refused(cls, stream: str, exc: BaseException, **fields: Any) -> WriteResult:
        """A rejected write described by its error: the public message, never the error's (server's) text."""
        code = getattr(exc, "code", None) or getattr(exc, "status", None)
        return cls(stream, "rejected", reason=public_message(exc), code=str(code) if code else None, **fields)


def _write_model(entity: str) -> type[BaseModel]:
    """The strict canonical model (every ``expected`` field required; patients also need a birth date) with
    ``id`` and ``updated_at`` optional: new records have neither yet."""
    base = strict_variant(ENTITIES[entity].model)
    required: dict[str, Any] = {"birth_date": (date, ...)} if entity == "patients" else {}
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{base.__name__}Write",
        __base__=base,
        id=(str | None, None),
        updated_at=(UtcDatetime | None, None),
        **required,
    )


WRITE_MODELS = {entity: _write_model(entity) for entity in WRITABLE}


def validate_for_write(entity: str, record: dict[str, Any]) -> dict[str, Any]:
    """Validate a record as sent by a tap; the error names the field and the rule, never the value."""
    if record.get(DELETED_AT):
        raise WriteRefused(
            "deletion_not_written",
            f"{DELETED_AT}: the record is a deletion, and target-wellsky never deletes in WellSky; filter deleted "
            "records out upstream (a shift is cancelled with status 'cancelled')",
        )
    try:
        model = WRITE_MODELS[entity].model_validate(record)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise WriteRefused(
            "validation_error", "record does not match the canonical schema: " + "; ".join(problems)
        ) from None
    if entity == "appointments":
        start, end = getattr(model, "start", None), getattr(model, "end", None)
        if start is not None and end is not None and end <= start:  # WellSky refuses it; say so ourselves
            raise WriteRefused("validation_error", "end: must be after start; fix the appointment's times")
    dumped = model.model_dump(mode="json", exclude_unset=True)
    desired = {k: v for k, v in dumped.items() if k not in READ_ONLY_FIELDS}
    where = control_character_path(desired)
    if where is not None:
        raise WriteRefused(
            "control_character",
            f"{where}: contains a control character (NUL, ESC, ...); WellSky refuses them: remove it "
            "(tab, line feed and carriage return are allowed)",
        )
    return desired


CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""What WellSky refuses in text: code points below 32 except tab, LF and CR (Home Connect §6), and DEL. The one
rule for every write, canonical (here) or native (a product's own payload, ``personal_care/write_rules.py``)."""


def control_character_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first text value holding a control character (checked before any request)."""
    if isinstance(value, str):
        return (path or "$") if CONTROL_CHARACTERS.search(value) else None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = control_character_path(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


class RecordWriter:
    """Writes canonical records to one tenant. Thread-safe; share one per run."""

    def __init__(
        self,
        connection: Connection,
        *,
        authorization_policy: str = "enforce",
        dry_run: bool = False,
        write_hashes: WriteHashLedger | None = None,
        key_hash_secret: bytes | None = None,
    ) -> None:
        self.connection = connection
        self._local = threading.local()
        self._key_hash_secret = key_hash_secret or _tenant_secret(connection)
        self.client = connection.client
        self.policy = authorization_policy
        self.dry_run = dry_run
        self.authorization_units = AuthorizationUnitLedger()
        self._auth_cache: dict[str, list[dict[str, Any]]] = {}
        self._auth_lock = threading.Lock()
        self.tenant_key = connection.config.base_url or "tenant"
        self.write_hashes = write_hashes
        self._primed: dict[str, tuple[frozenset[str], dict[str, dict[str, Any]]]] = {}

    @property
    def product(self) -> str:
        return self.connection.product

    def write(self, stream: str, record: dict[str, Any]) -> WriteResult:
        if stream not in dialect(self.product).writable:
            raise ValueError(f"{stream} is not writable on {self.product}")
        if log.isEnabledFor(logging.DEBUG):  # the whole input at DEBUG: patient values are redacted in logs
            log.debug("writing %s record %s", stream, record)
        self._local.sent = None
        try:
            desired = validate_for_write(stream, record)
            key, digest, known = self._ledger_entry(stream, desired)
            if known is not None and known[0] == digest:
                return WriteResult(
                    stream,
                    "unchanged",
                    wellsky_id=known[1],
                    reason="same as the last write (write ledger)",
                    key_hash=self._key_hash(stream, desired),
                )
            result = self._write_patient(desired) if stream == "patients" else self._write_appointment(desired)
            if (
                key
                and digest
                and self.write_hashes is not None
                and result.action in ("created", "updated", "unchanged")
            ):
                self.write_hashes.remember(self.tenant_key, stream, key, digest, result.wellsky_id)
            return result
        except (WriteRefused, AuthorizationRefused) as exc:
            return WriteResult.refused(stream, exc, wellsky_id=record.get("id"))
        except RemoteError as exc:
            if write_run_stops(exc):
                raise self._aborted(stream, record, exc) from exc
            return WriteResult.refused(stream, exc, wellsky_id=record.get("id"))
        except Exception as exc:
            raise self._aborted(stream, record, exc) from exc

    def _aborted(self, stream: str, record: dict[str, Any], exc: Exception) -> WriteAborted:
        """What the audit needs about a write the run stops on: the key it already sent, if any."""
        code = getattr(exc, "reason", None) or getattr(exc, "code", None) or type(exc).__name__
        result = WriteResult(
            stream,
            "failed",
            wellsky_id=record.get("id") if isinstance(record.get("id"), str) else None,
            idempotency_key=self._local.sent,
            reason=public_message(exc),
            code=str(code),
            key_hash=self._key_hash(stream, record),
        )
        return WriteAborted(result, exc)

    # -- lookups ----------------------------------------------------------------------------------------
    def _get(self, entity: str, rid: str) -> dict[str, Any] | None:
        path = "/" + entity.replace("_", "-") + f"/{rid}"
        response = self.client.request("GET", path, expected=(404,))
        if response.status_code == 404:
            return None
        try:
            body = response.json()
        except ValueError:  # a truncated body: get_json fetches it again (retried like any malformed page)
            body = self.client.get_json(path)
        return to_canonical(self.product, entity, body)

    def _find(self, entity: str, **filters: str) -> dict[str, Any] | None:
        page = self.client.get_json("/" + entity.replace("_", "-"), {**filters, "limit": 2})
        data = page.get("data") if isinstance(page, dict) else None
        if not isinstance(data, list):
            raise RemoteError(200, "unexpected_shape", f"lookup on /{entity} did not answer a page", url=f"/{entity}")
        if len(data) > 1:
            raise WriteRefused(
                "ambiguous_natural_key",
                f"{len(data)}+ existing {entity} share this {', '.join(filters)}; fix the duplicates in "
                "WellSky or send the WellSky id",
            )
        return to_canonical(self.product, entity, data[0]) if data else None

    def _resolve(self, entity: str, desired: dict[str, Any], natural: str) -> dict[str, Any] | None:
        if desired.get("id"):
            existing = self._get(entity, desired["id"])
            if existing is None:
                raise WriteRefused(
                    "unknown_id",
                    f"{entity} id {desired['id']} does not exist in this tenant; drop the "
                    f"id to create the record or fix it",
                )
            return existing
        if desired.get(natural):
            primed = self._primed.get(entity)
            if primed is not None and desired[natural] in primed[0]:
                return primed[1].get(desired[natural])  # answered by the batch scan: no request
            return self._find(entity, **{natural: desired[natural]})
        return None

    def _ledger_entry(
        self, stream: str, desired: dict[str, Any]
    ) -> tuple[str | None, str | None, tuple[str, str | None] | None]:
        """(ledger key, hash of the record, what the ledger holds for the key) — all None without a ledger."""
        if self.write_hashes is None:
            return None, None, None
        key = match_key(stream, desired)
        if key is None:
            return None, None, None
        return key, self.write_hashes.digest(desired), self.write_hashes.lookup(self.tenant_key, stream, key)

    def _ledger_says_unchanged(self, stream: str, record: Any) -> bool:
        try:
            _, digest, known = self._ledger_entry(stream, validate_for_write(stream, record))
        except WriteRefused:
            return False
        return known is not None and known[0] == digest

    def prime(self, entity: str, records: list[dict[str, Any]]) -> None:
        """Before a large batch, find its records' natural keys with one scan of the entity instead of one
        lookup per record. Only the batch's keys are kept, so memory follows the batch, not the tenant."""
        natural = ENTITIES[entity].match_field
        if self.write_hashes is not None:  # records the ledger settles need no lookup at all
            records = [r for r in records if not self._ledger_says_unchanged(entity, r)]
        keys = {
            r[natural] for r in records if isinstance(r, dict) and isinstance(r.get(natural), str) and not r.get("id")
        }  # malformed keys are left to the per-record path, which refuses them with the field named
        if len(keys) < PRIME_MIN_RECORDS:
            self._primed.pop(entity, None)
            return
        found: dict[str, dict[str, Any]] = {}
        shared: set[str] = set()
        for page in rest_pages(self.client, "/" + entity.replace("_", "-"), page_size=REST_MAX_PAGE_SIZE):
            for native in page:
                record = to_canonical(self.product, entity, native)
                value = record.get(natural)
                if value in keys:
                    if value in found:
                        shared.add(value)  # ambiguous: the per-record lookup will refuse it with the reason
                    found[value] = record
        self._primed[entity] = (frozenset(keys - shared), found)

    @staticmethod
    def _changed(existing: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in desired.items() if k not in ("id", "updated_at") and not _same(existing.get(k), v)}

    # -- patients ---------------------------------------------------------------------------------------
    def _write_patient(self, desired: dict[str, Any]) -> WriteResult:
        existing = self._resolve("patients", desired, "mrn")
        return self._upsert("patients", "mrn", desired, existing, reservation=None)

    # -- appointments -----------------------------------------------------------------------------------
    def _write_appointment(self, desired: dict[str, Any]) -> WriteResult:
        existing = self._resolve("appointments", desired, "external_id")
        merged = {**(existing or {}), **desired}
        changes = self._changed(existing, desired) if existing is not None else None
        if changes is not None and not changes:
            return self._result("appointments", "unchanged", existing["id"], None, desired)
        warnings: list[str] = []
        reservation = None
        moving = changes is None or not changes.keys().isdisjoint(
            ("start", "end", "status", "service_code", "discipline", "payer_id", "patient_id")
        )
        if self.policy != "off" and moving:
            try:
                release = self._existing_reservation(existing)
                reservation = self.authorization_units.reserve(
                    merged, self._authorizations(merged["patient_id"]), release=release
                )
            except AuthorizationRefused as exc:
                if self.policy == "enforce":
                    raise
                warnings.append(public_message(exc))
                log.warning("authorization check failed (policy=warn, writing anyway): %s", exc)
        try:
            result = self._upsert("appointments", "external_id", desired, existing, reservation=reservation)
        except BaseException:
            self.authorization_units.cancel(reservation)
            raise
        if result.action == "rejected":
            self.authorization_units.cancel(reservation)
        result.warnings += warnings
        return result

    def _existing_reservation(self, existing: dict[str, Any] | None) -> Reservation | None:
        """What the booking being moved already holds (it comes back when the move is written)."""
        if existing is None:
            return None
        return current_charge(existing, self._authorizations(existing["patient_id"]))

    def _authorizations(self, patient_id: str) -> list[dict[str, Any]]:
        """The patient's authorizations as of this run's first look (the ledger adds what the run booked)."""
        with self._auth_lock:
            cached = self._auth_cache.get(patient_id)
        if cached is not None:
            return cached
        found: list[dict[str, Any]] = []
        for page in rest_pages(
            self.client, "/authorizations", {"patient_id": patient_id}, page_size=REST_MAX_PAGE_SIZE
        ):
            found += [to_canonical(self.product, "authorizations", n) for n in page]
        with self._auth_lock:
            return self._auth_cache.setdefault(patient_id, found)

    # -- shared upsert ----------------------------------------------------------------------------------
    def _upsert(
        self,
        entity: str,
        natural: str,
        desired: dict[str, Any],
        existing: dict[str, Any] | None,
        *,
        reservation: Reservation | None,
    ) -> WriteResult:
        if existing is not None:
            changes = self._changed(existing, desired)
            if not changes:
                return self._result(entity, "unchanged", existing["id"], None, desired)
            body = to_native(
                self.product, entity, {**changes, "id": existing["id"]} if entity == "appointments" else changes
            )
            key = idempotency_key(
                self.tenant_key, entity, existing["id"], body, based_on=update_basis(existing, changes)
            )
            if self.dry_run:
                return self._result(entity, "would_update", existing["id"], key, desired)
            path = f"/patients/{existing['id']}" if entity == "patients" else "/appointments"
            method = "PUT" if entity == "patients" else "POST"
            self._local.sent = key
            response = self.client.request(method, path, json=body, idempotency_key=key, expected=(409, 422, 404))
            return self._answer(entity, "updated", response, key, desired)
        body = to_native(self.product, entity, {k: v for k, v in desired.items() if k != "id"})
        key = idempotency_key(self.tenant_key, entity, desired.get(natural), body)
        if self.dry_run:
            return self._result(entity, "would_create", None, key, desired)
        self._local.sent = key
        response = self.client.request("POST", f"/{entity}", json=body, idempotency_key=key, expected=(409, 422))
        if response.status_code == 409 and _error_code(response) in ("duplicate_mrn", "duplicate_external_id"):
            # another run created it between our lookup and our write: update that record instead
            found = self._get(entity, str(response.json().get("existing_id")))
            if found is not None:
                return self._upsert(entity, natural, desired, found, reservation=reservation)
        return self._answer(entity, "created", response, key, desired)

    def _answer(self, entity: str, action: Action, response: Any, key: str, desired: dict[str, Any]) -> WriteResult:
        if response.status_code >= 400:
            refusal = RemoteError.from_response(response)
            refusal.field = _error_field(response)  # type: ignore[attr-defined]  # shown only if one of ours
            key_hash = self._key_hash(entity, desired)
            return WriteResult.refused(
                entity, refusal, wellsky_id=desired.get("id"), idempotency_key=key, key_hash=key_hash
            )
        if response.headers.get("idempotent-replayed") == "true" and response.extensions.get("wellsky_attempt", 1) == 1:
            action = "replayed"  # our first send was answered from the tenant's memory: someone else wrote it
        saved = _written_record(self.product, entity, response)
        primed = self._primed.get(entity)
        natural_value = saved.get(ENTITIES[entity].match_field)
        if primed is not None and natural_value in primed[0]:
            primed[1][natural_value] = saved  # a later record with the same key in this batch sees the write
        return self._result(entity, action, saved["id"], key, desired)

    def _result(
        self, entity: str, action: Action, wid: str | None, key: str | None, desired: dict[str, Any]
    ) -> WriteResult:
        return WriteResult(
            entity, action, wellsky_id=wid, idempotency_key=key, key_hash=self._key_hash(entity, desired)
        )

    def _key_hash(self, entity: str, desired: dict[str, Any]) -> str | None:
        """A keyed hash (HMAC-SHA256, per-tenant secret) of the natural key: the audit can correlate writes, but
        nobody holding the audit file can test a guessed MRN against it (an unsalted SHA-256 allowed that)."""
        natural = desired.get(ENTITIES[entity].match_field) or desired.get("id")
        if not natural:
            return None
        return keyed_hash(self._key_hash_secret, str(natural))[:32]


def _tenant_secret(connection: Connection) -> bytes:
    """The per-tenant key-hash secret derived from the connection's credentials (see ``audit.tenant_secret``)."""
    return tenant_secret(connection.config)


def update_basis(existing: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """What an update was computed against: the server's version (``updated_at``) and the values it replaces.

    Both, because either alone can repeat: a clock with one-second resolution gives two versions the same
    ``updated_at``, and A -> B -> A replaces B with A twice only if the versions differ too.
    """
    return {"at": existing.get("updated_at"), "was": {k: existing.get(k) for k in sorted(changes)}}


def _same(current: Any, wanted: Any) -> bool:
    """Whether a field already holds what a write wants. Nested objects compare on the keys the write sets:
    validation drops unset nested fields (``exclude_unset``), so an address sent without ``line2`` must not
    read as a change against the stored ``line2: null`` on every run."""
    if isinstance(current, dict) and isinstance(wanted, dict):
        return all(_same(current.get(k), v) for k, v in wanted.items())
    return bool(current == wanted)


def match_key(stream: str, record: dict[str, Any]) -> str | None:
    """What identifies the record a write targets: its natural key, else its WellSky id (None: neither).

    The write-hash ledger is keyed by it, and the target writes records sharing it in input order."""
    natural = record.get(ENTITIES[stream].match_field)
    if natural:
        return f"n:{natural}"
    return f"i:{record['id']}" if record.get("id") else None


def written_body(response: Any, *, looked_up_by: str) -> dict[str, Any]:
    """The JSON object a successful write answered with, or a RemoteError that stops the run: an answer that is
    not one leaves the write's outcome unknown (it may have been applied), and that is said, never guessed.
    ``looked_up_by`` names how a re-run finds a record this write may have created."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise unreadable_answer(response, "is not a JSON object", looked_up_by=looked_up_by)
    return body


def unreadable_answer(response: Any, problem: str, *, looked_up_by: str) -> WriteOutcomeUnknown:
    what = f"{response.request.method} {response.request.url.path}"
    return WriteOutcomeUnknown(
        response.status_code,
        "unexpected_shape",
        f"the answer to {what} {problem}; the write may have been applied: check the tenant, then re-run the same "
        f"input (the target looks the record up by its {looked_up_by} before writing, so nothing is created twice)",
        url=response.url,
    )


def _written_record(product: str, entity: str, response: Any) -> dict[str, Any]:
    """The canonical record a successful write answered with (its id included), else the run stops."""
    looked_up_by = ENTITIES[entity].match_field
    body = written_body(response, looked_up_by=looked_up_by)
    try:
        saved = to_canonical(product, entity, body)
    except Exception:  # a body of the wrong shape: whatever the mapping tripped on, it is not the record
        saved = None
    if not saved or not saved.get("id"):
        raise unreadable_answer(response, "is not the written record (no record id in it)", looked_up_by=looked_up_by)
    return saved


def _error_code(response: Any) -> str:
    return server_code(response)


def _error_field(response: Any) -> str | None:
    """The ``field`` a WellSky validation error names (``disclosure.safe_field`` decides whether it is shown)."""
    try:
        body = response.json()
    except ValueError:
        return None
    field = body.get("field") if isinstance(body, dict) else None
    return field if isinstance(field, str) else None

