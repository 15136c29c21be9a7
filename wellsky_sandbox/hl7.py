"""The tenant's HL7 v2.5 outbound feed: logical records rendered as ADT / SIU / ORU messages in batch files.

Real agencies receive HL7 as an append-only feed: files dropped on SFTP that never change once written, with
new files as the chart changes. This module reproduces that. ``Hl7Feed.refresh()`` renders every record
changed since the last run (the first run: everything) in ``updated_at`` order, ``chunk`` messages per file,
into ``<data-dir>/sftp/outbound/hl7/<first updated_at>-<seq>.hl7`` — names sort by time. What was emitted is
kept in the tenant's SQLite file (``feed_emitted`` and ``meta``), so a restart neither repeats nor loses a
message, and a later ``/_sandbox/advance`` produces new files only.

Messages (``\\r`` segment terminators, batch files wrapped in FHS/BHS ... BTS/FTS):

- patients: ``ADT^A04`` the first time a patient is sent, ``ADT^A08`` afterwards. PID-3 repeats the WellSky id
  (``^^^WELLSKY^PI``), MRN (``^^^AGENCY^MR``), Medicare MBI (``^^^CMS^MC``), Medicaid id (``^^^MEDICAID^MA``);
  PID-5 name, PID-7 birth date, PID-8 sex (M/F/O/U), PID-11 address, PID-13 phone; PV1-41 account status
  (P pending, A active, D discharged, I inactive); one IN1 per payer (IN1-1 order, IN1-3 payer id, IN1-4 payer
  name, IN1-36 member id).
- appointments: ``SIU^S12`` new, ``S13`` start moved, ``S15`` cancelled, ``S14`` any other change. SCH-1/SCH-2
  placer/filler id = appointment id, SCH-11 timing (components 4/5 = start/end), SCH-25 filler status
  (Booked/Complete/Cancelled/Noshow); PID; AIS-3 service code (HCPCS) with AIS-4 start; AIP-3 practitioner,
  AIP-4 discipline; vendor ``ZSC`` (ZSC-2 external id, ZSC-3 payer id, ZSC-4 discipline, ZSC-5 location).
- encounters: ``ORU^R01``. PV1-7 practitioner, PV1-10 discipline, PV1-19 encounter id, PV1-44/45 start/end;
  OBR-2 appointment id, OBR-3 encounter id, OBR-25 result status (P in progress, F completed, X cancelled);
  OBX per vital sign (LOINC) and a TX OBX for the note summary; DG1 per diagnosis (DG1-15 rank); PR1 per
  procedure; vendor ``ZEN`` (ZEN-2 finalized Y/N).

MSH-7 (and EVN-2) equal the record's ``updated_at``; MSH-10 control ids are unique across the feed.

Late delivery, off by default (``POST /_sandbox/hl7 {"late": 0.2, "keep_times": true}``): a share of each refresh's
changes is queued, as an interface engine queues messages during an outage, and arrives with the next refresh in a
file of its own whose messages keep their time, older than files already delivered (:meth:`Hl7Feed.deliver_late`).
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .tenant import Tenant

SEGMENT_END = "\r"
SENDING_APP = "WELLSKY"
HL7_ENTITIES = ("patients", "appointments", "encounters")
PATIENT_STATUS_CODE = {"pending": "P", "active": "A", "discharged": "D", "inactive": "I"}
SEX_CODE = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
FILLER_STATUS = {"scheduled": "Booked", "completed": "Complete", "cancelled": "Cancelled", "missed": "Noshow"}
RESULT_STATUS = {"in_progress": "P", "completed": "F", "cancelled": "X"}
VITALS_LOINC = (
    ("temperature_f", "8310-5", "Body temperature", "[degF]"),
    ("pulse_bpm", "8867-4", "Heart rate", "/min"),
    ("respiratory_rate", "9279-1", "Respiratory rate", "/min"),
    ("bp_systolic", "8480-6", "Systolic blood pressure", "mm[Hg]"),
    ("bp_diastolic", "8462-4", "Diastolic blood pressure", "mm[Hg]"),
    ("spo2_pct", "59408-5", "Oxygen saturation", "%"),
    ("weight_lb", "29463-7", "Body weight", "[lb_av]"),
)
NOTE_CODE = "NOTE"

FEED_SCHEMA = """
CREATE TABLE IF NOT EXISTS feed_emitted (
    feed TEXT NOT NULL, entity TEXT NOT NULL, id TEXT NOT NULL,
    digest TEXT NOT NULL,                 -- sha1 of the last version sent on this feed
    start TEXT,                           -- appointments: start last sent (S13 detection)
    PRIMARY KEY (feed, entity, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feed_files (
    feed TEXT NOT NULL, name TEXT NOT NULL, entity TEXT,
    size INTEGER NOT NULL, sha256 TEXT NOT NULL, created_at TEXT NOT NULL,
    messages INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'outbound',   -- outbound / archived / deleted
    PRIMARY KEY (feed, name)
) WITHOUT ROWID;
"""


# -- HL7 encoding helpers --------------------------------------------------------------------------------
def escape(value: Any) -> str:
    """HL7 escaping of free text (``\\F\\`` etc.), so a name or note can never break the field structure."""
    if value is None:
        return ""
    text = str(value)
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
        .replace("\r", "\\X0D\\")
        .replace("\n", "\\X0A\\")
    )


def dtm(iso_value: str | None) -> str:
    """ISO 8601 UTC -> HL7 DTM with an explicit offset (``20261101140000+0000``)."""
    if not iso_value:
        return ""
    ts = datetime.fromisoformat(iso_value.replace("Z", "+00:00")).astimezone(UTC)
    return ts.strftime("%Y%m%d%H%M%S+0000")


def segment(name: str, fields: dict[int, str]) -> str:
    """``name|f1|f2...`` from a {position: already-encoded value} map (positions are HL7's, 1-based)."""
    width = max(fields) if fields else 0
    return "|".join([name, *(fields.get(i, "") for i in range(1, width + 1))])


def components(*parts: Any) -> str:
    return "^".join(escape(p) for p in parts).rstrip("^")


def address_field(addr: dict[str, Any] | None, kind: str = "H") -> str:
    if not addr:
        return ""
    return components(addr["line1"], addr.get("line2"), addr["city"], addr["state"], addr["postal_code"], "USA", kind)


def msh(updated_at: str, event: str, structure: str, control_id: str, facility: str) -> str:
    return "MSH|^~\\&|" + "|".join(
        [
            SENDING_APP,
            escape(facility),
            "INTERFACE",
            "AGENCY",
            dtm(updated_at),
            "",
            event + "^" + structure,
            control_id,
            "P",
            "2.5",
        ]
    )


def pid_segment(patient: dict[str, Any] | None, patient_id: str) -> str:
    """PID with every identifier; only the WellSky id when the patient record is unknown."""
    ids = [components(patient_id, "", "", "WELLSKY", "PI")]
    if patient is None:
        return segment("PID", {1: "1", 3: "~".join(ids)})
    for key, authority, kind in (
        ("mrn", "AGENCY", "MR"),
        ("medicare_mbi", "CMS", "MC"),
        ("medicaid_id", "MEDICAID", "MA"),
    ):
        if patient.get(key):
            ids.append(components(patient[key], "", "", authority, kind))
    return segment(
        "PID",
        {
            1: "1",
            3: "~".join(ids),
            5: components(patient["last_name"], patient["first_name"]),
            7: patient["birth_date"].replace("-", "") if patient.get("birth_date") else "",
            8: SEX_CODE.get(patient.get("gender") or "unknown", "U"),
            11: address_field(patient.get("address")),
            13: escape(patient.get("phone")),
        },
    )


# -- message renderers -------------------------------------------------------------------------------------
def render_patient(rec: dict[str, Any], *, event: str, control_id: str, facility: str) -> str:
    segs = [
        msh(rec["updated_at"], f"ADT^{event}", "ADT_A01", control_id, facility),
        segment("EVN", {1: event, 2: dtm(rec["updated_at"])}),
        pid_segment(rec, rec["id"]),
        segment("PV1", {1: "1", 2: "O", 41: PATIENT_STATUS_CODE[rec["status"]]}),
    ]
    for cov in rec.get("coverage") or []:
        segs.append(
            segment(
                "IN1",
                {
                    1: str(cov["order"]),
                    2: escape(cov["payer_id"]),
                    3: escape(cov["payer_id"]),
                    4: escape(cov["payer_name"]),
                    36: escape(cov["member_id"]),
                },
            )
        )
    return SEGMENT_END.join(segs) + SEGMENT_END


def appointment_event(rec: dict[str, Any], previous_start: str | None, seen_before: bool) -> str:
    if not seen_before:
        return "S12"
    if rec["status"] == "cancelled":
        return "S15"
    if previous_start is not None and previous_start != rec["start"]:
        return "S13"
    return "S14"


def render_appointment(
    rec: dict[str, Any], patient: dict[str, Any] | None, *, event: str, control_id: str, facility: str
) -> str:
    start, end = dtm(rec["start"]), dtm(rec["end"])
    minutes = int(
        (
            datetime.fromisoformat(rec["end"].replace("Z", "+00:00"))
            - datetime.fromisoformat(rec["start"].replace("Z", "+00:00"))
        ).total_seconds()
        // 60
    )
    appt_id = components(rec["id"], "WELLSKY")
    segs = [
        msh(rec["updated_at"], f"SIU^{event}", "SIU_S12", control_id, facility),
        segment(
            "SCH",
            {
                1: appt_id,
                2: appt_id,
                7: components(rec["discipline"], "", "WELLSKY"),
                9: str(minutes),
                10: "min",
                11: f"^^^{start}^{end}",
                25: FILLER_STATUS[rec["status"]],
            },
        ),
        pid_segment(patient, rec["patient_id"]),
        segment("PV1", {1: "1", 2: "O"}),
        segment("RGS", {1: "1"}),
        segment("AIS", {1: "1", 3: components(rec["service_code"], "", "HCPCS"), 4: start, 7: str(minutes), 8: "min"}),
    ]
    if rec.get("practitioner_id"):
        segs.append(
            segment(
                "AIP",
                {
                    1: "1",
                    3: components(rec["practitioner_id"], "", "", "", "", "", "", "", "WELLSKY"),
                    4: components(rec["discipline"], "", "WELLSKY"),
                    6: start,
                },
            )
        )
    segs.append(
        segment(
            "ZSC",
            {
                1: "1",
                2: escape(rec.get("external_id")),
                3: escape(rec.get("payer_id")),
                4: escape(rec["discipline"]),
                5: address_field(rec.get("location"), "C"),
            },
        )
    )
    return SEGMENT_END.join(segs) + SEGMENT_END


def _number(value: float | int) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def render_encounter(rec: dict[str, Any], patient: dict[str, Any] | None, *, control_id: str, facility: str) -> str:
    start, end = dtm(rec["start"]), dtm(rec.get("end"))
    segs = [
        msh(rec["updated_at"], "ORU^R01", "ORU_R01", control_id, facility),
        pid_segment(patient, rec["patient_id"]),
        segment(
            "PV1",
            {
                1: "1",
                2: "O",
                7: components(rec.get("practitioner_id"), "", "", "", "", "", "", "", "WELLSKY")
                if rec.get("practitioner_id")
                else "",
                10: escape(rec["discipline"]),
                19: components(rec["id"], "", "", "WELLSKY", "VN"),
                44: start,
                45: end,
            },
        ),
        segment("ORC", {1: "RE", 2: escape(rec.get("appointment_id")), 3: escape(rec["id"])}),
        segment(
            "OBR",
            {
                1: "1",
                2: escape(rec.get("appointment_id")),
                3: escape(rec["id"]),
                4: components(rec["discipline"], "Home visit", "WELLSKY"),
                7: start,
                8: end,
                25: RESULT_STATUS[rec["status"]],
            },
        ),
    ]
    n = 0
    for key, code, label, unit in VITALS_LOINC:
        value = (rec.get("vitals") or {}).get(key)
        if value is None:
            continue
        n += 1
        segs.append(
            segment("OBX", {1: str(n), 2: "NM", 3: components(code, label, "LN"), 5: _number(value), 6: unit, 11: "F"})
        )
    if rec.get("note_summary") is not None:
        n += 1
        segs.append(
            segment(
                "OBX",
                {
                    1: str(n),
                    2: "TX",
                    3: components(NOTE_CODE, "Visit note summary", "WELLSKY"),
                    5: escape(rec["note_summary"]),
                    11: "F",
                },
            )
        )
    for dx in rec.get("diagnoses") or []:
        segs.append(
            segment(
                "DG1",
                {
                    1: str(dx["rank"]),
                    3: components(dx["code"], dx.get("description"), "I10"),
                    6: "F",
                    15: str(dx["rank"]),
                },
            )
        )
    for i, proc in enumerate(rec.get("procedures") or [], start=1):
        system = "HCPCS" if proc["system"] == "HCPCS" else "C4"
        segs.append(segment("PR1", {1: str(i), 3: components(proc["code"], proc.get("description"), system)}))
    segs.append(segment("ZEN", {1: "1", 2: "Y" if rec.get("finalized") else "N"}))
    return SEGMENT_END.join(segs) + SEGMENT_END


# -- the feed ---------------------------------------------------------------------------------------------
def digest(rec: dict[str, Any]) -> str:
    return hashlib.sha1(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)).hexdigest()


def public(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if not k.startswith("_")}


def stamp(iso_value: str) -> str:
    """``2026-11-01T00:00:00Z`` -> ``20261101T000000Z`` (file-name spelling that sorts by time)."""
    return iso_value.replace("-", "").replace(":", "")


class FeedDb:
    """The feeds' own SQLite connection to the tenant file (WAL readers never block the HTTP server's writer)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(FEED_SCHEMA)
        self.lock = threading.RLock()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def changes(self, feed: str, entities: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any], tuple | None]]:
        """Records of ``entities`` not yet sent on ``feed`` in their current version, in (updated_at, id) order.

        Yields (entity, record, previous emission row or None). Every change gets an ``updated_at`` at or after
        the newest one already stored, so only records at or after the feed's watermark need comparing.
        """
        mark = int(self.meta(f"feed:{feed}:watermark") or -1)
        marks = ",".join("?" * len(entities))
        cur = self.db.execute(
            f"SELECT entity, body FROM records WHERE entity IN ({marks}) AND updated_at >= ? "
            "ORDER BY updated_at, entity, id",
            (*entities, mark),
        )
        lookup = self.db.execute
        while True:
            rows = cur.fetchmany(2000)
            if not rows:
                return
            for entity, body in rows:
                rec = public(orjson.loads(body))
                prev = (
                    lookup(
                        "SELECT digest, start FROM feed_emitted WHERE feed = ? AND entity = ? AND id = ?",
                        (feed, entity, rec["id"]),
                    ).fetchone()
                    if mark >= 0
                    else None
                )
                if prev is not None and prev[0] == digest(rec):
                    continue
                yield entity, rec, prev

    def patient(self, patient_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT body FROM records WHERE entity = 'patients' AND id = ?", (patient_id,)).fetchone()
        return public(orjson.loads(row[0])) if row else None

    def emitted(self, feed: str, entity: str, rec: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO feed_emitted VALUES (?, ?, ?, ?, ?)",
            (feed, entity, rec["id"], digest(rec), rec.get("start")),
        )

    def add_file(self, feed: str, name: str, entity: str | None, path: Path, messages: int) -> None:
        data = path.read_bytes()
        self.db.execute(
            "INSERT OR REPLACE INTO feed_files VALUES (?, ?, ?, ?, ?, ?, ?, 'outbound')",
            (
                feed,
                name,
                entity,
                len(data),
                hashlib.sha256(data).hexdigest(),
                datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                messages,
            ),
        )

    def files(self, feed: str, state: str = "outbound") -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT name, entity, size, sha256, created_at, messages FROM feed_files "
            "WHERE feed = ? AND state = ? ORDER BY name",
            (feed, state),
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def set_state(self, feed: str, name: str, state: str) -> None:
        self.db.execute("UPDATE feed_files SET state = ? WHERE feed = ? AND name = ?", (state, feed, name))


def _write_atomic(path: Path, data: bytes, mtime: float | None = None) -> None:
    """Write then rename, so a client listing the directory never sees half a file.

    ``mtime`` is the newest change in the file: the feed behaves as if each file was dropped when its last
    change happened, so a reader filtering files by mtime never has to re-read older files.
    """
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_bytes(data)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def _epoch(updated_at: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(updated_at.replace("Z", "+00:00")).timestamp()


class Hl7Feed:
    """Materializes the HL7 feed of one tenant under ``root/outbound/hl7``."""

    feed = "hl7"

    def __init__(self, feeds: BatchFeeds, chunk: int = 200) -> None:
        self.feeds = feeds
        self.chunk = chunk
        self.dir = feeds.root / "outbound" / "hl7"
        self.late = 0.0
        """Share of changes an outage queues (``POST /_sandbox/hl7 {"late": 0.2}``; off by default): each is
        sent by the next refresh, in a file of its own with the messages' own time (:meth:`deliver_late`)."""
        self.late_keep_times = True
        """Whether the late file keeps its messages' time as its mtime (copied with ``cp -p``) or is written now."""

    def refresh(self) -> list[str]:
        """Render everything changed since the last run into new files; returns the new file names."""
        fdb = self.feeds.fdb
        self.dir.mkdir(parents=True, exist_ok=True)
        new_files: list[str] = []
        with fdb.lock:
            queued = orjson.loads(fdb.meta("feed:hl7:queued") or "[]")
            if queued:  # what the last outage held back arrives now, late
                new_files.append(self.deliver_late([(e, r) for e, r in queued], keep_times=self.late_keep_times))
                fdb.set_meta("feed:hl7:queued", "[]")
            seq = int(fdb.meta("feed:hl7:seq") or 0)
            held: list[tuple[str, dict[str, Any]]] = []
            rng = random.Random(seq * 7919 + 17)
            mark = int(fdb.meta("feed:hl7:watermark") or -1)
            batch: list[tuple[str, dict[str, Any], str]] = []

            def flush() -> None:
                nonlocal seq, batch
                if not batch:
                    return
                seq += 1
                name = f"{stamp(batch[0][1]['updated_at'])}-{seq:06d}.hl7"
                data = self._batch_file(name, [msg for _, _, msg in batch])
                fdb.db.execute("BEGIN IMMEDIATE")
                try:
                    _write_atomic(self.dir / name, data, mtime=_epoch(batch[-1][1]["updated_at"]))
                    fdb.add_file(self.feed, name, None, self.dir / name, len(batch))
                    for entity, rec, _ in batch:
                        fdb.emitted(self.feed, entity, rec)
                    top = max(int(_epoch(rec["updated_at"])) for _, rec, _ in batch)
                    fdb.set_meta("feed:hl7:watermark", str(max(mark, top)))
                    fdb.set_meta("feed:hl7:seq", str(seq))
                    fdb.db.execute("COMMIT")
                except BaseException:
                    fdb.db.execute("ROLLBACK")
                    raise
                new_files.append(name)
                batch = []

            changes = list(fdb.changes(self.feed, HL7_ENTITIES)) if mark >= 0 else fdb.changes(self.feed, HL7_ENTITIES)
            for entity, rec, prev in changes:
                if self.late and rng.random() < self.late:
                    held.append((entity, rec))
                    fdb.emitted(self.feed, entity, rec)  # queued: the feed sends it once, late
                    continue
                control = f"{seq + 1:06d}{len(batch) + 1:05d}"
                batch.append((entity, rec, self._render(entity, rec, prev, control)))
                if len(batch) >= self.chunk:
                    flush()
            flush()
            if held:
                fdb.set_meta("feed:hl7:queued", orjson.dumps(held).decode())
        return new_files

    def deliver_late(self, changes: list[tuple[str, dict[str, Any]]], *, keep_times: bool) -> str:
        """Drop ``changes`` (entity, record as it was at its ``updated_at``) in a new file, as an interface engine
        does when it sends what it queued during an outage: every message keeps its own (older) time. With
        ``keep_times`` the file keeps the time of its last change too, as a copy made with ``cp -p`` or
        ``put -p`` does; without, it is written now. Returns the file name (it sorts by its first change)."""
        fdb = self.feeds.fdb
        self.dir.mkdir(parents=True, exist_ok=True)
        with fdb.lock:
            seq = int(fdb.meta("feed:hl7:seq") or 0) + 1
            ordered = sorted(changes, key=lambda change: change[1]["updated_at"])
            messages = [self._render(entity, rec, None, f"L{seq:05d}{n:05d}") for n, (entity, rec) in
                        enumerate(ordered, start=1)]
            name = f"{stamp(ordered[0][1]['updated_at'])}-{seq:06d}-late.hl7"
            mtime = _epoch(ordered[-1][1]["updated_at"]) if keep_times else None
            _write_atomic(self.dir / name, self._batch_file(name, messages), mtime=mtime)
            fdb.set_meta("feed:hl7:seq", str(seq))
        return name

    def _render(self, entity: str, rec: dict[str, Any], prev: tuple | None, control: str) -> str:
        facility = self.feeds.facility
        if entity == "patients":
            return render_patient(rec, event="A08" if prev else "A04", control_id=control, facility=facility)
        patient = self.feeds.fdb.patient(rec["patient_id"])
        if entity == "appointments":
            event = appointment_event(rec, prev[1] if prev else None, prev is not None)
            return render_appointment(rec, patient, event=event, control_id=control, facility=facility)
        return render_encounter(rec, patient, control_id=control, facility=facility)

    def _batch_file(self, name: str, messages: list[str]) -> bytes:
        now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
        header = [
            f"FHS|^~\\&|{SENDING_APP}|{escape(self.feeds.facility)}|INTERFACE|AGENCY|{now}||{name}",
            f"BHS|^~\\&|{SENDING_APP}|{escape(self.feeds.facility)}|INTERFACE|AGENCY|{now}",
        ]
        trailer = [f"BTS|{len(messages)}", "FTS|1"]
        return (
            SEGMENT_END.join(header) + SEGMENT_END + "".join(messages) + SEGMENT_END.join(trailer) + SEGMENT_END
        ).encode("utf-8")

    def path(self, name: str) -> Path:
        return self.dir / name


def _epoch(iso_value: str) -> float:
    return datetime.fromisoformat(iso_value.replace("Z", "+00:00")).timestamp()


class BatchFeeds:
    """Everything the SFTP server and ``GET /exports`` serve for one tenant, rooted at ``<data-dir>/sftp``."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.root = Path(tenant.config.data_dir) / "sftp"
        (self.root / "archive").mkdir(parents=True, exist_ok=True)
        self.fdb = FeedDb(tenant.store.path)
        self.facility = tenant.product.upper()
        self.hl7 = Hl7Feed(self)
        from .exports import ExportFeed  # exports.py imports this module; import here avoids the cycle

        self.exports = ExportFeed(self)
        self._refresh_lock = threading.Lock()

    def refresh(self) -> None:
        with self._refresh_lock:
            self.hl7.refresh()
            self.exports.refresh()

    def close(self) -> None:
        self.fdb.close()


_FEEDS: weakref.WeakKeyDictionary[Any, BatchFeeds] = weakref.WeakKeyDictionary()
_FEEDS_LOCK = threading.Lock()


def feeds_for(tenant: Tenant) -> BatchFeeds:
    """The tenant's one ``BatchFeeds`` (shared by the SFTP server, exports and tests)."""
    with _FEEDS_LOCK:
        feeds = _FEEDS.get(tenant)
        if feeds is None:
            feeds = BatchFeeds(tenant)
            _FEEDS[tenant] = feeds
            weakref.finalize(tenant, feeds.close)
        return feeds
