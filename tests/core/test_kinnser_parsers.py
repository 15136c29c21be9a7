"""Kinnser portal files and rows, from fixtures written from the public record (no sandbox, no browser)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from wellsky_core.errors import NormalizationError
from wellsky_core.products.kinnser import normalize as norm
from wellsky_core.products.kinnser.state import PortalState

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kinnser"
OBSERVED = "2026-03-10T12:00:00Z"


def test_past_due_xls_reads_text_and_date_cells_alike() -> None:
    rows = norm.read_past_due_xls(FIXTURES / "past_due_visits.xls")
    assert len(rows) == 6
    assert rows[0] == {
        "Patient": "Doe, Jane",
        "MR#": "MR100001",
        "Task": "Skilled Nurse Visit",
        "Assigned": "Smith, Ann",
        "Status": "Not Started",
        "Target Date": "03/02/2026",
        "Case Manager": "Lee, Kim",
    }
    assert [r["Status"] for r in rows[:5]] == [
        "Not Started",
        "Saved",
        "Pending Clinician Signature",
        "Returned for Review",
        "Reopened",
    ]
    assert rows[5]["Target Date"] == "03/09/2026"  # a real Excel date cell spelled like the text ones
    assert rows[2]["Assigned"] == "" and norm.split_name(rows[1]["Patient"]) == ("Richard", "Roe")
    assert norm.read_past_due_xls((FIXTURES / "past_due_visits.xls").read_bytes()) == rows


def test_past_due_rejects_a_file_that_is_not_a_legacy_workbook_or_lacks_the_header(tmp_path: Path) -> None:
    with pytest.raises(NormalizationError) as info:
        norm.read_past_due_xls(b"Patient,MR#\n")
    assert "legacy .xls" in str(info.value)
    import xlwt

    book = xlwt.Workbook()
    sheet = book.add_sheet("Past Due Visits")
    for col, label in enumerate(("Patient", "MRN", "Task")):  # the vendor renamed MR#
        sheet.write(0, col, label)
    book.save(str(tmp_path / "renamed.xls"))
    with pytest.raises(norm.ReportFormatError) as renamed:
        norm.read_past_due_xls(tmp_path / "renamed.xls")
    assert 'column "MR#"' in str(renamed.value)


def test_claims_exports_skip_the_title_row() -> None:
    title, rows = norm.read_claims_export((FIXTURES / "dx_not_ready_export.csv").read_bytes())
    assert title == "Not Ready Claims - Export generated 03/10/2026"
    assert [r["MRN"] for r in rows] == ["MR100001", "MR100002"]
    assert rows[0]["Billing Period"] == "02/20/2026 - 03/21/2026" and rows[0]["Patient Name"] == "Doe, Jane"
    assert norm.period(rows[1]["Billing Period"], "claims", "billing_period") == ("2026-02-13", "2026-03-14")
    title, eoe = norm.read_claims_export(
        (FIXTURES / "eoe_not_ready_export.csv").read_text(encoding="utf-8"), required=("RAP Status", "Insurance")
    )
    assert title == "EOE Not Ready" and eoe[0]["Orders"] == "✔" and eoe[1]["Orders"] == ""
    with pytest.raises(norm.ReportFormatError) as info:
        norm.read_claims_export((FIXTURES / "eoe_not_ready_export.csv").read_text(encoding="utf-8"))
    assert 'column "MRN"' in str(info.value)


def test_claim_rows_normalize_with_type_of_bill_money_and_mrn_lookup() -> None:
    row = {
        "@claim": "CLM0000000001",
        "@episode": "HH-EP0000101",
        "MRN": "MR100001",
        "Billing Period": "02/20/2026 - 03/21/2026",
        "Insurance": "Medicare Part A",
        "Type of Bill": "329",
        "Authorization": "",
        "Branch": "North Clinic",
        "Status": "Ready to Send",
        "Amount": "$1,234.50",
    }
    rec = norm.claim(row, {"MR100001": "HH-P000001"}, OBSERVED)
    assert rec["claim_type"] == "EOE" and rec["amount"] == 1234.5 and rec["patient_id"] == "HH-P000001"
    assert rec["status"] == "ready_to_send" and rec["authorization_number"] is None
    assert norm.claim_type("322") == "RAP" and norm.claim_type("0813") == "final"
    with pytest.raises(NormalizationError) as info:
        norm.claim({**row, "Status": "Teleported"}, {}, OBSERVED)
    assert info.value.field == "status" and "Teleported" not in str(info.value)
    assert norm.money("($12.00)", "claims", "amount") == -12.0


def test_schedule_rows_become_utc_appointments_across_dst() -> None:
    tz = ZoneInfo("America/Chicago")
    row = {
        "@task_key": "HH-V000001",
        "@employee_key": "HH-C000002",
        "@payer_key": "MCR",
        "Task": "PT Visit",
        "Target Date": "03/09/2026",  # the day after the spring-forward change
        "Time": "09:00 AM - 10:15 AM",
        "Status": "Missed Visit",
        "Service": "G0151",
    }
    rec = norm.appointment(row, "HH-P000001", tz, OBSERVED)
    assert rec["start"] == "2026-03-09T14:00:00Z" and rec["end"] == "2026-03-09T15:15:00Z"
    assert rec["status"] == "missed" and rec["discipline"] == "PT" and rec["practitioner_id"] == "HH-C000002"
    winter = norm.appointment({**row, "Target Date": "01/09/2026", "Status": "Saved"}, "HH-P000001", tz, OBSERVED)
    assert winter["start"] == "2026-01-09T15:00:00Z" and winter["status"] == "scheduled"


def test_unbilled_rows_group_by_office_payer_and_bucket() -> None:
    base = {
        "Branch": "North Clinic",
        "Payer Type": "Medicare",
        "Insurance": "Medicare Part A",
        "Visits": "2",
        "Charges": "$100.00",
        "Unbilled Amount": "$80.00",
        "Aging": "31-60",
        "Claim #": "C1",
    }
    rows = [
        base,
        {**base, "Claim #": "C2", "Unbilled Amount": "$0.10", "Charges": "$0.20"},
        {**base, "Claim #": "C3", "Aging": "241+"},
    ]
    out = norm.unbilled(rows, "03/10/2026", OBSERVED)
    assert [(r["aging_bucket"], r["claims"], r["amount"], r["charges"], r["visits"]) for r in out] == [
        ("241+", 1, 80.0, 100.0, 2),
        ("31-60", 2, 80.1, 100.2, 4),
    ]
    assert out[0]["id"] == "2026-03-10|North Clinic|Medicare Part A|241+" and out[0]["snapshot_date"] == "2026-03-10"


def test_state_compares_snapshots_and_resumes_a_killed_run(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    t0 = datetime(2026, 3, 10, 12, tzinfo=UTC)
    state = PortalState(str(path))
    run = state.begin("billing", t0)
    state.office_done(run, "101Clinic", {"claims": [{"id": "C1", "amount": 1.0, "updated_at": OBSERVED}]})
    # killed here: a new process resumes the same run and keeps the finished office
    resumed = PortalState(str(path))
    run2 = resumed.begin("billing", t0.replace(hour=13))
    assert run2["started_at"] == "2026-03-10T12:00:00Z" and list(run2["offices"]) == ["101Clinic"]
    resumed.office_done(run2, "102Clinic", {"claims": [{"id": "C2", "amount": 2.0, "updated_at": OBSERVED}]})
    first = resumed.finish(run2, ("claims",))["claims"]
    assert {r["id"]: r["updated_at"] for r in first} == {"C1": "2026-03-10T12:00:00Z", "C2": "2026-03-10T12:00:00Z"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    later = PortalState(str(path))
    run3 = later.begin("billing", datetime(2026, 3, 11, 12, tzinfo=UTC))
    assert run3["offices"] == {}  # the last run completed: a new one starts
    later.office_done(
        run3,
        "101Clinic",
        {"claims": [{"id": "C1", "amount": 1.0, "updated_at": "x"}, {"id": "C2", "amount": 9.0, "updated_at": "x"}]},
    )
    second = {r["id"]: r["updated_at"] for r in later.finish(run3, ("claims",))["claims"]}
    assert second == {"C1": "2026-03-10T12:00:00Z", "C2": "2026-03-11T12:00:00Z"}  # unchanged keeps its time


def test_the_portal_session_key_goes_only_to_the_portals_own_origin() -> None:
    """``sessionCacheKey`` is a session credential: appended to the portal's own links, refused for another
    origin (``http/trust.py``)."""
    from wellsky_core.config import WellSkyConfig
    from wellsky_core.errors import RemoteError
    from wellsky_core.products.kinnser.browser import PortalBrowser
    from wellsky_core.products.kinnser.pagemap import HOME_HEALTH

    config = WellSkyConfig.load(
        {"base_url": "https://kinnser.example.test", "product": "home_health", "source": "portal",
         "username": "u", "password": "p", "agency_timezone": "America/Chicago"},
        env={},
    )
    browser = PortalBrowser(config, HOME_HEALTH, None)
    browser.key = "k3y-0f-the-tab"
    assert browser.with_key("/Patient/list?x=1").startswith("https://kinnser.example.test/Patient/list?x=1&")
    assert "sessionCacheKey=k3y-0f-the-tab" in browser.with_key("https://kinnser.example.test/Report?a=b")
    for foreign in ("https://cdn.example.net/x", "https://kinnser.example.test:8443/x", "http://kinnser.example.test/"):
        with pytest.raises(RemoteError) as info:
            browser.with_key(foreign)
        assert info.value.code == "foreign_portal_link" and "k3y" not in str(info.value)


def test_every_unit_of_work_runs_with_the_main_page_in_front() -> None:
    """The portal's tabs put the main page in the background; a unit run there (the billing walk: clicks on the
    Claims Manager) waited ~2 s per Playwright click (65 s of a 107 s walk at 10 patients, docs/benchmarks.md
    run 7). ``run`` brings the main page to the front before each unit. No browser here: the order of calls is
    the rule; the measured effect is the benchmark's."""
    from wellsky_core.config import WellSkyConfig
    from wellsky_core.products.kinnser.browser import PortalBrowser
    from wellsky_core.products.kinnser.pagemap import PAGE_MAPS

    calls: list[str] = []

    class Page:
        def bring_to_front(self) -> None:
            calls.append("front")

    config = WellSkyConfig.load(
        {"base_url": "https://portal.example.test", "username": "u", "password": "p", "product": "home_health",
         "source": "portal", "agency_timezone": "America/Chicago"},
        env={},
    )
    browser = PortalBrowser(config, PAGE_MAPS["home_health"], None)
    browser._page = Page()  # type: ignore[assignment]
    assert browser.run(None, lambda: calls.append("unit") or "done", "a unit") == "done"
    assert browser.run(None, lambda: calls.append("unit") or "again", "a unit") == "again"
    assert calls == ["front", "unit", "front", "unit"]


