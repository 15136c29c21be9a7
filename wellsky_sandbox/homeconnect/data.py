"""Home Connect data the canonical model has no field for: agency, locations, related persons, task logs, rates.

Everything is deterministic per seed: per-record extras (client status code, location, profile tags, rates)
are drawn from an RNG keyed by (seed, kind, id), and the collections (related persons, task logs) are
materialised once into the tenant's SQLite file (table ``hc_objects``), so writes persist across restarts.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson

from ..generator import CITIES, FIRST_NAMES, LAST_NAMES, STREETS, iso, parse_iso
from ..store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS hc_objects (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    parent TEXT,
    updated INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS hc_objects_by_parent ON hc_objects (kind, parent);
CREATE INDEX IF NOT EXISTS hc_objects_by_updated ON hc_objects (kind, updated, id);
DROP INDEX IF EXISTS hc_appointments_by_caregiver;
CREATE INDEX IF NOT EXISTS hc_records_by_caregiver
    ON records (entity, json_extract(CAST(body AS TEXT), '$.practitioner_id'));
CREATE INDEX IF NOT EXISTS hc_records_by_series ON records (entity, json_extract(CAST(body AS TEXT), '$._series'));
"""

CLIENT_STATUS = {
    1: "New Lead",
    10: "Initial Phone Call",
    20: "Assessment Scheduled",
    30: "Assessment Performed",
    40: "Wants to Meet Candidates",
    50: "Needs Contract",
    60: "Expecting Signature",
    70: "Ready to Schedule",
    80: "Care Started",
    90: "Closed-Lost",
    100: "Closed-Won",
}
APPLICANT_STATUS = {
    10: "New Applicant",
    15: "Phone Screen",
    18: "Interview Scheduled",
    20: "Interview Completed",
    25: "Conditional Offer",
    30: "Skills",
    40: "Background",
    50: "References",
    60: "Offer",
    70: "Paperwork",
    80: "Orientation",
    90: "Not Hired",
    100: "Hired",
    110: "Application Completed",
}
PROSPECT_CODES = (1, 10, 20, 30, 40, 50, 60, 70)
SKILL_TAGS = {45: "Dementia Care", 67: "Hoyer Lift", 80: "Spanish Speaking", 91: "Pet Friendly", 102: "Smoker OK"}
CREDENTIAL_TAGS = {11: "HHA", 12: "CNA", 13: "LPN"}
"""Agencies record a caregiver's certification as a profile tag (modeled: the API has no credential field)."""
PROFILE_TAGS = {**CREDENTIAL_TAGS, **SKILL_TAGS}
RELATIONSHIPS = {
    "DAU": "Daughter",
    "SON": "Son",
    "SPS": "Spouse",
    "SIS": "Sister",
    "BRO": "Brother",
    "FRND": "Friend",
    "NBOR": "Neighbor",
    "SOCIAL_WORKER": "Social Worker",
}
MARITAL = {"M": "Married", "S": "Single", "W": "Widowed", "D": "Divorced", "U": "Unmarried", "UNK": "Unknown"}
TASKS = (
    ("Bathing", "Assist with shower or sponge bath"),
    ("Meal Preparation", "Prepare lunch and log intake"),
    ("Medication Reminder", "Remind client of scheduled medications"),
    ("Light Housekeeping", "Tidy kitchen and living areas"),
    ("Companionship", "Conversation, games, walk"),
    ("Transfers", "Assist bed-to-chair transfers"),
)
RATE_METHODS = ("Hourly", "perVisit", "liveIn")
CONTACT_ID_BASE = 7_000_000
TASKLOG_ID_BASE = 90_000_000


def rng_for(seed: int, kind: str, rec_id: str) -> random.Random:
    """A per-record RNG: the same (seed, kind, id) always draws the same values, at any scale."""
    return random.Random(f"{seed}:{kind}:{rec_id}")


def agency_id(seed: int) -> str:
    return str(10_000 + (seed * 7919) % 90_000)


