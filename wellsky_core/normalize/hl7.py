"""HL7 v2 -> canonical records: WellSky's outbound feed and what agencies' interface engines send.

Input is a file's text: one message or a batch (FHS/BHS ... BTS/FTS), segments ended by ``\\r``, ``\\n`` or
``\\r\\n``, optionally with a UTF-8 byte-order mark and MLLP framing characters (``\\x0b`` ... ``\\x1c\\r``) left
in the file. :func:`split_messages` cuts it into messages; :func:`normalize_records` parses one with hl7apy
(tolerant validation of the header, cached per header shape; vendor Z-segments and repeated segments are kept)
and maps it onto the canonical models, reading the body positionally with the message's own encoding
characters (hl7apy's full object tree costs about 20 ms per message, hours for a large tenant's feed).
Versions 2.1 to 2.8 are accepted.

============================  =====================================================================
message                       canonical
============================  =====================================================================
ADT^A01-A08, A11, A13,        patients: PID-3 (PI = WellSky id; else MR or a configured assigning
A28, A31, A40, A47            authority = MRN, also the record id), MC = Medicare MBI, MA = Medicaid;
                              a type sent in CX.4 with CX.5 empty (``123^^^MR``) is read as the type, flagged;
                              PID-5/7/8/10/11/13/22/29/30, PV1-41 status (P/A/D/I; else deceased
                              (PID-30 Y or PID-29) = discharged; else from the event: A05/A11 pending,
                              A03 discharged, A01/A02/A04/A06/A07/A13 active), IN1
                              per payer (IN1-1 order, IN1-3 payer id, IN1-4 payer name, IN1-36 member
                              id); A40/A47: each PID with its MRG, MRG-1 ids -> ``merged_ids``
SIU^S12-S22, S26              appointments: SCH-2 (else SCH-1) id, SCH-1 placer id (else ZSC-2)
                              external id; start/end from TQ1-7/8 (else TQ1-6 duration): the v2.5+
                              timing; SCH-11.4/.5 (or .4 + the .3 duration; deprecated) only when TQ1
                              has no start, flagged when it disagrees; else AIS-4, AIG-8, AIL-6, AIP-6
                              with their durations (AIS-7/8 ...) or SCH-9/10; SCH-25 status, else the event (S12-S14
                              scheduled, S15-S17 cancelled, S26 missed; S18-S22 edit a resource: SCH-25
                              only); PID-3 patient, first AIP-3 practitioner (later AIPs and every AIG
                              are ``resources``), AIP-4 (else ZSC-4, SCH-7) discipline, AIS-3 service
                              code (HCPCS/CPT), AIL-3 location name, ZSC-3 payer, ZSC-5 address
ORU^R01                       encounters: OBR-3 (else PV1-19) id, OBR-2 appointment, PV1-7 practitioner,
                              PV1-10 discipline, PV1-44/45 (else OBR-7/8) start/end, OBR-25 status,
                              OBX (LOINC) vitals, OBX ``NOTE`` note summary, DG1 diagnoses (DG1-15 rank),
                              PR1 procedures, ZEN-2 finalized (default: status is completed); PV1 optional
============================  =====================================================================

Other message types are not errors: :class:`Unsupported` names the type, and the channel counts it.
``updated_at`` is MSH-7 (a timestamp without offset is read in ``hl7_timezone``, else refused). Only a
record without an id or a usable MSH-7 is refused; any other unmappable field is null and named in the
record's ``data_quality`` flags. Errors and flags name the HL7 field, never a value (they are patient data).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_segment

from ..errors import NormalizationError, Unsupported
from ..quality import FlagKind, Flags
from .status import PatientStatus, patient_status
from .validation import validated

BATCH_SEGMENTS = ("FHS", "BHS", "BTS", "FTS")
SINGLE_SEGMENTS = ("MSH", "EVN", "SCH", "OBR")
"""Segments a single message of these types holds at most once (PID repeats only in merges)."""
PATIENT_EVENTS = frozenset({"A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A13", "A28", "A31",
                            "A40", "A47"})
MERGE_EVENTS = frozenset({"A40", "A47"})
APPOINTMENT_EVENTS = frozenset({"S12", "S13", "S14", "S15", "S16", "S17", "S18", "S19", "S20", "S21", "S22",
                                "S26"})
"""SIU events about one appointment; S23/S24 (blocked/opened slots) and S25 (a query) are not appointments."""
EVENT_PATIENT_STATUS: dict[str, PatientStatus] = {
    "A01": "active", "A02": "active", "A03": "discharged", "A04": "active", "A05": "pending", "A06": "active",
    "A07": "active", "A11": "pending", "A13": "active",
}
"""Status an ADT event implies when PV1-41 does not say (A08/A28/A31/A40/A47 imply none)."""
EVENT_APPOINTMENT_STATUS = {"S12": "scheduled", "S13": "scheduled", "S14": "scheduled", "S15": "cancelled",
                            "S16": "cancelled", "S17": "cancelled", "S26": "missed"}
"""Status an SIU event implies when SCH-25 does not say (v2.5.1 ch. 10.3: S12 new, S13 rescheduled, S14
modified, S15 cancelled, S16 discontinued, S17 deleted, S26 patient did not show up). S18-S22 add, modify,
cancel, discontinue or delete one service or resource *of* the appointment and imply no status of its own:
without SCH-25 the status is null and flagged."""
FINAL_EVENTS = frozenset({"S15", "S16", "S17", "S26"})
"""Events whose status wins over SCH-25 (a cancellation message may still carry the old filler status)."""
CX_TYPE_IN_AUTHORITY = {"PI": "id", "MR": "mrn", "MC": "medicare_mbi", "MA": "medicaid_id"}
"""Identifier types a sender may put in CX.4 (assigning authority) instead of CX.5 (``123^^^MR``)."""
SEX = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "unknown", "X": "other"}
PATIENT_STATUS: dict[str, PatientStatus] = {"P": "pending", "A": "active", "D": "discharged", "I": "inactive"}
FILLER_STATUS = {
    "booked": "scheduled",
    "pending": "scheduled",
    "waitlist": "scheduled",
    "overbook": "scheduled",
    "started": "scheduled",
    "complete": "completed",
    "cancelled": "cancelled",
    "deleted": "cancelled",
    "blocked": "cancelled",
    "dc": "cancelled",
    "noshow": "missed",
}
RESULT_STATUS = {"P": "in_progress", "I": "in_progress", "R": "in_progress", "S": "in_progress", "A": "in_progress",
                 "F": "completed", "C": "completed", "X": "cancelled"}
DISCIPLINES = frozenset({"SN", "PT", "OT", "ST", "MSW", "HHA"})
PROCEDURE_SYSTEMS = {"HCPCS": "HCPCS", "HCPCS-II": "HCPCS", "HC": "HCPCS", "C4": "CPT", "CPT": "CPT", "CPT4": "CPT"}
_HCPCS_LIKE = re.compile(r"^(?:[A-V][0-9]{4}|[0-9]{4}[0-9FTU])$")
VITALS = {
    "8310-5": ("temperature_f", float),
    "8867-4": ("pulse_bpm", int),
    "9279-1": ("respiratory_rate", int),
    "8480-6": ("bp_systolic", int),
    "8462-4": ("bp_diastolic", int),
    "59408-5": ("spo2_pct", int),
    "2708-6": ("spo2_pct", int),
    "29463-7": ("weight_lb", float),
}
DURATION_UNITS = {
    "": 1, "M": 1, "MIN": 1, "MINS": 1, "MINUTE": 1, "MINUTES": 1,
    "H": 60, "HR": 60, "HRS": 60, "HOUR": 60, "HOURS": 60,
    "S": 1 / 60, "SEC": 1 / 60, "SECS": 1 / 60, "SECOND": 1 / 60, "SECONDS": 1 / 60,
    "D": 1440, "DAY": 1440, "DAYS": 1440, "WK": 10080, "WEEK": 10080, "WEEKS": 10080,
}
"""Minutes per unit of an AIS/AIG/AIL/AIP duration (field 8 of each, CE: ANSI ``MIN``/``HR``/``S``/``D``/``WK``, UCUM
``min``/``h``/``s``/``d``/``wk``, and the plain spellings interfaces send, ``HRS`` and ``MINS`` among them). A unit
of no fixed length (months) or unknown leaves the end null and flagged, never read as minutes."""
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_FRAMING = str.maketrans("", "", "\x0b\x1c\x00")


@dataclass(frozen=True)
class Hl7Options:
    """Per-tenant reading rules (settings ``hl7_timezone`` and ``hl7_mrn_authorities``)."""

    timezone: str | None = None
    """IANA zone for timestamps sent without an offset; None: such timestamps are refused."""
    mrn_authorities: tuple[str, ...] = ()
    """PID-3.4 assigning authorities whose identifiers are the MRN (besides identifier type MR)."""
    zone: ZoneInfo | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.timezone and self.zone is None:
            object.__setattr__(self, "zone", ZoneInfo(self.timezone))


DEFAULT_OPTIONS = Hl7Options()




def split_messages(text: str) -> list[str]:
    """Messages of a file's text, each with ``\\r`` terminators (see :func:`iter_messages`)."""
    return list(iter_messages([text.encode("utf-8")]))


