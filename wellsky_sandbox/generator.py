"""Deterministic synthetic tenant data: same seed and scale -> the same logical records, byte for byte.

Records are *logical*: field names and value conventions are the canonical ones documented in
``docs/architecture.md`` (the sandbox never imports the connector's models; it plays the vendor and must be
an independent implementation). Ids are already spelled the way the tenant's product spells them, so one
generator serves every product; ``render.py`` turns a logical record into the product's native JSON.

Everything is synthetic: names come from short public lists, identifiers are random digits, no real person
is described.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

PRODUCTS = ("home_health", "hospice", "personal_care")
ENTITIES = (
    "patients",
    "practitioners",
    "appointments",
    "encounters",
    "care_plans",
    "authorizations",
    "referrals",
    "coverage",
)
NOT_HELD: dict[str, dict[str, object]] = {
    "patients": {"status_code": None, "deceased": None, "deceased_at": None, "race": [], "ethnicity": [],
                 "merged_ids": []},
    "practitioners": {"status_code": None},
    "appointments": {"series_id": None, "tasks": [], "location_name": None},
    "encounters": {"encounter_class": None, "encounter_type": None, "pay_rates": [], "bill_rates": [],
                   "task_logs": []},
    "care_plans": {"activities": []},
    "authorizations": {"authorization_number": None, "items": []},
}
"""Canonical fields this emulated tenant does not hold in its logical data (other systems' standard FHIR and HL7
feeds, or Home Connect, carry them); the truth endpoint reports them empty, and every truth record carries an empty
``data_quality`` list: the tenant's own data is complete."""


def truth_record(entity: str, rec: dict[str, object]) -> dict[str, object]:
    """A logical record as the test oracle publishes it: complete canonical shape, no data-quality flags."""
    defaults = {k: (list(v) if isinstance(v, list) else v) for k, v in NOT_HELD.get(entity, {}).items()}
    return {**defaults, "data_quality": [], **rec}  # what a record holds itself always wins


FIELDS: dict[str, tuple[str, ...]] = {
    "patients": (
        "id",
        "mrn",
        "medicare_mbi",
        "medicaid_id",
        "first_name",
        "last_name",
        "birth_date",
        "gender",
        "phone",
        "address",
        "status",
        "coverage",
        "updated_at",
    ),
    "practitioners": (
        "id",
        "npi",
        "first_name",
        "last_name",
        "credentials",
        "roles",
        "disciplines",
        "specialties",
        "active",
        "updated_at",
    ),
    "appointments": (
        "id",
        "external_id",
        "patient_id",
        "practitioner_id",
        "payer_id",
        "start",
        "end",
        "status",
        "discipline",
        "service_code",
        "location",
        "updated_at",
    ),
    "encounters": (
        "id",
        "patient_id",
        "practitioner_id",
        "appointment_id",
        "start",
        "end",
        "discipline",
        "status",
        "diagnoses",
        "procedures",
        "vitals",
        "note_summary",
        "finalized",
        "updated_at",
    ),
    "care_plans": (
        "id",
        "patient_id",
        "status",
        "period_start",
        "period_end",
        "goals",
        "interventions",
        "outcomes",
        "updated_at",
    ),
    "authorizations": (
        "id",
        "patient_id",
        "payer_id",
        "payer_name",
        "member_id",
        "service_codes",
        "unit_type",
        "rounding",
        "units_authorized",
        "units_used",
        "start_date",
        "end_date",
        "status",
        "updated_at",
    ),
    "referrals": (
        "id",
        "patient_id",
        "source_name",
        "source_npi",
        "reason",
        "priority",
        "status",
        "received_date",
        "accepted_date",
        "updated_at",
    ),
    "coverage": (
        "id",
        "patient_id",
        "payer_id",
        "payer_name",
        "plan_name",
        "member_id",
        "order",
        "period_start",
        "period_end",
        "status",
        "updated_at",
    ),
}
"""Every logical field of each entity, in a stable order (write validation, export columns, docs)."""

