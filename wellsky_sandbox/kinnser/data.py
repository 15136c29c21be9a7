"""What the Kinnser-style portal shows, derived deterministically from the tenant's logical records.

The portal adds what the REST API has no resource for: offices (branches), episodes (certification or
benefit periods), claims and the unbilled report. They are computed from the stored patients and visits on
every request, so ``/_sandbox/advance`` and writes show up in the portal as they would in the real product,
and the truth endpoints (``/_sandbox/kinnser/truth/{entity}``) use the same functions as the pages.

Everything here is MODELED (the public record documents the screens, not WellSky's billing rules): the branch
assignment, episode lengths (home health 60-day certification periods billed in two 30-day periods; hospice
90/90/60-day benefit periods billed per 30 days), claim amounts, statuses and the aging base date.
"""

from __future__ import annotations

import hashlib
import uuid
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from ..generator import parse_iso
from ..render import AGENCY_TZ
from ..store import Store
from ..tenant import public


@dataclass(frozen=True)
class Office:
    value: str
    name: str
    corporate: bool = False


OFFICES: tuple[Office, ...] = (
    Office("100Corporation", "Corporation", corporate=True),
    Office("101Clinic", "North Clinic"),
    Office("102Clinic", "South Clinic"),
    Office("103Clinic", "Lakeside Clinic"),
    Office("104Clinic", "East Clinic"),  # opened recently: no patients yet
)
DATA_OFFICES = OFFICES[1:4]
"""Patients are spread over these three; ``104Clinic`` exists but holds no data."""
OFFICE_BY_VALUE = {o.value: o for o in OFFICES}

TASK_NAMES = {
    "SN": "Skilled Nurse Visit",
    "PT": "PT Visit",
    "OT": "OT Visit",
    "ST": "ST Visit",
    "MSW": "MSW Visit",
    "HHA": "HHA Visit",
}
THERAPY = ("PT", "OT", "ST")
SCHEDULE_STATUS = {"completed": "Completed", "missed": "Missed Visit", "cancelled": "Cancelled"}
PAST_DUE_STATUSES = ("Not Started", "Saved", "Pending Clinician Signature", "Returned for Review", "Reopened")
CLAIM_STATUS_LABELS = {
    "not_ready": "Not Ready",
    "ready": "Ready",
    "pending_approval": "Pending Approval",
    "ready_to_send": "Ready to Send",
    "sent": "Sent",
    "paid": "Paid",
}
UNBILLED_STATUSES = ("not_ready", "ready", "pending_approval", "ready_to_send")
AGING_BUCKETS = ("0-30", "31-60", "61-90", "91-120", "121-150", "151-180", "181-210", "211-240", "241+")
VISIT_RATE_CENTS = {"SN": 15200, "PT": 16500, "OT": 16600, "ST": 17900, "MSW": 24500, "HHA": 6800}
VISIT_CHARGE_CENTS = {k: v * 13 // 10 for k, v in VISIT_RATE_CENTS.items()}
HOSPICE_DAY_CENTS = 21450
HOSPICE_DAY_CHARGE_CENTS = 26000


def office_of(patient_id: str) -> Office:
    return DATA_OFFICES[zlib.crc32(patient_id.encode()) % len(DATA_OFFICES)]


def _h(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:8], "big")


def local_day(ts: str) -> date:
    return parse_iso(ts).astimezone(AGENCY_TZ).date()


def payer_type(payer_id: str | None) -> str:
    if payer_id == "MCR":
        return "Medicare"
    if payer_id and payer_id.startswith("MCD"):
        return "Medicaid"
    return "Managed Care"


