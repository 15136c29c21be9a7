"""The emulated tenant's behaviour: validated writes, payer-authorization checks, and a day of changes.

This is the vendor's business logic, independent of HTTP: ``app.py`` maps requests onto it and its
``WriteRejected`` errors onto JSON error responses.
"""

from __future__ import annotations

import copy
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from .faults import FaultPlan, FaultState
from .generator import (
    ENTITIES,
    FIELDS,
    PAYERS,
    Generator,
    IdMinter,
    parse_iso,
)
from .render import AGENCY_TZ, MODELED_PRODUCTS, Renderer
from .security import Security, Settings
from .store import Store
from .wan import RateMeter, WanPlan

PATIENT_FIELDS = set(FIELDS["patients"])
APPOINTMENT_FIELDS = set(FIELDS["appointments"])
BOOKED = ("scheduled", "completed")
Remember = Callable[[int, dict[str, Any]], bytes]


class WriteRejected(Exception):
    """A write the tenant refuses; ``status`` and ``code`` become the JSON error."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


@dataclass
class TenantConfig:
    product: str = "home_health"
    patients: int = 1000
    seed: int = 42
    data_dir: Path = Path("sandbox-data")
    read_only: bool = False
    security: Settings = field(default_factory=Settings)
    faults: FaultPlan = field(default_factory=FaultPlan)
    name: str = "Sunrise Home Health (sandbox)"
    homeconnect: str | dict[str, Any] | None = None  # personal_care: Home Connect options (homeconnect.Options)
    wan: WanPlan = field(default_factory=WanPlan)  # latency + jitter on every request (wan.py)
    rate_limit: int | None = None  # soft requests/s, overruns counted; None: the product's documented limit
    fhir_references: str = "literal"  # "identifier": practitioners referenced by NPI as US Core servers do (fhir.py)


SOFT_RATE_LIMITS = {"personal_care": 100}
"""Documented soft limits (Home Connect fact sheet section 6: at most 100 req/s, not throttled); others: none."""


def public(rec: dict[str, Any]) -> dict[str, Any]:
    """A stored record without the tenant's private bookkeeping keys (``_…``)."""
    return {k: v for k, v in rec.items() if not k.startswith("_")}


