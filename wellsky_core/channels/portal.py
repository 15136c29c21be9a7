"""The portal channel: a real headless Chromium (Playwright) signs in to the agency's web portal and reads the
portal-only reports: the authorization utilization report (as its CSV download) and the care-plan report (HTML
table pages).

Portals change without notice, so every element the channel relies on is checked; a missing one raises
:class:`PortalLayoutChanged` naming the page and the selector, and no record of the entity is yielded: rows are
collected completely before the first one is handed out, so a layout change never produces half the data.
The browser session's cookies are exposed (:meth:`PortalChannel.cookies`) so the core can reuse the session for
API calls instead of logging in twice.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import pyotp

from ..chromium import close_browser, launch_chromium, start_playwright
from ..errors import AuthError, ConfigError, MfaError, NormalizationError, PortalLayoutChanged, WellSkyError
from ..models import CarePlan
from ..normalize.portal import authorization_row, care_plan_row

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright


from .base import Channel

log = logging.getLogger(__name__)

SELECTORS = {
    "username": "#username",
    "password": "#password",
    "sign_in": "#sign-in",
    "login_error": "#login-error",
    "code": "#code",
    "verify": "#verify",
    "mfa_error": "#mfa-error",
    "authorizations_table": "table#authorizations-report",
    "care_plans_table": "table#care-plans-report",
    "csv_link": "a#download-csv",
    "next": "a#next-page",
    "any_next": "a[rel=next]",
}
AUTH_CSV_COLUMNS = {
    "Authorization #": "id",
    "Patient ID": "patient_id",
    "Payer ID": "payer_id",
    "Payer": "payer_name",
    "Member ID": "member_id",
    "Service Codes": "service_codes",
    "Unit Type": "unit_type",
    "Rounding": "rounding",
    "Units Authorized": "units_authorized",
    "Units Used": "units_used",
    "Start Date": "start_date",
    "End Date": "end_date",
    "Status": "status",
    "Last Updated": "updated_at",
}
CARE_PLAN_FIELDS = tuple(
    f for f in CarePlan.model_fields if f not in ("data_quality", "sdc_deleted_at") and f not in CarePlan.read_only
)
"""The report has one data-field cell per canonical field WellSky holds (not data_quality, not standard-only, not
the deletion marker only a complete view can set)."""
PER_PAGE = 200

_EXTRACT_ROWS = """
(rows) => rows.map((tr) => {
  const out = {};
  for (const td of tr.querySelectorAll('td[data-field]')) {
    const time = td.querySelector('time');
    out[td.dataset.field] = {
      text: td.textContent.trim(),
      datetime: time ? time.getAttribute('datetime') : null,
      items: Array.from(td.querySelectorAll('li')).map((li) => ({text: li.textContent.trim(), data: {...li.dataset}})),
    };
  }
  return out;
})
"""


class PortalChannel(Channel):
    """Authorizations and care plans read through the portal in headless Chromium.

    Home health and hospice tenants run the Kinnser portal instead: their dialects name
    :class:`~wellsky_core.products.kinnser.channel.KinnserPortalChannel` as ``portal_channel``.
    """

    name = "portal"
    thread_safe = False  # Playwright's sync API belongs to the thread that started it
    ordered = False
    client_use = "none"  # the portal keeps its own browser session
    ENTITIES = ("authorizations", "care_plans")

    def __init__(self, **common: Any) -> None:
        """``common``: the base Channel's keyword arguments; login, password, TOTP secret and browser are checked."""
        super().__init__(**common)
        config = self.config
        missing = [
            key for key in ("base_url", "username", "password", "totp_secret") if getattr(config, key, None) is None
        ]
        if missing:
            raise ConfigError(missing[0], "required by the portal channel (login, password and TOTP secret)")
        if not Path(config.chromium_path).exists():
            raise ConfigError("chromium_path", "no browser at that path; install chromium or point chromium_path at it")
        self.base_url = str(config.base_url).rstrip("/")
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._context: BrowserContext | None = None
        self._page: Page | None = None

    @classmethod
    def offers(cls, entity: str, product: str | None) -> bool:
        return entity in cls.ENTITIES

    def supports(self, entity: str) -> bool:
        return entity in self.ENTITIES

    # -- browser session ----------------------------------------------------------------------------------
    def _open(self) -> Page:
        if self._page is not None:
            return self._page
        self._playwright = start_playwright()
        try:
            self._browser = launch_chromium(self._playwright, self.config.chromium_path)
            self._context = self._browser.new_context(accept_downloads=True)
            page = self._context.new_page()
            page.set_default_timeout(self.config.timeout_seconds * 1000)
            self._page = page
            self._login(page)
        except BaseException:
            self.close()
            raise
        return page

    def _login(self, page: Page) -> None:
        assert self.config.password is not None and self.config.totp_secret is not None
        page.goto(self.base_url + "/portal/login")
        self._require(page, SELECTORS["username"]).fill(self.config.username or "")
        self._require(page, SELECTORS["password"]).fill(self.config.password.get_secret_value())
        with page.expect_navigation():
            self._require(page, SELECTORS["sign_in"]).click()
        if page.locator(SELECTORS["login_error"]).count():
            raise AuthError(
                "the portal refused the username or password; check username and password", setting="password"
            )
        try:
            code = pyotp.TOTP(self.config.totp_secret.get_secret_value()).now()
        except ValueError:  # pyotp's message is safe, but say which setting and what it needs
            raise ConfigError(
                "totp_secret", "must be a base32 secret of at least 112 bits (from MFA enrollment)"
            ) from None
        self._require(page, SELECTORS["code"]).fill(code)
        with page.expect_navigation():
            self._require(page, SELECTORS["verify"]).click()
        if page.locator(SELECTORS["mfa_error"]).count() or page.locator(SELECTORS["login_error"]).count():
            raise MfaError(
                "the portal refused the TOTP code; check totp_secret and the machine clock",
                method="totp",
                setting="totp_secret",
            )
        if not urlsplit(page.url).path.startswith("/portal/reports"):
            raise PortalLayoutChanged(_where(page), "redirect to /portal/reports after verification")
        log.info("signed in to the portal")

    @staticmethod
    def _require(page: Page, selector: str) -> Locator:
        locator = page.locator(selector)
        if locator.count() == 0:
            raise PortalLayoutChanged(_where(page), selector)
        return locator.first

    def cookies(self) -> list[dict[str, Any]]:
        """The signed-in browser session's cookies (Playwright's cookie dicts), e.g. ``wsk_session`` for the API."""
        self._open()
        assert self._context is not None
        return [dict(c) for c in self._context.cookies(self.base_url)]

    def close(self) -> None:
        close_browser(self._playwright, self._context, self._browser)
        self._playwright = self._browser = self._context = self._page = None

    # -- records --------------------------------------------------------------------------------------------
    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        if not self.supports(entity):
            raise ValueError(f"the portal channel reads {', '.join(self.ENTITIES)}, not {entity}; use source=api")
        rows = self._authorizations(since) if entity == "authorizations" else self._care_plans(since)
        floor = since.astimezone(UTC) if since is not None else None
        records = []
        for row in rows:  # all rows are read before any record is yielded: never half the data
            try:
                record = authorization_row(row) if entity == "authorizations" else care_plan_row(row)
            except NormalizationError as exc:
                self.reject(entity, exc, row)
                continue
            if floor is None or datetime.fromisoformat(record["updated_at"]) >= floor:
                records.append(record)
        yield from records

    def _report_url(self, path: str, since: datetime | None) -> str:
        params: dict[str, str] = {"per_page": str(PER_PAGE)}
        if since is not None:  # floor to the second: the portal filters inclusively, the channel exactly
            params["updated_since"] = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.base_url}{path}?{urlencode(params)}"

    def _authorizations(self, since: datetime | None) -> list[dict[str, str]]:
        """The report page must show its table and CSV link; the CSV (all rows) is downloaded by clicking it."""
        page = self._open()
        page.goto(self._report_url("/portal/reports/authorizations", since))
        self._require(page, SELECTORS["authorizations_table"])
        link = self._require(page, SELECTORS["csv_link"])
        with page.expect_download() as info:
            link.click()
        download = info.value
        failure = download.failure()
        if failure:
            raise WellSkyError(f"the portal's authorization CSV download failed ({failure}); retry the sync")
        try:
            with open(download.path(), newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                header = reader.fieldnames or []
                for label in AUTH_CSV_COLUMNS:
                    if label not in header:
                        raise PortalLayoutChanged("/portal/reports/authorizations.csv", f'CSV column "{label}"')
                return [
                    {AUTH_CSV_COLUMNS[k]: (v or "") for k, v in row.items() if k in AUTH_CSV_COLUMNS} for row in reader
                ]
        finally:
            download.delete()  # the report names patients: gone as soon as it is read

    def _care_plans(self, since: datetime | None) -> list[dict[str, Any]]:
        """Walk the care-plan report through its "next page" links, checking the layout on every page."""
        page = self._open()
        page.goto(self._report_url("/portal/reports/care-plans", since))
        rows: list[dict[str, Any]] = []
        for _ in range(100_000):
            table = SELECTORS["care_plans_table"]
            self._require(page, table)
            for field in CARE_PLAN_FIELDS:
                self._require(page, f'{table} th[data-field="{field}"]')
            rows.extend(page.eval_on_selector_all(f"{table} tbody tr", _EXTRACT_ROWS))
            nxt = page.locator(SELECTORS["next"])
            if nxt.count() == 0:
                if page.locator(SELECTORS["any_next"]).count():
                    raise PortalLayoutChanged(_where(page), SELECTORS["next"])
                return rows
            href = nxt.first.get_attribute("href")
            if not href:
                raise PortalLayoutChanged(_where(page), SELECTORS["next"] + "[href]")
            page.goto(_join(page.url, href))
        raise WellSkyError("the care-plan report never ended (over 100000 pages); the portal is misbehaving")



def _where(page: Page) -> str:
    """The page's path (no query: cursors and filters stay out of messages)."""
    return urlsplit(page.url).path or page.url


def _join(current: str, href: str) -> str:
    from urllib.parse import urljoin

    return urljoin(current, href)
