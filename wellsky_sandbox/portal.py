"""The tenant's web portal: HTML login, TOTP page, and portal-only reports (HTML tables and a CSV download).

Some data (the authorization utilization report, the care-plan report) is only reachable through the portal,
which is why the connector drives a real browser through it. The portal always enforces TOTP (as agencies'
portals do, whatever the API's MFA setting); a successful login sets ``wsk_portal`` and the API's
``wsk_session`` cookie for the same session, so a client holding the browser's cookies can call the API.

The markup has stable hooks (table ids, ``data-field`` cells, ``#next-page``, ``#download-csv``) in layout
``v1``. ``POST /_sandbox/portal {"layout": "v2"}`` switches this tenant to a redesigned layout with renamed
ids, the way a vendor release silently breaks scrapers; the connector must notice and say so.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from datetime import date
from html import escape
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from .security import SESSION_COOKIE, AuthFailure
from .store import decode_cursor, encode_cursor, epoch
from .tenant import Tenant, public

PORTAL_COOKIE = "wsk_portal"
MFA_COOKIE = "wsk_portal_mfa"
DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 200

LAYOUTS: dict[str, dict[str, str]] = {
    "v1": {
        "authorizations_table": "authorizations-report",
        "care_plans_table": "care-plans-report",
        "next": "next-page",
        "csv": "download-csv",
    },
    "v2": {
        "authorizations_table": "auth-grid",
        "care_plans_table": "cp-grid",
        "next": "pager-forward",
        "csv": "export-button",
    },
}

AUTH_COLUMNS = (
    ("id", "Authorization #"),
    ("patient_id", "Patient ID"),
    ("payer_id", "Payer ID"),
    ("payer_name", "Payer"),
    ("member_id", "Member ID"),
    ("service_codes", "Service Codes"),
    ("unit_type", "Unit Type"),
    ("rounding", "Rounding"),
    ("units_authorized", "Units Authorized"),
    ("units_used", "Units Used"),
    ("start_date", "Start Date"),
    ("end_date", "End Date"),
    ("status", "Status"),
    ("updated_at", "Last Updated"),
)
CARE_PLAN_COLUMNS = (
    ("id", "Care Plan #"),
    ("patient_id", "Patient ID"),
    ("status", "Status"),
    ("period_start", "Start"),
    ("period_end", "End"),
    ("goals", "Goals"),
    ("interventions", "Interventions"),
    ("outcomes", "Outcomes"),
    ("updated_at", "Last Updated"),
)
UNIT_LABELS = {"visit": "Visits", "hour": "Hours", "15min": "15-min units"}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - WellSky Portal</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px}}
.error{{color:#b00}}</style></head>
<body><header><strong>WellSky Portal</strong> {nav}</header><main>{body}</main></body></html>"""


def us_date(value: str | None) -> str:
    """Portal dates read the way agency staff write them: MM/DD/YYYY."""
    return date.fromisoformat(value).strftime("%m/%d/%Y") if value else ""


def _time(value: str) -> str:
    return f'<time datetime="{escape(value)}">{escape(value.replace("T", " ").replace("Z", " UTC"))}</time>'