class Tenant:
    """One emulated agency: its data, its users and its behaviour."""

    def __init__(self, config: TenantConfig) -> None:
        self.config = config
        self.store = Store(Path(config.data_dir) / "tenant.sqlite")
        self.counts = self.store.seed(config.product, config.patients, config.seed)
        self.product = config.product
        self._renderer = Renderer(config.product) if config.product in MODELED_PRODUCTS else None
        self.security = Security(config.seed, config.security)
        self.faults = FaultState(config.faults)
        limit = config.rate_limit if config.rate_limit is not None else SOFT_RATE_LIMITS.get(config.product, 0)
        self.rate_meter = RateMeter(limit)
        self.read_only = config.read_only
        self.enforce_authorizations = True
        """Off only in tests: books over the authorized units (as a tenant with lax payer rules would), so a
        test can show that the *client* refuses an over-booking instead of relying on the server's refusal."""
        self.listeners: list[Callable[[str, str, dict[str, Any]], None]] = []
        # called after each /_sandbox/advance with (entity, record before or None when new, record after)
        self.advance_hooks: list[Callable[[list[tuple[str, dict[str, Any] | None, dict[str, Any]]]], None]] = []

    @property
    def renderer(self) -> Renderer:
        """The modeled REST dialect (home health, hospice); personal care speaks Home Connect and has none."""
        if self._renderer is None:
            raise WriteRejected(404, "no_modeled_dialect", f"{self.product} speaks Home Connect under /v1/")
        return self._renderer

    def close(self) -> None:
        self.store.close()

    # -- change notification (webhooks subscribe here) ------------------------------------------------
    def notify(self, event: str, entity: str, rec: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener(event, entity, public(rec))

    # -- writes ---------------------------------------------------------------------------------------
    def write_patient(
        self, body: dict[str, Any], patient_id: str | None, remember: Remember | None = None
    ) -> tuple[int, dict[str, Any], bytes | None]:
        """Create (``patient_id`` None) or update a patient from logical fields.

        ``remember`` runs inside the write's transaction (idempotency key + audit entry), so a crash can never
        leave a committed write without its key. Returns (status, record, remembered body or None when the
        record was unchanged and nothing was written).
        """
        _refuse_unknown(body, PATIENT_FIELDS, self.renderer, "patients")
        body.pop("updated_at", None)
        if patient_id is None and body.get("id"):
            patient_id = body["id"]
        if patient_id is not None:
            existing = self.store.get("patients", patient_id)
            if existing is None:
                raise WriteRejected(404, "not_found", f"patient {patient_id} does not exist")
            rec = {**existing, **body, "id": patient_id}
            status = 200
        else:
            rec = {
                "mrn": None,
                "medicare_mbi": None,
                "medicaid_id": None,
                "phone": None,
                "address": None,
                "status": "pending",
                "coverage": [],
                **body,
            }
            status = 201
        mrn = rec.get("mrn")
        if mrn is not None:
            clash = [p for p in self.store.find("patients", natural_key=mrn) if p["id"] != rec.get("id")]
            if clash:
                raise WriteRejected(
                    409, "duplicate_mrn", "a patient with this MRN already exists", existing_id=clash[0]["id"]
                )
        self._validate_patient(rec)
        if status == 200 and public(rec) == public(existing):
            return 200, existing, None  # nothing changed: no new version, no event
        with self.store.transaction():
            if status == 201:
                rec["id"] = self.store.mint_id("patients")
            rec["updated_at"] = self.store.now()
            self.store.put("patients", rec)
            body_out = remember(status, rec) if remember else b""
        self.notify("patient.created" if status == 201 else "patient.updated", "patients", rec)
        return status, rec, body_out

    def _validate_patient(self, rec: dict[str, Any]) -> None:
        r = self.renderer
        for name in ("first_name", "last_name"):
            if not isinstance(rec.get(name), str) or not rec[name].strip():
                raise WriteRejected(422, "validation_error", f"{r.native_field('patients', name)} is required")
        for name in ("birth_date", "gender"):
            if rec.get(name) is None:
                raise WriteRejected(422, "validation_error", f"{r.native_field('patients', name)} is required")
        if not isinstance(rec.get("coverage"), list):
            raise WriteRejected(422, "validation_error", "coverage must be a list of payers")
        for i, cov in enumerate(rec["coverage"]):
            if not isinstance(cov, dict) or not {"payer_id", "member_id"} <= set(cov):
                raise WriteRejected(422, "validation_error", f"coverage[{i}] needs payer_id and member_id")
        for name in ("mrn", "phone", "medicare_mbi", "medicaid_id"):
            if rec.get(name) is not None and not isinstance(rec[name], str):
                raise WriteRejected(422, "validation_error", f"{r.native_field('patients', name)} must be a string")

    def write_appointment(
        self, body: dict[str, Any], remember: Remember | None = None
    ) -> tuple[int, dict[str, Any], bytes | None]:
        """Create or update (when ``id`` is present) an appointment, checking the payer authorization."""
        _refuse_unknown(body, APPOINTMENT_FIELDS, self.renderer, "appointments")
        body.pop("updated_at", None)
        existing = None
        if body.get("id"):
            existing = self.store.get("appointments", body["id"])
            if existing is None:
                raise WriteRejected(404, "not_found", f"appointment {body['id']} does not exist")
        elif body.get("external_id"):
            clash = self.store.find("appointments", natural_key=body["external_id"])
            if clash:
                raise WriteRejected(
                    409,
                    "duplicate_external_id",
                    "an appointment with this external_id exists",
                    existing_id=clash[0]["id"],
                )
        rec = {
            "external_id": None,
            "practitioner_id": None,
            "payer_id": None,
            "status": "scheduled",
            "location": None,
            **(existing or {}),
            **body,
        }
        self._validate_appointment(rec)
        if existing is not None and public(rec) == public(existing):
            return 200, existing, None
        status = 201 if existing is None else 200
        with self.store.transaction():
            self._settle_authorization(rec, existing)
            if existing is None:
                rec["id"] = self.store.mint_id("appointments")
            rec["updated_at"] = self.store.now()
            self.store.put("appointments", rec)
            body_out = remember(status, rec) if remember else b""
        self.notify("appointment.created" if existing is None else "appointment.changed", "appointments", rec)
        return status, rec, body_out

    def _validate_appointment(self, rec: dict[str, Any]) -> None:
        r = self.renderer
        for name in ("patient_id", "start", "end", "discipline", "service_code"):
            if rec.get(name) in (None, ""):
                raise WriteRejected(422, "validation_error", f"{r.native_field('appointments', name)} is required")
        if self.store.get("patients", rec["patient_id"]) is None:
            raise WriteRejected(
                422,
                "unknown_patient",
                f"{r.native_field('appointments', 'patient_id')} {rec['patient_id']} does not exist",
            )
        if rec.get("practitioner_id") and self.store.get("practitioners", rec["practitioner_id"]) is None:
            raise WriteRejected(
                422,
                "unknown_practitioner",
                f"{r.native_field('appointments', 'practitioner_id')} {rec['practitioner_id']} does not exist",
            )
        if parse_iso(rec["end"]) <= parse_iso(rec["start"]):
            raise WriteRejected(
                422,
                "validation_error",
                f"{r.native_field('appointments', 'end')} must be after {r.native_field('appointments', 'start')}",
            )
        if not isinstance(rec["service_code"], str):
            raise WriteRejected(422, "validation_error", "service_code must be a string")

    def _settle_authorization(self, rec: dict[str, Any], existing: dict[str, Any] | None) -> None:
        """Release the old booking's units, then charge the new one (or refuse with 422)."""
        if existing and existing.get("_authorization_id"):
            auth = self.store.get("authorizations", existing["_authorization_id"])
            if auth:
                auth["units_used"] = max(0, auth["units_used"] - existing.get("_units", 0))
                auth["updated_at"] = self.store.now()
                self.store.put("authorizations", auth)
        rec.pop("_authorization_id", None)
        rec.pop("_units", None)
        if rec["status"] not in BOOKED or not rec.get("payer_id"):
            return
        try:
            auth, units = self.check_authorization(rec)
        except WriteRejected as exc:
            if self.enforce_authorizations or exc.code != "authorization_exceeded":
                raise
            auth, units = self.store.get("authorizations", exc.extra["authorization_id"]), exc.extra["units_needed"]
        auth["units_used"] += units
        auth["updated_at"] = self.store.now()
        self.store.put("authorizations", auth)
        self.notify("authorization.delta", "authorizations", auth)
        rec["_authorization_id"], rec["_units"] = auth["id"], units

    def check_authorization(self, appt: dict[str, Any]) -> tuple[dict[str, Any], int]:
        start, end = parse_iso(appt["start"]), parse_iso(appt["end"])
        day = start.astimezone(AGENCY_TZ).date()
        auths = [
            a
            for a in self.store.find("authorizations", patient_id=appt["patient_id"])
            if a["payer_id"] == appt["payer_id"] and a["status"] == "active"
        ]
        if not auths:
            raise WriteRejected(
                422, "authorization_missing", f"no active authorization from payer {appt['payer_id']} for this patient"
            )
        in_range = [a for a in auths if date.fromisoformat(a["start_date"]) <= day <= date.fromisoformat(a["end_date"])]
        if not in_range:
            raise WriteRejected(
                422,
                "authorization_out_of_range",
                f"appointment date {day.isoformat()} is outside every authorized date range",
            )
        covering = [
            a
            for a in in_range
            if appt["service_code"] in a["service_codes"] or appt["discipline"] in a["service_codes"]
        ]
        if not covering:
            raise WriteRejected(
                422,
                "service_not_authorized",
                f"service {appt['service_code']} ({appt['discipline']}) is not authorized",
            )
        best = None
        for auth in sorted(covering, key=lambda a: a["end_date"]):
            units = units_for(auth, start, end)
            left = auth["units_authorized"] - auth["units_used"]
            if units <= left:
                return auth, units
            best = best or (auth, units, left)
        assert best is not None
        auth, units, left = best
        raise WriteRejected(
            422,
            "authorization_exceeded",
            f"needs {units} {auth['unit_type']} unit(s) but only {left} of "
            f"{auth['units_authorized']} remain on authorization {auth['id']}",
            authorization_id=auth["id"],
            units_needed=units,
            units_left=left,
        )

    # -- a day of changes -------------------------------------------------------------------------------
    def advance(self, *, fraction: float | None = None, count: int | None = None, seed: int = 1) -> dict[str, Any]:
        """Mutate about ``count`` records (or ``fraction`` of all): updates, new rows, cancellations, and deletions
        (care logs on personal_care; visits, authorizations and merged duplicate patients on the others)."""
        total = sum(self.store.counts().values())
        n = count if count is not None else max(1, round(total * (fraction or 0.01)))
        rng = random.Random(seed * 1_000_003 + total)
        counters = dict(self.store.meta_json("id_counters"))
        changed: dict[tuple[str, str], dict[str, Any]] = {}
        originals: dict[tuple[str, str], dict[str, Any]] = {}
        deleted: set[tuple[str, str]] = set()
        kinds: Counter[str] = Counter()
        gen = Generator(self.product, seed=rng.randrange(1 << 30))
        gen.ids = IdMinter(self.product, self.config.seed, counters)
        weights = [max(1, counters.get(e, 0)) for e in ENTITIES]
        now = self.store.now()
        attempts = 0
        while len(changed) + len(deleted) < n and attempts < n * 20:
            attempts += 1
            roll = rng.random()
            if roll < 0.2:  # new rows: a new patient with a few records, or a new appointment
                if not gen.practitioners:
                    gen.practitioners = [
                        p for p in (self._random("practitioners", rng, counters) for _ in range(5)) if p
                    ]
                for entity, rec in gen.patient_bundle(0.0):
                    if len(changed) >= n:
                        break
                    rec["updated_at"] = now
                    changed[(entity, rec["id"])] = rec
                    kinds["created"] += 1
                continue
            if self.product != "personal_care" and roll < 0.3:  # records removed the way agencies remove them
                kind = self._remove(rng, counters, changed, originals, deleted, now)
                if kind:
                    kinds[kind] += 1
                continue
            if self.product == "personal_care" and roll < 0.34:  # kinds the Home Connect emulation also makes
                kind = self._late_entry(gen, rng, counters, now, changed) if roll < 0.3 else self._delete_care_log(
                    rng, counters, changed, deleted)
                if kind:
                    kinds[kind] += 1
                continue
            entity = rng.choices(ENTITIES, weights)[0]
            rec = self._random(entity, rng, counters)
            if rec is None:
                continue
            rec = changed.get((entity, rec["id"]), rec)
            originals.setdefault((entity, rec["id"]), copy.deepcopy(rec))
            kind = _mutate(entity, rec, rng)
            rec["updated_at"] = now
            changed[(entity, rec["id"])] = rec
            kinds[kind] += 1
        with self.store.transaction():
            for (entity, _), rec in changed.items():
                self.store.put(entity, rec)
            for entity, rec_id in deleted:
                self.store.delete(entity, rec_id)
            self.store.set_meta_json("id_counters", gen.ids.counters)
        self.store.tick()
        for (entity, _), rec in changed.items():
            event = {
                "appointments": "appointment.changed",
                "encounters": "encounter.updated",
                "authorizations": "authorization.delta",
            }.get(entity)
            if event:
                self.notify(event, entity, rec)
        batch = [(entity, originals.get((entity, rid)), rec) for (entity, rid), rec in changed.items()]
        for hook in list(self.advance_hooks):
            hook(batch)
        by_entity = Counter(e for e, _ in changed)
        return {
            "changed": len(changed), "updated_at": now, "by_entity": dict(by_entity), "by_kind": dict(kinds),
            "deleted": sorted(f"{e}/{i}" for e, i in deleted),
        }

    def _late_entry(
        self, gen: Generator, rng: random.Random, counters: dict[str, int], now: str,
        changed: dict[tuple[str, str], dict[str, Any]],
    ) -> str | None:
        """A visit entered after the fact for an existing client: a completed shift dated up to three weeks
        back, usually with its care log (a forgotten clock-in the office keys in later)."""
        patient = self._random("patients", rng, counters)
        if patient is None:
            return None
        if not gen.practitioners:
            gen.practitioners = [p for p in (self._random("practitioners", rng, counters) for _ in range(5)) if p]
        payer = (patient.get("coverage") or [{}])[0].get("payer_id")
        appt = gen.appointment(patient["id"], payer, parse_iso(now))
        start = (parse_iso(now) - timedelta(days=rng.randint(1, 21))).replace(
            hour=rng.randint(13, 20), minute=0, second=0)
        length = parse_iso(appt["end"]) - parse_iso(appt["start"])
        appt.update(start=start.strftime("%Y-%m-%dT%H:%M:%SZ"), end=(start + length).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    status="completed", updated_at=now)
        changed[("appointments", appt["id"])] = appt
        if rng.random() < 0.7:
            enc = gen.encounter(appt)
            enc["updated_at"] = now
            changed[("encounters", enc["id"])] = enc
        return "late_entry"

    def _delete_care_log(
        self, rng: random.Random, counters: dict[str, int], changed: dict[tuple[str, str], dict[str, Any]],
        deleted: set[tuple[str, str]],
    ) -> str | None:
        """A care log deleted as entered in error (Home Connect documents ``DELETE /v1/encounter/{id}/``)."""
        rec = self._random("encounters", rng, counters)
        if rec is None or ("encounters", rec["id"]) in changed:
            return None
        deleted.add(("encounters", rec["id"]))
        return "deleted"

    def _remove(
        self, rng: random.Random, counters: dict[str, int], changed: dict[tuple[str, str], dict[str, Any]],
        originals: dict[tuple[str, str], dict[str, Any]], deleted: set[tuple[str, str]], now: str,
    ) -> str | None:
        """A record deleted in WellSky: a scheduled visit deleted (booked in error), an authorization voided, or a
        duplicate patient merged away (its records move to the surviving patient; the tenant keeps no merged ids)."""
        choice = rng.random()
        if choice < 0.45:
            picks = (self._random("appointments", rng, counters) for _ in range(8))  # most visits are past
            appt = next((a for a in picks if a is not None and a["status"] == "scheduled"), None)
            if appt is None or ("appointments", appt["id"]) in changed:
                return None
            if any(e.get("appointment_id") == appt["id"] for e in self.store.find("encounters",
                                                                                 patient_id=appt["patient_id"])):
                return None
            deleted.add(("appointments", appt["id"]))
            return "visit_deleted"
        if choice < 0.8:
            auth = self._random("authorizations", rng, counters)
            if auth is None or ("authorizations", auth["id"]) in changed:
                return None
            deleted.add(("authorizations", auth["id"]))
            return "authorization_voided"
        duplicate, survivor = self._random("patients", rng, counters), self._random("patients", rng, counters)
        if duplicate is None or survivor is None or duplicate["id"] == survivor["id"]:
            return None
        if any(key[1] in (duplicate["id"], survivor["id"]) for key in changed if key[0] == "patients"):
            return None
        moved = [(e, r) for e in ENTITIES if e not in ("patients", "practitioners")
                 for r in self.store.find(e, patient_id=duplicate["id"])]
        if any((e, r["id"]) in deleted or (e, r["id"]) in changed for e, r in moved):
            return None
        for entity, rec in moved:
            originals.setdefault((entity, rec["id"]), copy.deepcopy(rec))
            rec.update(patient_id=survivor["id"], updated_at=now)
            changed[(entity, rec["id"])] = rec
        deleted.add(("patients", duplicate["id"]))
        return "patient_merged"

    def _random(self, entity: str, rng: random.Random, counters: dict[str, int]) -> dict[str, Any] | None:
        top = counters.get(entity, 0)
        if not top:
            return None
        minter = IdMinter(self.product, self.config.seed)
        return self.store.get(entity, minter.spell(entity, rng.randint(1, top)))


def units_for(auth: dict[str, Any], start: datetime, end: datetime) -> int:
    """Units an appointment consumes under an authorization's unit type and rounding rule."""
    if auth["unit_type"] == "visit":
        return 1
    minutes = (end - start).total_seconds() / 60
    raw = minutes / (60 if auth["unit_type"] == "hour" else 15)
    rule = auth.get("rounding", "nearest")
    if rule == "up":
        return math.ceil(raw - 1e-9)
    if rule == "down":
        return math.floor(raw + 1e-9)
    return math.floor(raw + 0.5)


def _mutate(entity: str, rec: dict[str, Any], rng: random.Random) -> str:
    """Apply one realistic change to a record in place; returns the kind of change."""
    if entity == "patients":
        choice = rng.random()
        if choice < 0.5:
            rec["phone"] = f"({rng.randint(201, 989)}) 555-{rng.randint(0, 9999):04d}"
            return "updated"
        rec["status"] = rng.choice(("discharged", "inactive")) if rec["status"] == "active" else "active"
        return "status_changed"
    if entity == "practitioners":
        rec["active"] = not rec["active"]
        return "status_changed"
    if entity == "appointments":
        if rec["status"] == "scheduled" and rng.random() < 0.6:
            rec["status"] = "cancelled"
            return "cancelled"
        shift = timedelta(days=rng.randint(1, 3))
        for key in ("start", "end"):
            rec[key] = (parse_iso(rec[key]) + shift).strftime("%Y-%m-%dT%H:%M:%SZ")
        return "rescheduled"
    if entity == "encounters":
        rec["finalized"], rec["status"] = True, "completed"
        rec["note_summary"] = "Addendum: visit note finalized."
        return "updated"
    if entity == "care_plans":
        rec["status"] = rng.choice(("active", "completed", "revoked"))
        return "status_changed"
    if entity == "authorizations":
        rec["units_used"] = min(rec["units_authorized"], rec["units_used"] + rng.randint(1, 3))
        return "updated"
    if entity == "referrals":
        rec["status"] = rng.choice(("accepted", "declined"))
        return "status_changed"
    if entity == "coverage":
        _payer_id, payer_name = rng.choice(PAYERS)
        rec["plan_name"] = f"{payer_name} 2027"
        return "updated"
    raise ValueError(entity)


def _refuse_unknown(body: dict[str, Any], allowed: set[str], renderer: Renderer, entity: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        names = ", ".join(renderer.native_field(entity, u) for u in unknown)
        raise WriteRejected(422, "unknown_field", f"unknown field(s): {names}")
