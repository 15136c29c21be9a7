"""The portal channel for WellSky Home Health and Hospice (Kinnser): walks every office in a real Chromium.

Per office it reads Patient Manager (patients), each patient's Episode Manager through the Nursing and Therapy
tabs and every previous certification (episodes, the schedule = appointments; ``portal_tabs`` patients at once,
in tabs of the one login, all in that office), the Past Due Visits ``.xls``
and the Schedule Deviation report (reconciled against the schedule), the Claims Manager lists page by page
(checked against each list's export) and the Unbilled report (checked against its own summary).

Two groups of streams are read in separate walks so a sync that selects only one group does only that work:
clinical (patients, appointments, episodes) and billing (claims, unbilled). A walk is collected office by
office into the channel's state file; when every office is done the records are compared with the last
snapshot (the portal shows no modification times) and only then handed out: a layout change or an error
yields nothing for the stream, never half the data, and a killed walk resumes at the first unfinished office.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ...channels.base import Channel, Progress
from ...channels.portal import PortalLayoutChanged
from ...errors import ConfigError, NormalizationError, WellSkyError
from ...http.mfa import build_code_source
from ...http.paging import LoopGuard
from ...machine_lock import WAIT_FOR_OTHER_RUN_SECONDS, MachineLock
from ...private_files import account_slug
from . import normalize as norm
from .browser import PortalBrowser, Step, Tab
from .pagemap import PAGE_MAPS, ClaimView
from .state import PortalState

log = logging.getLogger("wellsky_core.products.kinnser")

GROUPS: dict[str, tuple[str, ...]] = {
    "clinical": ("patients", "appointments", "episodes"),
    "billing": ("claims", "unbilled"),
}
GROUP_OF = {entity: group for group, entities in GROUPS.items() for entity in entities}
DEVIATION_WINDOW_DAYS = 365
DEVIATION_LOOKBACK_DAYS = 14
"""Deviation windows are re-read this far back: late documentation changes the recent past."""

TABLE_JS = """
(table) => {
  let headers = null; const rows = [];
  for (const tr of table.querySelectorAll('tr')) {
    const ths = tr.querySelectorAll('th');
    if (ths.length && !headers) { headers = Array.from(ths).map(th => th.textContent.trim()); continue; }
    if (tr.classList.contains('trred') || tr.classList.contains('hRowBgImage')) continue;
    const tds = Array.from(tr.querySelectorAll('td'));
    if (!tds.length || !headers) continue;
    const cells = {};
    tds.forEach((td, i) => {
      const h = headers[i]; if (h === undefined) return;
      cells[h] = {
        text: td.textContent.trim(), data: {...td.dataset},
        hrefs: Array.from(td.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
        ids: Array.from(td.querySelectorAll('[id]')).map(e => e.id),
        items: Array.from(td.querySelectorAll('li')).map(li => ({text: li.textContent.trim(), data: {...li.dataset}})),
      };
    });
    rows.push(cells);
  }
  return {headers: headers || [], rows};
}
"""
AG_GRID_JS = """
(root) => {
  const headers = {};
  for (const h of root.querySelectorAll('.ag-header-cell')) {
    headers[h.getAttribute('col-id')] = h.textContent.trim();
  }
  const rows = Array.from(root.querySelectorAll('.ag-row')).map(r => {
    const out = {};
    for (const c of r.querySelectorAll('.ag-cell')) {
      const id = c.getAttribute('col-id');
      out[headers[id] || id] = c.textContent.trim();
    }
    return out;
  });
  return {headers: Object.values(headers), rows};
}
"""
SET_VALUE_JS = """
(e, value) => {
  e.value = value;
  e.dispatchEvent(new Event('input', {bubbles: true}));
  e.dispatchEvent(new Event('change', {bubbles: true}));
}
"""
LABELLED_TABLE_JS = """
(box) => {
  const out = {};
  const trs = Array.from(box.querySelectorAll('tr'));
  const ths = box.querySelectorAll('th'), tds = box.querySelectorAll('td');
  if (trs.length === 2 && ths.length === tds.length && ths.length > 1) {
    ths.forEach((th, i) => { out[th.textContent.trim()] = tds[i].textContent.trim(); });
    return out;
  }
  for (const tr of trs) {
    const th = tr.querySelector('th'), td = tr.querySelector('td');
    if (th && td) out[th.textContent.trim()] = td.textContent.trim();
  }
  return out;
}
"""


@dataclass(frozen=True)
class Job:
    """One unit of work for a tab: ``steps()`` starts it afresh (a generator of pages, see ``_read_in_tabs``)."""

    what: str
    steps: Callable[[], Generator[Step, Tab, Any]]


SESSION_WAIT_SECONDS = WAIT_FOR_OTHER_RUN_SECONDS
"""How long a run waits for another run on this machine signed in with the same portal account."""


class KinnserPortalChannel(Channel):
    """Patients, appointments, episodes, claims and unbilled through the Kinnser web portal."""

    name = "portal"
    thread_safe = False  # Playwright's sync API belongs to the thread that started it
    ordered = False
    client_use = "none"  # the portal keeps its own browser session
    ENTITIES = tuple(GROUP_OF)

    def __init__(self, **common: Any) -> None:
        """``common``: the base Channel's keyword arguments; login, browser and time zone are checked."""
        super().__init__(**common)
        config, product = self.config, self.product
        if product not in PAGE_MAPS:
            raise ConfigError("product", f"the Kinnser portal serves {', '.join(PAGE_MAPS)}, not {product}")
        for key in ("base_url", "username", "password"):
            if getattr(config, key, None) in (None, ""):
                raise ConfigError(key, "required by the portal channel (the portal's address and login)")
        if not Path(config.chromium_path).exists():
            raise ConfigError("chromium_path", "no browser at that path; install chromium or point chromium_path at it")
        if not config.agency_timezone:
            raise ConfigError(
                "agency_timezone", "the portal shows visit times in the agency's local time; set e.g. America/Chicago"
            )
        try:
            self.tz = ZoneInfo(config.agency_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError("agency_timezone", "is not an IANA time zone name such as America/Chicago") from None
        self.map = PAGE_MAPS[product]
        self.state = PortalState(config.portal_state_path)
        self.browser = PortalBrowser(config, self.map, build_code_source(config))
        # the path only: the lock makes its directory when it is first taken, by a read, never by opening
        account = account_slug(config.base_url, config.username)
        self._session = MachineLock(config.private_state_path() / "portal-sessions" / f"{account}.lock")
        self._results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.data_quality: Counter[str] = Counter()
        self.progress: list[dict[str, Any]] = []
        self._report_links: tuple[int, dict[str, str]] = (-1, {})
        self._rejected: dict[str, set[str]] = {}
        """Per walk group, the entities of which a row was dead-lettered (their view is not complete)."""
        self._walked_at: dict[str, str] = {}

    @classmethod
    def offers(cls, entity: str, product: str | None) -> bool:
        return entity in GROUP_OF

    def snapshot_view(self, entity: str) -> bool:
        return entity in GROUP_OF

    def supports(self, entity: str) -> bool:
        return entity in GROUP_OF

    def close(self) -> None:
        self.browser.close()
        self._session.release()
        super().close()

    def _hold_session(self) -> None:
        """The portal allows one session per user: a login ends the other session (its Terminate prompt). Two runs
        of one account on this machine would end each other's sessions until one gave up (after MAX_BOUNCES) and
        would share the resume file, so the second waits for the first. A person signed in with the same account
        still loses their session: give the connector an account of its own (docs/guide.md)."""

        self._session.hold(
            SESSION_WAIT_SECONDS, holding="is signed in with this portal account",
            why="the portal allows one session per user, and signing in would end that run's session", log=log,
        )

    # -- records --------------------------------------------------------------------------------------
    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        if not self.supports(entity):
            raise ValueError(f"the portal channel reads {', '.join(self.ENTITIES)}, not {entity}; use source=api")
        group = GROUP_OF[entity]
        if group not in self._results:
            self._results[group] = self._walk(group)
        floor = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if since is not None else ""
        view = self.views.get(entity)
        if view is not None:  # a finished walk of every office is a complete view of the entity
            if entity in self._rejected.get(group, ()):
                view.incomplete("the portal walk set a row aside (dead-lettered), so it may lack a record")
            for record in self._results[group][entity]:
                view.see(record)
            started = self._walked_at[group]
            view.complete(f"the portal walk started {started}", datetime.fromisoformat(started.replace("Z", "+00:00")))
        for record in self._results[group][entity]:
            if record["updated_at"] >= floor:
                yield record

    def _walk(self, group: str) -> dict[str, list[dict[str, Any]]]:
        self._hold_session()  # before the resume file is touched: it is this account's too
        run = self.state.begin(group, datetime.now(UTC))
        entities = GROUPS[group]
        offices = self.browser.run(None, self._offices, "the office list")
        todo = [o for o in offices if o[0] not in run["offices"]]
        if len(todo) < len(offices):
            log.info(
                "portal: resuming the %s walk; %d of %d offices already read",
                group,
                len(offices) - len(todo),
                len(offices),
            )
        plan = Progress(len(todo), "offices")
        for entity in entities:  # the walk serves every stream of the group
            self.plans[entity] = plan
        started = time.monotonic()
        for value, name in todo:
            rejected_before = self.data_quality.copy()
            records = self._clinical(value, name, run) if group == "clinical" else self._billing(value, name, run)
            rejected = [e for e in entities if self.data_quality[f"{e}_rejected"] > rejected_before[f"{e}_rejected"]]
            if rejected:  # kept with the office: a resumed walk still knows it set rows aside
                records = {**records, "@rejected": rejected}  # type: ignore[dict-item]
            self.state.office_done(run, value, records)
            counts = {e: len(records.get(e, [])) for e in entities}
            self.progress.append({"group": group, "office": name, **counts})
            plan.advance()
            log.info(
                "portal: %s office %s read: %s%s",
                group,
                name,
                ", ".join(f"{v} {k}" for k, v in counts.items()),
                plan.note(time.monotonic() - started),
            )
        self._rejected[group] = {e for office in run["offices"].values() for e in office.get("@rejected", ())}
        self._walked_at[group] = str(run["started_at"])
        return self.state.finish(run, entities)

    def _offices(self) -> list[tuple[str, str]]:
        """Every branch in the office select; the corporation level repeats them, so it is skipped."""
        options = self.browser.offices()
        branches = [(v, t) for v, t in options if v and not v.lower().endswith("corporation")]
        if not branches:
            raise PortalLayoutChanged("/AM/Message/inbox.cfm", self.map.hooks("shell")["office"][0] + " option")
        return branches

    # -- clinical ------------------------------------------------------------------------------------
    def _observed(self, run: dict[str, Any]) -> str:
        return str(run["started_at"])

    def _patient_rows(self, office: str) -> list[dict[str, Any]]:
        b = self.browser

        def unit() -> list[dict[str, Any]]:
            b.goto(b.menu_href(self.map.menu["patients"]))
            table = b.selector("patient_manager", "table")
            found = b.page.eval_on_selector(table, TABLE_JS)
            self._require_columns(found["headers"], norm.PATIENT_COLUMNS, "Patient Manager")
            rows = []
            for cells in found["rows"]:
                row = {h: c["text"] for h, c in cells.items()}
                href = next(iter(cells.get("Patient", {}).get("hrefs") or []), "")
                row["@patient_key"] = dict(parse_qsl(urlsplit(href).query)).get("patientKey", "")
                row["@href"] = href
                row["@insurance"] = [
                    {
                        "text": i["text"],
                        "payer_key": i["data"].get("payerKey"),
                        "member_id": i["data"].get("memberId"),
                        "order": i["data"].get("order"),
                    }
                    for i in (cells.get("Insurance", {}).get("items") or [])
                ]
                rows.append(row)
            return rows

        return b.run(office, unit, "Patient Manager")

    def _clinical(self, office: str, name: str, run: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        observed = self._observed(run)
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        patients = []
        for row in self._patient_rows(office):
            rec = self._normalize("patients", row, lambda r=row: norm.patient(r, observed))
            if rec is not None:
                patients.append((row["@href"], rec))
        windows = self._deviation_windows(office)
        past_due, deviation = self.browser.run(
            office,
            lambda: (self._report_href(self.map.reports["past_due"]), self._report_href(self.map.reports["deviation"])),
            "Reports / Admin",
        )
        jobs: list[Job] = [Job("Past Due Visits", lambda: self._past_due_job(past_due))]
        jobs += [Job("Schedule Deviation", lambda s=s, e=e: self._deviation_job(deviation, s, e)) for s, e in windows]
        jobs += [
            Job("Episode Manager", lambda h=href, pid=rec["id"]: self._episode_walk(h, pid, name, observed))
            for href, rec in patients
        ]
        results = self._read_in_tabs(office, jobs)
        past_due_rows, deviations, read = results[0], results[1 : 1 + len(windows)], results[1 + len(windows) :]
        for (_href, rec), (episodes, visits) in zip(patients, read, strict=True):
            out["patients"].append(rec)
            out["episodes"] += episodes
            out["appointments"] += visits
        self._reconcile_reports(out, past_due_rows, deviations)
        for _start, end in windows:
            self.state.deviation_window_done(office, end.isoformat())
        return dict(out)

    def _read_in_tabs(self, office: str, jobs: list[Job]) -> list[Any]:
        """Run ``jobs`` (report reads and one per patient) in ``portal_tabs`` tabs of the one session.

        All tabs read the same office; each round loads one page in every busy tab at once and waits for all
        of them, so between rounds no tab is mid-load, and the office is only switched (by ``run``, on the main
        tab) before a round. A job is the unit of work: after a bounce (new login) or a browser restart only
        the jobs cut short are run again, from their first page. A unit stops taking new jobs when the
        browser is due for a restart, so restarts still happen between pages. Results come back in job order.
        """
        done: dict[int, Any] = {}
        while len(done) < len(jobs):
            self.browser.run(office, lambda: self._round(jobs, done), ", ".join(sorted({j.what for j in jobs})))
        return [done[i] for i in range(len(jobs))]

    def _round(self, jobs: list[Job], done: dict[int, Any]) -> None:
        b = self.browser
        tabs = b.tabs(self.config.portal_tabs)
        waiting = deque(i for i in range(len(jobs)) if i not in done)
        busy: dict[int, tuple[int, Generator[Step, Tab, Any], Step]] = {}
        while True:
            for t in range(len(tabs)):
                if t not in busy and waiting and b.pages < self.config.portal_restart_every_pages:
                    i = waiting.popleft()
                    steps = jobs[i].steps()
                    busy[t] = (i, steps, next(steps))
            if not busy:
                return
            b.visit_all((tabs[t], step) for t, (_i, _steps, step) in busy.items())
            for t, (i, steps, _step) in list(busy.items()):
                try:
                    busy[t] = (i, steps, steps.send(tabs[t]))
                except StopIteration as finished:
                    done[i] = finished.value
                    del busy[t]

    def _episode_walk(
        self, href: str, patient_id: str, office_name: str, observed: str
    ) -> Generator[Step, Tab, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        """One patient's episodes (following #previouscert) and schedule on both discipline tabs.

        A generator so several patients can be read at once: it yields the next link to open and is sent the
        tab that has loaded it.
        """
        b = self.browser
        tab = yield href
        page = b.snapshot(tab, "episode_manager", ("schedule",), TABLE_JS)
        episodes: list[dict[str, Any]] = []
        visits: dict[str, dict[str, Any]] = {}
        loop = LoopGuard("/AM/Patient/episodeManager.cfm", "link_loop", "episode through #previouscert")
        while True:
            page.require("header")
            if page.get("episode") is None:
                if page.get("no_episodes") is None:
                    raise PortalLayoutChanged("/AM/Patient/episodeManager.cfm", "#episodeInfo")
                return episodes, list(visits.values())
            payer = page.require("payer")
            info = {
                "@episode_key": page.require("episode")["data"].get("episodeKey") or "",
                "period": page.require("period")["text"],
                "number": page.require("number")["text"],
                "status": page.require("status")["text"],
                "payer": payer["text"],
                "@payer_key": payer["data"].get("payerKey") or "",
            }
            loop.check(info["@episode_key"])  # previous-episode links that cycle would be read forever
            ep = self._normalize("episodes", info, lambda i=info: norm.episode(i, patient_id, office_name, observed))
            if ep is not None:
                episodes.append(ep)
            for discipline in ("nursing", "therapy"):
                link = page.require(discipline)["href"]
                if not link:
                    raise PortalLayoutChanged(
                        "/AM/Patient/episodeManager.cfm", self.map.hooks("episode_manager")[discipline][0]
                    )
                tab = yield link
                page = b.snapshot(tab, "episode_manager", ("schedule",), TABLE_JS)
                for row in self._schedule_rows(page.require("schedule")["table"]):
                    rec = self._normalize(
                        "appointments", row, lambda r=row: norm.appointment(r, patient_id, self.tz, observed)
                    )
                    if rec is not None:
                        visits[rec["id"]] = rec
            previous = page.get("previous")
            if previous is None:
                return episodes, list(visits.values())
            tab = yield previous["href"] or ""
            page = b.snapshot(tab, "episode_manager", ("schedule",), TABLE_JS)

    def _schedule_rows(self, found: dict[str, Any]) -> list[dict[str, Any]]:
        self._require_columns(found["headers"], norm.SCHEDULE_COLUMNS, "Episode Manager schedule")
        rows = []
        for cells in found["rows"]:
            row = {h: c["text"] for h, c in cells.items()}
            status_ids = [i for i in cells.get("Status", {}).get("ids") or [] if i.startswith("Status")]
            row["@task_key"] = status_ids[0][len("Status") :] if status_ids else ""
            row["@employee_key"] = cells.get("Assigned To", {}).get("data", {}).get("employeeKey", "")
            row["@payer_key"] = cells.get("Payer", {}).get("data", {}).get("payerKey", "")
            rows.append(row)
        return rows

    def _deviation_windows(self, office: str) -> list[tuple[date, date]]:
        """The Schedule Deviation ranges still to reconcile: from the last one (less a lookback) to today."""
        today = date.today()
        done_until = self.state.deviation_done_until(office)
        start = (
            date.fromisoformat(done_until) - timedelta(days=DEVIATION_LOOKBACK_DAYS)
            if done_until
            else today - timedelta(days=DEVIATION_WINDOW_DAYS * 2 - 1)  # two windows, the last ending today
        )
        windows = []
        while start <= today:
            end = min(start + timedelta(days=DEVIATION_WINDOW_DAYS - 1), today)
            windows.append((start, end))
            start = end + timedelta(days=1)
        return windows

    def _reconcile_reports(
        self, out: dict[str, list[dict[str, Any]]], past_due: list[dict[str, str]], deviations: list[Any]
    ) -> None:
        """Past Due Visits (.xls) and Schedule Deviation must agree with the schedule just read."""
        mrn_of = {p["id"]: p["mrn"] for p in out["patients"]}
        visits = defaultdict(list)
        for v in out["appointments"]:
            day = datetime.fromisoformat(v["start"].replace("Z", "+00:00")).astimezone(self.tz).date()
            visits[(mrn_of.get(v["patient_id"]), v["discipline"], day.isoformat())].append(v["status"])
        for row in past_due:
            key = (
                row["MR#"],
                norm.TASK_DISCIPLINE.get(row["Task"]),
                norm.us_date(row["Target Date"], "appointments", "start"),
            )
            if "scheduled" not in visits.get(key, []):
                self.data_quality["past_due_without_scheduled_visit"] += 1
        for rows in deviations:
            for row in rows:
                key = (
                    row["MR#"],
                    norm.TASK_DISCIPLINE.get(row["Task"]),
                    norm.us_date(row["Target Date"], "appointments", "start"),
                )
                wanted = norm.VISIT_STATUS.get(row["Deviation"])
                if wanted not in visits.get(key, []):
                    self.data_quality["deviation_without_matching_visit"] += 1
        self.data_quality["past_due_rows"] += len(past_due)

    def _report_href(self, label: str) -> str:
        """The Reports / Admin link called ``label``; the list is read once per login, not once per report."""
        b = self.browser
        login = b.stats["logins"]
        if self._report_links[0] != login:
            b.goto(b.menu_href(self.map.menu["reports"]))
            table = b.selector("reports", "list")
            links = b.page.eval_on_selector_all(
                f"{table} {self.map.hooks('reports')['link'][0]}",
                "as => as.map(a => [a.innerText.trim(), a.getAttribute('href') || ''])",
            )
            self._report_links = (login, dict(reversed(links)))  # the first link of a label wins
        href = self._report_links[1].get(label)
        if href is None:
            hooks = self.map.hooks("reports")
            raise PortalLayoutChanged("/AM/Reports/reports.cfm", f"{hooks['list'][0]} {hooks['link'][0]} '{label}'")
        return b.with_key(href)

    def _past_due_job(self, href: str) -> Generator[Step, Tab, list[dict[str, str]]]:
        b = self.browser
        tab = yield href
        content = b.download(b.require("past_due", "to_excel", tab.page), tab.key)
        return norm.read_past_due_xls(content)

    def _deviation_job(self, href: str, start: date, end: date) -> Generator[Step, Tab, list[dict[str, str]]]:
        b = self.browser

        def run_report(tab: Tab) -> None:
            # typed and clicked with JS: Playwright's actionability checks wait for animation frames, which
            # Chromium throttles in a tab that is not in front (seconds per field)
            for hook, day in (("from", start), ("to", end)):
                b.require("deviation", hook, tab.page).evaluate(SET_VALUE_JS, day.strftime("%m/%d/%Y"))
            b.require("deviation", "run", tab.page).evaluate("e => e.click()")  # visit_all waits for the page

        tab = yield href
        tab = yield run_report
        page = tab.page
        if b.find("deviation", "table", page) is None:
            if b.find("deviation", "error", page) is not None:
                raise WellSkyError("the Schedule Deviation report refused the date range; the portal's limit changed")
            if b.find("deviation", "empty", page) is None:
                raise PortalLayoutChanged("/AM/Reports/scheduleDeviation.cfm", self.map.hooks("deviation")["table"][0])
            return []
        found = page.eval_on_selector(b.selector("deviation", "table", page), TABLE_JS)
        self._require_columns(found["headers"], norm.DEVIATION_COLUMNS, "Schedule Deviation")
        return [{h: c["text"] for h, c in cells.items()} for cells in found["rows"]]

    # -- billing --------------------------------------------------------------------------------------
    def _billing(self, office: str, name: str, run: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        observed = self._observed(run)
        patients = {r["MR#"]: r["@patient_key"] for r in self._patient_rows(office) if r.get("MR#")}
        claims: dict[str, dict[str, Any]] = {}
        for view in self.map.claim_views:
            rows = self.browser.run(office, lambda v=view: self._claim_view(v), f"Claims Manager {view.name}")
            for row in rows:
                rec = self._normalize("claims", row, lambda r=row: norm.claim(r, patients, observed))
                if rec is not None:
                    claims[rec["id"]] = rec
        items, as_of = self.browser.run(office, self._unbilled_rows, "Unbilled report")
        unbilled = norm.unbilled(items, as_of, observed) if items else []
        return {"claims": list(claims.values()), "unbilled": unbilled}

    def _open_billing(self, route: str | None = None) -> None:
        b = self.browser
        if urlsplit(b.page.url).path != "/EHR/":
            b.goto(b.menu_href(self.map.menu["billing"]))
            b.wait_until("document.querySelector('#app') && document.querySelector('#app').children.length", "app")
            b.dismiss_guides()
        if route is not None:
            b.page.evaluate("(h) => { location.hash = h; }", f"{route}?sessionCacheKey={b.key}")

    def _claim_view(self, view: ClaimView) -> list[dict[str, Any]]:
        """One Claims Manager list, every page (``#nextGridPage``), checked against the list's export."""
        b = self.browser
        self._open_billing("/AM/billing")
        b.wait_until("document.querySelector('#ManagedCareClaims')", "Billing Manager")
        link = next((s for s in view.link if b.page.locator(s).count()), None)
        if link is None:
            raise PortalLayoutChanged("/EHR/#/AM/billing", view.link[0])
        b.page.eval_on_selector(link, "a => a.click()")  # menu items are often covered: click them with JS
        grid_sel = ",".join(self.map.hooks("billing")["grid"])
        empty = self.map.empty_grid_text
        b.wait_until(f"location.hash.startsWith('#{view.route}') && document.querySelector({grid_sel!r})", view.name)
        b.wait_spinners()
        rows: list[dict[str, Any]] = []
        pages = 0
        loop = LoopGuard(f"/EHR/#{view.route}", "page_loop", "grid page through #nextGridPage")
        while True:
            found = b.page.eval_on_selector(b.selector("billing", "grid"), TABLE_JS)
            self._require_columns(found["headers"], norm.CLAIM_GRID_COLUMNS, f"Claims Manager {view.name}")
            start = len(rows)
            for cells in found["rows"]:
                row = {h: c["text"] for h, c in cells.items() if h}
                ids = [i for c in cells.values() for i in c.get("ids") or []]
                row["@claim"] = next((i.split("openWorksheet", 1)[1] for i in ids if "openWorksheet" in i), "")
                row["@episode"] = next((i.split("billingPeriod", 1)[1] for i in ids if "billingPeriod" in i), "")
                rows.append(row)
            pages += 1
            # a next button that cycles (A, B, A...) passes the wait below on every page: refuse a page seen before
            if len(rows) > start:
                loop.check("|".join(row["@claim"] for row in rows[start:]))
            nxt = b.find("billing", "next")
            if nxt is None:
                if found["rows"] and empty not in b.page.content():
                    raise PortalLayoutChanged(f"/EHR/#{view.route}", self.map.hooks("billing")["next"][0])
                break
            if nxt.is_disabled():
                break
            first = rows[-len(found["rows"])]["@claim"] if found["rows"] else ""
            b.dismiss_guides()
            nxt.click()
            b.wait_until(
                f"(() => {{ const a = document.querySelector('a[id*=\"openWorksheet\"]'); "
                f"return a && a.id !== 'openWorksheet{first}'; }})()",
                "next grid page",
            )
            b.wait_spinners()
        self._check_export(view, rows)
        return rows

    def _check_export(self, view: ClaimView, rows: list[dict[str, Any]]) -> None:
        """The list's export (title row, then header) must hold exactly the claims the grid showed."""
        b = self.browser
        b.dismiss_guides()
        b.require("billing", "export").click()
        save = b.require("billing", "save")
        save.wait_for(state="visible")
        content = b.download(save)
        _title, exported = norm.read_claims_export(content)
        if sorted(map(norm.export_key, exported)) != sorted(map(norm.export_key, rows)):
            raise WellSkyError(
                f"the Claims Manager list {view.name} showed {len(rows)} claims but its export holds {len(exported)}; "
                "the list changed while it was read or paging skipped rows: retry the sync"
            )

    def _unbilled_rows(self) -> tuple[list[dict[str, str]], str]:
        b = self.browser
        self._open_billing("/AM/billing")
        b.wait_until("document.querySelector('#ManagedCareClaims')", "Billing Manager")
        link = b.selector("billing", "unbilled")
        b.page.eval_on_selector(link, "a => a.click()")
        b.wait_until("document.querySelector('#filter_Insurance_btn_select_all')", "Unbilled filters")
        b.wait_spinners()
        b.dismiss_guides()
        if b.page.locator(b.map.hooks("unbilled")["insurance_options"][0]).count() == 0:
            return [], ""  # no payer has unbilled revenue in this office: the report has nothing to fetch
        for hook in ("branch_all", "payer_type_all", "insurance_all"):
            b.require("unbilled", hook).click()
        b.require("unbilled", "fetch").click()
        b.wait_until(
            "document.querySelector('#reportSummary') || document.querySelector('#unbilledError div')",
            "Unbilled report",
        )
        b.wait_spinners()
        if b.find("unbilled", "error") is not None and b.find("unbilled", "summary") is None:
            raise WellSkyError("the Unbilled report refused the filter selection; the portal's filters changed")
        summary = b.page.eval_on_selector(b.selector("unbilled", "summary"), LABELLED_TABLE_JS)
        aging = b.page.eval_on_selector(b.selector("unbilled", "aging"), LABELLED_TABLE_JS)
        as_of = b.require("unbilled", "as_of").inner_text().replace("As of", "").strip()
        found = b.page.eval_on_selector(b.selector("unbilled", "grid"), AG_GRID_JS)
        self._require_columns(found["headers"], norm.UNBILLED_COLUMNS, "Unbilled report")
        rows = found["rows"]
        self._check_unbilled_totals(rows, summary, aging)
        return rows, as_of

    def _check_unbilled_totals(
        self, rows: list[dict[str, str]], summary: dict[str, str], aging: dict[str, str]
    ) -> None:
        def cents(text: str) -> int:
            return round(norm.money(text, "unbilled", "amount") * 100)

        for label in ("Total Unbilled", "Total Charges", "Total Visits"):
            if label not in summary:
                raise PortalLayoutChanged("/EHR/#/AM/billing/unbilled-report", f'#reportSummary "{label}"')
        totals = {
            "Total Unbilled": sum(cents(r["Unbilled Amount"]) for r in rows),
            "Total Charges": sum(cents(r["Charges"]) for r in rows),
        }
        shown = {k: cents(summary[k]) for k in totals}
        visits = sum(norm.whole(r["Visits"], "unbilled", "visits") for r in rows)
        by_bucket = Counter()
        for r in rows:
            by_bucket[r["Aging"]] += cents(r["Unbilled Amount"])
        mismatch = [k for k in totals if totals[k] != shown[k]]
        if norm.whole(summary["Total Visits"], "unbilled", "visits") != visits:
            mismatch.append("Total Visits")
        mismatch += [b for b in norm.AGING_BUCKETS if b in aging and cents(aging[b]) != by_bucket.get(b, 0)]
        if mismatch:
            raise WellSkyError(
                f"the Unbilled report's detail rows do not add up to its summary ({', '.join(mismatch)}); "
                "the report changed while it was read: retry the sync"
            )

    # -- helpers --------------------------------------------------------------------------------------
    @staticmethod
    def _require_columns(headers: list[str], required: tuple[str, ...], page: str) -> None:
        for column in required:
            if column not in headers:
                raise PortalLayoutChanged(page, f'column "{column}"')

    def _normalize(self, entity: str, row: dict[str, Any], build: Any) -> dict[str, Any] | None:
        try:
            return build()  # type: ignore[no-any-return]
        except NormalizationError as exc:
            self.data_quality[f"{entity}_rejected"] += 1
            self.reject(entity, exc, {k: v for k, v in row.items() if not k.startswith("@")} | {"id": exc.record_id})
            return None
