"""The portal's downloadable files: the Past Due Visits legacy ``.xls`` and the billing grid exports.

Facts: "Past Due Visits" is a BIFF ``.xls`` (CDF v2) with one sheet of that name, header
``Patient | MR# | Task | Assigned | Status | Target Date | Case Manager``, dates as text ``MM/DD/YYYY`` and
names as "Last, First". Billing exports carry a title row before the header. MODELED: the billing export is
CSV (the public record names the columns, not the file type) and its exact column set.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

import xlwt

PAST_DUE_HEADER = ("Patient", "MR#", "Task", "Assigned", "Status", "Target Date", "Case Manager")
CLAIM_EXPORT_HEADER = (
    "Patient Name",
    "MRN",
    "Claim #",
    "Billing Period",
    "Insurance",
    "Type of Bill",
    "Authorization",
    "Branch",
    "Status",
    "Amount",
    "Aging",
)


def past_due_xls(rows: Iterable[tuple[str, ...]]) -> bytes:
    """A legacy Excel 97-2003 workbook (BIFF8 in an OLE2 container), every cell a text cell."""
    book = xlwt.Workbook(encoding="utf-8")
    sheet = book.add_sheet("Past Due Visits")
    bold = xlwt.easyxf("font: bold on; pattern: pattern solid, fore_colour gray25")
    text = xlwt.easyxf(num_format_str="@")
    for col, label in enumerate(PAST_DUE_HEADER):
        sheet.write(0, col, label, bold)
        sheet.col(col).width = 256 * (28 if col in (0, 2, 3, 6) else 14)
    for r, row in enumerate(rows, start=1):
        for col, value in enumerate(row):
            sheet.write(r, col, value, text)
    buf = io.BytesIO()
    book.save(buf)
    return buf.getvalue()


def claims_csv(title: str, rows: Iterable[dict[str, Any]]) -> bytes:
    """A billing grid export: a title row, then the header, then one row per claim (UTF-8 with BOM)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([title])
    writer.writerow(CLAIM_EXPORT_HEADER)
    for row in rows:
        writer.writerow([row.get(h, "") for h in CLAIM_EXPORT_HEADER])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")
