"""The Kinnser portal's durable state (``products/kinnser/state.py``): snapshot comparison, resumable runs,
Schedule Deviation windows, and a private, atomically replaced file. In-process, no portal: seconds."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wellsky_core import private_files
from wellsky_core.products.kinnser.state import RESUME_WITHIN, VERSION, PortalState, fingerprint

T0 = datetime(2026, 3, 10, 12, tzinfo=UTC)


def _finish_one(state: PortalState, now: datetime, records: list[dict]) -> dict[str, str]:
    run = state.begin("billing", now)
    state.office_done(run, "101Clinic", {"claims": records})
    return {r["id"]: r["updated_at"] for r in state.finish(run, ("claims",))["claims"]}


def test_fingerprint_ignores_updated_at_only_and_is_key_order_free() -> None:
    a = {"id": "C1", "amount": 1.0, "updated_at": "x"}
    assert (
        fingerprint(a)
        == fingerprint({"amount": 1.0, "id": "C1", "updated_at": "y"})
        == fingerprint({"id": "C1", "amount": 1.0})
    )
    assert fingerprint(a) != fingerprint({**a, "amount": 2.0})
    assert fingerprint(a) != fingerprint({**a, "note": None})  # a new key (even null) is a change
    assert len(fingerprint(a)) == 32 and int(fingerprint(a), 16) >= 0
    assert fingerprint({"a": "é"}) != fingerprint({"a": "e"})


def test_no_path_keeps_state_in_memory_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    state = PortalState(None)
    assert state.path is None
    assert _finish_one(state, T0, [{"id": "C1", "updated_at": "x"}]) == {"C1": "2026-03-10T12:00:00Z"}
    assert list(tmp_path.iterdir()) == []


def test_a_new_state_has_every_section(tmp_path: Path) -> None:
    state = PortalState(str(tmp_path / "missing.json"))
    assert state.data == {"version": VERSION, "snapshot": {}, "runs": {}, "deviation": {}}
    assert not (tmp_path / "missing.json").exists()  # reading creates nothing


def test_a_file_of_another_version_or_empty_is_started_over(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": VERSION + 1, "snapshot": {"claims": {"C1": ["d", "t"]}}}))
    assert PortalState(str(path)).data["snapshot"] == {}
    path.write_text("")
    assert PortalState(str(path)).data["runs"] == {}
    path.write_text(json.dumps({"version": VERSION, "deviation": {"101Clinic": "2026-03-01"}}))
    loaded = PortalState(str(path)).data
    assert loaded["deviation"] == {"101Clinic": "2026-03-01"} and loaded["snapshot"] == {} and loaded["runs"] == {}


def test_the_file_is_private_in_a_created_directory_and_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.json"
    state = PortalState(str(path))
    state.begin("billing", T0)  # a new run is saved at once
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["runs"]["billing"]["complete"] is False
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary file left
    assert b" " not in path.read_bytes()  # compact separators


def test_a_failed_save_leaves_no_temporary_file_and_the_old_state(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "state.json"
    state = PortalState(str(path))
    state.deviation_window_done("101Clinic", "2026-03-01")
    before = path.read_bytes()

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(private_files.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        state.deviation_window_done("101Clinic", "2026-03-08")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_run_resumes_within_the_window_and_restarts_after_it(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = PortalState(str(path))
    run = state.begin("billing", T0)
    assert run == {"started_at": "2026-03-10T12:00:00Z", "offices": {}, "complete": False}
    state.office_done(run, "101Clinic", {"claims": [{"id": "C1"}]})
    assert json.loads(path.read_text())["runs"]["billing"]["offices"] == {"101Clinic": {"claims": [{"id": "C1"}]}}
    # exactly at the window's edge: still resumed
    edge = PortalState(str(path)).begin("billing", T0 + RESUME_WITHIN)
    assert edge["started_at"] == "2026-03-10T12:00:00Z" and list(edge["offices"]) == ["101Clinic"]
    # past it: started over, and that is saved
    late = PortalState(str(path)).begin("billing", T0 + RESUME_WITHIN + timedelta(seconds=1))
    assert late["offices"] == {} and late["started_at"] == "2026-03-11T12:00:01Z"
    assert json.loads(path.read_text())["runs"]["billing"]["started_at"] == "2026-03-11T12:00:01Z"
    # groups are independent
    assert PortalState(str(path)).begin("schedule", T0)["offices"] == {}


def test_begin_stamps_utc_whatever_the_zone() -> None:
    eastern = datetime(2026, 3, 10, 8, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert PortalState(None).begin("billing", eastern)["started_at"] == "2026-03-10T08:00:00Z"


def test_finish_stamps_by_snapshot_sorts_and_closes_the_run(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = PortalState(str(path))
    run = state.begin("billing", T0)
    state.office_done(run, "101Clinic", {"claims": [{"id": "C2", "amount": 2.0}], "unbilled": [{"id": "U1"}]})
    state.office_done(run, "102Clinic", {"claims": [{"id": "C1", "amount": 1.0}]})
    out = state.finish(run, ("claims", "unbilled", "episodes"))
    assert [r["id"] for r in out["claims"]] == ["C1", "C2"]  # by (updated_at, id)
    assert out["unbilled"] == [{"id": "U1", "updated_at": "2026-03-10T12:00:00Z"}] and out["episodes"] == []
    saved = json.loads(path.read_text())
    assert saved["runs"]["billing"] == {"started_at": "2026-03-10T12:00:00Z", "offices": {}, "complete": True}
    assert saved["snapshot"]["claims"]["C1"] == [fingerprint({"id": "C1", "amount": 1.0}), "2026-03-10T12:00:00Z"]
    assert saved["snapshot"]["episodes"] == {}

    later = PortalState(str(path))
    run2 = later.begin("billing", T0 + timedelta(days=1))
    later.office_done(run2, "101Clinic", {"claims": [{"id": "C1", "amount": 1.0}, {"id": "C2", "amount": 3.0}]})
    # C1 unchanged keeps its time; C2 changed takes this run's; both sorted by that time
    out2 = later.finish(run2, ("claims",))["claims"]
    assert [(r["id"], r["updated_at"]) for r in out2] == [
        ("C1", "2026-03-10T12:00:00Z"),
        ("C2", "2026-03-11T12:00:00Z"),
    ]
    # a record gone from the portal leaves the snapshot
    run3 = later.begin("billing", T0 + timedelta(days=2))
    later.office_done(run3, "101Clinic", {"claims": [{"id": "C2", "amount": 3.0}]})
    later.finish(run3, ("claims",))
    assert set(json.loads(path.read_text())["snapshot"]["claims"]) == {"C2"}


def test_a_record_seen_in_two_offices_is_one_record(tmp_path: Path) -> None:
    state = PortalState(None)
    run = state.begin("billing", T0)
    state.office_done(run, "101Clinic", {"claims": [{"id": "C1", "amount": 1.0}]})
    state.office_done(run, "102Clinic", {"claims": [{"id": "C1", "amount": 2.0}]})
    out = state.finish(run, ("claims",))["claims"]
    assert out == [{"id": "C1", "amount": 2.0, "updated_at": "2026-03-10T12:00:00Z"}]  # the last office read wins


def test_ties_in_time_sort_by_id() -> None:
    state = PortalState(None)
    run = state.begin("billing", T0)
    state.office_done(run, "101Clinic", {"claims": [{"id": "B"}, {"id": "C"}, {"id": "A"}]})
    assert [r["id"] for r in state.finish(run, ("claims",))["claims"]] == ["A", "B", "C"]


def test_deviation_windows_are_remembered_per_office(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = PortalState(str(path))
    assert state.deviation_done_until("101Clinic") is None
    state.deviation_window_done("101Clinic", "2026-03-08")
    again = PortalState(str(path))
    assert again.deviation_done_until("101Clinic") == "2026-03-08" and again.deviation_done_until("102Clinic") is None
    assert os.path.exists(path)


def test_the_fingerprint_formula_is_pinned() -> None:
    """A changed formula would re-stamp every stored record after an upgrade (all re-emitted as changed)."""
    import hashlib

    record = {"id": "C1", "amount": 1.5, "office": "101", "updated_at": "x"}
    body = json.dumps({"amount": 1.5, "id": "C1", "office": "101"}, sort_keys=True, separators=(",", ":"))
    assert fingerprint(record) == hashlib.sha256(body.encode()).hexdigest()[:32]


def test_begin_stamps_utc_on_a_machine_in_another_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/Chicago")
    time.tzset()
    try:
        assert PortalState(None).begin("billing", T0)["started_at"] == "2026-03-10T12:00:00Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_temporary_file_is_hidden_beside_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside it: a rename across filesystems is not atomic; hidden: never mistaken for a state file."""
    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def recording(src: str, dst: object) -> None:
        renames.append((Path(src), Path(str(dst))))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(private_files.os, "replace", recording)
    path = tmp_path / "state" / "portal.json"
    PortalState(str(path)).deviation_window_done("101Clinic", "2026-03-08")
    ((src, dst),) = renames
    assert dst == path and src.parent == path.parent and src.name.startswith(".portal.json.")