SCALES = {"XS": 100, "S": 1_000, "M": 5_000, "L": 100_000}
"""Patients per named scale; about ten records per patient in all."""

DATA_END = datetime(2026, 11, 1, tzinfo=UTC)
"""Generated history ends here; later changes (writes, /_sandbox/advance) use the wall clock."""
HISTORY_DAYS = 730

_ID_PREFIX = {
    "patients": "P",
    "practitioners": "C",
    "appointments": "V",
    "encounters": "E",
    "care_plans": "CP",
    "authorizations": "A",
    "referrals": "R",
    "coverage": "CV",
}
_PERSONAL_CARE_ID_BASE = {
    "patients": 1_000_000,
    "practitioners": 2_000_000,
    "appointments": 10_000_000,
    "encounters": 50_000_000,
    "care_plans": 80_000_000,
    "authorizations": 81_000_000,
    "referrals": 82_000_000,
    "coverage": 83_000_000,
}
"""Personal care (Home Connect) ids are integers in disjoint ranges per entity, as in the real API, where a
care-log id is never also a shift id (clock-out against a shift id answers 404)."""
_UUID_NS = uuid.UUID("6f1d7c0e-8a54-4a1e-9b7e-2f3c1d0e5a77")

FIRST_NAMES = [
    "Ada",
    "Alma",
    "Amos",
    "Ansel",
    "Bea",
    "Benny",
    "Carla",
    "Cecil",
    "Clara",
    "Dale",
    "Delia",
    "Doris",
    "Earl",
    "Edna",
    "Elmer",
    "Emmett",
    "Esther",
    "Ethel",
    "Fern",
    "Floyd",
    "Frances",
    "Gail",
    "Glenn",
    "Hazel",
    "Herbert",
    "Ida",
    "Irene",
    "Iris",
    "Jack",
    "Jean",
    "June",
    "Leon",
    "Lois",
    "Lorraine",
    "Mabel",
    "Marvin",
    "Mavis",
    "Milton",
    "Myra",
    "Nell",
    "Norma",
    "Otis",
    "Pearl",
    "Ralph",
    "Rosa",
    "Ruth",
    "Stella",
    "Sylvia",
    "Vera",
    "Virgil",
    "Wanda",
    "Wilma",
]
MALE_NAMES = (
    "Amos", "Ansel", "Benny", "Cecil", "Dale", "Earl", "Elmer", "Emmett", "Floyd", "Glenn", "Herbert", "Jack", "Leon",
    "Marvin", "Milton", "Otis", "Ralph", "Virgil",
)
FEMALE_NAMES = tuple(name for name in FIRST_NAMES if name not in MALE_NAMES)


def gendered_name(name: str, gender: str | None) -> str:
    """A first name consistent with ``gender``: the drawn name if it fits, else the name at the same position of
    that gender's list (no extra random draw, so every other generated value stays as it was)."""
    position = FIRST_NAMES.index(name) if name in FIRST_NAMES else 0
    if gender == "male" and name not in MALE_NAMES:
        return MALE_NAMES[position % len(MALE_NAMES)]
    if gender == "female" and name in MALE_NAMES:
        return FEMALE_NAMES[position % len(FEMALE_NAMES)]
    return name


def gender_of(name: str) -> str:
    """The gender a first name of these lists reads as (caregivers carry no gender in the canonical model)."""
    return "male" if name in MALE_NAMES else "female"

