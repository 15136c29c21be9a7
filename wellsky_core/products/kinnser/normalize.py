"""Kinnser portal rows (HTML tables, the Past Due Visits ``.xls``, billing exports) -> canonical records.

Rows arrive as ``{column header: cell text}`` plus ``@``-prefixed hooks the page carries (record keys in
links and data attributes). Columns are found by header text, as every public automation of the portal does,
so a reordered table still reads; a missing column is a layout change (the caller names page and column).
Files are parsed with maintained readers: ``xlrd`` for the legacy BIFF ``.xls``, ``csv`` for exports.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ...errors import NormalizationError, ReportFormatError
from ...normalize.validation import validated

PATIENT_STATUS = {"Pending": "pending", "Admitted": "active", "Discharged": "discharged", "Non-Admit": "inactive"}
GENDER = {"Female": "female", "Male": "male", "Other": "other", "Unknown": "unknown", "F": "female", "M": "male"}
TASK_DISCIPLINE = {
    "Skilled Nurse Visit": "SN",
    "PT Visit": "PT",
    "OT Visit": "OT",
    "ST Visit": "ST",
    "MSW Visit": "MSW",
    "HHA Visit": "HHA",
}
VISIT_STATUS = {
    "Completed": "completed",
    "Missed Visit": "missed",
    "Cancelled": "cancelled",
    # documentation still open: the visit is on the schedule
    "Not Started": "scheduled",
    "Saved": "scheduled",
    "Pending Clinician Signature": "scheduled",
    "Returned for Review": "scheduled",
    "Reopened": "scheduled",
}
EPISODE_STATUS = {"Active": "active", "Completed": "completed", "Discharged": "discharged"}
CLAIM_STATUS = {
    "Not Ready": "not_ready",
    "Ready": "ready",
    "Pending Approval": "pending_approval",
    "Ready to Send": "ready_to_send",
    "Sent": "sent",
    "Paid": "paid",
}
PATIENT_COLUMNS = (
    "Patient",
    "MR#",
    "DOB",
    "Gender",
    "Phone",
    "Address",
    "Address 2",
    "City",
    "State",
    "Zip",
    "Status",
    "Medicare #",
    "Medicaid #",
)
SCHEDULE_COLUMNS = ("Task", "Assigned To", "Target Date", "Time", "Status", "Payer", "Service")
CLAIM_GRID_COLUMNS = (
    "MRN",
    "Billing Period",
    "Insurance",
    "Type of Bill",
    "Authorization",
    "Branch",
    "Status",
    "Amount",
)
PAST_DUE_COLUMNS = ("Patient", "MR#", "Task", "Assigned", "Status", "Target Date", "Case Manager")
DEVIATION_COLUMNS = ("Patient", "MR#", "Task", "Target Date", "Deviation")
UNBILLED_COLUMNS = (
    "MRN",
    "Claim #",
    "Branch",
    "Payer Type",
    "Insurance",
    "Billing Period",
    "Days",
    "Aging",
    "Visits",
    "Charges",
    "Unbilled Amount",
)
AGING_BUCKETS = ("0-30", "31-60", "61-90", "91-120", "121-150", "151-180", "181-210", "211-240", "241+")


# -- cell readers ---------------------------------------------------------------------------------------
def us_date(value: str, entity: str, field: str, record_id: str | None = None) -> str | None:
    """``MM/DD/YYYY`` -> ISO date; empty -> None."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        return datetime.strptime(value, "%m/%d/%Y").date().isoformat()
    except ValueError:
        raise NormalizationError(entity, field, "expected a date as MM/DD/YYYY", record_id=record_id) from None


def period(value: str, entity: str, field: str, record_id: str | None = None) -> tuple[str, str]:
    """``MM/DD/YYYY - MM/DD/YYYY`` -> (start, end) ISO dates."""
    parts = [p.strip() for p in (value or "").split(" - ")]
    if len(parts) != 2:
        raise NormalizationError(entity, field, "expected MM/DD/YYYY - MM/DD/YYYY", record_id=record_id)
    start, end = (us_date(p, entity, field, record_id) for p in parts)
    if start is None or end is None:
        raise NormalizationError(entity, field, "expected MM/DD/YYYY - MM/DD/YYYY", record_id=record_id)
    return start, end