def aging_bucket(days: int) -> str:
    if days > 240:
        return "241+"
    lo = max(0, (days - 1) // 30) * 30
    return f"{lo + 1 if lo else 0}-{lo + 30}"


@dataclass
class Book:
    """One office's (or the whole agency's) portal view of the tenant on one day."""

    product: str
    today: date
    patients: list[dict[str, Any]] = field(default_factory=list)
    visits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # patient id -> appointments
    practitioners: dict[str, dict[str, Any]] = field(default_factory=dict)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)

    def patient(self, patient_id: str) -> dict[str, Any] | None:
        return next((p for p in self.patients if p["id"] == patient_id), None)

    def episodes_of(self, patient_id: str) -> list[dict[str, Any]]:
        return [e for e in self.episodes if e["patient_id"] == patient_id]

    def episode_visits(self, episode: dict[str, Any]) -> list[dict[str, Any]]:
        lo, hi = date.fromisoformat(episode["start_date"]), date.fromisoformat(episode["end_date"])
        return [v for v in self.visits.get(episode["patient_id"], []) if lo <= local_day(v["start"]) <= hi]

    def past_due(self) -> list[dict[str, Any]]:
        """Scheduled visits whose target date has passed, with their documentation status."""
        rows = []
        for p in self.patients:
            for v in self.visits.get(p["id"], []):
                if v["status"] == "scheduled" and local_day(v["start"]) < self.today:
                    rows.append({"patient": p, "visit": v, "status": documentation_status(v)})
        rows.sort(key=lambda r: (local_day(r["visit"]["start"]), r["visit"]["id"]))
        return rows

    def deviations(self, lo: date, hi: date) -> list[dict[str, Any]]:
        """Missed or cancelled visits with a target date in ``[lo, hi]``."""
        rows = []
        for p in self.patients:
            for v in self.visits.get(p["id"], []):
                if v["status"] in ("missed", "cancelled") and lo <= local_day(v["start"]) <= hi:
                    rows.append({"patient": p, "visit": v})
        rows.sort(key=lambda r: (local_day(r["visit"]["start"]), r["visit"]["id"]))
        return rows

    def unbilled_items(self) -> list[dict[str, Any]]:
        """Final claims not yet sent: the detail rows of the Unbilled report."""
        items = []
        for c in self.claims:
            if c["status"] in UNBILLED_STATUSES and c["claim_type"] != "RAP":
                age = (self.today - date.fromisoformat(c["billing_period_start"])).days
                items.append({**c, "age_days": age, "aging_bucket": aging_bucket(age)})
        return items

    def unbilled(self) -> list[dict[str, Any]]:
        """The dated snapshot: one record per office, payer and aging bucket (the truth of ``unbilled``)."""
        groups: dict[tuple[str, str, str], dict[str, Any]] = {}
        for item in self.unbilled_items():
            key = (item["office"], item["payer_name"], item["aging_bucket"])
            g = groups.setdefault(
                key,
                {
                    "id": f"{self.today.isoformat()}|{key[0]}|{key[1]}|{key[2]}",
                    "snapshot_date": self.today.isoformat(),
                    "office": key[0],
                    "payer_name": key[1],
                    "payer_type": item["payer_type"],
                    "aging_bucket": key[2],
                    "claims": 0,
                    "visits": 0,
                    "amount": 0,
                    "charges": 0,
                },
            )
            g["claims"] += 1
            g["visits"] += item["visits"]
            g["amount"] += item["amount_cents"]
            g["charges"] += item["charges_cents"]
        out = []
        for g in groups.values():
            out.append({**g, "amount": g["amount"] / 100, "charges": g["charges"] / 100})
        return sorted(out, key=lambda r: r["id"])


def documentation_status(visit: dict[str, Any]) -> str:
    return PAST_DUE_STATUSES[_h("doc", visit["id"]) % len(PAST_DUE_STATUSES)]


def schedule_status(visit: dict[str, Any], today: date) -> str:
    if visit["status"] in SCHEDULE_STATUS:
        return SCHEDULE_STATUS[visit["status"]]
    return documentation_status(visit) if local_day(visit["start"]) < today else "Not Started"


def today_of(store: Store) -> date:
    return parse_iso(store.now()).astimezone(AGENCY_TZ).date()


def build(store: Store, product: str, office: Office | None) -> Book:
    """The portal's view for ``office`` (None or the corporation level: every branch)."""
    today = today_of(store)
    book = Book(product=product, today=today)
    wanted = None if office is None or office.corporate else office.value
    for p in store.iter_all("patients"):
        if wanted is None or office_of(p["id"]).value == wanted:
            book.patients.append(public(p))
    ids = {p["id"] for p in book.patients}
    for a in store.iter_all("appointments"):
        if a["patient_id"] in ids:
            book.visits.setdefault(a["patient_id"], []).append(public(a))
    for visits in book.visits.values():
        visits.sort(key=lambda v: (v["start"], v["id"]))
    book.practitioners = {r["id"]: public(r) for r in store.iter_all("practitioners")}
    auths: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in store.iter_all("authorizations"):
        if a["patient_id"] in ids:
            auths[a["patient_id"]].append(public(a))
    for p in sorted(book.patients, key=lambda r: r["id"]):
        episodes = _episodes(product, p, book.visits.get(p["id"], []), today)
        book.episodes.extend(episodes)
        for ep in episodes:
            book.claims.extend(_claims(product, p, ep, book.visits.get(p["id"], []), auths[p["id"]], today))
    return book


def _episode_id(product: str, patient_id: str, n: int) -> str:
    if product == "home_health":
        return f"HH-EP{patient_id.rsplit('P', 1)[-1]}{n:02d}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"wellsky-sandbox:episode:{patient_id}:{n}"))


def _period_lengths(product: str) -> list[int]:
    return [60] * 40 if product == "home_health" else [90, 90] + [60] * 40


def _primary(patient: dict[str, Any]) -> dict[str, Any] | None:
    cov = sorted(patient.get("coverage") or [], key=lambda c: c["order"])
    return cov[0] if cov else None


