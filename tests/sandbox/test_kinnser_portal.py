"""The Kinnser-style portal of home-health and hospice tenants over plain HTTP (no browser): login, the
single-session prompt, 2-step options, expiry, office switching, pages, the legacy .xls and the billing JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest
import xlrd

from wellsky_sandbox.testing import SandboxServer

CACHE_KEY = re.compile(r"[A-Za-z0-9]{8}-[A-Za-z0-9]{4}-[A-Za-z0-9]{4}-[A-Za-z0-9]{16}:[A-Za-z0-9]{8}")


@pytest.fixture(params=["home_health", "hospice"])
def tenant(request: pytest.FixtureRequest, sandbox_factory: Callable[..., SandboxServer]) -> SandboxServer:
    return sandbox_factory(product=request.param, scale=40, sftp_port=None)


def login(server: SandboxServer, client: httpx.Client) -> str:
    page = client.post("/login.cfm", data={"username": server.username, "password": server.password})
    if "terminateSession" in page.text:
        page = client.post("/login.cfm", data={"action": "terminate"})
    assert page.url.path == "/AM/Message/inbox.cfm", page.text[:200]
    key = parse_qs(urlsplit(str(page.url)).query)["sessionCacheKey"][0]
    assert CACHE_KEY.fullmatch(key)
    return key


def cfc(client: httpx.Client, key: str, **params: str) -> dict:
    response = client.get("/AM/Billing/BillingService.cfc", params={**params, "sessionCacheKey": key})
    assert response.text.startswith("//")
    return json.loads(response.text[2:])


def test_login_pages_offices_reports_and_billing_match_truth(tenant: SandboxServer) -> None:
    client = httpx.Client(base_url=tenant.base_url, follow_redirects=True)
    login_page = client.get("/")
    assert login_page.url.path == "/login.cfm" and "Login | Kinnser Software" in login_page.text
    for hook in ('id="username"', 'name="username"', 'id="password"', 'id="login_btn"', ">Log in<"):
        assert hook in login_page.text
    wrong = client.post("/login.cfm", data={"username": tenant.username, "password": "nope"})
    assert wrong.url.path == "/login.cfm" and 'id="loginError"' in wrong.text
    key = login(tenant, client)
    inbox = client.get("/AM/Message/inbox.cfm", params={"sessionCacheKey": key, "login": "1"})
    assert "K-Mail | Kinnser Software" in inbox.text and "window.confirm(" in inbox.text
    assert 'a class="menuButton"' in inbox.text and 'onclick="gotoMenu(this)"' in inbox.text
    assert client.get("/AM/Patient/patientManager.cfm").status_code == 400  # no session cache key

    offices = tenant.control("GET", "/_sandbox/kinnser/truth/offices")["data"]
    assert [o["patients"] for o in offices if not o["corporate"]][-1] == 0  # the new office has no data
    patients_seen: list[str] = []
    for office in (o for o in offices if not o["corporate"]):
        client.get("/AM/Message/inbox.cfm", params={"swapUser": office["value"], "sessionCacheKey": key})
        pm = client.get("/AM/Patient/patientManager.cfm", params={"sessionCacheKey": key})
        assert "Patient Manager | Kinnser Software" in pm.text and f'value="{office["value"]}" selected' in pm.text
        keys = re.findall(r"patientKey=([^&\"]+)", pm.text)
        assert len(keys) == office["patients"]
        patients_seen += keys
    assert len(patients_seen) == len(tenant.truth("patients"))

    truth_claims = tenant.control("GET", "/_sandbox/kinnser/truth/claims")["data"]
    client.get("/AM/Message/inbox.cfm", params={"swapUser": "101Clinic", "sessionCacheKey": key})
    views = ("not-ready", "create-claims", "eoe-not-ready", "approve-claims", "ready-to-send", "history")
    ids = []
    for view in views:
        page, pages = 1, 1
        while page <= pages:
            body = cfc(client, key, method="getClaims", view=view, page=str(page))
            assert len(body["ROWS"]) <= 25
            ids += [r["Claim #"] for r in body["ROWS"]]
            pages, page = body["PAGES"], page + 1
    assert sorted(ids) == sorted(c["id"] for c in truth_claims if c["office"] == "North Clinic")
    export = client.get(
        "/AM/Billing/BillingService.cfc", params={"method": "exportClaims", "view": "history", "sessionCacheKey": key}
    )
    lines = export.content.decode("utf-8-sig").splitlines()
    assert lines[0].startswith("Claims History - North Clinic - As of ") and lines[1].startswith("Patient Name,MRN,")

    xls = client.get("/AM/Reports/pastDueVisits.cfm", params={"sessionCacheKey": key, "export": "xls"})
    assert xls.content[:8] == bytes.fromhex("d0cf11e0a1b11ae1")  # OLE2 compound file: a legacy BIFF .xls
    sheet = xlrd.open_workbook(file_contents=xls.content).sheet_by_index(0)
    assert sheet.name == "Past Due Visits"
    assert sheet.row_values(0) == ["Patient", "MR#", "Task", "Assigned", "Status", "Target Date", "Case Manager"]
    past_due = [
        r for r in tenant.control("GET", "/_sandbox/kinnser/truth/past_due")["data"] if r["office"] == "North Clinic"
    ]
    assert sheet.nrows - 1 == len(past_due)
    for r in range(1, sheet.nrows):
        row = sheet.row_values(r)
        assert re.fullmatch(r"\d\d/\d\d/\d{4}", row[5]) and ", " in row[0]

    missing = client.get("/AM/Reports/scheduleDeviation.cfm", params={"sessionCacheKey": key, "fromDate": "x"})
    assert 'id="deviationError"' in missing.text
    client.get("/AM/Message/inbox.cfm", params={"swapUser": "104Clinic", "sessionCacheKey": key})
    empty = client.get(
        "/AM/Reports/scheduleDeviation.cfm",
        params={"sessionCacheKey": key, "fromDate": "01/01/2026", "toDate": "06/30/2026"},
    )
    assert "alert-yellow-wide" in empty.text


def test_single_session_two_step_expiry_and_guides(sandbox_factory: Callable[..., SandboxServer]) -> None:
    tenant = sandbox_factory(product="home_health", scale=20, sftp_port=None)
    first = httpx.Client(base_url=tenant.base_url, follow_redirects=True)
    key = login(tenant, first)
    second = httpx.Client(base_url=tenant.base_url, follow_redirects=True)
    prompt = second.post("/login.cfm", data={"username": tenant.username, "password": tenant.password})
    assert "already logged in" in prompt.text and 'id="terminateSession"' in prompt.text
    assert second.post("/login.cfm", data={"action": "terminate"}).url.path == "/AM/Message/inbox.cfm"
    bounced = first.get("/AM/Patient/patientManager.cfm", params={"sessionCacheKey": key})
    assert bounced.url.path == "/login.cfm" and "logged in somewhere else" in bounced.text

    tenant.control("POST", "/_sandbox/kinnser", json={"two_step": "totp"})
    third = httpx.Client(base_url=tenant.base_url, follow_redirects=True)
    verify = third.post("/login.cfm", data={"username": tenant.username, "password": tenant.password})
    assert 'id="verificationCode"' in verify.text
    bad = third.post("/login.cfm", data={"action": "verify", "verificationCode": "000000"})
    assert 'id="verifyError"' in bad.text or pyotp.TOTP(tenant.totp_secret).now() == "000000"
    done = third.post("/login.cfm", data={"action": "verify", "verificationCode": pyotp.TOTP(tenant.totp_secret).now()})
    assert "terminateSession" in done.text  # the second client's session is still live
    key3 = parse_qs(urlsplit(str(third.post("/login.cfm", data={"action": "terminate"}).url)).query)["sessionCacheKey"][
        0
    ]

    tenant.control("POST", "/_sandbox/kinnser", json={"two_step": "email", "guide_every": 1})
    fourth = httpx.Client(base_url=tenant.base_url, follow_redirects=True)
    fourth.post("/login.cfm", data={"username": tenant.username, "password": tenant.password})
    code = [m for m in tenant.outbox() if m.get("channel") == "portal"][-1]["code"]
    page = fourth.post("/login.cfm", data={"action": "verify", "verificationCode": code})
    page = fourth.post("/login.cfm", data={"action": "terminate"})
    assert "pendo-close-guide-x" in page.text  # a covering guide on every page now

    tenant.control("POST", "/_sandbox/kinnser", json={"expire_sessions": True})
    assert third.get("/AM/Reports/reports.cfm", params={"sessionCacheKey": key3}).url.path == "/login.cfm"
    expired = fourth.get("/AM/Billing/BillingService.cfc", params={"method": "getFilters", "sessionCacheKey": "x"})
    assert expired.status_code == 401 and expired.text.startswith("//")
    assert httpx.post(tenant.base_url + "/_sandbox/kinnser", json={"layout": "v9"}).status_code == 400


def test_served_pages_record_the_session_office_per_tab_key_and_refuse_other_offices_patients(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    """The oracle the tabs test relies on: each signed-in page is listed with the office the session was in when
    it was rendered and a digest of the tab's key (a second tab's key comes from CreateNewSessionCacheKey)."""
    tenant = sandbox_factory(product="home_health", scale=40, sftp_port=None)
    client = httpx.Client(base_url=tenant.base_url, follow_redirects=True)
    key = login(tenant, client)
    answer = client.get(
        "/SessionManagement/SessionManager.cfc", params={"method": "CreateNewSessionCacheKey", "sessionCacheKey": key}
    )
    second = json.loads(answer.text[2:])["SESSIONCACHEKEY"]
    assert CACHE_KEY.fullmatch(second) and second != key
    patient = next(p["id"] for p in tenant.truth("patients"))
    episodes = tenant.control("GET", "/_sandbox/kinnser/truth/episodes")["data"]
    offices = {o["name"]: o["value"] for o in tenant.control("GET", "/_sandbox/kinnser/truth/offices")["data"]}
    home = next((offices[e["office"]] for e in episodes if e["patient_id"] == patient), None)
    other = next(v for v in offices.values() if v != home and not v.endswith("Corporation"))
    for office, tab in ((home, key), (other, second)):
        if office is None:
            continue
        client.get("/AM/Message/inbox.cfm", params={"swapUser": office, "sessionCacheKey": tab})
        client.get("/AM/Patient/episodeManager.cfm", params={"patientKey": patient, "sessionCacheKey": tab})
    served = [
        p for p in tenant.control("GET", "/_sandbox/kinnser/served")["data"] if p["path"].endswith("episodeManager.cfm")
    ]
    assert [(p["office"], p["status"]) for p in served] == [
        (o, 200 if o == home else 404) for o in (home, other) if o is not None
    ]
    assert len({p["tab"] for p in served}) == len(served)
    assert all(key not in json.dumps(p) and second not in json.dumps(p) for p in served)  # never the key itself
