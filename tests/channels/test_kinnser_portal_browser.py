"""The Kinnser portal channel in real headless Chromium against the sandbox portal (home health, hospice).

Browser walks are slow, so each test combines several behaviours in one walk: equality with the sandbox
truth for every office (including the one with no data), the acceptable-use dialog, the terminate-other-
session prompt, 2-step verification, a session expiring mid-run, covering pop-up guides, a changed selector
and resuming a killed walk.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from wellsky_core.channels import open_channel
from wellsky_core.channels.portal import PortalLayoutChanged
from wellsky_core.config import WellSkyConfig
from wellsky_core.models import ENTITIES
from wellsky_core.products.kinnser import KinnserPortalChannel
from wellsky_sandbox.testing import SandboxServer

CHROMIUM = "/usr/bin/chromium"
STREAMS = ("patients", "appointments", "episodes", "claims", "unbilled")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Debian's chromium (.ci/run installs it)"),
]


def config_for(server: SandboxServer, state: Path, **overrides: Any) -> WellSkyConfig:
    settings = {
        "base_url": server.base_url,
        "username": server.username,
        "password": server.password,
        "chromium_path": CHROMIUM,
        "agency_timezone": "America/Chicago",
        "portal_state_path": str(state),
        "portal_wait_seconds": 20,
        "source": "portal",
        **overrides,
    }
    return WellSkyConfig.load(settings, env={})


def portal(server: SandboxServer, state: Path, **overrides: Any) -> KinnserPortalChannel:
    channel = open_channel("portal", config_for(server, state, **overrides), None, server.product)
    assert isinstance(channel, KinnserPortalChannel)
    return channel


def bare(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without updated_at (the portal shows none; the channel stamps when it saw a version)."""
    return sorted(({k: v for k, v in r.items() if k != "updated_at"} for r in records), key=lambda r: r["id"])


def truth(server: SandboxServer, entity: str) -> list[dict[str, Any]]:
    """The sandbox's records in canonical form (the model fills the defaults the oracle leaves out)."""
    if entity in ("patients", "appointments"):
        rows = server.truth(entity)
    else:
        rows = server.control("GET", f"/_sandbox/kinnser/truth/{entity}")["data"]
    model = ENTITIES[entity].model
    stamp = {"updated_at": "2026-01-01T00:00:00Z"}
    return bare([model.model_validate({**stamp, **r}).model_dump(mode="json", by_alias=True) for r in rows])


def kinnser(server: SandboxServer, **settings: Any) -> dict[str, Any]:
    return server.control("POST", "/_sandbox/kinnser", json=settings)  # type: ignore[no-any-return]


def sign_in_elsewhere(server: SandboxServer) -> httpx.Client:
    """Another browser of the same user: its live session makes the portal show the terminate prompt."""
    other = httpx.Client(base_url=server.base_url, follow_redirects=True)
    page = other.post("/login.cfm", data={"username": server.username, "password": server.password})
    assert page.url.path == "/AM/Message/inbox.cfm"
    return other