LAST_NAMES = [
    "Abbott",
    "Barker",
    "Bishop",
    "Blake",
    "Boone",
    "Bowers",
    "Carver",
    "Dalton",
    "Dawson",
    "Delgado",
    "Drummond",
    "Ellison",
    "Farrow",
    "Fenwick",
    "Garrison",
    "Hale",
    "Harlow",
    "Holt",
    "Ingram",
    "Jarvis",
    "Keller",
    "Langley",
    "Lowell",
    "Madsen",
    "Mercer",
    "Nash",
    "Ocampo",
    "Pruitt",
    "Quincy",
    "Ramsey",
    "Rowe",
    "Sandoval",
    "Sutter",
    "Thorne",
    "Tillman",
    "Underhill",
    "Vance",
    "Whitlock",
    "Yates",
    "Zimmer",
]
STREETS = [
    "Oak",
    "Maple",
    "Cedar",
    "Elm",
    "Pine",
    "Birch",
    "Willow",
    "Hickory",
    "Walnut",
    "Chestnut",
    "Spruce",
    "Aspen",
]
CITIES = (
    ("Dallas", "TX", "752"),
    ("Memphis", "TN", "381"),
    ("Tulsa", "OK", "741"),
    ("Omaha", "NE", "681"),
    ("Little Rock", "AR", "722"),
    ("Wichita", "KS", "672"),
    ("Jackson", "MS", "392"),
    ("Des Moines", "IA", "503"),
)
PAYERS = (
    ("MCR", "Medicare Part A"),
    ("MCD-TX", "Texas Medicaid"),
    ("HUM", "Humana Medicare Advantage"),
    ("AET", "Aetna Better Health"),
    ("BCBS", "Blue Cross Blue Shield"),
    ("VA", "VA Community Care"),
)
DISCIPLINES = ("SN", "PT", "OT", "ST", "MSW", "HHA")
SERVICE_CODE = {"SN": "G0299", "PT": "G0151", "OT": "G0152", "ST": "G0153", "MSW": "G0155", "HHA": "G0156"}
PERSONAL_CARE_CODE = "T1019"
PERSONAL_CARE_CREDENTIALS = ("HHA", "HHA", "HHA", "CNA", "CNA", "LPN")
"""A personal-care agency's caregivers: mostly home health aides, some CNAs, a few LPNs (one draw, weighted)."""
CREDENTIALS = {
    "SN": ("RN", "LPN"),
    "PT": ("PT", "PTA"),
    "OT": ("OTR", "COTA"),
    "ST": ("SLP",),
    "MSW": ("MSW",),
    "HHA": ("HHA", "CNA"),
}
DIAGNOSES = (
    ("I50.9", "Heart failure, unspecified"),
    ("J44.9", "Chronic obstructive pulmonary disease"),
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("I10", "Essential hypertension"),
    ("M17.11", "Primary osteoarthritis, right knee"),
    ("Z96.651", "Presence of right artificial knee joint"),
    ("G30.9", "Alzheimer's disease, unspecified"),
    ("C34.90", "Malignant neoplasm of lung"),
    ("N18.4", "Chronic kidney disease, stage 4"),
    ("I63.9", "Cerebral infarction, unspecified"),
)
GOALS = (
    "Independent with home exercise program",
    "Safe ambulation 150 ft with walker",
    "Medication adherence 100%",
    "No falls in the episode",
    "Pain at or below 3/10",
    "Caregiver independent with wound care",
)
REFERRAL_SOURCES = (
    "Baptist Memorial Hospital",
    "St. Luke's Medical Center",
    "Dr. Hollis Family Practice",
    "Mercy Rehab Center",
    "Riverside Cardiology",
)
REFERRAL_REASONS = (
    "Post-surgical rehabilitation",
    "CHF exacerbation follow-up",
    "Wound care",
    "Medication management",
    "End-of-life care",
    "Assistance with activities of daily living",
)


def scale_to_patients(scale: str | int) -> int:
    """Accept a named scale (XS/S/M/L) or a patient count."""
    if isinstance(scale, int) or str(scale).isdigit():
        n = int(scale)
    elif str(scale).upper() in SCALES:
        n = SCALES[str(scale).upper()]
    else:
        raise ValueError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)} or a number of patients")
    if n < 1:
        raise ValueError("scale must be at least 1 patient")
    return n