def _episodes(product: str, patient: dict[str, Any], visits: list[dict[str, Any]], today: date) -> list[dict]:
    if not visits:
        return []
    first, last = local_day(visits[0]["start"]), max(local_day(v["start"]) for v in visits)
    payer = _primary(patient)
    out: list[dict[str, Any]] = []
    start = first
    for n, length in enumerate(_period_lengths(product), start=1):
        end = start + timedelta(days=length - 1)
        out.append(
            {
                "id": _episode_id(product, patient["id"], n),
                "patient_id": patient["id"],
                "office": office_of(patient["id"]).name,
                "period_number": n,
                "start_date": start.isoformat(),
                "end_date": end.isoformat(),
                "status": "active" if end >= today else "completed",
                "payer_id": payer["payer_id"] if payer else None,
                "payer_name": payer["payer_name"] if payer else None,
            }
        )
        if end >= last:
            break
        start = end + timedelta(days=1)
    if patient["status"] == "discharged" and out[-1]["status"] == "completed":
        out[-1]["status"] = "discharged"
    return out


def _claims(
    product: str,
    patient: dict[str, Any],
    episode: dict[str, Any],
    visits: list[dict[str, Any]],
    auths: list[dict[str, Any]],
    today: date,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ep_start, ep_end = date.fromisoformat(episode["start_date"]), date.fromisoformat(episode["end_date"])
    start = ep_start
    k = 0
    while start <= ep_end:
        end = min(start + timedelta(days=29), ep_end)
        k += 1
        if start > today:
            break
        in_period = [v for v in visits if start <= local_day(v["start"]) <= end]
        done = [v for v in in_period if v["status"] == "completed"]
        open_visits = any(v["status"] == "scheduled" for v in in_period)
        kinds: list[tuple[str, str]]
        if product == "home_health":
            kinds = [("RAP", "322"), ("EOE", "329")]
        else:
            last = patient["status"] == "discharged" and episode["status"] == "discharged" and end == ep_end
            first = episode["period_number"] == 1 and k == 1
            kinds = [("final", "814" if last else "812" if first else "813")]
        for claim_type, tob in kinds:
            cid = f"CLM{_h('claim', episode['id'], str(k), claim_type) % 10**10:010d}"
            roll = _h("status", cid) % 100
            closed = end < today and not open_visits
            if claim_type == "RAP":
                amount = charges = 0
                status = (
                    ("paid" if roll < 70 else "sent")
                    if (today - start).days > 14
                    else ("ready" if roll < 50 else "pending_approval")
                )
            else:
                if product == "home_health":
                    amount = sum(VISIT_RATE_CENTS[v["discipline"]] for v in done)
                    charges = sum(VISIT_CHARGE_CENTS[v["discipline"]] for v in done)
                else:
                    days = (end - start).days + 1
                    amount, charges = days * HOSPICE_DAY_CENTS, days * HOSPICE_DAY_CHARGE_CENTS
                if not closed:
                    status = "not_ready"
                elif (today - end).days > 60:
                    status = "paid" if roll < 75 else "sent" if roll < 90 else "ready"
                else:
                    status = ("ready", "pending_approval", "ready_to_send", "sent", "not_ready")[roll % 5]
            auth = next(
                (
                    a
                    for a in auths
                    if a["payer_id"] == episode["payer_id"]
                    and date.fromisoformat(a["start_date"]) <= end
                    and date.fromisoformat(a["end_date"]) >= start
                ),
                None,
            )
            out.append(
                {
                    "id": cid,
                    "patient_id": patient["id"],
                    "mrn": patient.get("mrn"),
                    "episode_id": episode["id"],
                    "office": episode["office"],
                    "claim_type": claim_type,
                    "type_of_bill": tob,
                    "billing_period_start": start.isoformat(),
                    "billing_period_end": end.isoformat(),
                    "payer_id": episode["payer_id"],
                    "payer_name": episode["payer_name"] or "Private Pay",
                    "payer_type": payer_type(episode["payer_id"]),
                    "authorization_number": auth["id"] if auth else None,
                    "status": status,
                    "amount_cents": amount,
                    "charges_cents": charges,
                    "visits": len(done),
                }
            )
        start = end + timedelta(days=1)
    return out


def claim_truth(claim: dict[str, Any]) -> dict[str, Any]:
    """A claim as the canonical ``claims`` record spells it (amount in dollars, no portal-only helpers)."""
    keep = (
        "id",
        "patient_id",
        "mrn",
        "episode_id",
        "office",
        "claim_type",
        "type_of_bill",
        "billing_period_start",
        "billing_period_end",
        "payer_name",
        "authorization_number",
        "status",
    )
    return {**{k: claim[k] for k in keep}, "amount": claim["amount_cents"] / 100}


def episode_truth(episode: dict[str, Any]) -> dict[str, Any]:
    return dict(episode)


class Books:
    """``build`` results cached until the tenant's records (or the day) change: pages of one run reuse them."""

    def __init__(self, store: Store, product: str) -> None:
        self.store = store
        self.product = product
        self._cache: dict[tuple[Any, ...], Book] = {}

    def get(self, office: Office | None) -> Book:
        with self.store.lock:
            version = self.store.db.total_changes  # one connection writes every record: any write moves it
        key = (office.value if office else None, version, today_of(self.store))
        book = self._cache.get(key)
        if book is None:
            if len(self._cache) > 16:
                self._cache.clear()
            book = self._cache[key] = build(self.store, self.product, office)
        return book