@pytest.mark.timeout(900)
def test_home_health_walk_equals_truth_through_dialog_terminate_totp_expiry_and_guides(
    sandbox_factory: Callable[..., SandboxServer], tmp_path: Path
) -> None:
    tenant = sandbox_factory(product="home_health", scale=14, sftp_port=None)
    other = sign_in_elsewhere(tenant)
    kinnser(tenant, two_step="totp", guide_every=4, expire_every_pages=60, grid_delay_ms=100)
    state = tmp_path / "portal-state.json"
    channel = portal(tenant, state, mfa_method="totp", totp_secret=tenant.totp_secret)
    started = datetime.now().astimezone()
    try:
        got = {entity: list(channel.iter_records(entity, None)) for entity in STREAMS}
    finally:
        channel.close()
    for entity in STREAMS:
        assert bare(got[entity]) == truth(tenant, entity), entity
        assert got[entity], f"the sandbox tenant has {entity}"
    offices = {o["name"]: o for o in tenant.control("GET", "/_sandbox/kinnser/truth/offices")["data"]}
    walked = {(p["group"], p["office"]) for p in channel.progress}
    assert walked == {(g, name) for g in ("clinical", "billing") for name, o in offices.items() if not o["corporate"]}
    walked_offices = len({name for _, name in walked})
    for entity in STREAMS:  # issue 28 item 6: the office list is the plan, so progress has a total (and an ETA)
        assert channel.progress_note(entity, 60.0).startswith(
            f", {walked_offices}/{walked_offices} offices (100%)"
        ), (entity, channel.progress_note(entity, 60.0))
    empty = [p for p in channel.progress if p["office"] == "East Clinic"]
    assert offices["East Clinic"]["patients"] == 0 and all(
        v == 0 for p in empty for k, v in p.items() if k not in ("group", "office")
    )
    assert {r["office"] for r in got["claims"]} == {
        n for n, o in offices.items() if o["patients"] and not o["corporate"]
    }
    stats = channel.browser.stats
    assert stats["terminated_sessions"] >= 1  # the first login met the other session
    assert stats["bounces"] >= 1 and stats["logins"] == stats["bounces"] + 1 + stats["restarts"]
    assert stats["guides_closed"] >= 1
    assert other.get("/AM/Message/inbox.cfm").url.path == "/login.cfm"  # that other session was terminated
    observed = {r["updated_at"] for entity in STREAMS for r in got[entity]}
    assert len(observed) == 2 and all(datetime.fromisoformat(t) >= started - timedelta(seconds=1) for t in observed)
    assert channel.data_quality["past_due_without_scheduled_visit"] == 0
    assert channel.data_quality["deviation_without_matching_visit"] == 0

    # incremental: after a day of changes only new and changed records pass the bookmark
    kinnser(tenant, two_step="off", guide_every=0, expire_every_pages=0)
    first = {e: {r["id"]: r for r in bare(got[e])} for e in ("patients", "appointments")}
    tenant.advance(count=8, seed=3)
    bookmark = datetime.fromisoformat(max(observed)) + timedelta(seconds=1)
    again = portal(tenant, state)
    try:
        changed = {e: list(again.iter_records(e, bookmark)) for e in ("patients", "appointments")}
    finally:
        again.close()
    for entity in ("patients", "appointments"):
        expected = [r for r in truth(tenant, entity) if first[entity].get(r["id"]) != r]
        assert bare(changed[entity]) == expected, entity
    assert any(changed.values())


@pytest.mark.timeout(900)
def test_hospice_changed_selector_fails_whole_then_a_killed_walk_resumes(
    sandbox_factory: Callable[..., SandboxServer], tmp_path: Path
) -> None:
    tenant = sandbox_factory(product="hospice", scale=12, sftp_port=None)
    kinnser(tenant, two_step="email")
    state = tmp_path / "portal-state.json"
    email = {"mfa_method": "email", "mfa_code_source": "sandbox_outbox", "mfa_code_timeout_seconds": 20}
    channel = portal(tenant, state, **email)
    done = channel.state.office_done

    def release_after_first_office(run: dict[str, Any], office: str, records: dict[str, Any]) -> None:
        done(run, office, records)
        if len(run["offices"]) == 1:  # a vendor release lands mid-walk and ends the session
            kinnser(tenant, layout="v2", expire_sessions=True)

    channel.state.office_done = release_after_first_office  # type: ignore[method-assign]
    emitted: list[dict[str, Any]] = []
    try:
        with pytest.raises(PortalLayoutChanged) as info:
            emitted.extend(channel.iter_records("patients", None))
    finally:
        channel.close()
    assert emitted == []  # never half the data
    assert info.value.page == "/AM/Patient/episodeManager.cfm" and info.value.selector == "#scheduled-task"
    assert channel.browser.stats["logins"] == 2  # signed in again on the v2 login page (#UserName fallback)
    assert len(channel.progress) == 1

    kinnser(tenant, layout="v1")
    resumed = portal(tenant, state, portal_restart_every_pages=40, **email)
    try:
        got = {entity: list(resumed.iter_records(entity, None)) for entity in STREAMS}
    finally:
        resumed.close()
    assert [p["group"] for p in resumed.progress].count("clinical") == 3  # only the offices not yet read
    stats = resumed.browser.stats
    assert stats["restarts"] >= 1 and stats["terminated_sessions"] >= stats["restarts"]  # old tab's session
    for entity in STREAMS:
        assert bare(got[entity]) == truth(tenant, entity), entity
    assert {r["claim_type"] for r in got["claims"]} == {"final"}
    assert {r["type_of_bill"][:2] for r in got["claims"]} == {"81"}


