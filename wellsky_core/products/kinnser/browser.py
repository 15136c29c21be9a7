"""One signed-in Chromium session on the Kinnser portal, kept alive through a long run, with a few tabs in it.

It logs in (accepting the acceptable-use ``confirm``, answering 2-step verification when the tenant asks,
terminating the other session when the portal reports one), carries the per-tab ``sessionCacheKey`` into
every URL, closes in-app guides that cover the page, waits for spinners within a bound, restarts the browser
after a number of pages or on a hang, and notices a bounce to the login page (``Bounced``) so the caller
can sign in again and redo the unit of work it was in.

Tabs: the portal allows one session per user and keeps the active office in that session (fact sheet #5, #12),
but gives every browser tab its own ``sessionCacheKey`` (#8). So the one login may read with several tabs of
its one context at once (:meth:`PortalBrowser.tabs`, :meth:`PortalBrowser.visit_all`), all in the same office;
the office is only switched from the main tab between units of work, when no tab has a page in flight.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
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
SESSION_MANAGER_PATH = "/SessionManagement/SessionManager.cfc"
MAX_BOUNCES = 4
MAX_HANG_RESTARTS = 2


class Bounced(Exception):
    """The portal sent the browser to its login page: the session expired or was terminated."""

    own_text = True  # its message names the page and the wait, never page content (disclosure.public_message)


@dataclass
class Tab:
    """One browser tab of the session and the ``sessionCacheKey`` the portal issued to it (per login)."""

    page: Page
    key: str
    login: int
    """The login (``stats["logins"]``) the key belongs to: a new login makes every older key invalid."""


Step = str | Callable[[Tab], None]
"""What a tab does next: open this portal link, or start a navigation itself (e.g. submit a form)."""


@dataclass(frozen=True)
class Snapshot:
    """What one page showed for a page map's hooks, read in one round trip (:meth:`PortalBrowser.snapshot`).

    ``found[hook]`` is the first element matching one of the hook's selectors (its ``text``, ``href``,
    ``data`` attributes and, for table hooks, the parsed ``table``), or None.
    """

    path: str
    found: dict[str, dict[str, Any] | None]
    hooks: dict[str, tuple[str, ...]]

    def get(self, hook: str) -> dict[str, Any] | None:
        return self.found.get(hook)

    def require(self, hook: str) -> dict[str, Any]:
        found = self.found.get(hook)
        if found is None:
            raise PortalLayoutChanged(self.path, self.hooks[hook][0])
        return found


SNAPSHOT_JS = """
(args) => {
  const parseTable = %s;
  const out = {path: location.pathname, found: {}, unsupported: []};
  const first = (name, selectors) => {
    for (const sel of selectors) {
      try { const e = document.querySelector(sel); if (e) return e; }
      catch (err) { out.unsupported.push(name); }  // a Playwright-only selector (:has-text): the caller asks Playwright
    }
    return null;
  };
  for (const [name, selectors] of Object.entries(args.hooks)) {
    const e = first(name, selectors);
    out.found[name] = e && {
      text: e.innerText, href: e.getAttribute('href'), data: {...e.dataset},
      table: args.tables.includes(name) ? parseTable(e) : null,
    };
  }
  return out;
}
"""
GUIDE_PROBE_JS = """
(selectors) => selectors.some(
  sel => Array.from(document.querySelectorAll(sel)).some(e => !!(e.offsetWidth || e.offsetHeight)))
