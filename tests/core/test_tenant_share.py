"""One tenant's budget shared by the processes sending to it (``wellsky_core/http/tenant_share.py``).

Two ``TenantShare`` objects in one test process hold separate open files, so their ``flock`` locks exclude each
other exactly as two processes' do; the killed-process cases use real child processes. The request windows run
on a fake clock (no wall time), and every tenant second is counted as the tenant counts it (any 1 s span)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from wellsky_core.http import tenant_share
from wellsky_core.http.ratelimit import RequestWindow
from wellsky_core.http.tenant_share import RECHECK_SECONDS, SETTLE_SECONDS, TenantShare, lease_directory

from .holder_process import start_holder
from .test_ratelimit import FakeClock, _busiest_second

BUDGET = 100
EPOCH = 1_800_000_000.0


class Process:
    """A process sending to the tenant: its share of the budget and its request window, on the shared fake clock."""

    def __init__(self, name: str, directory: Path, clock: FakeClock, *, shared: bool = True) -> None:
        self.name = name
        self.share = TenantShare(directory, clock=clock, wall=lambda: EPOCH + clock.now) if shared else None
        window = RequestWindow.for_budget(BUDGET, 0.95, clock=clock, sleep=clock.sleep, share=self.share)
        assert window is not None
        self.window = window
        self.stamps: list[float] = []
        self.clock = clock

    def send(self) -> None:
        self.window.acquire()
        self.window.sent()
        self.stamps.append(self.clock.now)

    def close(self) -> None:
        self.window.close()


def _run_schedule(directory: Path, *, shared: bool) -> dict[str, list[float]]:
    """A sends from 0 s; B joins at 3 s; A ends at 8 s and C starts at once; B ends at 12 s; C ends at 16 s and
    D starts at once (the next run of a schedule). Each live process sends as fast as its window lets it, in turn."""
    clock = FakeClock()
    plan = {"A": (0.0, 8.0), "B": (3.0, 12.0), "C": (8.0, 16.0), "D": (16.0, 20.0)}
    live: dict[str, Process] = {}
    ended: dict[str, Process] = {}
    while clock.now < 20.0:
        for name, (start, end) in plan.items():
            if name not in live and name not in ended and clock.now >= start:
                live[name] = Process(name, directory, clock, shared=shared)
            if name in live and clock.now >= end:
                ended[name] = live.pop(name)
                ended[name].close()
        for process in list(live.values()):
            process.send()
    for process in live.values():
        process.close()
    return {p.name: p.stamps for p in [*ended.values(), *live.values()]}


def test_processes_coming_and_going_never_overrun_the_tenants_budget(tmp_path: Path) -> None:
    """Joins, ends and a back-to-back successor: no tenant second holds more than the budget, and each process
    gets its share. The control, the same schedule with a budget per process (before), overruns."""
    stamps = _run_schedule(tmp_path / "budget", shared=True)
    every = sorted(t for sent in stamps.values() for t in sent)
    assert _busiest_second(every) <= BUDGET
    # in bursts of half the budget: counted over 3 s, 95 requests/s alone is 250 to 300, half of it 150
    a_alone = [t for t in stamps["A"] if 0.0 <= t < 3.0]
    a_shared = [t for t in stamps["A"] if 5.0 <= t < 8.0]
    assert 240 <= len(a_alone) <= 3 * BUDGET, "alone, A takes 95% of the budget"
    assert 100 <= len(a_shared) <= 160, "with B, A takes half of it"
    d = stamps["D"]
    assert d and d[0] - 16.0 < 0.6, "the next run does not wait out the last one: it continues its window"
    assert 240 <= len([t for t in d if 17.0 <= t < 20.0]) <= 3 * BUDGET, "alone again: the whole budget"

    control = _run_schedule(tmp_path / "control", shared=False)
    assert _busiest_second(sorted(t for sent in control.values() for t in sent)) > BUDGET


def test_a_joiner_waits_until_the_others_have_counted_it_and_slowed_down(tmp_path: Path) -> None:
    clock = FakeClock()
    wall = lambda: EPOCH + clock.now  # noqa: E731
    a = TenantShare(tmp_path, clock=clock, wall=wall)
    b = TenantShare(tmp_path, clock=clock, wall=wall)
    assert a.divisor() == 1 and a.hold_until() < clock.now
    clock.sleep(0.1)
    assert b.divisor() == 2
    assert b.hold_until() == pytest.approx(clock.now + RECHECK_SECONDS + SETTLE_SECONDS)
    assert a.divisor() == 1, "A counts again only once its count is RECHECK_SECONDS old"
    clock.sleep(RECHECK_SECONDS)
    assert a.divisor() == 2, "and then before its next send: within the joiner's wait"
    a.close()
    clock.sleep(RECHECK_SECONDS)
    assert b.divisor() == 2, "the one that left may have sent its share in its last second"
    clock.sleep(SETTLE_SECONDS)
    assert b.divisor() == 1, "once its last second is over, the whole budget"
    assert [p.suffix for p in tmp_path.iterdir()] == [".lease"], "the ended lease was removed on the way"
    b.close()


def test_an_idle_process_is_not_counted_and_joins_again_when_it_sends(tmp_path: Path) -> None:
    """A connection kept open between runs does not halve the budget of the process that is working."""
    clock = FakeClock()
    wall = lambda: EPOCH + clock.now  # noqa: E731
    idle, busy = TenantShare(tmp_path, clock=clock, wall=wall), TenantShare(tmp_path, clock=clock, wall=wall)
    idle.divisor()
    clock.sleep(tenant_share.ACTIVE_SECONDS)
    assert busy.divisor() == 1 and busy.hold_until() < clock.now
    assert idle.divisor() == 2, "sending again after an idle spell is a join"
    assert idle.hold_until() > clock.now
    idle.close()
    busy.close()


def _child(directory: Path) -> subprocess.Popen[str]:
    setup = (
        "from wellsky_core.http.tenant_share import TenantShare\n"
        "share = TenantShare(target)\n"
        "share.divisor(); share.sending()"
    )
    return start_holder(setup, directory)


def test_a_killed_process_counts_until_its_last_second_is_over_and_its_lease_goes(tmp_path: Path) -> None:
    """SIGKILL leaves the lease file behind, but not its lock: the process is known dead, and is counted only
    while its last requests may still be in the tenant's second; then its lease is removed."""
    child = _child(tmp_path)
    share = TenantShare(tmp_path)
    try:
        assert share.divisor() == 2
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        time.sleep(RECHECK_SECONDS)
        assert share.divisor() == 2, "its last second may not be over"
        time.sleep(SETTLE_SECONDS)
        assert share.divisor() == 1
        assert [p.name.startswith(f"{os.getpid()}-") for p in tmp_path.iterdir()] == [True], "its lease is gone"
    finally:
        child.kill()
        share.close()