def iso(ts: datetime) -> str:
    """Logical timestamp spelling: UTC, whole seconds, ``Z``."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class IdMinter:
    """Spells the n-th id of an entity the way the product does."""

    product: str
    seed: int
    counters: dict[str, int] = field(default_factory=dict)

    def spell(self, entity: str, n: int) -> str:
        if self.product == "home_health":
            return f"HH-{_ID_PREFIX[entity]}{n:06d}"
        if self.product == "hospice":
            return str(uuid.uuid5(_UUID_NS, f"{self.seed}:{entity}:{n}"))
        return str(_PERSONAL_CARE_ID_BASE[entity] + n)

    def next(self, entity: str) -> str:
        n = self.counters.get(entity, 0) + 1
        self.counters[entity] = n
        return self.spell(entity, n)


class Generator:
    """Builds a tenant's records patient by patient, so memory stays flat at any scale."""

    def __init__(self, product: str, seed: int = 42) -> None:
        if product not in PRODUCTS:
            raise ValueError(f"unknown product {product!r}: use one of {', '.join(PRODUCTS)}")
        self.product = product
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = IdMinter(product, seed)
        self.practitioners: list[dict[str, Any]] = []

    # -- helpers --------------------------------------------------------------------------------------
    def _when(self, start_days_ago: float, end_days_ago: float = 0.0) -> datetime:
        lo = DATA_END - timedelta(days=start_days_ago)
        hi = DATA_END - timedelta(days=end_days_ago)
        span = max(1, int((hi - lo).total_seconds()))
        return lo + timedelta(seconds=self.rng.randrange(span))

    def _updated_after(self, ts: datetime) -> str:
        """An updated_at between ``ts`` and the end of history (whole seconds)."""
        ts = min(ts, DATA_END - timedelta(seconds=1))
        span = max(1, int((DATA_END - ts).total_seconds()))
        return iso(ts + timedelta(seconds=self.rng.randrange(span)))

    def address(self) -> dict[str, Any]:
        city, state, zip3 = self.rng.choice(CITIES)
        line2 = f"Apt {self.rng.randint(1, 40)}" if self.rng.random() < 0.2 else None
        return {
            "line1": f"{self.rng.randint(100, 9999)} {self.rng.choice(STREETS)} St",
            "line2": line2,
            "city": city,
            "state": state,
            "postal_code": f"{zip3}{self.rng.randint(0, 99):02d}",
        }

    def _digits(self, n: int) -> str:
        return "".join(str(self.rng.randrange(10)) for _ in range(n))

    def _mbi(self) -> str:
        letters = "ACDEFGHJKMNPQRTUVWXY"
        r = self.rng
        return (
            f"{r.randint(1, 9)}{r.choice(letters)}{r.choice(letters)}{r.randint(0, 9)}-{r.choice(letters)}"
            f"{r.choice(letters)}{r.randint(0, 9)}-{r.choice(letters)}{r.choice(letters)}{r.randint(10, 99)}"
        )

    # -- entities -------------------------------------------------------------------------------------
    def practitioner(self) -> dict[str, Any]:
        r = self.rng
        disc = "HHA" if self.product == "personal_care" else r.choice(DISCIPLINES)
        created = self._when(HISTORY_DAYS, 30)
        rec = {
            "id": self.ids.next("practitioners"),
            "npi": None if disc == "HHA" else "1" + self._digits(9),
            "first_name": r.choice(FIRST_NAMES),
            "last_name": r.choice(LAST_NAMES),
            "credentials": r.choice(
                PERSONAL_CARE_CREDENTIALS if self.product == "personal_care" else CREDENTIALS[disc]
            ),
            "roles": ["aide"]
            if disc == "HHA"
            else (["clinician", "case_manager"] if r.random() < 0.2 else ["clinician"]),
            "disciplines": [disc],
            "specialties": ["hospice and palliative"] if self.product == "hospice" and disc == "SN" else [],
            "active": r.random() > 0.08,
            "updated_at": self._updated_after(created),
        }
        self.practitioners.append(rec)
        return rec

    def patient_bundle(self, practitioners_per_patient: float = 0.05) -> Iterator[tuple[str, dict[str, Any]]]:
        """One patient and everything hanging off them, as (entity, logical record) pairs."""
        r = self.rng
        if not self.practitioners or r.random() < practitioners_per_patient:
            yield "practitioners", self.practitioner()
        admitted = self._when(HISTORY_DAYS, 20)
        pid = self.ids.next("patients")
        payers = r.sample(PAYERS, k=1 if r.random() < 0.7 else 2)
        coverage = [
            {"payer_id": pay_id, "payer_name": pay_name, "member_id": self._member_id(pay_id), "order": i + 1}
            for i, (pay_id, pay_name) in enumerate(payers)
        ]
        status = r.choices(("pending", "active", "discharged", "inactive"), (1, 6, 3, 1))[0]
        patient = {
            "id": pid,
            "mrn": f"MR{r.randint(10, 99)}{self.ids.counters['patients']:07d}",
            "medicare_mbi": self._mbi() if any(p[0] == "MCR" for p in payers) else None,
            "medicaid_id": self._digits(9) if any(p[0].startswith("MCD") for p in payers) else None,
            "first_name": r.choice(FIRST_NAMES),
            "last_name": r.choice(LAST_NAMES),
            "birth_date": date(r.randint(1925, 1965), r.randint(1, 12), r.randint(1, 28)).isoformat(),
            "gender": r.choices(("female", "male", "other", "unknown"), (55, 43, 1, 1))[0],
            "phone": f"({r.randint(201, 989)}) 555-{r.randint(0, 9999):04d}" if r.random() < 0.9 else None,
            "address": self.address(),
            "status": status,
            "coverage": coverage,
            "updated_at": self._updated_after(admitted),
        }
        patient["first_name"] = gendered_name(str(patient["first_name"]), str(patient["gender"]))
        yield "patients", patient

        for cov in coverage:
            yield (
                "coverage",
                {
                    "id": self.ids.next("coverage"),
                    "patient_id": pid,
                    "payer_id": cov["payer_id"],
                    "payer_name": cov["payer_name"],
                    "plan_name": cov["payer_name"] + (" HMO" if r.random() < 0.3 else ""),
                    "member_id": cov["member_id"],
                    "order": cov["order"],
                    "period_start": (admitted.date() - timedelta(days=r.randint(0, 365))).isoformat(),
                    "period_end": None if r.random() < 0.8 else (admitted.date() + timedelta(days=365)).isoformat(),
                    "status": "active" if r.random() < 0.9 else "cancelled",
                    "updated_at": self._updated_after(admitted),
                },
            )

        if r.random() < 0.6:
            yield "referrals", self.referral(pid, admitted)

        auths = []
        for _ in range(self._count(0.8)):
            auth = self.authorization(pid, coverage[0], admitted)
            auths.append(auth)
            yield "authorizations", auth

        if r.random() < 0.5:
            yield "care_plans", self.care_plan(pid, admitted)

        previous: dict[str, Any] | None = None
        for _ in range(self._count(4.0)):
            appt = self.appointment(pid, coverage[0]["payer_id"], admitted)
            if self.product == "personal_care" and previous is not None and r.random() < 0.5:
                self._recur(previous, appt)
            previous = appt
            yield "appointments", appt
            if appt["status"] == "completed" and r.random() < 0.62:
                yield "encounters", self.encounter(appt)

    def _count(self, mean: float) -> int:
        """A small non-negative count with the given mean (binomial-ish, deterministic)."""
        whole = int(mean)
        return whole + (1 if self.rng.random() < mean - whole else 0) + self.rng.choice((-1, 0, 1)) * (whole > 1)

    def _member_id(self, payer_id: str) -> str:
        return f"{payer_id[:3]}{self._digits(9)}"

    def _practitioner_for(self, discipline: str | None = None) -> dict[str, Any]:
        pool = self.practitioners[-50:]
        if discipline:
            matching = [p for p in pool if discipline in p["disciplines"]]
            if matching:
                return self.rng.choice(matching)
        return self.rng.choice(pool)

    def referral(self, pid: str, admitted: datetime) -> dict[str, Any]:
        r = self.rng
        received = admitted - timedelta(days=r.randint(1, 10))
        status = r.choices(("received", "accepted", "declined", "pending"), (1, 7, 1, 1))[0]
        return {
            "id": self.ids.next("referrals"),
            "patient_id": pid,
            "source_name": r.choice(REFERRAL_SOURCES),
            "source_npi": "1" + self._digits(9) if r.random() < 0.8 else None,
            "reason": r.choice(REFERRAL_REASONS),
            "priority": r.choices(("routine", "urgent", "stat"), (8, 2, 1))[0],
            "status": status,
            "received_date": received.date().isoformat(),
            "accepted_date": (received + timedelta(days=r.randint(0, 3))).date().isoformat()
            if status == "accepted"
            else None,
            "updated_at": self._updated_after(received),
        }

    def authorization(self, pid: str, cov: dict[str, Any], admitted: datetime) -> dict[str, Any]:
        r = self.rng
        start = admitted.date() - timedelta(days=r.randint(0, 15))
        if self.product == "personal_care":
            codes, unit_type = [PERSONAL_CARE_CODE], r.choice(("hour", "15min"))
            authorized = 160 if unit_type == "hour" else 640
        else:
            codes = sorted(r.sample(DISCIPLINES[:4], k=r.randint(1, 3)))
            unit_type, authorized = "visit", r.choice((12, 18, 24, 30))
        used = r.randint(0, authorized)
        end = start + timedelta(days=r.choice((60, 90, 180)))
        return {
            "id": self.ids.next("authorizations"),
            "patient_id": pid,
            "payer_id": cov["payer_id"],
            "payer_name": cov["payer_name"],
            "member_id": cov["member_id"],
            "service_codes": codes,
            "unit_type": unit_type,
            "rounding": r.choice(("up", "down", "nearest")) if unit_type != "visit" else "nearest",
            "units_authorized": authorized,
            "units_used": used,
            "start_date": start.isoformat(),
            "end_date": end.isoformat(),
            "status": "active" if end >= DATA_END.date() else r.choice(("expired", "expired", "denied")),
            "updated_at": self._updated_after(datetime.combine(start, datetime.min.time(), UTC)),
        }

    def care_plan(self, pid: str, admitted: datetime) -> dict[str, Any]:
        r = self.rng
        start = admitted.date()
        goals = [
            {
                "description": g,
                "status": r.choice(("proposed", "in_progress", "achieved", "not_achieved")),
                "target_date": (start + timedelta(days=r.randint(14, 60))).isoformat() if r.random() < 0.7 else None,
            }
            for g in r.sample(GOALS, k=r.randint(1, 3))
        ]
        disciplines = ["HHA"] if self.product == "personal_care" else r.sample(DISCIPLINES, k=r.randint(1, 3))
        interventions = [
            {
                "description": f"{d} visits per plan of care",
                "discipline": d,
                "frequency": r.choice(("1W4", "2W4", "3W2", "1W8", None)),
            }
            for d in disciplines
        ]
        outcomes = (
            [
                {
                    "description": goals[0]["description"],
                    "achieved": r.random() < 0.6,
                    "recorded_on": (start + timedelta(days=r.randint(10, 60))).isoformat(),
                }
            ]
            if r.random() < 0.4
            else []
        )
        return {
            "id": self.ids.next("care_plans"),
            "patient_id": pid,
            "status": r.choices(("draft", "active", "completed", "revoked"), (1, 5, 3, 1))[0],
            "period_start": start.isoformat(),
            "period_end": (start + timedelta(days=60)).isoformat() if r.random() < 0.8 else None,
            "goals": goals,
            "interventions": interventions,
            "outcomes": outcomes,
            "updated_at": self._updated_after(admitted),
        }

    def appointment(self, pid: str, payer_id: str, admitted: datetime) -> dict[str, Any]:
        r = self.rng
        if self.product == "personal_care":
            discipline, code = "HHA", PERSONAL_CARE_CODE
            hours = r.choice((2, 3, 4, 4, 6, 8))
        else:
            discipline = r.choice(DISCIPLINES)
            code, hours = SERVICE_CODE[discipline], 1
        practitioner = self._practitioner_for(discipline)
        day = admitted + timedelta(days=r.randint(0, 120))
        start = day.replace(hour=r.randint(13, 22), minute=r.choice((0, 15, 30, 45)), second=0)
        end = start + timedelta(hours=hours, minutes=r.choice((0, 0, 15, 30)))
        status = (
            "scheduled"
            if start > DATA_END
            else r.choices(("completed", "cancelled", "missed", "scheduled"), (8, 1, 1, 1))[0]
        )
        if status == "missed" and self.product == "personal_care":
            status = "cancelled"  # Home Connect shift statuses are SCHEDULED, COMPLETED and CANCELLED only
        created = min(start, DATA_END) - timedelta(days=r.randint(1, 14))
        return {
            "id": self.ids.next("appointments"),
            "external_id": None,
            "patient_id": pid,
            "practitioner_id": practitioner["id"],
            "payer_id": payer_id,
            "start": iso(start),
            "end": iso(end),
            "status": status,
            "discipline": discipline,
            "service_code": code,
            "location": None,
            "updated_at": self._updated_after(created),
        }

    def _recur(self, previous: dict[str, Any], appt: dict[str, Any]) -> None:
        """Make ``appt`` next week's occurrence of ``previous``'s recurring shift (Home Connect shows one id).

        The logical record keeps its own id; ``_series`` (private, never in truth) names the series' first id.
        """
        start, end = parse_iso(previous["start"]) + timedelta(days=7), parse_iso(previous["end"]) + timedelta(days=7)
        appt.update(start=iso(start), end=iso(end), practitioner_id=previous["practitioner_id"])
        appt["_series"] = previous.get("_series", previous["id"])
        if start > DATA_END:
            appt["status"] = "scheduled"
        elif appt["status"] == "scheduled":
            appt["status"] = "completed"

    def encounter(self, appt: dict[str, Any]) -> dict[str, Any]:
        r = self.rng
        dx = r.sample(DIAGNOSES, k=r.randint(1, 3))
        start = parse_iso(appt["start"])
        vitals = (
            {
                "temperature_f": round(r.uniform(97.0, 100.4), 1),
                "pulse_bpm": r.randint(55, 110),
                "respiratory_rate": r.randint(12, 24),
                "bp_systolic": r.randint(100, 170),
                "bp_diastolic": r.randint(60, 100),
                "spo2_pct": r.randint(88, 100),
                "weight_lb": round(r.uniform(95, 260), 1) if r.random() < 0.5 else None,
            }
            if appt["discipline"] in ("SN", "PT")
            else None
        )
        finalized = r.random() < 0.85
        return {
            "id": self.ids.next("encounters"),
            "patient_id": appt["patient_id"],
            "practitioner_id": appt["practitioner_id"],
            "appointment_id": appt["id"],
            "start": appt["start"],
            "end": appt["end"],
            "discipline": appt["discipline"],
            "status": "completed" if finalized else "in_progress",
            "diagnoses": [{"code": c, "description": d, "rank": i + 1} for i, (c, d) in enumerate(dx)],
            "procedures": [{"code": appt["service_code"], "system": "HCPCS", "description": None}],
            "vitals": vitals,
            "note_summary": r.choice(
                (
                    "Patient tolerated visit well.",
                    "Reviewed medications; no changes.",
                    "Wound healing, no signs of infection.",
                    "Caregiver instructed.",
                    "Vitals within parameters.",
                )
            ),
            "finalized": finalized,
            "updated_at": self._updated_after(start),
        }

    def generate(self, patients: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """All records of a tenant with ``patients`` patients."""
        target_practitioners = max(5, round(patients * 0.05))
        for _ in range(min(5, target_practitioners)):
            yield "practitioners", self.practitioner()
        ratio = (target_practitioners - 5) / patients
        for _ in range(patients):
            yield from self.patient_bundle(ratio)
