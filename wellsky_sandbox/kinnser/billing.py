"""Billing Manager / Claims Manager and the Unbilled report: a client-rendered app under ``/EHR/#/AM/billing``.

As in the real product (an Angular app), the server sends a shell; the browser builds every grid from JSON
that ``BillingService.cfc`` returns behind the ``//`` anti-hijacking prefix. The session cache key travels
in the hash part of the URL. Documented hooks are used as documented (menu ids, tab ids, ``#nextGridPage``,
``#page1_rowSelection``, ``select[ng-model="insuranceKey"]`` with option ``1``, ``#tabExport`` /
``#btnSaveLinkText``, the spinner ``#globalAjaxLoader``, the empty-grid text, the Unbilled filter buttons and
``#aggrid_btnfetch1``, the three summary sections and the aging buckets). MODELED: the grid's own id
(``#claimGrid``), the history tab, page size 25, the JSON shapes and the Unbilled detail grid columns.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..tenant import Tenant
from . import data
from .exports import claims_csv
from .pages import COOKIE, GUIDE, STYLE, Classic, last_first, us
from .sessions import PortalSession, Sessions

PAGE_SIZE = 25
VIEWS: dict[str, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    "not-ready": ("Not Ready", lambda c: c["status"] == "not_ready" and c["claim_type"] != "EOE"),
    "create-claims": ("Ready", lambda c: c["status"] == "ready"),
    "eoe-not-ready": ("EOE Not Ready", lambda c: c["status"] == "not_ready" and c["claim_type"] == "EOE"),
    "approve-claims": ("Pending Approval", lambda c: c["status"] == "pending_approval"),
    "ready-to-send": ("Ready to Send", lambda c: c["status"] == "ready_to_send"),
    "history": ("Claims History", lambda c: c["status"] in ("sent", "paid")),
}


def money(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def _json(payload: Any, status: int = 200) -> Response:
    return Response("//" + json.dumps(payload), status_code=status, media_type="application/json")


class Billing:
    def __init__(self, tenant: Tenant, sessions: Sessions, classic: Classic) -> None:
        self.tenant = tenant
        self.sessions = sessions
        self.books = classic.books

    def _session(self, request: Request) -> PortalSession | None:
        s, _ = self.sessions.lookup(request.cookies.get(COOKIE))
        return s

    async def shell(self, request: Request) -> Response:
        s = self._session(request)
        if s is None:
            return HTMLResponse('<script>location.href="/login.cfm?reason=expired"</script>', status_code=200)
        s.pages += 1
        every = self.sessions.settings.guide_every
        guide = GUIDE if every and s.pages % every == 0 else ""
        html = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Billing Manager | Kinnser Software'
            f"</title><style>{STYLE} .dropdown ul{{display:none}} .dropdown.open ul{{display:block}}"
            ' button[disabled]{opacity:.4}</style></head><body><div id="header"><strong>Kinnser</strong> '
            '<a id="inboxLink" href="#">K-Mail</a></div><div id="globalAjaxLoader" class="loading" '
            'style="display:none">Loading...</div><div id="content"><div id="app"></div></div>'
            f"{guide}<script>{APP_JS}</script></body></html>"
        )
        return HTMLResponse(html)

    async def service(self, request: Request) -> Response:
        q = request.query_params
        s = self._session(request)
        if s is None:
            return _json({"ERROR": "SESSION_EXPIRED"}, status=401)
        if q.get("sessionCacheKey") not in s.keys:
            return _json({"ERROR": "INVALID_SESSION_CACHE_KEY"}, status=400)
        s.pages += 1
        delay = self.sessions.settings.grid_delay_ms
        if delay:
            await asyncio.sleep(delay / 1000)
        book = self.books.get(s.office)
        method = q.get("method")
        if method in ("getClaims", "exportClaims"):
            view = q.get("view", "")
            if view not in VIEWS:
                return _json({"ERROR": "UNKNOWN_VIEW"}, status=400)
            title, test = VIEWS[view]
            insurance = q.get("insuranceKey", "1")
            claims = [c for c in book.claims if test(c) and (insurance == "1" or c["payer_id"] == insurance)]
            claims.sort(key=lambda c: (c["billing_period_start"], c["id"]))
            patients = {p["id"]: p for p in book.patients}
            rows = [self._row(c, patients.get(c["patient_id"]), book.today) for c in claims]
            if method == "exportClaims":
                stamp = book.today.strftime("%Y%m%d")
                body = claims_csv(f"{title} - {s.office.name} - As of {us(book.today)}", rows)
                return Response(
                    body,
                    media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{view}-{stamp}.csv"'},
                )
            try:
                page = max(1, int(q.get("page", "1")))
            except ValueError:
                return _json({"ERROR": "INVALID_PAGE"}, status=400)
            pages = max(1, -(-len(rows) // PAGE_SIZE))
            payers = sorted({(c["payer_id"] or "", c["payer_name"]) for c in book.claims}, key=lambda p: p[1])
            return _json(
                {
                    "TITLE": title,
                    "PAGE": page,
                    "PAGES": pages,
                    "TOTAL": len(rows),
                    "ROWS": rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
                    "INSURANCES": [{"KEY": "1", "NAME": "All Insurances"}]
                    + [{"KEY": k, "NAME": n} for k, n in payers if k],
                }
            )
        if method == "getFilters":
            items = book.unbilled_items()
            return _json(
                {
                    "BRANCH": [s.office.name] if not s.office.corporate else [o.name for o in data.DATA_OFFICES],
                    "PAYER_TYPE": sorted({i["payer_type"] for i in items} | {"Medicare", "Medicaid", "Managed Care"}),
                    "INSURANCE": sorted({i["payer_name"] for i in items}),
                }
            )
        if method == "getUnbilled":
            chosen = {k: set(filter(None, q.get(k, "").split("|"))) for k in ("branch", "payerType", "insurance")}
            if not all(chosen.values()):
                return _json({"ERROR": "Select at least one Branch, Payer Type and Insurance."}, status=400)
            items = [
                i
                for i in book.unbilled_items()
                if i["office"] in chosen["branch"]
                and i["payer_type"] in chosen["payerType"]
                and i["payer_name"] in chosen["insurance"]
            ]
            return _json(self._unbilled(items, book))
        return _json({"ERROR": "UNKNOWN_METHOD"}, status=400)

    @staticmethod
    def _row(c: dict[str, Any], patient: dict[str, Any] | None, today: Any) -> dict[str, Any]:
        from datetime import date

        aging = (today - date.fromisoformat(c["billing_period_start"])).days
        return {
            "Claim #": c["id"],
            "Episode": c["episode_id"],
            "Patient Name": last_first(patient),
            "MRN": c["mrn"] or "",
            "Billing Period": f"{us(c['billing_period_start'])} - {us(c['billing_period_end'])}",
            "Insurance": c["payer_name"],
            "Type of Bill": c["type_of_bill"],
            "Authorization": c["authorization_number"] or "",
            "Branch": c["office"],
            "Status": data.CLAIM_STATUS_LABELS[c["status"]],
            "Amount": money(c["amount_cents"]),
            "Aging": str(aging),
        }

    @staticmethod
    def _unbilled(items: list[dict[str, Any]], book: data.Book) -> dict[str, Any]:
        by_type: dict[str, int] = defaultdict(int)
        aging: dict[str, int] = dict.fromkeys(data.AGING_BUCKETS, 0)
        patients = {p["id"]: p for p in book.patients}
        rows = []
        for i in sorted(items, key=lambda i: (i["office"], i["payer_name"], i["billing_period_start"], i["id"])):
            by_type[i["payer_type"]] += i["amount_cents"]
            aging[i["aging_bucket"]] += i["amount_cents"]
            rows.append(
                {
                    "patientName": last_first(patients.get(i["patient_id"])),
                    "mrn": i["mrn"] or "",
                    "claimNumber": i["id"],
                    "branch": i["office"],
                    "payerType": i["payer_type"],
                    "insurance": i["payer_name"],
                    "billingPeriod": f"{us(i['billing_period_start'])} - {us(i['billing_period_end'])}",
                    "days": str(i["age_days"]),
                    "aging": i["aging_bucket"],
                    "visits": str(i["visits"]),
                    "charges": money(i["charges_cents"]),
                    "unbilled": money(i["amount_cents"]),
                }
            )
        return {
            "ASOF": us(book.today),
            "SUMMARY": {
                "Total Unbilled": money(sum(i["amount_cents"] for i in items)),
                "Total Charges": money(sum(i["charges_cents"] for i in items)),
                "Total Visits": str(sum(i["visits"] for i in items)),
            },
            "BYPAYERTYPE": [{"type": t, "amount": money(v)} for t, v in sorted(by_type.items())],
            "AGING": [{"bucket": b, "amount": money(v)} for b, v in aging.items()],
            "ROWS": rows,
        }


UNBILLED_COLUMNS = (
    ("patientName", "Patient Name"),
    ("mrn", "MRN"),
    ("claimNumber", "Claim #"),
    ("branch", "Branch"),
    ("payerType", "Payer Type"),
    ("insurance", "Insurance"),
    ("billingPeriod", "Billing Period"),
    ("days", "Days"),
    ("aging", "Aging"),
    ("visits", "Visits"),
    ("charges", "Charges"),
    ("unbilled", "Unbilled Amount"),
)
GRID_COLUMNS = (
    "Patient Name",
    "MRN",
    "Billing Period",
    "Insurance",
    "Type of Bill",
    "Authorization",
    "Branch",
    "Status",
    "Amount",
)

APP_JS = (
    "var GRID_COLUMNS="
    + json.dumps(GRID_COLUMNS)
    + ";var UNBILLED_COLUMNS="
    + json.dumps(UNBILLED_COLUMNS)
    + ";"
    + (Path(__file__).with_name("billing.js")).read_text(encoding="utf-8")
)
