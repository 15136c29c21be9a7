"""The classic ColdFusion pages of the Kinnser-style portal (login, inbox, Patient/Episode Manager, HotBox, reports).

Every id, label and URL that the public record documents is used as documented (see
``docs/sandbox-kinnser-portal.md`` for the fact-by-fact list); ids it does not document are marked MODELED
there. Pages render server-side, like the real ``.cfm`` pages; the billing pages are client-rendered
(``billing.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..generator import parse_iso
from ..render import AGENCY_TZ
from ..tenant import Tenant
from . import data
from .exports import PAST_DUE_HEADER, past_due_xls
from .sessions import PortalSession, Sessions

COOKIE = "CFID"
LOGIN_COOKIE = "kinnser_login"
GENDER = {"female": "Female", "male": "Male", "other": "Other", "unknown": "Unknown"}
PATIENT_STATUS = {"pending": "Pending", "active": "Admitted", "discharged": "Discharged", "inactive": "Non-Admit"}
EPISODE_STATUS = {"active": "Active", "completed": "Completed", "discharged": "Discharged"}
CONFIRM_TEXT = (
    "WARNING: This system is for authorized business use only. Unauthorized access or use is prohibited and "
    "may be subject to criminal and civil penalties. Press OK to accept."
)
MAX_DEVIATION_DAYS = 366

STYLE = """body{font-family:Arial,sans-serif;font-size:12px;margin:0} #header{background:#1b4f72;color:#fff;padding:6px}
#header a{color:#fff} #content{padding:8px} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 5px}
.trred td{background:#f4d6d6} .hRowBgImage th{background:#ddd} .menu{display:none;position:absolute;background:#fff;
border:1px solid #999;padding:4px} .menu a{display:block;color:#036} .alert-yellow-wide{background:#ffc;padding:6px}
.pendo-guide{position:fixed;inset:0;z-index:100000;background:rgba(0,0,0,.45)}
.pendo-guide ._pendo-step-container{background:#fff;width:360px;margin:120px auto;padding:16px}"""

GUIDE = """<div id="pendo-guide-container" class="pendo-guide" role="dialog" aria-label="What's new">
<div class="_pendo-step-container"><button class="pendo-close-guide-x" aria-label="Close"
onclick="document.getElementById('pendo-guide-container').remove()">&times;</button>
<h3>New in this release</h3><p>Take a quick tour of the redesigned scheduling tools.</p>
<button class="pendo-button-primary" onclick="document.getElementById('pendo-guide-container').remove()">
Next</button></div></div>"""


def us(d: str | date | None) -> str:
    if d is None:
        return ""
    value = d if isinstance(d, date) else date.fromisoformat(d)
    return value.strftime("%m/%d/%Y")


def last_first(rec: dict[str, Any] | None) -> str:
    return f"{rec['last_name']}, {rec['first_name']}" if rec else ""


def clock(ts: str) -> str:
    return parse_iso(ts).astimezone(AGENCY_TZ).strftime("%I:%M %p")


class Classic:
    """Handlers for the classic pages, bound to one tenant and its portal sessions."""

    def __init__(self, tenant: Tenant, sessions: Sessions) -> None:
        self.tenant = tenant
        self.sessions = sessions
        self.books = data.Books(tenant.store, tenant.product)

    # -- page frame -----------------------------------------------------------------------------------
    def bare(self, title: str, body: str, *, status: int = 200) -> HTMLResponse:
        html = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} | Kinnser Software'
            f"</title><style>{STYLE}</style></head><body>{body}</body></html>"
        )
        return HTMLResponse(html, status_code=status)

    def url(self, path: str, key: str, **params: str) -> str:
        return f"{path}?{urlencode({**params, 'sessionCacheKey': key})}"

    def frame(self, title: str, body: str, s: PortalSession, key: str, *, status: int = 200) -> HTMLResponse:
        options = "".join(
            f'<option value="{o.value}"{" selected" if o.value == s.office.value else ""}>{escape(o.name)}</option>'
            for o in data.OFFICES
        )
        menu = [
            ("Patient Manager", self.url("/AM/Patient/patientManager.cfm", key)),
            ("HotBox", self.url("/AM/HotBox/hotbox.cfm", key)),
            ("Reports / Admin", self.url("/AM/Reports/reports.cfm", key)),
            ("Billing Manager", f"/EHR/#/AM/billing?sessionCacheKey={key}"),
            ("File/New/Patient", self.url("/AM/Patient/newPatient.cfm", key)),
        ]
        items = "".join(f'<a class="menuitem" href="{escape(h)}">{escape(t)}</a>' for t, h in menu)
        guide = ""
        every = self.sessions.settings.guide_every
        if every and s.pages % every == 0:
            guide = GUIDE
        header = (
            '<div id="header"><strong>Kinnser</strong> '
            f'<select id="swapUser" name="swapUser" onchange="swapOffice(this.value)">{options}</select> '
            '<a class="menuButton" href="javascript:void(0)" onclick="gotoMenu(this)">Go To</a>'
            f'<div id="gotoMenu" class="menu">{items}</div> '
            f'<a id="inboxLink" href="{escape(self.url("/AM/Message/inbox.cfm", key))}">K-Mail</a> '
            '<a id="logoutLink" href="/logout.cfm">Log Out</a></div>'
        )
        script = (
            "<script>"
            f"var sessionCacheKey={_js(key)};sessionStorage.setItem('sessionCacheKey',sessionCacheKey);"
            "sessionStorage.setItem('sid',String(Date.now()));localStorage.setItem('sid',sessionStorage.getItem('sid'));"
            "function gotoMenu(a){var m=document.getElementById('gotoMenu');"
            "m.style.display=m.style.display==='block'?'none':'block';}"
            "function swapOffice(v){location.href='/AM/Message/inbox.cfm?swapUser='+encodeURIComponent(v)"
            "+'&sessionCacheKey='+encodeURIComponent(sessionCacheKey);}"
            "</script>"
        )
        html = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} | Kinnser Software'
            f'</title><style>{STYLE}</style></head><body>{header}<div id="content">{body}</div>{guide}{script}'
            "</body></html>"
        )
        return HTMLResponse(html, status_code=status)

    def guarded(self, request: Request, render: Callable[[PortalSession, str], Response]) -> Response:
        """A signed-in page: bounce to the login page when the session is gone; require the cache key."""
        s, why = self.sessions.lookup(request.cookies.get(COOKIE))
        if s is None:
            reason = {"none": "login", "logged_out": "login"}.get(why, why)
            return RedirectResponse(f"/login.cfm?reason={reason}", status_code=302)
        key = request.query_params.get("sessionCacheKey", "")
        if key not in s.keys:
            body = (
                '<div id="sessionCacheKeyError" class="alert-yellow-wide">This page was opened without a valid '
                "session cache key. Open it again from the Go To menu.</div>"
            )
            return self.bare("Error", body, status=400)
        s.pages += 1
        response = render(s, key)
        patient = request.query_params.get("patientKey")
        self.sessions.record_page(request.url.path, s, key, patient, response.status_code)
        return response

    # -- login ----------------------------------------------------------------------------------------
    def login_form(self, error: str = "", status: int = 200, notice: str = "") -> HTMLResponse:
        v2 = self.sessions.settings.layout == "v2"
        user_id, pass_id = ("UserName", "Password") if v2 else ("username", "password")
        err = f'<div id="loginError" class="alert-red" role="alert">{escape(error)}</div>' if error else ""
        note = f'<div id="loginNotice" class="alert-yellow-wide">{escape(notice)}</div>' if notice else ""
        body = (
            f'<div id="loginBox"><h1>Log in</h1>{note}{err}<form id="loginForm" method="post" action="/login.cfm">'
            f'<label>Username <input id="{user_id}" name="{user_id.lower()}" type="text" autocomplete="username">'
            f'</label><label>Password <input id="{pass_id}" name="{pass_id.lower()}" type="password"></label>'
            '<input type="hidden" name="action" value="login">'
            '<button id="login_btn" type="submit">Log in</button></form></div>'
        )
        return self.bare("Login", body, status=status)

    def verify_form(self, error: str = "", status: int = 200) -> HTMLResponse:
        how = (
            "Enter the 6-digit code from your authenticator app."
            if self.sessions.settings.two_step == "totp"
            else "We emailed a 6-digit verification code to the address on file. Enter it below."
        )
        err = f'<div id="verifyError" class="alert-red" role="alert">{escape(error)}</div>' if error else ""
        body = (
            f'<div id="twoStepBox"><h1>2-Step Verification</h1><p id="twoStepMethod" data-method='
            f'"{self.sessions.settings.two_step}">{how}</p>{err}<form method="post" action="/login.cfm">'
            '<input type="hidden" name="action" value="verify">'
            '<label>Code <input id="verificationCode" name="verificationCode" inputmode="numeric" '
            'autocomplete="one-time-code"></label><button id="verify_btn" type="submit">Verify</button></form></div>'
        )
        return self.bare("2-Step Verification", body, status=status)

    def terminate_form(self) -> HTMLResponse:
        body = (
            '<div id="activeSessionBox"><h1>Active session</h1><p>You are already logged in on another device or '
            "browser. There is an active session for this user. Terminate the other session to continue?</p>"
            '<form method="post" action="/login.cfm"><input type="hidden" name="action" value="terminate">'
            '<button id="terminateSession" type="submit">Terminate</button></form>'
            '<form method="post" action="/login.cfm"><input type="hidden" name="action" value="cancel">'
            '<button id="cancelLogin" type="submit">Cancel</button></form></div>'
        )
        return self.bare("Active Session", body)

    async def get_login(self, request: Request) -> Response:
        reason = request.query_params.get("reason", "")
        notice = {
            "expired": "Your session has expired. Please log in again.",
            "terminated": "Your session was ended because you logged in somewhere else.",
        }.get(reason, "")
        return self.login_form(notice=notice)

    async def post_login(self, request: Request) -> Response:
        form = await request.form()
        action = form.get("action") or "login"
        pid = request.cookies.get(LOGIN_COOKIE)
        if action == "login":
            username, password = form.get("username"), form.get("password")
            try:
                self.tenant.security.check_password(username, password)
            except Exception:
                return self.login_form("Invalid username or password.", status=200)
            assert isinstance(username, str)
            pid, pending = self.sessions.start(username)
            response = self._after_password(pending.stage, pending.user, pid)
            response.set_cookie(LOGIN_COOKIE, pid, httponly=True, samesite="lax", max_age=300)
            return response
        pending = self.sessions.get_pending(pid)
        if pending is None or pid is None:
            return self.login_form("Your login timed out. Please log in again.")
        if action == "verify":
            code = form.get("verificationCode")
            if pending.stage != "verify":
                return self._after_password(pending.stage, pending.user, pid)
            if not isinstance(code, str) or not self.sessions.check_code(pid, code.strip()):
                if self.sessions.get_pending(pid) is None:
                    return self.login_form("Too many incorrect codes. Please log in again.")
                return self.verify_form("The verification code is incorrect or expired.")
            return self._after_password("terminate", pending.user, pid)
        if pending.stage != "terminate":
            return self.verify_form()
        if action == "terminate":
            return self._signed_in(pid, terminate=True)
        self.sessions.pending.pop(pid, None)
        return self.login_form(notice="Login cancelled.")

    def _after_password(self, stage: str, user: str, pid: str) -> Response:
        if stage == "verify":
            return self.verify_form()
        if self.sessions.live_session_of(user) is not None:
            return self.terminate_form()
        return self._signed_in(pid, terminate=False)

    def _signed_in(self, pid: str, terminate: bool) -> Response:
        s = self.sessions.finish(pid, terminate_others=terminate)
        key = next(iter(s.keys))
        response = RedirectResponse(self.url("/AM/Message/inbox.cfm", key, login="1"), status_code=302)
        response.set_cookie(COOKIE, s.token, httponly=True, samesite="lax", path="/")
        response.delete_cookie(LOGIN_COOKIE)
        return response

    async def logout(self, request: Request) -> Response:
        self.sessions.end(request.cookies.get(COOKIE))
        response = RedirectResponse("/login.cfm", status_code=302)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def new_cache_key(self, request: Request) -> Response:
        """``SessionManager.cfc?method=CreateNewSessionCacheKey``: a key for a new browser tab (JSON with ``//``)."""
        s, _ = self.sessions.lookup(request.cookies.get(COOKIE))
        if s is None or request.query_params.get("sessionCacheKey") not in s.keys:
            return Response('//{"ERROR":"SESSION_EXPIRED"}', status_code=401, media_type="application/json")
        from .sessions import new_cache_key

        key = new_cache_key()
        s.keys.add(key)
        return Response('//{"SESSIONCACHEKEY":' + _js(key) + "}", media_type="application/json")

    # -- inbox and office switching ---------------------------------------------------------------------
    async def inbox(self, request: Request) -> Response:
        def render(s: PortalSession, key: str) -> Response:
            swap = request.query_params.get("swapUser")
            if swap is not None:
                office = data.OFFICE_BY_VALUE.get(swap)
                if office is None:
                    return self.frame("K-Mail", '<div class="alert-red">Unknown office.</div>', s, key, status=400)
                s.office = office
                return RedirectResponse(self.url("/AM/Message/inbox.cfm", key), status_code=302)
            confirm = ""
            if request.query_params.get("login") == "1":
                confirm = (
                    f"<script>if(!window.confirm({_js(CONFIRM_TEXT)})){{location.href='/logout.cfm';}}"
                    "else{document.getElementById('inbox').dataset.accepted='1';}</script>"
                )
            body = (
                '<div id="inbox"><h1>K-Mail</h1><table id="messageList"><tr class="hRowBgImage"><th>From</th>'
                "<th>Subject</th><th>Date</th></tr><tr><td>WellSky</td><td>Release notes</td>"
                f"<td>{us(data.today_of(self.tenant.store))}</td></tr></table>"
                f'<div id="currentOffice" data-office="{s.office.value}">{escape(s.office.name)}</div></div>{confirm}'
            )
            return self.frame("K-Mail", body, s, key)

        return self.guarded(request, render)

    # -- Patient Manager ------------------------------------------------------------------------------
    async def patient_manager(self, request: Request) -> Response:
        def render(s: PortalSession, key: str) -> Response:
            book = self.books.get(s.office)
            heads = (
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
                "Insurance",
            )
            rows = []
            for p in sorted(book.patients, key=lambda r: (r["last_name"], r["first_name"], r["id"])):
                addr = p.get("address") or {}
                href = self.url("/AM/Patient/episodeManager.cfm", key, patientKey=p["id"])
                ins = "".join(
                    f'<li data-payer-key="{escape(c["payer_id"])}" data-member-id="{escape(c["member_id"])}" '
                    f'data-order="{c["order"]}">{escape(c["payer_name"])}</li>'
                    for c in sorted(p.get("coverage") or [], key=lambda c: c["order"])
                )
                cells = [
                    f'<a class="patientLink" href="{escape(href)}">{escape(last_first(p))}</a>',
                    escape(p.get("mrn") or ""),
                    us(p["birth_date"]),
                    GENDER[p["gender"]],
                    escape(p.get("phone") or ""),
                    escape(addr.get("line1") or ""),
                    escape(addr.get("line2") or ""),
                    escape(addr.get("city") or ""),
                    escape(addr.get("state") or ""),
                    escape(addr.get("postal_code") or ""),
                    PATIENT_STATUS[p["status"]],
                    escape(p.get("medicare_mbi") or ""),
                    escape(p.get("medicaid_id") or ""),
                    f'<ol class="insurance">{ins}</ol>',
                ]
                rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            head = '<tr class="hRowBgImage">' + "".join(f"<th>{h}</th>" for h in heads) + "</tr>"
            empty = "" if rows else '<div class="alert-yellow-wide" id="noPatients">No patients found.</div>'
            body = (
                f'<h1>Patient Manager</h1><div id="patientCount">{len(rows)} patients</div>'
                f'<table id="patientManagerList">{head}{"".join(rows)}</table>{empty}'
            )
            return self.frame("Patient Manager", body, s, key)

        return self.guarded(request, render)

    # -- Episode Manager ------------------------------------------------------------------------------
    async def episode_manager(self, request: Request) -> Response:
        def render(s: PortalSession, key: str) -> Response:
            q = request.query_params
            book = self.books.get(s.office)
            patient = book.patient(q.get("patientKey", ""))
            if patient is None:
                body = '<div class="alert-red" id="patientNotFound">Patient not found in this office.</div>'
                return self.frame("Episode Manager", body, s, key, status=404)
            episodes = book.episodes_of(patient["id"])
            head = (
                f'<h1>Episode Manager</h1><div id="patientHeader" data-patient-key="{escape(patient["id"])}">'
                f"{escape(last_first(patient))} (MR# {escape(patient.get('mrn') or '')})</div>"
            )
            if not episodes:
                body = head + '<div class="alert-yellow-wide" id="noEpisodes">This patient has no episodes.</div>'
                return self.frame("Episode Manager", body, s, key)
            idx = next((i for i, e in enumerate(episodes) if e["id"] == q.get("episodeKey")), len(episodes) - 1)
            ep = episodes[idx]
            tab = "therapy" if q.get("tab") == "therapy" else "nursing"
            link = lambda **p: escape(self.url("/AM/Patient/episodeManager.cfm", key, patientKey=patient["id"], **p))  # noqa: E731
            prev = (
                f'<a id="previouscert" href="{link(episodeKey=episodes[idx - 1]["id"])}">Previous Episode</a>'
                if idx > 0
                else ""
            )
            label = "Cert Period" if self.tenant.product == "home_health" else "Benefit Period"
            info = (
                f'<div id="episodeInfo" data-episode-key="{escape(ep["id"])}">{label} '
                f'<span id="periodNumber">{ep["period_number"]}</span>: '
                f'<span id="certPeriod">{us(ep["start_date"])} - {us(ep["end_date"])}</span> '
                f'<span id="episodeStatus">{EPISODE_STATUS[ep["status"]]}</span> '
                f'<span id="episodePayer" data-payer-key="{escape(ep["payer_id"] or "")}">'
                f"{escape(ep['payer_name'] or '')}</span> {prev}</div>"
            )
            tabs = (
                f'<div class="tabs"><a id="LinkNursing" href="{link(episodeKey=ep["id"], tab="nursing")}"'
                f"{' class=selected' if tab == 'nursing' else ''}>Nursing</a> "
                f'<a id="LinkTherapy" href="{link(episodeKey=ep["id"], tab="therapy")}"'
                f"{' class=selected' if tab == 'therapy' else ''}>Therapy</a></div>"
            )
            visits = [v for v in book.episode_visits(ep) if (v["discipline"] in data.THERAPY) == (tab == "therapy")]
            table_id = "scheduledTasks" if self.sessions.settings.layout == "v2" else "scheduled-task"
            rows = [
                '<tr class="hRowBgImage"><th>Task</th><th>Assigned To</th><th>Target Date</th><th>Time</th>'
                "<th>Status</th><th>Payer</th><th>Service</th></tr>"
            ]
            week = None
            for v in visits:
                day = data.local_day(v["start"])
                wk = day.isocalendar()[:2]
                if wk != week:
                    week = wk
                    rows.append(f'<tr class="trred"><td colspan="7">Week of {us(day)}</td></tr>')
                prac = book.practitioners.get(v.get("practitioner_id") or "")
                note = f"/am/Forms/index.cfm?PatientTaskKey={v['id']}#/index.cfm"
                payer = next((c for c in patient.get("coverage") or [] if c["payer_id"] == v.get("payer_id")), None)
                rows.append(
                    f'<tr class="taskRow" data-task-key="{escape(v["id"])}">'
                    f'<td><a class="taskLink" href="{escape(note)}">{data.TASK_NAMES[v["discipline"]]}</a></td>'
                    f'<td data-employee-key="{escape(v.get("practitioner_id") or "")}">{escape(last_first(prac))}</td>'
                    f'<td><div id="VisitDate{escape(v["id"])}">{us(day)}</div></td>'
                    f"<td>{clock(v['start'])} - {clock(v['end'])}</td>"
                    f'<td><div id="Status{escape(v["id"])}">{data.schedule_status(v, book.today)}</div></td>'
                    f'<td data-payer-key="{escape(v.get("payer_id") or "")}">'
                    f"{escape(payer['payer_name'] if payer else v.get('payer_id') or '')}</td>"
                    f"<td>{escape(v['service_code'])}</td></tr>"
                )
            empty = "" if visits else '<div class="alert-yellow-wide" id="noTasks">No tasks scheduled.</div>'
            body = f'{head}{info}{tabs}<table id="{table_id}">{"".join(rows)}</table>{empty}'
            return self.frame("Episode Manager", body, s, key)

        return self.guarded(request, render)

    # -- HotBox (rendered in a frame, DataTables paging) ----------------------------------------------
    async def hotbox(self, request: Request) -> Response:
        def render(s: PortalSession, key: str) -> Response:
            src = escape(self.url("/AM/HotBox/hotboxContent.cfm", key))
            body = (
                '<h1>HotBox</h1><a class="hotbox default" href="#">My HotBox</a>'
                f'<iframe id="hotboxFrame" name="hotboxFrame" src="{src}" style="width:100%;height:600px"></iframe>'
            )
            return self.frame("HotBox", body, s, key)

        return self.guarded(request, render)

    async def hotbox_content(self, request: Request) -> Response:
        def render(s: PortalSession, key: str) -> Response:
            book = self.books.get(s.office)
            rows = []
            for p in book.patients:
                for v in book.visits.get(p["id"], []):
                    if v["status"] == "scheduled":
                        note = f"/am/Forms/index.cfm?PatientTaskKey={v['id']}#/index.cfm"
                        rows.append(
                            f'<tr><td><a href="{escape(note)}">{escape(last_first(p))}</a></td>'
                            f"<td>{us(data.local_day(v['start']))}</td><td>{data.TASK_NAMES[v['discipline']]}</td></tr>"
                        )
            body = (
                '<select class="task-target-date"><option>All Dates</option><option>Today</option></select>'
                '<label>Show <select name="resultsTable_length" onchange="page(+this.value)">'
                + "".join(f'<option value="{n}">{n}</option>' for n in (10, 25, 50, 100))
                + '</select> entries</label><table id="resultsTable"><thead><tr><th>Patient</th><th>Date</th>'
                f"<th>Task</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
                f'<div id="resultsTable_info">Showing {min(10, len(rows))} of {len(rows)} entries</div>'
                "<script>function page(n){var r=document.querySelectorAll('#resultsTable tbody tr');"
                "r.forEach(function(tr,i){tr.style.display=i<n?'':'none';});"
                "document.getElementById('resultsTable_info').textContent='Showing '+Math.min(n,r.length)+' of '"
                "+r.length+' entries';}page(10);</script>"
            )
            return self.bare("HotBox", body)

        return self.guarded(request, render)

    # -- Reports --------------------------------------------------------------------------------------
    async def reports(self, request: Request) -> Response:
        def render(s: PortalSession, key: str) -> Response:
            links = [
                ("Past Due Visits", self.url("/AM/Reports/pastDueVisits.cfm", key)),
                ("Schedule Deviation", self.url("/AM/Reports/scheduleDeviation.cfm", key)),
            ]
            rows = "".join(
                f'<tr><td><a class="HotBox" href="{escape(h)}"><strong>{t}</strong></a></td></tr>' for t, h in links
            )
            body = f'<h1>Reports</h1><table id="ClinicalTasksTable">{rows}</table>'
            return self.frame("Reports", body, s, key)

        return self.guarded(request, render)

    def past_due_rows(self, s: PortalSession) -> list[tuple[str, ...]]:
        book = self.books.get(s.office)
        out = []
        for row in book.past_due():
            p, v = row["patient"], row["visit"]
            prac = book.practitioners.get(v.get("practitioner_id") or "")
            manager = _case_manager(book, p["id"])
            out.append(
                (
                    last_first(p),
                    p.get("mrn") or "",
                    data.TASK_NAMES[v["discipline"]],
                    last_first(prac),
                    row["status"],
                    us(data.local_day(v["start"])),
                    last_first(manager),
                )
            )
        return out

    async def past_due(self, request: Request) -> Response:
        def render(s: PortalSession, key: str) -> Response:
            rows = self.past_due_rows(s)
            if request.query_params.get("export") == "xls":
                return Response(
                    past_due_xls(rows),
                    media_type="application/vnd.ms-excel",
                    headers={"content-disposition": 'attachment; filename="PastDueVisits.xls"'},
                )
            head = "".join(f"<th>{escape(h)}</th>" for h in PAST_DUE_HEADER)
            body_rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            export = escape(self.url("/AM/Reports/pastDueVisits.cfm", key, export="xls"))
            body = (
                f'<h1>Past Due Visits</h1><a id="toExcel" class="button" href="{export}">To Excel</a>'
                f'<table id="pastDueVisits"><tr class="hRowBgImage">{head}</tr>{body_rows}</table>'
            )
            return self.frame("Past Due Visits", body, s, key)

        return self.guarded(request, render)

    async def deviation(self, request: Request) -> Response:
        def render(s: PortalSession, key: str) -> Response:
            q = request.query_params
            today = data.today_of(self.tenant.store)
            form_from, form_to = q.get("fromDate", ""), q.get("toDate", "")
            result = ""
            if form_from or form_to:
                try:
                    lo = datetime.strptime(form_from, "%m/%d/%Y").date()
                    hi = datetime.strptime(form_to, "%m/%d/%Y").date()
                except ValueError:
                    lo = hi = None
                if lo is None or hi is None or hi < lo or (hi - lo).days >= MAX_DEVIATION_DAYS:
                    result = (
                        '<div class="alert-red" id="deviationError">Enter a From and To date (MM/DD/YYYY), at most '
                        f"{MAX_DEVIATION_DAYS} days apart.</div>"
                    )
                else:
                    book = self.books.get(s.office)
                    rows = book.deviations(lo, hi)
                    if not rows:
                        result = (
                            '<div class="alert-yellow-wide">No schedule deviations were found for the selected '
                            "date range.</div>"
                        )
                    else:
                        trs = []
                        for r in rows:
                            p, v = r["patient"], r["visit"]
                            prac = book.practitioners.get(v.get("practitioner_id") or "")
                            cells = (
                                last_first(p),
                                p.get("mrn") or "",
                                data.TASK_NAMES[v["discipline"]],
                                last_first(prac),
                                us(data.local_day(v["start"])),
                                data.SCHEDULE_STATUS[v["status"]],
                            )
                            trs.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
                        result = (
                            '<table id="scheduleDeviationReport"><tr class="hRowBgImage"><th>Patient</th><th>MR#</th>'
                            "<th>Task</th><th>Clinician</th><th>Target Date</th><th>Deviation</th></tr>"
                            + "".join(trs)
                            + "</table>"
                        )
            body = (
                '<h1>Schedule Deviation</h1><form method="get" action="/AM/Reports/scheduleDeviation.cfm">'
                f'<input type="hidden" name="sessionCacheKey" value="{escape(key)}">'
                f'<label>From <input id="fromDate" name="fromDate" value="{escape(form_from)}"></label>'
                f'<label>To <input id="toDate" name="toDate" value="{escape(form_to or us(today))}"></label>'
                f'<button id="btnRunReport" type="submit">Run Report</button></form>{result}'
            )
            return self.frame("Schedule Deviation", body, s, key)

        return self.guarded(request, render)


def _case_manager(book: data.Book, patient_id: str) -> dict[str, Any] | None:
    managers = sorted(
        (p for p in book.practitioners.values() if "case_manager" in (p.get("roles") or [])), key=lambda p: p["id"]
    )
    if not managers:
        return None
    return managers[data._h("cm", patient_id) % len(managers)]


def _js(value: str) -> str:
    import json

    return json.dumps(value).replace("<", "\\u003c")
