"""The sandbox portal over plain HTTP: login, TOTP, reports with paging, CSV download, layout switch."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from html.parser import HTMLParser

import httpx
import pyotp
import pytest

from wellsky_sandbox.testing import SandboxServer


class Rows(HTMLParser):
    """Collects table ids, ``data-id`` of report rows and the next-page link of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[str] = []
        self.row_ids: list[str] = []
        self.links: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self.tables.append(a["id"] or "")
        if tag == "tr" and a.get("data-id"):
            self.row_ids.append(a["data-id"] or "")
        if tag == "a" and a.get("id"):
            self.links[a["id"] or ""] = a.get("href") or ""


def parse(html: str) -> Rows:
    rows = Rows()
    rows.feed(html)
    return rows


@pytest.fixture
def tenant(sandbox_factory: Callable[..., SandboxServer]) -> SandboxServer:
    return sandbox_factory(product="home_health", scale=120)


def sign_in(server: SandboxServer) -> httpx.Client:
    client = httpx.Client(base_url=server.base_url, follow_redirects=True)
    page = client.post("/portal/login", data={"username": server.username, "password": server.password})
    assert page.status_code == 200 and page.url.path == "/portal/mfa"
    done = client.post("/portal/mfa", data={"code": pyotp.TOTP(server.totp_secret).now()})
    assert done.status_code == 200 and done.url.path == "/portal/reports/authorizations"
    return client


def test_login_mfa_errors_and_guarded_reports(tenant: SandboxServer) -> None:
    with httpx.Client(base_url=tenant.base_url, follow_redirects=False) as anon:
        assert anon.get("/portal/reports/care-plans").headers["location"] == "/portal/login"
        assert anon.get("/portal/reports/authorizations.csv").status_code == 303
        assert anon.get("/portal/mfa").headers["location"] == "/portal/login"
        login = anon.get("/portal/login")
        assert login.status_code == 200 and 'id="login-form"' in login.text
        wrong = anon.post("/portal/login", data={"username": tenant.username, "password": "nope"})
        assert wrong.status_code == 401 and 'id="login-error"' in wrong.text and "incorrect" in wrong.text
        ok = anon.post("/portal/login", data={"username": tenant.username, "password": tenant.password})
        assert ok.status_code == 303 and ok.headers["location"] == "/portal/mfa"
        bad_code = anon.post(
            "/portal/mfa", data={"code": "000000" if pyotp.TOTP(tenant.totp_secret).now() != "000000" else "111111"}
        )
        assert bad_code.status_code == 401 and 'id="mfa-error"' in bad_code.text
        assert "wsk_portal" not in anon.cookies
        good = anon.post("/portal/mfa", data={"code": pyotp.TOTP(tenant.totp_secret).now()})
        assert good.status_code == 303 and {"wsk_portal", "wsk_session"} <= set(anon.cookies)
        assert anon.get("/tenant").status_code == 200  # the portal session works for the API
        anon.post("/portal/logout")
        assert anon.get("/portal/reports/care-plans").status_code == 303


def test_report_pages_cover_every_record_once(tenant: SandboxServer) -> None:
    client = sign_in(tenant)
    for path, entity, table in (
        ("/portal/reports/authorizations", "authorizations", "authorizations-report"),
        ("/portal/reports/care-plans", "care_plans", "care-plans-report"),
    ):
        seen: list[str] = []
        url: str | None = f"{path}?per_page=10"
        pages = 0
        while url:
            page = client.get(url)
            assert page.status_code == 200
            parsed = parse(page.text)
            assert parsed.tables == [table]
            seen += parsed.row_ids
            href = parsed.links.get("next-page")
            url = path + href if href else None
            pages += 1
        assert seen == [r["id"] for r in tenant.truth(entity)]
        assert pages == -(-len(seen) // 10)
    bad = client.get("/portal/reports/care-plans?cursor=garbage")
    assert bad.status_code == 400 and "invalid" in bad.text


def test_csv_download_matches_truth(tenant: SandboxServer) -> None:
    client = sign_in(tenant)
    response = client.get("/portal/reports/authorizations.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert re.fullmatch(r'attachment; filename="authorizations-\d{8}\.csv"', response.headers["content-disposition"])
    rows = list(csv.DictReader(io.StringIO(response.text)))
    truth = tenant.truth("authorizations")
    assert [r["Authorization #"] for r in rows] == [t["id"] for t in truth]
    first, want = rows[0], truth[0]
    assert first["Units Used"] == str(want["units_used"]) and first["Last Updated"] == want["updated_at"]
    y, m, d = want["start_date"].split("-")
    assert first["Start Date"] == f"{m}/{d}/{y}"
    pivot = truth[len(truth) // 2]["updated_at"]
    recent = list(
        csv.DictReader(
            io.StringIO(client.get("/portal/reports/authorizations.csv", params={"updated_since": pivot}).text)
        )
    )
    assert [r["Authorization #"] for r in recent] == [t["id"] for t in tenant.truth("authorizations", pivot)]


def test_layout_switch_renames_the_hooks(tenant: SandboxServer) -> None:
    client = sign_in(tenant)
    assert httpx.post(tenant.base_url + "/_sandbox/portal", json={"layout": "v9"}).status_code == 400
    assert tenant.control("POST", "/_sandbox/portal", json={"layout": "v2"}) == {"layout": "v2"}
    page = parse(client.get("/portal/reports/authorizations?per_page=5").text)
    assert page.tables == ["auth-grid"] and "download-csv" not in page.links and "pager-forward" in page.links
    tenant.control("POST", "/_sandbox/portal", json={"layout": "v1"})
    assert parse(client.get("/portal/reports/authorizations").text).tables == ["authorizations-report"]