def locations(seed: int) -> list[dict[str, Any]]:
    """The agency's offices (Home Connect ``Location``; field shapes are modeled, see docs)."""
    out = []
    for i, (city, state, zip3) in enumerate(CITIES[:3]):
        rng = rng_for(seed, "location", str(i))
        out.append(
            {
                "resourceType": "Location",
                "id": str(301 + i),
                "name": f"{city} Office",
                "status": "active",
                "address": {
                    "line": [f"{rng.randint(100, 9999)} {rng.choice(STREETS)} Ave"],
                    "city": city,
                    "state": state,
                    "postalCode": f"{zip3}{rng.randint(0, 99):02d}",
                },
                "telecom": [{"system": "phone", "value": _phone(rng), "use": "work"}],
            }
        )
    return out


def _phone(rng: random.Random) -> str:
    """A valid Home Connect phone: 10 digits, first digit 2-9."""
    return f"{rng.randint(201, 989)}555{rng.randint(0, 9999):04d}"


class Extras:
    """Per-record Home Connect extras and the ``hc_objects`` collections of one tenant."""

    def __init__(self, store: Store, seed: int) -> None:
        self.store = store
        self.seed = seed
        self.agency_id = agency_id(seed)
        self.all_locations = locations(seed)
        """Every office the agency ever had: records keep the office they were assigned to, even a closed one."""
        with store.lock:
            store.db.executescript(SCHEMA)
        if store.meta("homeconnect_seeded") is None:
            self._materialise()

    @property
    def locations(self) -> list[dict[str, Any]]:
        """The open offices (``POST /v1/locations/_search`` lists these): a closed office is gone from the list."""
        closed = set(orjson.loads(self.store.meta("homeconnect_closed_locations") or "[]"))
        return [loc for loc in self.all_locations if loc["id"] not in closed]

    def close_location(self, location_id: str) -> None:
        """An office closed (an agency consolidating branches): deleted from the location list for good."""
        closed = orjson.loads(self.store.meta("homeconnect_closed_locations") or "[]")
        self.store.set_meta("homeconnect_closed_locations", orjson.dumps(sorted({*closed, location_id})).decode())

    # -- deterministic per-record extras --------------------------------------------------------------
    def location_id(self, kind: str, rec_id: str) -> str:
        return rng_for(self.seed, f"{kind}-location", rec_id).choice(self.all_locations)["id"]

    def client_code(self, rec: dict[str, Any]) -> tuple[int, bool, bool]:
        """(status code, isClient, active) of a canonical patient; a code written through the API wins."""
        status = rec["status"]
        active, is_client = status in ("pending", "active"), status in ("active", "discharged")
        stored = rec.get("_hc_status")
        if isinstance(stored, int) and canonical_client_status(stored, active) == status:
            return stored, is_client, active
        rng = rng_for(self.seed, "client-status", rec["id"])
        if status == "pending":
            return rng.choice(PROSPECT_CODES), is_client, active
        if status == "inactive":
            return 90, is_client, active
        return (80 if rng.random() < 0.85 else 100), is_client, active

    def caregiver_code(self, rec: dict[str, Any]) -> tuple[int, bool]:
        """(applicant status code, isHired) of a canonical practitioner."""
        stored = rec.get("_hc_status")
        if isinstance(stored, int) and stored in APPLICANT_STATUS:
            return stored, stored == 100
        if rec["active"]:
            return 100, True
        rng = rng_for(self.seed, "applicant-status", rec["id"])
        if rng.random() < 0.5:
            return rng.choice((10, 15, 18, 20, 25, 30, 40, 50, 60, 70, 80, 90, 110)), False
        return 100, True

    def profile_tags(self, rec: dict[str, Any]) -> str:
        """The caregiver's credential tag (from the generated credentials) and 0-2 skill tags, deterministic."""
        rng = rng_for(self.seed, "profile-tags", rec["id"])
        skills = rng.sample(sorted(SKILL_TAGS), k=rng.randint(0, 2))
        credential = [t for t, name in CREDENTIAL_TAGS.items() if name == rec.get("credentials")]
        return ",".join(str(t) for t in sorted(credential + skills))

    def person_extras(self, kind: str, rec_id: str) -> dict[str, Any]:
        """Phone, address, gender, birth date for people the canonical model keeps fewer fields on."""
        rng = rng_for(self.seed, f"{kind}-person", rec_id)
        city, state, zip3 = rng.choice(CITIES)
        return {
            "phone": _phone(rng),
            "gender": rng.choice(("female", "female", "male")),
            "birthDate": f"{rng.randint(1960, 2002)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "address": {
                "use": "home",
                "line": [f"{rng.randint(100, 9999)} {rng.choice(STREETS)} St"],
                "city": city,
                "state": state,
                "postalCode": f"{zip3}{rng.randint(0, 99):02d}",
            },
            "marital": rng.choice(sorted(MARITAL)),
        }

    def created(self, kind: str, rec: dict[str, Any]) -> str:
        """When a record was created: stored for API-created records, else a fixed time before its update."""
        if rec.get("_created"):
            return rec["_created"]
        rng = rng_for(self.seed, f"{kind}-created", rec["id"])
        return iso(parse_iso(rec["updated_at"]).replace(microsecond=0) - timedelta(days=rng.randint(0, 400)))

    def rates(self, enc_id: str) -> dict[str, Any]:
        rng = rng_for(self.seed, "rates", enc_id)
        method = rng.choices(RATE_METHODS, (8, 1, 1))[0]
        pay = round(rng.uniform(14, 22), 2) if method == "Hourly" else round(rng.uniform(60, 250), 2)
        bill = round(pay * rng.uniform(1.4, 1.8), 2)
        return {
            "payRate": [{"id": rng.randint(100, 199), "amount": pay, "method": method}],
            "billRate": [{"id": rng.randint(200, 299), "amount": bill, "method": method}],
        }

    # -- collections ------------------------------------------------------------------------------------
    def _materialise(self) -> None:
        """Related persons for every client and task logs for every care log (once per data file)."""
        rows: list[tuple[str, str, str | None, int, bytes]] = []
        contact_n = 0
        for patient in self.store.iter_all("patients"):
            rng = rng_for(self.seed, "contacts", patient["id"])
            for _ in range(rng.choice((0, 1, 1, 2, 3))):
                contact_n += 1
                rows.append(self._contact_row(rng, CONTACT_ID_BASE + contact_n, patient))
        log_n = 0
        for enc in self.store.iter_all("encounters"):
            rng = rng_for(self.seed, "tasklogs", enc["id"])
            for title, description in rng.sample(TASKS, k=rng.randint(1, 3)):
                log_n += 1
                done = rng.random() < 0.85
                body = {
                    "id": TASKLOG_ID_BASE + log_n,
                    "title": title,
                    "description": description,
                    "status": "COMPLETE" if done else "NOT_COMPLETE",
                    "comment": None if done else "Client declined today",
                    "recorded": (enc.get("end") or enc["start"]).replace("Z", "+00:00"),
                }
                rows.append(
                    (
                        "tasklog",
                        str(body["id"]),
                        enc["id"],
                        int(parse_iso(enc["updated_at"]).timestamp()),
                        orjson.dumps(body),
                    )
                )
        with self.store.lock:
            self.store.db.execute("BEGIN")
            self.store.db.executemany("INSERT OR REPLACE INTO hc_objects VALUES (?, ?, ?, ?, ?)", rows)
            self.store.db.execute("INSERT OR REPLACE INTO meta VALUES ('homeconnect_seeded', ?)", (str(len(rows)),))
            counters = {
                "relatedperson": CONTACT_ID_BASE + contact_n,
                "tasklog": TASKLOG_ID_BASE + log_n,
                "subscription": 0,
                "series": 0,
            }
            self.store.db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('homeconnect_counters', ?)", (orjson.dumps(counters).decode(),)
            )
            self.store.db.execute("COMMIT")

    def _contact_row(
        self, rng: random.Random, n: int, patient: dict[str, Any]
    ) -> tuple[str, str, str | None, int, bytes]:
        code = rng.choice(sorted(RELATIONSHIPS))
        updated = patient["updated_at"]
        city, state, zip3 = rng.choice(CITIES)
        body = {
            "resourceType": "RelatedPerson",
            "id": str(n),
            "patient": {"reference": f"Patient/{patient['id']}"},
            "name": [
                {
                    "given": [rng.choice(FIRST_NAMES)],
                    "family": patient["last_name"]
                    if code in ("DAU", "SON", "SPS", "SIS", "BRO")
                    else rng.choice(LAST_NAMES),
                }
            ],
            "relationship": {"coding": [{"code": code, "display": RELATIONSHIPS[code]}]},
            "telecom": [{"system": "phone", "value": _phone(rng), "use": "mobile"}],
            "address": [
                {
                    "use": "home",
                    "line": [f"{rng.randint(100, 9999)} {rng.choice(STREETS)} St"],
                    "city": city,
                    "state": state,
                    "postalCode": f"{zip3}{rng.randint(0, 99):02d}",
                }
            ],
            "emergencyContact": rng.random() < 0.5,
            "primaryContact": rng.random() < 0.4,
            "payer": rng.random() < 0.2,
            "poa": rng.random() < 0.15,
            "meta": {"lastUpdated": updated.replace("Z", "+00:00")},
            "_created": updated.replace("Z", "+00:00"),
        }
        return "relatedperson", body["id"], patient["id"], int(parse_iso(updated).timestamp()), orjson.dumps(body)

    def profile_tag(self, tag_id: str) -> dict[str, Any] | None:
        """A caregiver profile tag: the seeded ones, or one created through ``POST /v1/profileTags/``."""
        stored = self.get("profiletag", tag_id)
        if stored is not None:
            return stored
        if tag_id.isdigit() and int(tag_id) in PROFILE_TAGS:
            return {"resourceType": "ProfileTag", "id": tag_id, "name": PROFILE_TAGS[int(tag_id)]}
        return None

    def next_id(self, kind: str) -> int:
        with self.store.lock:
            counters = orjson.loads(self.store.meta("homeconnect_counters") or "{}")
            counters[kind] = counters.get(kind, 0) + 1
            self.store.set_meta("homeconnect_counters", orjson.dumps(counters).decode())
            return counters[kind]

    def put(self, kind: str, obj_id: str, parent: str | None, body: dict[str, Any], updated: int | None = None) -> None:
        with self.store.lock:
            self.store.db.execute(
                "INSERT OR REPLACE INTO hc_objects VALUES (?, ?, ?, ?, ?)",
                (kind, obj_id, parent, int(time.time()) if updated is None else updated, orjson.dumps(body)),
            )

    def page(
        self, kind: str, *, parent: str | None, updated: tuple[str, int] | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of a collection in id order, filtered in SQL (so paging stays cheap at any scale)."""
        where, args = " WHERE kind = ?", [kind]
        if parent is not None:
            where += " AND parent = ?"
            args.append(parent)
        if updated is not None:
            where += f" AND updated {updated[0]} ?"
            args.append(updated[1])
        with self.store.lock:
            total = self.store.db.execute(f"SELECT count(*) FROM hc_objects{where}", args).fetchone()[0]
            rows = self.store.db.execute(
                f"SELECT body FROM hc_objects{where} ORDER BY CAST(id AS INTEGER) LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        return [orjson.loads(r[0]) for r in rows], total

    def get(self, kind: str, obj_id: str) -> dict[str, Any] | None:
        with self.store.lock:
            row = self.store.db.execute(
                "SELECT body FROM hc_objects WHERE kind = ? AND id = ?", (kind, obj_id)
            ).fetchone()
        return orjson.loads(row[0]) if row else None

    def delete(self, kind: str, obj_id: str) -> bool:
        with self.store.lock:
            cur = self.store.db.execute("DELETE FROM hc_objects WHERE kind = ? AND id = ?", (kind, obj_id))
        return cur.rowcount > 0

    def children(self, kind: str, parent: str) -> list[dict[str, Any]]:
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT body FROM hc_objects WHERE kind = ? AND parent = ? ORDER BY CAST(id AS INTEGER)",
                (kind, parent),
            ).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def all(self, kind: str) -> Iterator[dict[str, Any]]:
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT body FROM hc_objects WHERE kind = ? ORDER BY CAST(id AS INTEGER)", (kind,)
            ).fetchall()
        for r in rows:
            yield orjson.loads(r[0])


def canonical_client_status(code: int, active: bool) -> str:
    """Home Connect client (status code, active) -> canonical patient status (the sandbox's documented rule).

    Codes 1-70 are prospects (pending, or inactive once deactivated), 90 Closed-Lost is inactive, 80 Care
    Started and 100 Closed-Won are clients: active, or discharged once deactivated.
    """
    if code == 90:
        return "inactive"
    if code < 80:
        return "pending" if active else "inactive"
    return "active" if active else "discharged"