def money(value: str, entity: str, field: str, record_id: str | None = None) -> float:
    """``$1,234.56`` / ``($12.00)`` -> 1234.56 / -12.0 (dollars, rounded to cents)."""
    text = (value or "").strip().replace(",", "").replace("$", "")
    negative = text.startswith("(") and text.endswith(")")
    text = text.strip("()")
    try:
        amount = round(float(text), 2)
    except ValueError:
        raise NormalizationError(entity, field, "expected an amount like $1,234.56", record_id=record_id) from None
    return -amount if negative else amount


def whole(value: str, entity: str, field: str, record_id: str | None = None) -> int:
    try:
        return int((value or "").strip().replace(",", ""))
    except ValueError:
        raise NormalizationError(entity, field, "expected a whole number", record_id=record_id) from None


def split_name(value: str) -> tuple[str, str]:
    """ "Last, First" -> (first, last)."""
    last, _, first = (value or "").partition(",")
    return first.strip(), last.strip()


def _code(table: Mapping[str, str], value: str, entity: str, field: str, record_id: str | None) -> str:
    text = (value or "").strip()
    if text not in table:
        raise NormalizationError(
            entity, field, f"unknown value; expected one of {', '.join(table)}", record_id=record_id
        )
    return table[text]


def local_time(day: str, clock: str, tz: ZoneInfo, entity: str, field: str, record_id: str) -> datetime:
    try:
        naive = datetime.strptime(f"{day} {clock.strip()}", "%Y-%m-%d %I:%M %p")
    except ValueError:
        raise NormalizationError(entity, field, "expected a time like 01:30 PM", record_id=record_id) from None
    return naive.replace(tzinfo=tz).astimezone(UTC)