class Portal:
    """HTML handlers bound to one tenant."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.security = tenant.security
        self.layout = "v1"

    # -- rendering ----------------------------------------------------------------------------------------
    def page(self, title: str, body: str, *, status: int = 200, signed_in: bool = False) -> HTMLResponse:
        nav = ""
        if signed_in:
            nav = (
                '<nav><a href="/portal/reports/authorizations">Authorizations</a> | '
                '<a href="/portal/reports/care-plans">Care plans</a> '
                '<form method="post" action="/portal/logout" style="display:inline">'
                '<button id="logout" type="submit">Sign out</button></form></nav>'
            )
        return HTMLResponse(PAGE.format(title=escape(title), nav=nav, body=body), status_code=status)

    def login_form(self, error: str | None = None, status: int = 200) -> HTMLResponse:
        err = f'<p class="error" id="login-error" role="alert">{escape(error)}</p>' if error else ""
        body = (
            f"<h1>Sign in</h1>{err}"
            '<form id="login-form" method="post" action="/portal/login">'
            '<label>Username <input id="username" name="username" type="text" autocomplete="username"></label>'
            '<label>Password <input id="password" name="password" type="password"></label>'
            '<button id="sign-in" type="submit">Sign in</button></form>'
        )
        return self.page("Sign in", body, status=status)

    def mfa_form(self, error: str | None = None, status: int = 200) -> HTMLResponse:
        err = f'<p class="error" id="mfa-error" role="alert">{escape(error)}</p>' if error else ""
        body = (
            f"<h1>Verify it's you</h1>{err}<p>Enter the 6-digit code from your authenticator app.</p>"
            '<form id="mfa-form" method="post" action="/portal/mfa">'
            '<label>Code <input id="code" name="code" inputmode="numeric" autocomplete="one-time-code"></label>'
            '<button id="verify" type="submit">Verify</button></form>'
        )
        return self.page("Verify", body, status=status)

    # -- sign-in flow -------------------------------------------------------------------------------------
    async def get_login(self, request: Request) -> Response:
        return self.login_form()

    async def post_login(self, request: Request) -> Response:
        form = await request.form()
        username, password = form.get("username"), form.get("password")
        try:
            self.security.check_password(username, password)
        except AuthFailure:
            return self.login_form("Username or password is incorrect.", status=401)
        assert isinstance(username, str)
        challenge = self.security.start_challenge(username)
        response = RedirectResponse("/portal/mfa", status_code=303)
        response.set_cookie(MFA_COOKIE, challenge, httponly=True, samesite="lax", path="/portal", max_age=300)
        return response

    async def get_mfa(self, request: Request) -> Response:
        if not request.cookies.get(MFA_COOKIE):
            return RedirectResponse("/portal/login", status_code=303)
        return self.mfa_form()

    async def post_mfa(self, request: Request) -> Response:
        challenge = request.cookies.get(MFA_COOKIE)
        if not challenge:
            return RedirectResponse("/portal/login", status_code=303)
        code = (await request.form()).get("code")
        try:
            user = self.security.complete_challenge(challenge, "totp", code if isinstance(code, str) else "")
        except AuthFailure as exc:
            if exc.code in ("unknown_challenge", "mfa_locked"):
                response = self.login_form("Verification expired or locked; sign in again.", status=401)
                response.delete_cookie(MFA_COOKIE, path="/portal")
                return response
            return self.mfa_form("That code is incorrect or expired.", status=401)
        _, token = self.security.new_session(user)
        response = RedirectResponse("/portal/reports/authorizations", status_code=303)
        response.delete_cookie(MFA_COOKIE, path="/portal")
        self._set_session(response, token)
        return response

    @staticmethod
    def _set_session(response: Response, token: str) -> None:
        for name in (PORTAL_COOKIE, SESSION_COOKIE):
            response.set_cookie(name, token, httponly=True, samesite="lax", path="/")

    async def logout(self, request: Request) -> Response:
        token = request.cookies.get(PORTAL_COOKIE)
        if token:
            self.security.logout(token)
        response = RedirectResponse("/portal/login", status_code=303)
        for name in (PORTAL_COOKIE, SESSION_COOKIE):
            response.delete_cookie(name, path="/")
        return response

    def _signed_in(self, request: Request, render: Callable[[], Response]) -> Response:
        """Run ``render`` for a signed-in user (rotating the cookie like the API does), else go to login."""
        token = request.cookies.get(PORTAL_COOKIE)
        if not token:
            return RedirectResponse("/portal/login", status_code=303)
        try:
            _, rotated = self.security.session_for_cookie(token)
        except AuthFailure:
            response = RedirectResponse("/portal/login", status_code=303)
            response.delete_cookie(PORTAL_COOKIE, path="/")
            return response
        response = render()
        if rotated:
            self._set_session(response, rotated)
        return response

    # -- reports ------------------------------------------------------------------------------------------
    def _query(self, request: Request) -> tuple[int | None, tuple[int, str] | None, int, int] | str:
        q = request.query_params
        try:
            since = epoch(q["updated_since"]) if q.get("updated_since") else None
            cursor = decode_cursor(q["cursor"]) if q.get("cursor") else None
            per_page = int(q.get("per_page", DEFAULT_PER_PAGE))
            page_no = int(q.get("page", "1"))
        except (ValueError, KeyError):
            return "The report link is invalid; open the report from the menu."
        if not 1 <= per_page <= MAX_PER_PAGE or page_no < 1:
            return f"per_page must be 1 to {MAX_PER_PAGE}."
        return since, cursor, per_page, page_no

    def _report(
        self,
        request: Request,
        entity: str,
        title: str,
        table_key: str,
        columns: tuple[tuple[str, str], ...],
        cell: Callable[[str, dict[str, Any]], str],
        extra: str = "",
    ) -> Response:
        parsed = self._query(request)
        if isinstance(parsed, str):
            return self.page(title, f'<p class="error" role="alert">{escape(parsed)}</p>', status=400, signed_in=True)
        since, cursor, per_page, page_no = parsed
        records, nxt = self.tenant.store.page(entity, since=since, cursor=cursor, limit=per_page)
        ids = LAYOUTS[self.layout]
        head = "".join(f'<th data-field="{f}" scope="col">{escape(label)}</th>' for f, label in columns)
        rows = "".join(
            f'<tr class="report-row" data-id="{escape(rec["id"])}">'
            + "".join(f'<td data-field="{f}">{cell(f, rec)}</td>' for f, _ in columns)
            + "</tr>"
            for rec in (public(r) for r in records)
        )
        pager = f'<span id="page-info">Page {page_no}</span>'
        if nxt:
            params = {k: v for k, v in request.query_params.items() if k not in ("cursor", "page")}
            params.update(cursor=encode_cursor(*nxt), page=str(page_no + 1))
            pager += f' <a id="{ids["next"]}" rel="next" href="?{escape(urlencode(params))}">Next page</a>'
        empty = "" if records else '<p id="no-results">No records match.</p>'
        body = (
            f"<h1>{escape(title)}</h1>{extra}"
            f'<table id="{ids[table_key]}" class="report"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
            f'{empty}<nav class="pager">{pager}</nav>'
        )
        return self.page(title, body, signed_in=True)

    async def authorizations(self, request: Request) -> Response:
        def cell(field: str, rec: dict[str, Any]) -> str:
            value = rec.get(field)
            if field == "service_codes":
                return escape(", ".join(value or []))
            if field == "unit_type":
                return f'<span data-unit="{escape(value)}">{UNIT_LABELS.get(value, escape(str(value)))}</span>'
            if field in ("start_date", "end_date"):
                return us_date(value)
            if field == "status":
                return escape(str(value).title())
            if field == "updated_at":
                return _time(value)
            return escape("" if value is None else str(value))

        def render() -> Response:
            since = request.query_params.get("updated_since")
            href = "/portal/reports/authorizations.csv" + (f"?{urlencode({'updated_since': since})}" if since else "")
            link = f'<p><a id="{LAYOUTS[self.layout]["csv"]}" href="{escape(href)}" download>Download CSV</a></p>'
            return self._report(
                request, "authorizations", "Authorizations", "authorizations_table", AUTH_COLUMNS, cell, link
            )

        return self._signed_in(request, render)

    async def care_plans(self, request: Request) -> Response:
        def items(
            kind: str, entries: Iterable[dict[str, Any]], attrs: Callable[[dict[str, Any]], dict[str, Any]]
        ) -> str:
            lis = []
            for entry in entries:
                data = " ".join(f'data-{k}="{escape(str(v))}"' for k, v in attrs(entry).items() if v is not None)
                lis.append(f'<li class="{kind}" {data}>{escape(entry["description"])}</li>')
            return f'<ul class="{kind}s">{"".join(lis)}</ul>' if lis else ""

        def cell(field: str, rec: dict[str, Any]) -> str:
            value = rec.get(field)
            if field == "goals":
                return items("goal", value, lambda g: {"status": g["status"], "target-date": g.get("target_date")})
            if field == "interventions":
                return items(
                    "intervention", value, lambda i: {"discipline": i["discipline"], "frequency": i.get("frequency")}
                )
            if field == "outcomes":
                return items(
                    "outcome",
                    value,
                    lambda o: {"achieved": "yes" if o["achieved"] else "no", "recorded-on": o["recorded_on"]},
                )
            if field in ("period_start", "period_end"):
                return us_date(value)
            if field == "status":
                return escape(str(value).title())
            if field == "updated_at":
                return _time(value)
            return escape("" if value is None else str(value))

        return self._signed_in(
            request,
            lambda: self._report(request, "care_plans", "Care plans", "care_plans_table", CARE_PLAN_COLUMNS, cell),
        )

    async def authorizations_csv(self, request: Request) -> Response:
        def render() -> Response:
            since = request.query_params.get("updated_since")
            try:
                since_epoch = epoch(since) if since else None
            except ValueError:
                return Response("updated_since must be an ISO 8601 timestamp\n", status_code=400)
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\r\n")
            writer.writerow(label for _, label in AUTH_COLUMNS)
            for rec in self.tenant.store.iter_all("authorizations", since_epoch):
                writer.writerow(
                    [
                        rec["id"],
                        rec["patient_id"],
                        rec["payer_id"],
                        rec["payer_name"],
                        rec["member_id"],
                        ";".join(rec["service_codes"]),
                        rec["unit_type"],
                        rec.get("rounding", "nearest"),
                        rec["units_authorized"],
                        rec["units_used"],
                        us_date(rec["start_date"]),
                        us_date(rec["end_date"]),
                        rec["status"].title(),
                        rec["updated_at"],
                    ]
                )
            stamp = self.tenant.store.now()[:10].replace("-", "")
            return Response(
                buf.getvalue(),
                media_type="text/csv; charset=utf-8",
                headers={"content-disposition": f'attachment; filename="authorizations-{stamp}.csv"'},
            )

        return self._signed_in(request, render)

    # -- control ------------------------------------------------------------------------------------------
    async def set_layout(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            body = None
        layout = body.get("layout") if isinstance(body, dict) else None
        if layout not in LAYOUTS:
            return Response(
                orjson.dumps(
                    {"error": "invalid_request", "message": f'body must be {{"layout": one of {sorted(LAYOUTS)}}}'}
                ),
                status_code=400,
                media_type="application/json",
            )
        self.layout = layout
        return Response(orjson.dumps({"layout": layout}), media_type="application/json")


def routes(tenant: Tenant) -> list[BaseRoute]:
    """Mounted by ``app.build_app`` ahead of the REST catch-all routes."""
    portal = Portal(tenant)
    return [
        Route("/portal", lambda request: RedirectResponse("/portal/login", status_code=303)),
        Route("/portal/login", portal.get_login, methods=["GET"]),
        Route("/portal/login", portal.post_login, methods=["POST"]),
        Route("/portal/mfa", portal.get_mfa, methods=["GET"]),
        Route("/portal/mfa", portal.post_mfa, methods=["POST"]),
        Route("/portal/logout", portal.logout, methods=["POST"]),
        Route("/portal/reports/authorizations", portal.authorizations, methods=["GET"]),
        Route("/portal/reports/authorizations.csv", portal.authorizations_csv, methods=["GET"]),
        Route("/portal/reports/care-plans", portal.care_plans, methods=["GET"]),
        Route("/_sandbox/portal", portal.set_layout, methods=["POST"]),
    ]