@pytest.mark.timeout(900)
def test_tabs_read_exactly_what_one_tab_reads_and_never_across_an_office_switch(
    sandbox_factory: Callable[..., SandboxServer], tmp_path: Path
) -> None:
    """Several tabs of the one login read patients at once: the same records as one tab, every page served in
    the patient's own office (no switch while a tab was mid-read), and a session ending mid-round re-reads only
    the patients that were in flight, from their first page."""
    from wellsky_sandbox.kinnser.data import office_of

    tenant = sandbox_factory(product="home_health", scale=14, sftp_port=None)
    clinical = ("patients", "appointments", "episodes")
    one_tab = portal(tenant, tmp_path / "one.json", portal_tabs=1)
    try:
        sequential = {entity: list(one_tab.iter_records(entity, None)) for entity in clinical}
    finally:
        one_tab.close()
    assert one_tab.browser.stats["logins"] == 1
    first_walk = len(tenant.control("GET", "/_sandbox/kinnser/served")["data"])

    kinnser(tenant, expire_every_pages=50)  # sessions end mid-round: tabs have pages in flight then
    tabs = portal(tenant, tmp_path / "tabs.json", portal_tabs=4)
    try:
        concurrent = {entity: list(tabs.iter_records(entity, None)) for entity in clinical}
    finally:
        tabs.close()
    for entity in clinical:
        assert bare(concurrent[entity]) == bare(sequential[entity]) == truth(tenant, entity), entity
        assert concurrent[entity], f"the sandbox tenant has {entity}"
    stats = tabs.browser.stats
    assert stats["bounces"] >= 1 and stats["logins"] == stats["bounces"] + 1 + stats["restarts"]

    pages = tenant.control("GET", "/_sandbox/kinnser/served")["data"][first_walk:]
    episode_pages = [p for p in pages if p["path"] == "/AM/Patient/episodeManager.cfm"]
    assert episode_pages and all(p["status"] == 200 for p in episode_pages)
    assert all(p["office"] == office_of(p["patient"]).value for p in episode_pages)  # never across a switch
    assert len({p["tab"] for p in episode_pages}) >= 4  # four tabs, new keys after each login
    order = [p["patient"] for p in episode_pages]
    runs = [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]
    assert len(runs) > len(set(order))  # patients' pages interleave: they were read at the same time


def test_refusing_the_acceptable_use_dialog_logs_the_session_out(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    """Why the channel accepts the dialog: a browser that dismisses it (Playwright's default) is logged out."""
    from playwright.sync_api import sync_playwright

    from wellsky_core.chromium import chromium_args

    tenant = sandbox_factory(product="home_health", scale=5, sftp_port=None)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=chromium_args(CHROMIUM))
        try:
            page = browser.new_page()
            seen: list[str] = []
            page.on("dialog", lambda dialog: (seen.append(dialog.message), dialog.dismiss()))
            page.goto(tenant.base_url + "/login.cfm")
            page.fill("#username", tenant.username)
            page.fill("#password", tenant.password)
            page.click("#login_btn")
            page.wait_for_url("**/login.cfm**")
            assert seen and "Unauthorized access" in seen[0]
            assert kinnser(tenant)["live_sessions"] == 0
        finally:
            browser.close()


def test_snapshot_reads_hooks_in_one_pass_and_asks_playwright_for_its_own_selectors(tmp_path: Path) -> None:
    """A hook whose documented selector is gone falls back to a Playwright-only one (``a:has-text('Nursing')``),
    which ``document.querySelector`` cannot parse; a missing required hook names the page and the documented
    selector."""
    from wellsky_core.chromium import close_browser, launch_chromium, start_playwright
    from wellsky_core.products.kinnser.browser import PortalBrowser, Tab
    from wellsky_core.products.kinnser.channel import TABLE_JS
    from wellsky_core.products.kinnser.pagemap import HOME_HEALTH

    config = WellSkyConfig.load(
        {"base_url": "http://127.0.0.1:9", "username": "u", "password": "p", "chromium_path": CHROMIUM}, env={}
    )
    browser = PortalBrowser(config, HOME_HEALTH, None)
    pw = start_playwright()
    chromium = launch_chromium(pw, CHROMIUM)
    try:
        page = chromium.new_page()
        page.set_content(
            '<div id="patientHeader">P</div><div id="episodeInfo" data-episode-key="E1">'
            '<span id="certPeriod">01/01/2026 - 03/01/2026</span></div><a href="/n?tab=nursing">Nursing</a>'
            '<table id="scheduled-task"><tr class="hRowBgImage"><th>Task</th></tr><tr class="trred"><td>w</td></tr>'
            "<tr><td>Skilled Nurse Visit</td></tr></table>"
        )
        shot = browser.snapshot(Tab(page, "k", 0), "episode_manager", ("schedule",), TABLE_JS)
        assert shot.require("episode")["data"] == {"episodeKey": "E1"}
        assert shot.require("period")["text"] == "01/01/2026 - 03/01/2026"
        assert shot.require("nursing")["href"] == "/n?tab=nursing"  # found by the :has-text fallback
        rows = shot.require("schedule")["table"]["rows"]
        assert [r["Task"]["text"] for r in rows] == ["Skilled Nurse Visit"]  # the week separator (trred) skipped
        assert shot.get("previous") is None
        with pytest.raises(PortalLayoutChanged) as info:
            shot.require("therapy")
        assert info.value.selector == "#LinkTherapy"
    finally:
        close_browser(pw, chromium)