def _utc(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- records ----------------------------------------------------------------------------------------------
def patient(row: Mapping[str, Any], observed: str) -> dict[str, Any]:
    entity = "patients"
    rid = str(row.get("@patient_key") or "")
    if not rid:
        raise NormalizationError(entity, "id", "the patient link carries no patientKey")
    first, last = split_name(row["Patient"])
    line1, city = row["Address"].strip(), row["City"].strip()
    address = None
    if line1 or city:
        address = {
            "line1": line1,
            "line2": row["Address 2"].strip() or None,
            "city": city,
            "state": row["State"].strip(),
            "postal_code": row["Zip"].strip(),
        }
    data = {
        "id": rid,
        "mrn": row["MR#"].strip() or None,
        "medicare_mbi": row["Medicare #"].strip() or None,
        "medicaid_id": row["Medicaid #"].strip() or None,
        "first_name": first,
        "last_name": last,
        "birth_date": us_date(row["DOB"], entity, "birth_date", rid),
        "gender": _code(GENDER, row["Gender"], entity, "gender", rid),
        "phone": row["Phone"].strip() or None,
        "address": address,
        "status": _code(PATIENT_STATUS, row["Status"], entity, "status", rid),
        "coverage": [
            {
                "payer_id": c.get("payer_key") or "",
                "payer_name": c.get("text") or "",
                "member_id": c.get("member_id") or "",
                "order": int(c.get("order") or i + 1),
            }
            for i, c in enumerate(row.get("@insurance") or [])
        ],
        "updated_at": observed,
    }
    return validated(entity, data, rid)


def appointment(row: Mapping[str, Any], patient_id: str, tz: ZoneInfo, observed: str) -> dict[str, Any]:
    entity = "appointments"
    rid = str(row.get("@task_key") or "")
    if not rid:
        raise NormalizationError(entity, "id", "the schedule row carries no task key")
    day = us_date(row["Target Date"], entity, "start", rid)
    if day is None:
        raise NormalizationError(entity, "start", "the schedule row has no target date", record_id=rid)
    begin, _, finish = row["Time"].partition(" - ")
    start = local_time(day, begin, tz, entity, "start", rid)
    end = local_time(day, finish, tz, entity, "end", rid)
    if end <= start:  # a visit past midnight
        end += timedelta(days=1)
    discipline = _code(TASK_DISCIPLINE, row["Task"], entity, "discipline", rid)
    data = {
        "id": rid,
        "external_id": None,
        "patient_id": patient_id,
        "practitioner_id": row.get("@employee_key") or None,
        "payer_id": row.get("@payer_key") or None,
        "start": _utc(start),
        "end": _utc(end),
        "status": _code(VISIT_STATUS, row["Status"], entity, "status", rid),
        "discipline": discipline,
        "service_code": row["Service"].strip(),
        "location": None,
        "updated_at": observed,
    }
    return validated(entity, data, rid)


def episode(info: Mapping[str, Any], patient_id: str, office: str, observed: str) -> dict[str, Any]:
    entity = "episodes"
    rid = str(info.get("@episode_key") or "")
    if not rid:
        raise NormalizationError(entity, "id", "the episode header carries no episode key")
    start, end = period(info["period"], entity, "start_date", rid)
    data = {
        "id": rid,
        "patient_id": patient_id,
        "office": office,
        "period_number": whole(info["number"], entity, "period_number", rid),
        "start_date": start,
        "end_date": end,
        "status": _code(EPISODE_STATUS, info["status"], entity, "status", rid),
        "payer_id": info.get("@payer_key") or None,
        "payer_name": (info.get("payer") or "").strip() or None,
        "updated_at": observed,
    }
    return validated(entity, data, rid)


def claim_type(type_of_bill: str, entity: str = "claims", record_id: str | None = None) -> str:
    """UB-04 type of bill -> RAP / EOE / final (home health 322 = RAP, 32x = end of episode; hospice 81x)."""
    tob = type_of_bill.strip().lstrip("0")
    if tob == "322":
        return "RAP"
    if tob.startswith("32"):
        return "EOE"
    if tob.startswith("81") or tob.startswith("82"):
        return "final"
    raise NormalizationError(
        entity, "type_of_bill", "not a home-health (32x) or hospice (81x) type of bill", record_id=record_id
    )


def claim(row: Mapping[str, Any], patients_by_mrn: Mapping[str, str], observed: str) -> dict[str, Any]:
    entity = "claims"
    rid = str(row.get("@claim") or row.get("Claim #") or "").strip()
    if not rid:
        raise NormalizationError(entity, "id", "the grid row carries no claim number")
    start, end = period(row["Billing Period"], entity, "billing_period", rid)
    mrn = row["MRN"].strip() or None
    data = {
        "id": rid,
        "patient_id": patients_by_mrn.get(mrn or ""),
        "mrn": mrn,
        "episode_id": row.get("@episode") or None,
        "office": row["Branch"].strip(),
        "claim_type": claim_type(row["Type of Bill"], entity, rid),
        "type_of_bill": row["Type of Bill"].strip(),
        "billing_period_start": start,
        "billing_period_end": end,
        "payer_name": row["Insurance"].strip(),
        "authorization_number": row["Authorization"].strip() or None,
        "status": _code(CLAIM_STATUS, row["Status"], entity, "status", rid),
        "amount": money(row["Amount"], entity, "amount", rid),
        "updated_at": observed,
    }
    return validated(entity, data, rid)


def unbilled(rows: Iterable[Mapping[str, str]], as_of: str, observed: str) -> list[dict[str, Any]]:
    """The Unbilled report's detail rows -> one record per office, payer and aging bucket."""
    entity = "unbilled"
    snapshot = us_date(as_of, entity, "snapshot_date")
    if snapshot is None:
        raise NormalizationError(entity, "snapshot_date", "the report shows no As of date")
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        cid = row.get("Claim #")
        bucket = row["Aging"].strip()
        key = (row["Branch"].strip(), row["Insurance"].strip(), bucket)
        g = groups.setdefault(
            key,
            {
                "id": f"{snapshot}|{key[0]}|{key[1]}|{key[2]}",
                "snapshot_date": snapshot,
                "office": key[0],
                "payer_name": key[1],
                "payer_type": row["Payer Type"].strip(),
                "aging_bucket": bucket,
                "claims": 0,
                "visits": 0,
                "amount": 0,
                "charges": 0,
                "updated_at": observed,
            },
        )
        g["claims"] += 1
        g["visits"] += whole(row["Visits"], entity, "visits", cid)
        g["amount"] += round(money(row["Unbilled Amount"], entity, "amount", cid) * 100)
        g["charges"] += round(money(row["Charges"], entity, "charges", cid) * 100)
    out = []
    for g in groups.values():
        g["amount"], g["charges"] = g["amount"] / 100, g["charges"] / 100
        out.append(validated(entity, g, g["id"]))
    return sorted(out, key=lambda r: r["id"])


# -- files ------------------------------------------------------------------------------------------------


def _header_index(rows: list[list[str]], required: tuple[str, ...], what: str) -> tuple[int, dict[str, int]]:
    """The first row holding every required column (title rows before it are skipped)."""
    for i, row in enumerate(rows[:20]):
        cells = [c.strip() for c in row]
        if all(col in cells for col in required):
            return i, {c: j for j, c in enumerate(cells) if c}
    missing = required
    if rows:
        first = [c.strip() for c in rows[0]]
        missing = tuple(c for c in required if c not in first) or required
    raise ReportFormatError(what, f'column "{missing[0]}"', "header row not found in the first 20 rows")


def read_past_due_xls(source: bytes | str | Path) -> list[dict[str, str]]:
    """Rows of the Past Due Visits legacy ``.xls`` (BIFF, read with xlrd) as ``{header: text}``."""
    import xlrd

    try:
        if isinstance(source, bytes):
            book = xlrd.open_workbook(file_contents=source)
        else:
            book = xlrd.open_workbook(str(source))
    except xlrd.XLRDError as exc:
        raise ReportFormatError("past_due", "file", f"not a legacy .xls workbook ({exc})") from None
    sheet = next((s for s in book.sheets() if s.name == "Past Due Visits"), book.sheet_by_index(0))
    rows = [[_xls_text(book, sheet.cell(r, c)) for c in range(sheet.ncols)] for r in range(sheet.nrows)]
    start, index = _header_index(rows, PAST_DUE_COLUMNS, "past_due")
    out = []
    for row in rows[start + 1 :]:
        if not any(cell.strip() for cell in row):
            continue
        out.append({col: (row[j].strip() if j < len(row) else "") for col, j in index.items()})
    return out


def _xls_text(book: Any, cell: Any) -> str:
    """A cell as the portal meant it: text stays text; a real date or number cell is spelled like the text ones."""
    import xlrd

    if cell.ctype == xlrd.XL_CELL_DATE:
        dt = xlrd.xldate_as_datetime(cell.value, book.datemode)
        return dt.strftime("%m/%d/%Y")
    if cell.ctype == xlrd.XL_CELL_NUMBER:
        return str(int(cell.value)) if float(cell.value).is_integer() else str(cell.value)
    return str(cell.value)


def read_claims_export(
    text: str | bytes, required: tuple[str, ...] = ("MRN", "Billing Period")
) -> tuple[str, list[dict[str, str]]]:
    """A billing list export: (title, rows). The title row(s) before the header are skipped, not read as data."""
    if isinstance(text, bytes):
        text = text.decode("utf-8-sig")
    text = text.lstrip("\ufeff")
    rows = list(csv.reader(io.StringIO(text)))
    start, index = _header_index(rows, required, "claims export")
    title = " ".join(c for row in rows[:start] for c in row if c.strip())
    out = []
    for row in rows[start + 1 :]:
        if not any(cell.strip() for cell in row):
            continue
        out.append({col: (row[j].strip() if j < len(row) else "") for col, j in index.items()})
    return title, out


def export_key(row: Mapping[str, str]) -> tuple[str, str]:
    """What identifies a claim in both the grid and the export: (MRN, billing period)."""
    return (row.get("MRN", "").strip(), re.sub(r"\s+", " ", row.get("Billing Period", "").strip()))
