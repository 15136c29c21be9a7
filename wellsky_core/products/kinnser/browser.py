"""One signed-in Chromium tab on the Kinnser portal, kept alive through a long run.

It logs in (accepting the acceptable-use ``confirm``, answering 2-step verification when the tenant asks,
terminating the other session when the portal reports one), carries the per-tab ``sessionCacheKey`` into
every URL, closes in-app guides that cover the page, waits for spinners within a bound, restarts the browser
after a number of pages or on a hang, and notices a bounce to the login page (``Bounced``) so the caller
can sign in again and redo the unit of work it was in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...channels.portal import PortalLayoutChanged
from ...chromium import close_browser, launch_chromium, start_playwright
from ...errors import AuthError, MfaError, PortalHang, WellSkyError
from ...http.mfa import Challenge, CodeSource
from ...http.trust import is_trusted, require_trusted
from ...redaction import register_secret
from .pagemap import PageMap

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright

    from ...config import WellSkyConfig

log = logging.getLogger("wellsky_core.products.kinnser")
T = TypeVar("T")
LOGIN_PATH = "/login.cfm"
INBOX_PATH = "/AM/Message/inbox.cfm"
MAX_BOUNCES = 4
MAX_HANG_RESTARTS = 2


class Bounced(Exception):
    """The portal sent the browser to its login page: the session expired or was terminated."""



    own_text = True  # its message names the page and the wait, never page content (disclosure.public_message)


class PortalBrowser:
    def __init__(self, config: WellSkyConfig, pagemap: PageMap, code_source: CodeSource | None) -> None:
        self.config = config
        self.map = pagemap
        self.code_source = code_source
        self.base_url = str(config.base_url).rstrip("/")
        self.wait_ms = config.portal_wait_seconds * 1000
        self.key: str | None = None
        self.office: str | None = None
        self.pages = 0
        self.stats = {"logins": 0, "bounces": 0, "restarts": 0, "guides_closed": 0, "terminated_sessions": 0}
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._context: BrowserContext | None = None
        self._page: Page | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    @property
    def page(self) -> Page:
        if self._page is None:
            self.start()
        assert self._page is not None
        return self._page

    def start(self) -> None:
        self._playwright = start_playwright()
        try:
            self._browser = launch_chromium(self._playwright, self.config.chromium_path)
            self._context = self._browser.new_context(accept_downloads=True)
            page = self._context.new_page()
            page.set_default_timeout(self.wait_ms)
            page.set_default_navigation_timeout(self.wait_ms)
            page.on("dialog", _accept)  # the acceptable-use confirm after login must be accepted
            self._page = page
            self.pages = 0
            self.office = None
            self.login()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        close_browser(self._playwright, self._context, self._browser)
        self._playwright = self._browser = self._context = self._page = None

    def restart(self, why: str) -> None:
        log.info("portal: restarting the browser (%s)", why)
        self.stats["restarts"] += 1
        self.close()
        self.start()

    # -- login ----------------------------------------------------------------------------------------
    def login(self) -> None:
        page = self._page
        assert page is not None, "start() opens the page before logging in"
        password = self.config.password
        if not self.config.username or password is None:
            from ...errors import ConfigError

            raise ConfigError("password", "the portal channel needs username and password")
        page.goto(self.base_url + LOGIN_PATH)
        self.require("login", "username").fill(self.config.username)
        self.require("login", "password").fill(password.get_secret_value())
        issued = time.time()
        with page.expect_navigation():
            self.require("login", "submit").click()
        for _ in range(4):
            if _path(page.url) != LOGIN_PATH:
                break
            if self.find("login", "error") is not None:
                raise AuthError(
                    "the portal refused the username or password; check username and password", setting="password"
                )
            if self.find("login", "code") is not None:
                self._two_step(page, issued)
            elif (terminate := self.find("login", "terminate")) is not None:
                log.info("portal: another session of this user is active; terminating it")
                self.stats["terminated_sessions"] += 1
                with page.expect_navigation():
                    terminate.click()
            else:
                raise PortalLayoutChanged(LOGIN_PATH, self.map.hooks("login")["submit"][0] + " (no inbox after login)")
        else:
            raise WellSkyError("the portal kept returning to its login page after Log in; check the account")
        page.wait_for_load_state("load")
        if _path(page.url) == LOGIN_PATH:  # the acceptable-use confirm was refused: logged out again
            raise AuthError("the portal logged out right after login (acceptable-use dialog)", setting="username")
        key = dict(parse_qsl(urlsplit(page.url).query)).get("sessionCacheKey") or page.evaluate(
            "() => sessionStorage.getItem('sessionCacheKey')"
        )
        if not key:
            raise PortalLayoutChanged(_path(page.url), "sessionCacheKey (URL or sessionStorage)")
        register_secret(key)  # a session credential: masked wherever a log line would carry it
        self.key = key
        self.office = None
        self.stats["logins"] += 1
        log.info("portal: signed in")

    def _two_step(self, page: Page, issued: float) -> None:
        method = (
            page.locator("[data-method]").first.get_attribute("data-method")
            if page.locator("[data-method]").count()
            else None
        )
        if self.code_source is None:
            raise MfaError(
                "the portal asks for 2-step verification; set mfa_method (totp with totp_secret, or email with "
                "mfa_code_source)",
                method=method or "unknown",
                setting="mfa_method",
            )
        if method and method != self.code_source.method:
            raise MfaError(
                f"the portal asks for a {method} code but mfa_method is {self.code_source.method}",
                method=method,
                setting="mfa_method",
            )
        challenge = Challenge("", self.code_source.method, self.config.username, issued)
        code = self.code_source.get_code(challenge)
        self.require("login", "code").fill(code)
        with page.expect_navigation():
            self.require("login", "verify").click()
        if self.find("login", "verify_error") is not None:
            raise MfaError(
                "the portal refused the 2-step code; check totp_secret / the code source and the machine clock",
                method=self.code_source.method,
                setting=self.code_source.setting,
            )

    # -- elements -------------------------------------------------------------------------------------
    def find(self, page_name: str, hook: str) -> Locator | None:
        for selector in self.map.hooks(page_name)[hook]:
            loc = self.page.locator(selector)
            if loc.count():
                return loc.first
        return None

    def require(self, page_name: str, hook: str) -> Locator:
        found = self.find(page_name, hook)
        if found is None:
            raise PortalLayoutChanged(_path(self.page.url), self.map.hooks(page_name)[hook][0])
        return found

    def selector(self, page_name: str, hook: str) -> str:
        """The first selector of ``hook`` that matches now (for JS extraction), or a layout error."""
        for selector in self.map.hooks(page_name)[hook]:
            if self.page.locator(selector).count():
                return selector
        raise PortalLayoutChanged(_path(self.page.url), self.map.hooks(page_name)[hook][0])

    def dismiss_guides(self) -> None:
        """Close in-app (Pendo) guides that cover the page and swallow clicks."""
        for selector in self.map.hooks("guides")["close"]:
            loc = self.page.locator(selector)
            for i in range(loc.count()):
                item = loc.nth(i)
                if item.is_visible():
                    item.click()
                    self.stats["guides_closed"] += 1

    # -- navigation -----------------------------------------------------------------------------------
    def url(self, path: str, **params: str) -> str:
        return f"{self.base_url}{path}?{urlencode({**params, 'sessionCacheKey': self.key or ''})}"

    def with_key(self, href: str) -> str:
        """``href`` (scraped from a page) with this session's cache key (a re-login issues a new one); only for
        the portal's own origin (``http/trust.py``): the key is a session credential."""
        target = href if "://" in href else self.base_url + href
        if not is_trusted(target, self.config):
            require_trusted(target, self.config, what="a portal link", code="foreign_portal_link")
        parts = urlsplit(target)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "sessionCacheKey"]
        query.append(("sessionCacheKey", self.key or ""))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))

    def goto(self, url: str) -> None:
        self.page.goto(url)
        self.pages += 1
        self.check_bounced()
        self.dismiss_guides()

    def check_bounced(self) -> None:
        if _path(self.page.url) == LOGIN_PATH:
            raise Bounced()

    def wait_until(self, js_condition: str, what: str) -> None:
        """Wait (bounded) for a client-side condition, or a bounce to the login page."""
        self.page.wait_for_function(
            f"() => location.pathname === '{LOGIN_PATH}' || !!({js_condition})", timeout=self.wait_ms
        )
        self.check_bounced()

    def wait_spinners(self) -> None:
        sel = ",".join(self.map.hooks("billing")["spinner"])
        self.wait_until(
            f"Array.from(document.querySelectorAll({sel!r})).every(e => !(e.offsetWidth || e.offsetHeight))",
            "spinner",
        )

    def switch_office(self, value: str) -> None:
        """Pick ``value`` in ``#swapUser`` (from the inbox: the control is missing on billing pages)."""
        self.goto(self.url(INBOX_PATH))
        select = self.require("shell", "office")
        if select.input_value() != value:
            with self.page.expect_navigation():
                select.select_option(value)
            self.page.wait_for_load_state("load")
            self.pages += 1
            self.check_bounced()
            self.dismiss_guides()
            select = self.require("shell", "office")
            if select.input_value() != value:
                raise WellSkyError(f"the portal did not switch to office {value}; check the account's office access")
        self.office = value

    def offices(self) -> list[tuple[str, str]]:
        self.goto(self.url(INBOX_PATH))
        sel = self.selector("shell", "office")
        return [
            (o["value"], o["text"])
            for o in self.page.eval_on_selector_all(
                f"{sel} option", "os => os.map(o => ({value: o.value, text: o.textContent.trim()}))"
            )
        ]

    def menu_href(self, label: str) -> str:
        """The Go To menu item called ``label`` (its link; items are often covered, so they are not clicked)."""
        self.require("shell", "menu")
        items = self.page.locator(self.selector("shell", "menu_item"))
        for i in range(items.count()):
            item = items.nth(i)
            if item.inner_text().strip() == label:
                href = item.get_attribute("href")
                if href:
                    return self.with_key(href)
        raise PortalLayoutChanged(_path(self.page.url), f"{self.map.hooks('shell')['menu_item'][0]} '{label}'")

    # -- units of work --------------------------------------------------------------------------------
    def run(self, office: str | None, unit: Callable[[], T], what: str) -> T:
        """Run ``unit`` signed in and in ``office``; sign in again after a bounce, restart after a hang."""
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        bounces = hangs = 0
        while True:
            try:
                if self._page is None:
                    self.start()
                elif self.pages >= self.config.portal_restart_every_pages:
                    self.restart(f"after {self.pages} pages")  # between units: a unit never spans two browsers
                if office is not None and self.office != office:
                    self.switch_office(office)
                return unit()
            except Bounced:
                bounces += 1
                self.stats["bounces"] += 1
                if bounces > MAX_BOUNCES:
                    raise WellSkyError(
                        f"the portal sent the browser back to its login page {bounces} times during {what}; "
                        "another user or process may be logging in with the same account"
                    ) from None
                log.info("portal: session ended during %s; signing in again", what)
                self.login()
            except PlaywrightTimeout:
                hangs += 1
                if hangs > MAX_HANG_RESTARTS:
                    raise PortalHang(
                        f"the portal did not answer within {self.config.portal_wait_seconds:.0f}s during {what} "
                        f"(page {_path(self.page.url)}), even after {MAX_HANG_RESTARTS} browser restarts"
                    ) from None
                self.restart(f"hang during {what}")
            except PlaywrightError as exc:
                if "Target" not in str(exc) and "closed" not in str(exc):
                    raise
                hangs += 1
                if hangs > MAX_HANG_RESTARTS:
                    raise PortalHang(f"the browser kept crashing during {what}") from None
                self.restart(f"browser lost during {what}")

    def download(self, link: Locator) -> bytes:
        """The file behind a download link ("To Excel", "Save File"), fetched with the browser's own session.

        A session that ended answers with a redirect to the login page (classic pages) or a 401 (services):
        that is a bounce, not a broken file.
        """
        href = link.get_attribute("href")
        if not href or href.startswith("#") or href.startswith("javascript:"):
            raise PortalLayoutChanged(_path(self.page.url), "a download link with an href")
        assert self._context is not None
        url = self.with_key(href)
        response = self._context.request.get(url, max_redirects=0, timeout=self.wait_ms)
        self.pages += 1
        location = response.headers.get("location", "")
        if response.status == 401 or (300 <= response.status < 400 and LOGIN_PATH in location):
            raise Bounced()
        if response.status != 200:
            raise WellSkyError(f"a portal download answered HTTP {response.status} ({_path(url)}); retry the sync")
        if "attachment" not in response.headers.get("content-disposition", ""):
            raise PortalLayoutChanged(_path(url), "a file download (Content-Disposition: attachment)")
        return response.body()


def _accept(dialog: Any) -> None:
    dialog.accept()


def _path(url: str) -> str:
    return urlsplit(url).path or url