def test_a_claims_grid_whose_next_button_cycles_is_refused_not_read_forever() -> None:
    """``#nextGridPage`` going A, B, A... passes the page-changed wait every time; the one LoopGuard
    (``http/paging.py``) refuses the first page seen twice, naming the list."""
    from wellsky_core.errors import RemoteError
    from wellsky_core.products.kinnser.channel import KinnserPortalChannel
    from wellsky_core.products.kinnser.pagemap import PAGE_MAPS

    columns = ["MRN", "Billing Period", "Insurance", "Type of Bill", "Authorization", "Branch", "Status", "Amount"]

    def grid(claims: list[str]) -> dict[str, object]:
        row = {c: {"text": "x"} for c in columns}
        rows = [{**row, "Claim": {"text": c, "ids": [f"openWorksheet{c}"]}} for c in claims]
        return {"headers": columns, "rows": rows}

    pages = [grid(["C1", "C2"]), grid(["C3", "C4"])]  # the next button cycles between these two for ever

    class Button:
        def is_disabled(self) -> bool:
            return False

        def click(self) -> None:
            state["clicks"] += 1
            assert state["clicks"] < 20, "the grid was read round and round"
            state["page"] = (state["page"] + 1) % len(pages)

    class Locator:
        def count(self) -> int:
            return 1

    class Page:
        def locator(self, selector: str) -> Locator:
            return Locator()

        def eval_on_selector(self, selector: str, script: str) -> object:
            return pages[state["page"]]

        def content(self) -> str:
            return ""

    class Browser:
        page = Page()

        def wait_until(self, *args: object) -> None:
            pass

        def wait_spinners(self) -> None:
            pass

        def dismiss_guides(self) -> None:
            pass

        def selector(self, page: str, hook: str) -> str:
            return f"#{hook}"

        def find(self, page: str, hook: str) -> Button:
            return Button()

    state = {"page": 0, "clicks": 0}
    channel = object.__new__(KinnserPortalChannel)
    channel.map = PAGE_MAPS["home_health"]
    channel.browser = Browser()
    channel._open_billing = lambda route: None  # type: ignore[method-assign]
    channel._check_export = lambda view, rows: None  # type: ignore[method-assign]
    with pytest.raises(RemoteError) as caught:
        channel._claim_view(channel.map.claim_views[0])
    assert caught.value.code == "page_loop" and "#nextGridPage" in str(caught.value), caught.value
    assert state["page"] == 0, "refused on the first repeat (A, B, then A again), not after more rounds"