_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_FRAMING_BYTES = b"\x0b\x1c\x00"
_BOM = "\ufeff".encode()
_BATCH_BYTES = tuple(name.encode() for name in BATCH_SEGMENTS)


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        parts = _LINE_BREAK.split(pending + chunk)  # a CR LF cut between chunks leaves an empty line: skipped
        pending = parts.pop()
        yield from parts
    yield pending


def _decoded(segments: list[bytes]) -> str:
    """One message's text: UTF-8, else Latin-1 (HL7 v2's default character set) for this message alone."""
    raw = b"\r".join(segments) + b"\r"
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def iter_messages(chunks: Iterable[bytes]) -> Iterator[str]:
    """Messages of a file read in chunks, each with ``\\r`` terminators, as they complete: a batch file of any
    size is never held whole. BOMs, MLLP framing and batch segments (FHS, BHS, BTS, FTS) are dropped; any line
    ending separates segments; segments before any MSH form a message without header (reported later)."""
    current: list[bytes] | None = None
    for raw in _lines(chunks):
        line = raw.translate(None, _FRAMING_BYTES)
        while line.startswith(_BOM):
            line = line[len(_BOM):]
        if not line.strip():
            continue
        if line.startswith(_BATCH_BYTES) and (len(line) == 3 or not line[3:4].isalnum()):
            if current is not None:
                yield _decoded(current)
            current = None
        elif line.startswith(b"MSH"):
            if current is not None:
                yield _decoded(current)
            current = [line]
        elif current is None:
            current = [line]
        else:
            current.append(line)
    if current is not None:
        yield _decoded(current)