"""
ELEMENT_JS = "e => ({text: e.innerText, href: e.getAttribute('href'), data: {...e.dataset}})"


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
        self._extra: list[Tab] = []

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
            self._page = self._new_page()
            self.pages = 0
            self.office = None
            self.login()
        except BaseException:
            self.close()
            raise

    def _new_page(self) -> Page:
        assert self._context is not None
        page = self._context.new_page()
        page.set_default_timeout(self.wait_ms)
        page.set_default_navigation_timeout(self.wait_ms)
        page.on("dialog", _accept)  # the acceptable-use confirm after login must be accepted
        return page

    def close(self) -> None:
        close_browser(self._playwright, self._context, self._browser)
        self._playwright = self._browser = self._context = self._page = None
        self._extra = []

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
    def find(self, page_name: str, hook: str, page: Page | None = None) -> Locator | None:
        for selector in self.map.hooks(page_name)[hook]:
            loc = (page or self.page).locator(selector)
            if loc.count():
                return loc.first
        return None

    def require(self, page_name: str, hook: str, page: Page | None = None) -> Locator:
        found = self.find(page_name, hook, page)
        if found is None:
            raise PortalLayoutChanged(_path((page or self.page).url), self.map.hooks(page_name)[hook][0])
        return found

    def selector(self, page_name: str, hook: str, page: Page | None = None) -> str:
        """The first selector of ``hook`` that matches now (for JS extraction), or a layout error."""
        for selector in self.map.hooks(page_name)[hook]:
            if (page or self.page).locator(selector).count():
                return selector
        raise PortalLayoutChanged(_path((page or self.page).url), self.map.hooks(page_name)[hook][0])

    def dismiss_guides(self, page: Page | None = None) -> None:
        """Close in-app (Pendo) guides that cover the page and swallow clicks (one probe when there is none)."""
        selectors = list(self.map.hooks("guides")["close"])
        if not (page or self.page).evaluate(GUIDE_PROBE_JS, selectors):
            return
        for selector in selectors:
            loc = (page or self.page).locator(selector)
            for i in range(loc.count()):
                item = loc.nth(i)
                if item.is_visible():
                    item.click()
                    self.stats["guides_closed"] += 1

    # -- navigation -----------------------------------------------------------------------------------
    def url(self, path: str, **params: str) -> str:
        return f"{self.base_url}{path}?{urlencode({**params, 'sessionCacheKey': self.key or ''})}"

    def with_key(self, href: str, key: str | None = None) -> str:
        """``href`` (scraped from a page) with this session's cache key (a re-login issues a new one), or the
        key of the tab that will open it; only for the portal's own origin (``http/trust.py``): the key is a
        session credential."""
        target = href if "://" in href else self.base_url + href
        if not is_trusted(target, self.config):
            require_trusted(target, self.config, what="a portal link", code="foreign_portal_link")
        parts = urlsplit(target)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "sessionCacheKey"]
        query.append(("sessionCacheKey", key or self.key or ""))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))

    def goto(self, url: str) -> None:
        self.page.goto(url)
        self.pages += 1
        self.check_bounced()
        self.dismiss_guides()

    # -- tabs ---------------------------------------------------------------------------------------------
    def tabs(self, count: int) -> list[Tab]:
        """``count`` tabs of this session (the main tab first), each with a cache key issued for this login.

        Extra tabs are opened once and reused; their keys come from ``CreateNewSessionCacheKey`` (#8), as the
        portal's own front end does for a new tab, and are renewed after every login.
        """
        main = Tab(self.page, self.key or "", self.stats["logins"])
        while len(self._extra) < count - 1:
            self._extra.append(Tab(self._new_page(), "", -1))
        for tab in self._extra[: count - 1]:
            if tab.login != main.login:
                tab.key, tab.login = self.new_cache_key(), main.login
        return [main, *self._extra[: count - 1]]

    def new_cache_key(self) -> str:
        """A ``sessionCacheKey`` for one more tab (``SessionManager.cfc?method=CreateNewSessionCacheKey``)."""
        assert self._context is not None
        url = self.url(SESSION_MANAGER_PATH, method="CreateNewSessionCacheKey")
        response = self._context.request.get(url, max_redirects=0, timeout=self.wait_ms)
        if response.status == 401 or LOGIN_PATH in response.headers.get("location", ""):
            raise Bounced()
        if response.status != 200:
            raise WellSkyError(f"the portal answered HTTP {response.status} for a new tab's session key; retry")
        body = response.text().lstrip()
        try:
            key = json.loads(body[2:] if body.startswith("//") else body).get("SESSIONCACHEKEY")
        except (ValueError, AttributeError):
            key = None
        if not isinstance(key, str) or not key:
            raise PortalLayoutChanged(SESSION_MANAGER_PATH, "SESSIONCACHEKEY")
        register_secret(key)
        return key

    def visit_all(self, visits: Iterable[tuple[Tab, Step]]) -> None:
        """Load one page in each of several tabs at once and wait until every page has loaded.

        A step is a portal link to open or a callable that starts a navigation on the tab (submits a form)
        without waiting for it. Each navigation is started before any is waited for (``expect_navigation``
        listens from before the start), so the pages load concurrently; the call returns only when all have,
        so no tab is mid-load afterwards. A tab that landed on the login page makes it raise ``Bounced`` (after
        the others loaded).
        """
        visits = list(visits)
        with ExitStack() as waits:
            for tab, step in visits:
                waits.enter_context(tab.page.expect_navigation())
                if isinstance(step, str):
                    tab.page.evaluate("(u) => { location.assign(u); }", self.with_key(step, tab.key))
                else:
                    step(tab)
        self.pages += len(visits)
        if any(_path(tab.page.url) == LOGIN_PATH for tab, _ in visits):
            raise Bounced()
        for tab, _ in visits:
            self.dismiss_guides(tab.page)

    def snapshot(self, tab: Tab, page_name: str, tables: tuple[str, ...] = (), table_js: str = "null") -> Snapshot:
        """Every hook of ``page_name`` as ``tab`` shows it now, in one round trip.

        Hooks whose first matches are Playwright-only selectors (``:has-text``) are asked of Playwright.
        """
        hooks = self.map.hooks(page_name)
        shown = tab.page.evaluate(SNAPSHOT_JS % table_js, {"hooks": hooks, "tables": list(tables)})
        found: dict[str, dict[str, Any] | None] = shown["found"]
        for hook in set(shown["unsupported"]):
            if found.get(hook) is None and (loc := self.find(page_name, hook, tab.page)) is not None:
                found[hook] = loc.evaluate(ELEMENT_JS)
                if hook in tables:
                    found[hook]["table"] = loc.evaluate(table_js)  # type: ignore[index]
        return Snapshot(shown["path"], found, hooks)

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
        items = self.page.eval_on_selector_all(
            self.selector("shell", "menu_item"), "as => as.map(a => [a.textContent.trim(), a.getAttribute('href')])"
        )
        for text, href in items:
            if text == label and href:
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
                # the unit works in the main page, which the tabs' pages put behind them: there every Playwright
                # click took ~2 s (measured: 34 clicks, 65 s of a 107 s billing walk at 10 patients; 12.8 s in
                # front). Why Chromium delays it is not pinned down (frames, focus and visibility look normal)
                self.page.bring_to_front()
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

    def download(self, link: Locator, key: str | None = None) -> bytes:
        """The file behind a download link ("To Excel", "Save File"), fetched with the browser's own session.

        A session that ended answers with a redirect to the login page (classic pages) or a 401 (services):
        that is a bounce, not a broken file.
        """
        href = link.get_attribute("href")
        if not href or href.startswith("#") or href.startswith("javascript:"):
            raise PortalLayoutChanged(_path(self.page.url), "a download link with an href")
        assert self._context is not None
        url = self.with_key(href, key)
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