def test_a_run_started_after_a_killed_one_waits_out_its_last_second(tmp_path: Path) -> None:
    """A killed process wrote no slots for a successor to continue: the next run waits until its last second
    (as its lease's last touch tells) is over, and takes the whole budget."""
    child = _child(tmp_path)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    joiner = TenantShare(tmp_path)
    try:
        assert joiner.divisor() == 1, "a dead process is no process"
        assert joiner.hold_until() > time.monotonic(), "but its last second must pass before the joiner sends"
        assert joiner.inherited_slots() == []
    finally:
        joiner.close()


def test_processes_meet_per_tenant_and_credential_and_leave_no_secret_on_disk(tmp_path: Path) -> None:
    one = lease_directory(tmp_path, "https://agency.example.test/api/", "ops@agency.test")
    assert one == lease_directory(tmp_path, "https://agency.example.test/api", "ops@agency.test")
    assert one != lease_directory(tmp_path, "https://agency.example.test/api", "other@agency.test")
    assert one != lease_directory(tmp_path, "https://other.example.test/api", "ops@agency.test")
    share = TenantShare(one)
    share.divisor()
    share.close()
    (lease,) = one.iterdir()
    assert oct(one.stat().st_mode & 0o777) == "0o700" and oct(lease.stat().st_mode & 0o777) == "0o600"
    assert "ops@agency.test" not in lease.read_text() and "agency.example" not in str(one)


def test_a_state_directory_where_leases_cannot_work_paces_alone_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """flock is missing on some network and FUSE file systems: the run must not fail for it. The process paces as
    it did before the budget was shared, and one warning names the cause and the fix (never a path or a secret)."""

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(37, "No locks available")

    monkeypatch.setattr(tenant_share.fcntl, "flock", no_locks)
    share = TenantShare(tmp_path / "budget")
    with caplog.at_level("WARNING", logger="wellsky_core.http.tenant_share"):
        assert share.divisor() == 1 and share.divisor() == 1
        share.sending()
    assert share.hold_until() < time.monotonic()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "paces as if it were alone" in warnings[0] and "state_dir" in warnings[0]
    assert str(tmp_path) not in warnings[0]
    share.close()


def test_a_client_whose_state_directory_cannot_be_made_still_sends_paced_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The share's directory is made when it first counts, not when the client is built: a read-only home or a
    state_dir that cannot be a directory must not fail a `check` that wrote nothing before the budget was shared."""
    import httpx

    from wellsky_core.config import WellSkyConfig
    from wellsky_core.http.client import WellSkyClient

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = WellSkyConfig.load(
        {"base_url": "https://tenant.example.test", "username": "u", "password": "p", "max_requests_per_second": 50,
         "state_dir": str(blocker / "state")},
        env={},
    )
    answer = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}))
    with (
        caplog.at_level("WARNING", logger="wellsky_core.http.tenant_share"),
        WellSkyClient(config, auth=httpx.Auth(), transport=answer) as client,
    ):
        assert client.get_json("/tenant") == {"ok": True}
        assert client.get_json("/tenant") == {"ok": True}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "paces as if it were alone" in warnings[0]