class _Msg:
    """Positional access to a parsed message's fields, split with the message's own encoding characters."""

    def __init__(
        self, entity: str, segments: list[tuple[str, list[str]]], enc: dict[str, str], options: Hl7Options
    ) -> None:
        self.entity = entity
        self.segments = segments
        self.enc = enc
        self.options = options
        self.flags = Flags()

    def all(self, name: str) -> list[list[str]]:
        return [fields for seg, fields in self.segments if seg == name]

    def first(self, name: str) -> list[str] | None:
        found = self.all(name)
        return found[0] if found else None

    def field(self, fields: list[str] | None, n: int) -> str:
        if fields is None or n >= len(fields):
            return ""
        return fields[n]

    def reps(self, raw: str) -> list[str]:
        return list(raw.split(self.enc["rep"])) if raw else []

    def comp(self, raw: str, n: int) -> str:
        """Component ``n`` of the first repetition: a repeating field (AIP-3, PV1-7, IN1-3: an NPI beside the
        local id) read whole ran its repetitions into one value (``N1~1234567893``), a wrong id."""
        raw = raw.split(self.enc["rep"], 1)[0] if raw else raw
        parts = raw.split(self.enc["comp"]) if raw else []
        return self.unescape(parts[n - 1].split(self.enc["sub"])[0]) if len(parts) >= n else ""

    def unescape(self, text: str) -> str:
        esc = self.enc["esc"]
        if esc not in text:
            return text
        table = {"F": self.enc["field"], "S": self.enc["comp"], "T": self.enc["sub"], "R": self.enc["rep"], "E": esc}

        def sub(match: re.Match[str]) -> str:
            code = match.group(1)
            if code in table:
                return table[code]
            if code.startswith("X") and len(code) > 1:
                try:
                    return bytes.fromhex(code[1:]).decode("latin-1")
                except ValueError:
                    pass
            if code == ".br":
                return "\n"
            return ""

        return re.sub(re.escape(esc) + r"([^" + re.escape(esc) + r"]*)" + re.escape(esc), sub, text)

    def fail(self, where: str, reason: str) -> NormalizationError:
        return NormalizationError(self.entity, where, reason)

    def flag(self, canonical: str, kind: FlagKind, reason: str) -> None:
        self.flags.add(canonical, kind, reason)

    def timestamp(self, raw: str, where: str, canonical: str | None = None, *, quiet: bool = False) -> datetime | None:
        """An HL7 DTM as UTC. Bad or offset-less (without ``hl7_timezone``): refused for ``updated_at``
        (``canonical`` None), else null + a flag on ``canonical`` (none when ``quiet``: a value only compared)."""
        value = raw.split(self.enc["comp"])[0] if raw else ""
        if not value:
            return None
        m = _DTM.match(value)
        problem = None
        if not m:
            problem = "is not an HL7 timestamp (YYYYMMDDHHMMSS+ZZZZ)"
        elif not m.group(7) and self.options.zone is None:
            problem = "has no UTC offset; send YYYYMMDDHHMMSS+ZZZZ or set hl7_timezone"
        if problem is None:
            assert m is not None
            y, mo, d, h, mi, s, off = m.groups()
            try:
                naive = datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0))
            except ValueError:
                problem = "is not a valid calendar date/time"
            else:
                if off:
                    sign = 1 if off[0] == "+" else -1
                    offset = timedelta(hours=int(off[1:3]), minutes=int(off[3:5])) * sign
                    return (naive - offset).replace(tzinfo=UTC)
                return naive.replace(tzinfo=self.options.zone).astimezone(UTC)
        if canonical is None:
            raise self.fail(where, problem)
        if not quiet:
            self.flag(canonical, "invalid", f"{where} {problem}")
        return None

    def day(self, raw: str, where: str, canonical: str) -> date | None:
        value = raw.split(self.enc["comp"])[0] if raw else ""
        if not value:
            return None
        if not re.fullmatch(r"\d{8}(\d*)?(\.\d+)?([+-]\d{4})?", value):
            self.flag(canonical, "invalid", f"{where} is not an HL7 date (YYYYMMDD)")
            return None
        try:
            return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
        except ValueError:
            self.flag(canonical, "invalid", f"{where} is not a valid calendar date")
            return None


_HEADER_SHAPES: dict[tuple[str, ...], str | None] = {}


def _check_header(msh: str, field_sep: str, enc_chars: str) -> None:
    """hl7apy validates the header (encoding characters, supported version, message type structure).

    The verdict is cached per header *shape* (separators, MSH-9, MSH-12): a feed repeats a handful of shapes,
    and hl7apy costs milliseconds per segment; per-message values (timestamps, ids) are checked by the mapping.
    """
    fields = msh.split(field_sep)
    shape = (field_sep, enc_chars, *(fields[i] if i < len(fields) else "" for i in (8, 11)))
    if shape not in _HEADER_SHAPES:
        verdict = None
        try:
            parse_segment(
                field_sep.join(fields[:12]),  # MSH-1..12: later fields differ by version and do not matter here
                encoding_chars={
                    "FIELD": field_sep,
                    "COMPONENT": enc_chars[0],
                    "REPETITION": enc_chars[1],
                    "ESCAPE": enc_chars[2],
                    "SUBCOMPONENT": enc_chars[3],
                    "GROUP": "\r",
                    "SEGMENT": "\r",
                },
                validation_level=VALIDATION_LEVEL.TOLERANT,
            )
        except Exception as exc:  # hl7apy raises many types; its messages may quote the data, so only the type
            verdict = f"hl7apy rejected the header ({type(exc).__name__})"
        if len(_HEADER_SHAPES) > 1024:
            _HEADER_SHAPES.clear()
        _HEADER_SHAPES[shape] = verdict
    if _HEADER_SHAPES[shape] is not None:
        raise NormalizationError("hl7", "MSH", _HEADER_SHAPES[shape] or "")


