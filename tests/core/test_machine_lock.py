"""One process at a time on this machine (``wellsky_core/machine_lock.py``), and the portal account's session that
uses it (``products/kinnser/channel.py``): a second run of one account waits for the first instead of ending its
session, then stops in one line without touching the portal or the resume file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wellsky_core.channels import open_channel
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import WellSkyError
from wellsky_core.machine_lock import MachineLock
from wellsky_core.products.kinnser import channel as kinnser_channel

from .holder_process import start_holder


def _holder(path: Path) -> subprocess.Popen[str]:
    setup = "from wellsky_core.machine_lock import MachineLock\nlock = MachineLock(target)\nassert lock.acquire(5)"
    return start_holder(setup, path)


def test_a_held_lock_is_waited_for_named_by_its_holder_and_freed_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "account.lock"
    child = _holder(path)
    lock = MachineLock(path)
    told: list[int | None] = []
    try:
        started = time.monotonic()
        assert not lock.acquire(0.6, told.append)
        assert time.monotonic() - started >= 0.6
        assert told == [child.pid], "the wait names the holder once"
        os.kill(child.pid, signal.SIGKILL)  # however it ends, the kernel frees its lock
        child.wait(10)
        assert lock.acquire(5) and lock.held
        assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    finally:
        child.kill()
        lock.release()
    assert MachineLock(path).acquire(0), "released"


def _portal_config(tmp_path: Path) -> WellSkyConfig:
    return WellSkyConfig.load(
        {
            "base_url": "http://127.0.0.1:9",  # never reached: the channel stops before the portal
            "username": "intake@agency.example",
            "password": "Pw-portal-4k2",
            "product": "home_health",
            "source": "portal",
            "chromium_path": sys.executable,  # any existing file: no browser is started
            "agency_timezone": "America/Chicago",
            "portal_state_path": str(tmp_path / "portal-state.json"),
            "state_dir": str(tmp_path / "state"),
        },
        env={},
    )


def test_a_second_run_of_one_portal_account_stops_in_one_line_before_the_portal_or_the_resume_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The portal allows one session per user: the second run's login would end the first run's session (and the
    first would end the second's, until one gave up after MAX_BOUNCES), and both would write the resume file."""
    config = _portal_config(tmp_path)
    second = open_channel("portal", config, None, "home_health")
    state = Path(config.portal_state_path)
    before = state.read_bytes() if state.exists() else None
    first = _holder(second._session.path)  # the other run, in its own process
    monkeypatch.setattr(kinnser_channel, "SESSION_WAIT_SECONDS", 0.3)
    try:
        with pytest.raises(WellSkyError, match="one session per user") as refused:
            list(second.iter_records("patients", None))
        assert "Pw-portal-4k2" not in str(refused.value) and "intake@" not in str(refused.value)
        assert (state.read_bytes() if state.exists() else None) == before, "the resume file was not touched"
    finally:
        first.kill()
        first.wait(10)
    second._hold_session()  # free once the first run has ended
    second.close()


def _free_for_another_process(path: Path) -> bool:
    code = "import sys\nfrom pathlib import Path\nfrom wellsky_core.machine_lock import MachineLock\n"
    code += "sys.exit(0 if MachineLock(Path(sys.argv[1])).acquire(0) else 1)"
    return subprocess.run([sys.executable, "-c", code, str(path)], timeout=30).returncode == 0


def test_the_hold_is_the_processs_and_ends_with_its_last_holder(tmp_path: Path) -> None:
    """A channel opened again in the same process while an earlier one was never closed (singer-sdk's connection
    test after a sync) shares the process's hold at once: a flock excludes a second open of the same file even in
    its own process, and that channel waited out the whole 15 minutes. The file is free for other processes only
    when the last holder releases, or is dropped."""
    path = tmp_path / "account.lock"
    one, two = MachineLock(path), MachineLock(path)
    assert one.acquire(0) and two.acquire(0), "the second holder in the same process does not wait"
    assert not _free_for_another_process(path)
    one.release()
    assert not _free_for_another_process(path), "still held by the other holder"
    del two  # dropped without release (a channel never closed)
    assert _free_for_another_process(path)
