"""HL7 v2 (WellSky's outbound feed) -> canonical records.

Input is a file's text: one message or a batch (FHS/BHS ... BTS/FTS), segments ended by ``\\r``, ``\\n`` or
``\\r\\n``. :func:`split_messages` cuts it into messages; :func:`normalize_message` parses one with hl7apy
(tolerant validation; vendor Z-segments and repeated segments are kept, never fatal)
and maps it onto the canonical model. hl7apy checks each header (encoding characters, supported version,
message type); the body segments are read positionally with the message's own encoding characters, because
hl7apy's full object tree costs about 20 ms per message (measured), hours for a large tenant's feed
(the header verdict is cached per header shape):

============================  =====================================================================
message                       canonical
============================  =====================================================================
ADT^A04/A08/A28/A31           patients: PID-3 (PI = WellSky id, MR, MC = Medicare MBI, MA = Medicaid),
                              PID-5/7/8/11/13, PV1-41 status (P/A/D/I), IN1 per payer (IN1-1 order,
                              IN1-3 payer id, IN1-4 payer name, IN1-36 member id)
SIU^S12-S15                   appointments: SCH-2 (else SCH-1) id, SCH-11.4/.5 start/end, SCH-25 status,
                              PID-3 patient, AIP-3 practitioner, AIP-4 (else ZSC-4, SCH-7) discipline,
                              AIS-3 service code, ZSC-2 external id, ZSC-3 payer, ZSC-5 location
ORU^R01                       encounters: OBR-3 (else PV1-19) id, OBR-2 appointment, PV1-7 practitioner,
                              PV1-10 discipline, PV1-44/45 (else OBR-7/8) start/end, OBR-25 status,
                              OBX (LOINC) vitals, OBX ``NOTE`` note summary, DG1 diagnoses (DG1-15 rank),
                              PR1 procedures, ZEN-2 finalized (default: status is completed)
============================  =====================================================================

``updated_at`` is MSH-7, which must carry a UTC offset. Every failure raises
:class:`~wellsky_core.errors.NormalizationError` naming the entity, the HL7 field and the reason — never a
value from the message (they are patient data).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_segment

from ..errors import NormalizationError
from .validation import validated

BATCH_SEGMENTS = ("FHS", "BHS", "BTS", "FTS")
SINGLE_SEGMENTS = ("MSH", "EVN", "PID", "PV1", "SCH", "OBR")
"""Segments a single ADT/SIU/ORU message of this feed holds at most once."""
PATIENT_EVENTS = {"A04", "A08", "A28", "A31", "A01", "A05"}
APPOINTMENT_EVENTS = {"S12", "S13", "S14", "S15"}
SEX = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "unknown"}
PATIENT_STATUS = {"P": "pending", "A": "active", "D": "discharged", "I": "inactive"}
FILLER_STATUS = {
    "booked": "scheduled",
    "pending": "scheduled",
    "complete": "completed",
    "cancelled": "cancelled",
    "deleted": "cancelled",
    "noshow": "missed",
}
RESULT_STATUS = {"P": "in_progress", "I": "in_progress", "F": "completed", "C": "completed", "X": "cancelled"}
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
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


def split_messages(text: str) -> list[str]:
    """Messages of a file, each with ``\\r`` terminators; batch header/trailer segments are dropped."""
    lines = re.split(r"\r\n|\r|\n", text)
    messages: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        if not line.strip():
            continue
        if line.startswith(BATCH_SEGMENTS) and (len(line) == 3 or not line[3].isalnum()):
            current = None
            continue
        if line.startswith("MSH"):
            current = [line]
            messages.append(current)
        elif current is None:
            messages.append([line])  # segments before any MSH: a message without header (reported later)
            current = messages[-1]
        else:
            current.append(line)
    return ["\r".join(m) + "\r" for m in messages]


class _Msg:
    """Positional access to a parsed message's fields, split with the message's own encoding characters."""

    def __init__(self, entity: str, segments: list[tuple[str, list[str]]], enc: dict[str, str]) -> None:
        self.entity = entity
        self.segments = segments
        self.enc = enc

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
        return [r for r in raw.split(self.enc["rep"])] if raw else []

    def comps(self, raw: str) -> list[str]:
        return [self.unescape(c) for c in raw.split(self.enc["comp"])]

    def comp(self, raw: str, n: int) -> str:
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

    def required(self, value: str, where: str) -> str:
        if not value:
            raise self.fail(where, "is required but empty")
        return value

    def timestamp(self, raw: str, where: str, required: bool = True) -> datetime | None:
        value = raw.split(self.enc["comp"])[0] if raw else ""
        if not value:
            if required:
                raise self.fail(where, "is required but empty")
            return None
        m = _DTM.match(value)
        if not m or not m.group(7):
            raise self.fail(where, "is not an HL7 timestamp with a UTC offset (YYYYMMDDHHMMSS+ZZZZ)")
        y, mo, d, h, mi, s, off = m.groups()
        try:
            naive = datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0))
        except ValueError:
            raise self.fail(where, "is not a valid calendar date/time") from None
        sign = 1 if off[0] == "+" else -1
        offset = timedelta(hours=int(off[1:3]), minutes=int(off[3:5])) * sign
        return (naive - offset).replace(tzinfo=UTC)

    def day(self, raw: str, where: str) -> date:
        value = self.required(raw.split(self.enc["comp"])[0], where)
        if not re.fullmatch(r"\d{8}(\d*)?([+-]\d{4})?", value):
            raise self.fail(where, "is not an HL7 date (YYYYMMDD)")
        try:
            return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
        except ValueError:
            raise self.fail(where, "is not a valid calendar date") from None


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
                msh,
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


def _parse(text: str) -> tuple[str, str, _Msg]:
    """hl7apy parse + structural checks; returns (message type, trigger event, accessor)."""
    if not text.startswith("MSH"):
        raise NormalizationError("hl7", "MSH", "message does not start with an MSH segment")
    if len(text) < 8:
        raise NormalizationError("hl7", "MSH-2", "MSH is truncated before its encoding characters")
    field_sep, enc_chars = text[3], text[4:8]
    if field_sep.isalnum() or len(set(field_sep + enc_chars)) != 5 or any(c.isalnum() for c in enc_chars):
        raise NormalizationError("hl7", "MSH-2", "encoding characters are not 4 distinct non-alphanumeric characters")
    for line in text.rstrip("\r").split("\r"):
        if not _SEGMENT_NAME.match(line[:3]) or (len(line) > 3 and line[3] != field_sep):
            raise NormalizationError("hl7", "segment", "a segment does not start with a 3-character segment id")
    enc = {"field": field_sep, "comp": enc_chars[0], "rep": enc_chars[1], "esc": enc_chars[2], "sub": enc_chars[3]}
    lines = text.rstrip("\r").split("\r")
    _check_header(lines[0], field_sep, enc_chars)
    segments: list[tuple[str, list[str]]] = []
    for line in lines:
        parts = line.split(field_sep)
        if parts[0] == "MSH":  # MSH-1 is the separator itself: shift so that fields[n] is MSH-n
            parts = ["MSH", field_sep, *parts[1:]]
        segments.append((parts[0], parts))
    names = [name for name, _ in segments]
    for single in SINGLE_SEGMENTS:
        if names.count(single) > 1:
            raise NormalizationError(
                "hl7",
                single,
                "segment appears more than once; a message without its MSH was probably merged into the one before it",
            )
    msh = segments[0][1]
    version = msh[12].split(enc["comp"])[0] if len(msh) > 12 else ""
    if not re.fullmatch(r"2\.[1-8](\.\d)?", version):
        raise NormalizationError("hl7", "MSH-12", "version is missing or not HL7 v2.1-2.8")
    msg_type = msh[9] if len(msh) > 9 else ""
    kind = msg_type.split(enc["comp"])
    if len(kind) < 2 or not kind[0] or not kind[1]:
        raise NormalizationError("hl7", "MSH-9", "message type is missing (expected e.g. ADT^A08)")
    return kind[0], kind[1], _Msg("hl7", segments, enc)


def entity_of(msg_type: str, event: str) -> str | None:
    if msg_type == "ADT" and event in PATIENT_EVENTS:
        return "patients"
    if msg_type == "SIU" and event in APPOINTMENT_EVENTS:
        return "appointments"
    if msg_type == "ORU" and event == "R01":
        return "encounters"
    return None


def normalize_message(text: str) -> tuple[str, dict[str, Any]]:
    """One HL7 message -> (entity, canonical JSON-ready record). Raises NormalizationError."""
    msg_type, event, m = _parse(text)
    entity = entity_of(msg_type, event)
    if entity is None:
        raise NormalizationError("hl7", "MSH-9", f"unsupported message type {msg_type}^{event}")
    m.entity = entity
    updated_at = m.timestamp(m.field(m.first("MSH"), 7), "MSH-7")
    if entity == "patients":
        rec = _patient(m)
    elif entity == "appointments":
        rec = _appointment(m, event)
    else:
        rec = _encounter(m)
    rec["updated_at"] = updated_at
    return entity, validated(entity, rec, rec.get("id"), with_type=True)


def _wellsky_id(m: _Msg, pid: list[str] | None) -> tuple[str, dict[str, str]]:
    if pid is None:
        raise m.fail("PID", "segment is missing")
    ids: dict[str, str] = {}
    for rep in m.reps(m.field(pid, 3)):
        value, kind = m.comp(rep, 1), m.comp(rep, 5)
        if value and kind and kind not in ids:
            ids[kind] = value
    if "PI" not in ids:
        raise m.fail("PID-3", "has no WellSky patient id (identifier type code PI)")
    return ids["PI"], ids


def _address(m: _Msg, raw: str) -> dict[str, Any] | None:
    first = m.reps(raw)[0] if raw else ""
    if not first.strip(m.enc["comp"]):
        return None
    return {
        "line1": m.comp(first, 1),
        "line2": m.comp(first, 2) or None,
        "city": m.comp(first, 3),
        "state": m.comp(first, 4),
        "postal_code": m.comp(first, 5),
    }


def _patient(m: _Msg) -> dict[str, Any]:
    pid = m.first("PID")
    pid_id, ids = _wellsky_id(m, pid)
    name = m.reps(m.field(pid, 5))
    if not name:
        raise m.fail("PID-5", "patient name is required")
    sex = m.field(pid, 8)
    if sex and sex not in SEX:
        raise m.fail("PID-8", "administrative sex is not one of M, F, O, U, A, N")
    pv1 = m.first("PV1")
    status_code = m.field(pv1, 41)
    if status_code not in PATIENT_STATUS:
        raise m.fail("PV1-41", "account status is missing or not one of P, A, D, I")
    phones = m.reps(m.field(pid, 13))
    phone = None
    if phones:
        phone = m.comp(phones[0], 1) or (
            f"({m.comp(phones[0], 6)}) {m.comp(phones[0], 7)[:3]}-{m.comp(phones[0], 7)[3:]}"
            if m.comp(phones[0], 7)
            else None
        )
    coverage = []
    for in1 in m.all("IN1"):
        order = m.field(in1, 1)
        if not order.isdigit():
            raise m.fail("IN1-1", "set id (order of benefits) is not a number")
        coverage.append(
            {
                "order": int(order),
                "payer_id": m.required(m.comp(m.field(in1, 3), 1) or m.comp(m.field(in1, 2), 1), "IN1-3"),
                "payer_name": m.required(m.comp(m.field(in1, 4), 1), "IN1-4"),
                "member_id": m.required(m.comp(m.field(in1, 36), 1), "IN1-36"),
            }
        )
    coverage.sort(key=lambda c: c["order"])
    return {
        "id": pid_id,
        "mrn": ids.get("MR"),
        "medicare_mbi": ids.get("MC"),
        "medicaid_id": ids.get("MA"),
        "last_name": m.required(m.comp(name[0], 1), "PID-5.1"),
        "first_name": m.required(m.comp(name[0], 2), "PID-5.2"),
        "birth_date": m.day(m.field(pid, 7), "PID-7"),
        "gender": SEX.get(sex, "unknown"),
        "phone": phone,
        "address": _address(m, m.field(pid, 11)),
        "status": PATIENT_STATUS[status_code],
        "coverage": coverage,
    }


def _appointment(m: _Msg, event: str) -> dict[str, Any]:
    sch = m.first("SCH")
    if sch is None:
        raise m.fail("SCH", "segment is missing")
    appt_id = m.comp(m.field(sch, 2), 1) or m.comp(m.field(sch, 1), 1)
    patient_id, _ = _wellsky_id(m, m.first("PID"))
    timing = m.reps(m.field(sch, 11))
    start = m.timestamp(m.comp(timing[0], 4) if timing else "", "SCH-11.4", required=False)
    end = m.timestamp(m.comp(timing[0], 5) if timing else "", "SCH-11.5", required=False)
    ais, aip, zsc = m.first("AIS"), m.first("AIP"), m.first("ZSC")
    if start is None:
        start = m.timestamp(m.field(ais, 4), "AIS-4")
    if end is None:
        minutes = m.field(ais, 7) or m.field(sch, 9)
        if not minutes.isdigit():
            raise m.fail("SCH-11.5", "end time is missing and no duration (AIS-7/SCH-9) is given")
        assert start is not None
        end = start + timedelta(minutes=int(minutes))
    status_raw = m.field(sch, 25).split(m.enc["comp"])[0].strip().lower()
    status = FILLER_STATUS.get(status_raw)
    if status is None:
        if event == "S15":
            status = "cancelled"
        else:
            raise m.fail("SCH-25", "filler status code is missing or unknown")
    discipline = m.comp(m.field(aip, 4), 1) or m.comp(m.field(zsc, 4), 1) or m.comp(m.field(sch, 7), 1)
    return {
        "id": m.required(appt_id, "SCH-2"),
        "external_id": m.comp(m.field(zsc, 2), 1) or None,
        "patient_id": patient_id,
        "practitioner_id": m.comp(m.field(aip, 3), 1) or None,
        "payer_id": m.comp(m.field(zsc, 3), 1) or None,
        "start": start,
        "end": end,
        "status": status,
        "discipline": m.required(discipline, "AIP-4"),
        "service_code": m.required(m.comp(m.field(ais, 3), 1), "AIS-3"),
        "location": _address(m, m.field(zsc, 5)),
    }


def _number(m: _Msg, raw: str, kind: type, where: str) -> int | float:
    try:
        value = float(raw)
    except ValueError:
        raise m.fail(where, "numeric observation value is not a number") from None
    if kind is int:
        if value != int(value):
            raise m.fail(where, "observation value must be a whole number")
        return int(value)
    return value


def _encounter(m: _Msg) -> dict[str, Any]:
    pv1, obr = m.first("PV1"), m.first("OBR")
    if obr is None:
        raise m.fail("OBR", "segment is missing")
    patient_id, _ = _wellsky_id(m, m.first("PID"))
    enc_id = m.comp(m.field(obr, 3), 1) or m.comp(m.field(pv1, 19), 1)
    start = m.timestamp(m.field(pv1, 44) or m.field(obr, 7), "PV1-44")
    end = m.timestamp(m.field(pv1, 45) or m.field(obr, 8), "PV1-45", required=False)
    status = RESULT_STATUS.get(m.field(obr, 25))
    if status is None:
        raise m.fail("OBR-25", "result status is missing or not one of P, I, F, C, X")
    vitals: dict[str, Any] = {}
    note = None
    for i, obx in enumerate(m.all("OBX"), start=1):
        code = m.comp(m.field(obx, 3), 1)
        if code == "NOTE":
            note = m.unescape(m.field(obx, 5))
        elif code in VITALS:
            key, kind = VITALS[code]
            vitals[key] = _number(m, m.field(obx, 5), kind, f"OBX[{i}]-5")
    diagnoses = []
    for i, dg1 in enumerate(m.all("DG1"), start=1):
        rank = m.field(dg1, 15) or m.field(dg1, 1) or str(i)
        if not rank.isdigit():
            raise m.fail(f"DG1[{i}]-15", "diagnosis priority is not a number")
        code = m.field(dg1, 3)
        diagnoses.append(
            {
                "code": m.required(m.comp(code, 1), f"DG1[{i}]-3"),
                "description": m.comp(code, 2) or None,
                "rank": int(rank),
            }
        )
    diagnoses.sort(key=lambda d: d["rank"])
    procedures = []
    for i, pr1 in enumerate(m.all("PR1"), start=1):
        code = m.field(pr1, 3)
        system = {"HCPCS": "HCPCS", "C4": "CPT", "CPT": "CPT"}.get(m.comp(code, 3))
        if system is None:
            raise m.fail(f"PR1[{i}]-3.3", "coding system is not HCPCS or C4/CPT")
        procedures.append(
            {
                "code": m.required(m.comp(code, 1), f"PR1[{i}]-3"),
                "system": system,
                "description": m.comp(code, 2) or None,
            }
        )
    zen = m.first("ZEN")
    finalized_flag = m.field(zen, 2)
    finalized = finalized_flag == "Y" if finalized_flag in ("Y", "N") else status == "completed"
    full_vitals = None
    if vitals:
        full_vitals = {key: vitals.get(key) for key, _ in VITALS.values()}
    return {
        "id": m.required(enc_id, "OBR-3"),
        "patient_id": patient_id,
        "practitioner_id": m.comp(m.field(pv1, 7), 1) or None,
        "appointment_id": m.comp(m.field(obr, 2), 1) or None,
        "start": start,
        "end": end,
        "discipline": m.required(m.field(pv1, 10), "PV1-10"),
        "status": status,
        "diagnoses": diagnoses,
        "procedures": procedures,
        "vitals": full_vitals,
        "note_summary": note,
        "finalized": finalized,
    }


__all__ = ["entity_of", "normalize_message", "split_messages"]