def _parse(text: str, options: Hl7Options) -> tuple[str, str, _Msg]:
    """Structural checks + hl7apy header check; returns (message type, trigger event, accessor)."""
    text = text.lstrip("\ufeff").translate(_FRAMING)
    if not text.startswith("MSH"):
        raise NormalizationError("hl7", "MSH", "message does not start with an MSH segment")
    if len(text) < 8:
        raise NormalizationError("hl7", "MSH-2", "MSH is truncated before its encoding characters")
    field_sep = text[3]
    enc_chars = text[4:8]
    if enc_chars[3] == field_sep:  # only three encoding characters (no subcomponent separator)
        enc_chars = enc_chars[:3] + "&"
    if field_sep.isalnum() or len(set(field_sep + enc_chars)) != 5 or any(c.isalnum() for c in enc_chars):
        raise NormalizationError("hl7", "MSH-2", "encoding characters are not 4 distinct non-alphanumeric characters")
    lines = [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
    for line in lines:
        if not _SEGMENT_NAME.match(line[:3]) or (len(line) > 3 and line[3] != field_sep):
            raise NormalizationError("hl7", "segment", "a segment does not start with a 3-character segment id")
    enc = {"field": field_sep, "comp": enc_chars[0], "rep": enc_chars[1], "esc": enc_chars[2], "sub": enc_chars[3]}
    segments: list[tuple[str, list[str]]] = []
    for line in lines:
        parts = line.split(field_sep)
        if parts[0] == "MSH":  # MSH-1 is the separator itself: shift so that fields[n] is MSH-n
            parts = ["MSH", field_sep, *parts[1:]]
        segments.append((parts[0], parts))
    msh = segments[0][1]
    version = msh[12].split(enc["comp"])[0] if len(msh) > 12 else ""
    if not re.fullmatch(r"2\.[1-8](\.\d+)?", version):
        raise NormalizationError("hl7", "MSH-12", "version is missing or not HL7 v2.1-2.8")
    _check_header(lines[0], field_sep, enc_chars)
    names = [name for name, _ in segments]
    for single in SINGLE_SEGMENTS:
        if names.count(single) > 1:
            raise NormalizationError(
                "hl7",
                single,
                "segment appears more than once; a message without its MSH was probably merged into the one before it",
            )
    msg_type = msh[9] if len(msh) > 9 else ""
    kind = msg_type.split(enc["comp"])
    if len(kind) < 2 or not kind[0] or not kind[1]:
        evn = next((f for n, f in segments if n == "EVN"), None)
        if kind and kind[0] and evn is not None and len(evn) > 1 and evn[1]:
            kind = [kind[0], evn[1]]  # v2.1/2.2 style: the trigger event only in EVN-1
        else:
            raise NormalizationError("hl7", "MSH-9", "message type is missing (expected e.g. ADT^A08)")
    return kind[0], kind[1], _Msg("hl7", segments, enc, options)


def entity_of(msg_type: str, event: str) -> str | None:
    if msg_type == "ADT" and event in PATIENT_EVENTS:
        return "patients"
    if msg_type == "SIU" and event in APPOINTMENT_EVENTS:
        return "appointments"
    if msg_type == "ORU" and event == "R01":
        return "encounters"
    return None


def normalize_records(text: str, options: Hl7Options = DEFAULT_OPTIONS) -> list[tuple[str, dict[str, Any]]]:
    """One HL7 message -> its canonical records (a merge carries one survivor per PID). Raises
    :class:`Unsupported` for message types no stream carries and NormalizationError for unusable messages."""
    msg_type, event, m = _parse(text, options)
    entity = entity_of(msg_type, event)
    if entity is None:
        raise Unsupported(f"{msg_type}^{event}")
    m.entity = entity
    if event not in MERGE_EVENTS and len(m.all("PID")) > 1:  # only the first patient would be read: refuse
        raise m.fail("PID", "segment appears more than once; only a merge (ADT^A40, A47) names several patients")
    updated_at = m.timestamp(m.field(m.first("MSH"), 7), "MSH-7")
    if updated_at is None:
        raise m.fail("MSH-7", "message date/time is required: it is the record's updated_at")
    if entity == "patients":
        groups = _patient_groups(m) if event in MERGE_EVENTS else [(m.first("PID"), None, m.first("PV1"))]
        out = []
        for pid, mrg, pv1 in groups:
            m.flags = Flags()
            rec = _patient(m, pid, pv1, event, mrg)
            rec["updated_at"] = updated_at
            out.append((entity, validated(entity, rec, rec.get("id"), m.flags)))
        return out
    rec = _appointment(m, event) if entity == "appointments" else _encounter(m)
    rec["updated_at"] = updated_at
    return [(entity, validated(entity, rec, rec.get("id"), m.flags))]


def normalize_message(text: str, options: Hl7Options = DEFAULT_OPTIONS) -> tuple[str, dict[str, Any]]:
    """One HL7 message -> (entity, its first canonical record). Raises NormalizationError."""
    return normalize_records(text, options)[0]


def _patient_groups(m: _Msg) -> list[tuple[list[str] | None, list[str] | None, list[str] | None]]:
    """A40/A47: each PID with the MRG (and PV1) that follows it."""
    groups: list[list[list[str] | None]] = []
    for name, fields in m.segments:
        if name == "PID":
            groups.append([fields, None, None])
        elif name == "MRG" and groups and groups[-1][1] is None:
            groups[-1][1] = fields
        elif name == "PV1" and groups and groups[-1][2] is None:
            groups[-1][2] = fields
    return [(g[0], g[1], g[2]) for g in groups] or [(None, None, None)]


def _identifiers(
    m: _Msg, raw: str, misplaced: list[str] | None = None, mr_values: set[str] | None = None
) -> tuple[dict[str, str], str | None]:
    """PID-3 style CX list -> ({identifier type: value}, MRN by configured assigning authority).

    The type belongs in CX.5; a sender that puts it in CX.4 (the assigning authority, ``123^^^MR``) with CX.5
    empty is read as if CX.5 said so, but only for a type no repetition states properly; each type read that
    way is appended to ``misplaced`` so the caller can flag it. Every distinct MR value goes to ``mr_values``:
    more than one (a hospital's and the agency's) means the first was taken without knowing it is ours."""
    ids: dict[str, str] = {}
    fallback: dict[str, str] = {}
    by_authority = None
    for rep in m.reps(raw):
        value, authority, kind = m.comp(rep, 1), m.comp(rep, 4), m.comp(rep, 5)
        if not value:
            continue
        if kind == "MR" and mr_values is not None:
            mr_values.add(value)
        if kind and kind not in ids:
            ids[kind] = value
        if by_authority is None and authority and authority in m.options.mrn_authorities:
            by_authority = value
        elif not kind and authority.upper() in CX_TYPE_IN_AUTHORITY and authority.upper() not in fallback:
            fallback[authority.upper()] = value
    for kind, value in fallback.items():
        if kind not in ids and not (kind == "MR" and by_authority):
            ids[kind] = value
            if misplaced is not None:
                misplaced.append(kind)
    return ids, by_authority


def _patient_id(
    m: _Msg, pid: list[str] | None, subject: str | None = None
) -> tuple[str | None, dict[str, str], str | None]:
    """(record id, identifiers by type, MRN): the WellSky PI id, else the MRN (type MR or configured authority).

    A type read from CX.4 is flagged on the canonical field it fills (``subject``: the field that holds the
    patient's id in a record that only refers to the patient, e.g. an appointment's ``patient_id``)."""
    if pid is None:
        return None, {}, None
    misplaced: list[str] = []
    mr_values: set[str] = set()
    ids, by_authority = _identifiers(m, m.field(pid, 3), misplaced, mr_values)
    mrn = by_authority or ids.get("MR")
    record_id = ids.get("PI") or mrn
    if by_authority is None and len(mr_values) > 1:
        field = "mrn" if subject is None else subject if record_id == mrn else None
        if field is not None:
            m.flag(field, "invalid", f"PID-3 carries {len(mr_values)} different MR identifiers and none from an "
                   "authority in hl7_mrn_authorities; the first was read: set hl7_mrn_authorities to name yours")
    for kind in misplaced:
        canonical = CX_TYPE_IN_AUTHORITY[kind]
        if subject is not None:
            if ids.get(kind) != record_id:
                continue  # not the identifier this record refers to the patient by
            canonical = subject
        m.flag(canonical, "invalid", f"PID-3 identifier type {kind} sent in CX.4 (assigning authority) instead of "
               "CX.5; read as the type")
    return record_id, ids, mrn


def _address(m: _Msg, raw: str) -> dict[str, Any] | None:
    first = m.reps(raw)[0] if raw else ""
    if not first.strip(m.enc["comp"]):
        return None
    return {
        "line1": m.comp(first, 1) or None,
        "line2": m.comp(first, 2) or None,
        "city": m.comp(first, 3) or None,
        "state": m.comp(first, 4) or None,
        "postal_code": m.comp(first, 5) or None,
    }


def _coded_list(m: _Msg, raw: str) -> list[str]:
    return [code for code in (m.comp(rep, 1) for rep in m.reps(raw)) if code]


def _patient(
    m: _Msg, pid: list[str] | None, pv1: list[str] | None, event: str, mrg: list[str] | None
) -> dict[str, Any]:
    if pid is None:
        raise m.fail("PID", "segment is missing: the patient cannot be identified")
    pid_id, ids, mrn = _patient_id(m, pid)
    if pid_id is None:
        raise m.fail("PID-3", "has no WellSky patient id (type PI) and no MRN (type MR or a configured authority)")
    name = m.reps(m.field(pid, 5))
    sex = m.field(pid, 8).split(m.enc["comp"])[0]
    gender = SEX.get(sex.upper()) if sex else None
    if sex and gender is None:
        m.flag("gender", "unmapped_code", "PID-8 administrative sex is not one of M, F, O, U, A, N, X")
    status_code = m.field(pv1, 41)
    if status_code and status_code not in PATIENT_STATUS:
        m.flag("status", "unmapped_code", "PV1-41 account status is not one of P, A, D, I")
    phones = m.reps(m.field(pid, 13))
    phone = None
    if phones:
        phone = m.comp(phones[0], 1) or (
            f"({m.comp(phones[0], 6)}) {m.comp(phones[0], 7)[:3]}-{m.comp(phones[0], 7)[3:]}"
            if m.comp(phones[0], 7)
            else None
        )
    coverage = []
    for i, in1 in enumerate(m.all("IN1")):
        order = m.field(in1, 1)
        if order and not order.isdigit():
            m.flag(f"coverage.{i}.order", "invalid", "IN1-1 set id (order of benefits) is not a number")
        coverage.append(
            {
                "order": int(order) if order.isdigit() else None,
                "payer_id": m.comp(m.field(in1, 3), 1) or m.comp(m.field(in1, 2), 1) or None,
                "payer_name": m.comp(m.field(in1, 4), 1) or None,
                "member_id": m.comp(m.field(in1, 36), 1) or m.comp(m.field(in1, 49), 1) or None,
            }
        )
    coverage.sort(key=lambda c: (c["order"] is None, c["order"] or 0))
    death = m.field(pid, 29)
    indicator = m.field(pid, 30)
    deceased = True if indicator == "Y" or death else False if indicator == "N" else None
    status = patient_status(PATIENT_STATUS.get(status_code), deceased, EVENT_PATIENT_STATUS.get(event))
    merged: list[str] = []
    if mrg is not None:
        prior_ids, prior_by_authority = _identifiers(m, m.field(mrg, 1))
        untyped = m.comp(m.reps(m.field(mrg, 1))[0], 1) if m.field(mrg, 1) else ""
        candidates = (prior_ids.get("PI"), prior_by_authority or prior_ids.get("MR"), untyped)
        merged = list(dict.fromkeys(v for v in candidates if v and v != pid_id))[:1]
        if not merged:
            m.flag("merged_ids", "missing", "MRG-1 names no prior patient identifier")
    return {
        "id": pid_id,
        "mrn": mrn,
        "medicare_mbi": ids.get("MC"),
        "medicaid_id": ids.get("MA"),
        "last_name": m.comp(name[0], 1) or None if name else None,
        "first_name": m.comp(name[0], 2) or None if name else None,
        "birth_date": m.day(m.field(pid, 7), "PID-7", "birth_date"),
        "gender": gender,
        "phone": phone,
        "address": _address(m, m.field(pid, 11)),
        "status": status,
        "coverage": coverage,
        "deceased": deceased,
        "deceased_at": m.timestamp(death, "PID-29", "deceased_at") if len(death) > 8 else None,
        "race": _coded_list(m, m.field(pid, 10)),
        "ethnicity": _coded_list(m, m.field(pid, 22)),
        "merged_ids": merged,
    }


def _minutes(m: _Msg, amount: str, unit: str) -> float | None:
    if not amount:
        return None
    try:
        value = float(amount)
    except ValueError:
        return None
    factor = DURATION_UNITS.get(m.comp(unit, 1).upper())
    return value * factor if factor is not None else None


_TQ_DURATION = re.compile(r"^([SMHDW])(\d+)$")
_TQ_DURATION_UNITS = {"S": timedelta(seconds=1), "M": timedelta(minutes=1), "H": timedelta(hours=1),
                      "D": timedelta(days=1), "W": timedelta(weeks=1)}


def _sch11(m: _Msg, sch: list[str], *, quiet: bool) -> tuple[datetime | None, datetime | None]:
    """SCH-11 (TQ, deprecated since v2.5): start in component 4, end in component 5 of the first repetition;
    without an end, the start plus component 3, the TQ duration (``M45``: 45 minutes; S, M, H, D, W and a
    count). ``INDEF`` or a duration in months (``L``, not a fixed length) leaves the end to the other timings;
    any other value is flagged, never read as minutes."""
    timing = m.reps(m.field(sch, 11))
    if not timing:
        return None, None
    start = m.timestamp(m.comp(timing[0], 4), "SCH-11.4", "start", quiet=quiet)
    end = m.timestamp(m.comp(timing[0], 5), "SCH-11.5", "end", quiet=quiet)
    duration = m.comp(timing[0], 3).strip().upper()
    if end is None and start is not None and duration and not m.comp(timing[0], 5):
        found = _TQ_DURATION.match(duration)
        if found:
            end = start + int(found.group(2)) * _TQ_DURATION_UNITS[found.group(1)]
        elif duration != "INDEF" and not re.fullmatch(r"L\d+", duration) and not quiet:
            m.flag("end", "invalid", "SCH-11.3 duration is not S, M, H, D or W and a count (e.g. M45); end not read")
    return start, end


def _tq1(m: _Msg) -> tuple[datetime | None, datetime | None]:
    """TQ1-7/8 start and end; without TQ1-8, the end is the start plus TQ1-6 (service duration, CQ)."""
    tq1 = m.first("TQ1")
    if tq1 is None:
        return None, None
    start = m.timestamp(m.comp(m.field(tq1, 7), 1), "TQ1-7", "start")
    end = m.timestamp(m.comp(m.field(tq1, 8), 1), "TQ1-8", "end")
    duration = m.field(tq1, 6)
    if start is not None and end is None and duration:
        minutes = _minutes(m, m.comp(duration, 1), m.comp(duration, 2))
        end = start + timedelta(minutes=minutes) if minutes is not None else None
    return start, end


def _appointment_times(m: _Msg, sch: list[str]) -> tuple[datetime | None, datetime | None]:
    """Start/end: TQ1 (v2.5+), else SCH-11 (up to v2.4), else the resource segments with durations.

    From v2.5 SCH-11 is kept only for backward compatibility and TQ1 carries the timing, so when both are
    sent TQ1 wins whole (start and end are never mixed from two different timings); a SCH-11 that disagrees is
    flagged. A TQ1 with a start but no end or duration takes SCH-11.5 only when SCH-11.4 is the same instant."""
    start, end = _tq1(m)
    if start is not None:
        old_start, old_end = _sch11(m, sch, quiet=True)
        if old_start is not None and old_start != start:
            m.flag("start", "invalid", "SCH-11.4 (deprecated) disagrees with TQ1-7; TQ1 used (v2.5+ rule)")
        if old_end is not None and end is not None and old_end != end:
            m.flag("end", "invalid", "SCH-11.5 (deprecated) disagrees with TQ1-8; TQ1 used (v2.5+ rule)")
        if end is None and old_start == start:  # the same timing sent twice: SCH-11.5 is the end TQ1 left out
            end = old_end
    else:
        start, end = _sch11(m, sch, quiet=False)
    duration: float | None = None
    for seg, at, length, unit in (("AIS", 4, 7, 8), ("AIG", 8, 11, 12), ("AIL", 6, 9, 10), ("AIP", 6, 9, 10)):
        fields = m.first(seg)
        if fields is None:
            continue
        if start is None:
            start = m.timestamp(m.field(fields, at), f"{seg}-{at}", "start")
        if duration is None:
            duration = _minutes(m, m.field(fields, length), m.field(fields, unit))
    if duration is None:
        duration = _minutes(m, m.field(sch, 9), m.field(sch, 10))
    if end is None and start is not None and duration is not None:
        end = start + timedelta(minutes=duration)
    return start, end


def _resource(m: _Msg, seg: str, fields: list[str]) -> dict[str, Any] | None:
    """One AIG (general resource) or AIP (personnel) as a canonical appointment resource."""
    ident, kind = (m.field(fields, 3), m.field(fields, 4))
    rid = m.comp(ident, 1) or None
    if seg == "AIP":  # XCN: id^family^given
        name = " ".join(x for x in (m.comp(ident, 3), m.comp(ident, 2)) if x) or None
    else:  # CWE: id^text^system
        name = m.comp(ident, 2) or None
    if rid is None and name is None:
        return None
    return {"id": rid, "name": name, "type": m.comp(kind, 1) or m.comp(kind, 2) or None,
            "kind": "personnel" if seg == "AIP" else "general"}


def _resources(m: _Msg) -> tuple[str | None, list[dict[str, Any]]]:
    """(practitioner id, other resources): the first AIP with an id is the practitioner; every AIG and any
    further AIP are resources, so none is lost. A segment whose action code (AIG-2/AIP-2) is ``D`` removes that
    resource from the appointment (S20-S22) and is left out."""
    practitioner = None
    out: list[dict[str, Any]] = []
    for seg, fields in m.segments:
        if seg not in ("AIG", "AIP") or m.comp(m.field(fields, 2), 1).upper() == "D":
            continue
        if seg == "AIP" and practitioner is None and m.comp(m.field(fields, 3), 1):
            practitioner = m.comp(m.field(fields, 3), 1)
            continue
        found = _resource(m, seg, fields)
        if found is not None:
            out.append(found)
    return practitioner, out


def _appointment(m: _Msg, event: str) -> dict[str, Any]:
    sch = m.first("SCH")
    if sch is None:
        raise m.fail("SCH", "segment is missing: the appointment cannot be identified")
    filler, placer = m.comp(m.field(sch, 2), 1), m.comp(m.field(sch, 1), 1)
    appt_id = filler or placer
    if not appt_id:
        raise m.fail("SCH-2", "has no filler (or placer) appointment id")
    pid = m.first("PID")
    patient_id = _patient_id(m, pid, "patient_id")[0]
    if pid is not None and patient_id is None:
        m.flag("patient_id", "unresolved_reference", "PID-3 has no WellSky id (PI) and no MRN")
    start, end = _appointment_times(m, sch)
    ais, aip, ail, zsc = m.first("AIS"), m.first("AIP"), m.first("AIL"), m.first("ZSC")
    status = _appointment_status(m, sch, event)
    discipline = None
    for raw in (m.field(aip, 4), m.field(zsc, 4), m.field(sch, 7)):
        code = m.comp(raw, 1).upper()
        if code in DISCIPLINES:
            discipline = code
            break
    if discipline is None:
        m.flag("discipline", "unmapped_code", "no WellSky discipline code in AIP-4, ZSC-4 or SCH-7")
    service = m.field(ais, 3)
    service_code = m.comp(service, 1) or None
    system = m.comp(service, 3).upper()
    if service_code and not (system in PROCEDURE_SYSTEMS or (not system and _HCPCS_LIKE.match(service_code))):
        m.flag("service_code", "unmapped_code", "AIS-3 is not a HCPCS or CPT code")
        service_code = None
    location = m.field(ail, 3)
    location_name = (m.comp(location, 9) or m.comp(location, 1) or m.comp(location, 4) or
                     m.comp(m.field(ail, 4), 2) or m.comp(m.field(ail, 4), 1)) or None
    practitioner, resources = _resources(m)
    return {
        "id": appt_id,
        "external_id": m.comp(m.field(zsc, 2), 1) or (placer if filler and placer and placer != filler else None),
        "patient_id": patient_id,
        "practitioner_id": practitioner,
        "payer_id": m.comp(m.field(zsc, 3), 1) or None,
        "start": start,
        "end": end,
        "status": status,
        "discipline": discipline,
        "service_code": service_code,
        "location": _address(m, m.field(zsc, 5)),
        "location_name": location_name,
        "resources": resources,
    }


def _appointment_status(m: _Msg, sch: list[str], event: str) -> str | None:
    """A cancel/discontinue/delete/no-show event wins; else SCH-25 (filler status); else what the event
    implies (S18-S22 imply nothing: null + a flag)."""
    status_raw = m.comp(m.field(sch, 25), 1).strip().lower()
    if event in FINAL_EVENTS:
        return EVENT_APPOINTMENT_STATUS[event]
    status = FILLER_STATUS.get(status_raw)
    if status is not None:
        return status
    if status_raw:
        m.flag("status", "unmapped_code", "SCH-25 filler status code has no canonical equivalent")
    implied = EVENT_APPOINTMENT_STATUS.get(event)
    if implied is None and not status_raw:
        m.flag("status", "missing", f"SIU^{event} changes a resource of the appointment and SCH-25 gives no status")
    return implied


def _number(m: _Msg, raw: str, kind: type, canonical: str, where: str) -> int | float | None:
    try:
        value = float(raw)
    except ValueError:
        m.flag(canonical, "invalid", f"{where} numeric observation value is not a number")
        return None
    if kind is int:
        if value != int(value):
            m.flag(canonical, "invalid", f"{where} observation value must be a whole number")
            return None
        return int(value)
    return value


def _encounter(m: _Msg) -> dict[str, Any]:
    pv1, obr = m.first("PV1"), m.first("OBR")
    if obr is None and pv1 is None:
        raise m.fail("OBR", "segment is missing: the encounter cannot be identified")
    enc_id = m.comp(m.field(obr, 3), 1) or m.comp(m.field(pv1, 19), 1)
    if not enc_id:
        raise m.fail("OBR-3", "has no filler order number (and PV1-19 no visit number)")
    pid = m.first("PID")
    patient_id = _patient_id(m, pid, "patient_id")[0]
    if pid is not None and patient_id is None:
        m.flag("patient_id", "unresolved_reference", "PID-3 has no WellSky id (PI) and no MRN")
    start = m.timestamp(m.field(pv1, 44) or m.field(obr, 7), "PV1-44", "start")
    end = m.timestamp(m.field(pv1, 45) or m.field(obr, 8), "PV1-45", "end")
    result = m.field(obr, 25)
    status = RESULT_STATUS.get(result)
    if result and status is None:
        m.flag("status", "unmapped_code", "OBR-25 result status is not one of P, I, R, S, A, F, C, X")
    vitals: dict[str, Any] = {}
    note = None
    for i, obx in enumerate(m.all("OBX"), start=1):
        code = m.comp(m.field(obx, 3), 1)
        if code == "NOTE":
            note = m.unescape(m.field(obx, 5))
        elif code in VITALS:
            key, kind = VITALS[code]
            value = _number(m, m.field(obx, 5), kind, f"vitals.{key}", f"OBX[{i}]-5")
            if value is not None:
                vitals[key] = value
    diagnoses = []
    for i, dg1 in enumerate(m.all("DG1"), start=1):
        rank = m.field(dg1, 15) or m.field(dg1, 1) or str(i)
        if not rank.isdigit():
            m.flag(f"diagnoses.{len(diagnoses)}.rank", "invalid", f"DG1[{i}]-15 diagnosis priority is not a number")
        code = m.field(dg1, 3)
        diagnoses.append(
            {"code": m.comp(code, 1) or None, "description": m.comp(code, 2) or None,
             "rank": int(rank) if rank.isdigit() else None}
        )
    diagnoses.sort(key=lambda d: (d["rank"] is None, d["rank"] or 0))
    procedures = []
    for i, pr1 in enumerate(m.all("PR1"), start=1):
        code = m.field(pr1, 3)
        system = PROCEDURE_SYSTEMS.get(m.comp(code, 3).upper())
        if system is None:
            m.flag(f"procedures.{len(procedures)}.system", "unmapped_code",
                   f"PR1[{i}]-3.3 coding system is not HCPCS or C4/CPT")
        procedures.append({"code": m.comp(code, 1) or None, "system": system, "description": m.comp(code, 2) or None})
    zen = m.first("ZEN")
    finalized_flag = m.field(zen, 2)
    finalized = finalized_flag == "Y" if finalized_flag in ("Y", "N") else status == "completed" if status else None
    full_vitals = None
    if vitals:
        full_vitals = {key: vitals.get(key) for key, _ in VITALS.values()}
    discipline = m.field(pv1, 10).split(m.enc["comp"])[0].upper() or None
    if discipline and discipline not in DISCIPLINES:
        m.flag("discipline", "unmapped_code", "PV1-10 hospital service is not a WellSky discipline")
        discipline = None
    return {
        "id": enc_id,
        "patient_id": patient_id,
        "practitioner_id": m.comp(m.field(pv1, 7), 1) or None,
        "appointment_id": m.comp(m.field(obr, 2), 1) or None,
        "start": start,
        "end": end,
        "discipline": discipline,
        "status": status,
        "diagnoses": diagnoses,
        "procedures": procedures,
        "vitals": full_vitals,
        "note_summary": note,
        "finalized": finalized,
    }


__all__ = [
    "Hl7Options", "Unsupported", "entity_of", "iter_messages", "normalize_message", "normalize_records",
    "split_messages",
]
