"""Chromium's sandbox where the kernel allows it, and no connector secret in the driver's or browser's environment
(issue 24 #6). CI runs as root, where Chromium refuses its sandbox: the decision is tested as a unit, the
"cannot" path and its one log line for real."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from wellsky_core import chromium
from wellsky_core.chromium import SandboxProbe, chromium_args, sandbox_blocker, start_playwright

USER = 1000


@pytest.mark.parametrize(
    ("probe", "blocked_by"),
    [
        (SandboxProbe(euid=USER), None),  # a stock kernel: user namespaces for everyone
        (SandboxProbe(euid=USER, userns_clone="1", max_user_namespaces="63000", apparmor_restrict="0"), None),
        (SandboxProbe(euid=0, setuid_helper=True), "root"),  # root: never, whatever else holds
        (SandboxProbe(euid=USER, userns_clone="0"), "unprivileged_userns_clone=0"),
        (SandboxProbe(euid=USER, max_user_namespaces="0"), "max_user_namespaces=0"),
        (SandboxProbe(euid=USER, apparmor_restrict="1"), "apparmor_restrict_unprivileged_userns=1"),
        (SandboxProbe(euid=USER, userns_clone="0", setuid_helper=True), None),  # the setuid helper does it
    ],
)
def test_the_sandbox_decision(probe, blocked_by):
    reason = sandbox_blocker(probe)
    if blocked_by is None:
        assert reason is None
        assert "--no-sandbox" not in chromium_args(probe=probe)
    else:
        assert reason is not None and blocked_by in reason
        assert "--no-sandbox" in chromium_args(probe=probe)


def test_the_probe_reads_this_host():
    probe = SandboxProbe.read("/usr/bin/chromium")
    assert probe.euid == os.geteuid()
    expected = Path("/proc/sys/user/max_user_namespaces")
    assert probe.max_user_namespaces == (expected.read_text().strip() if expected.exists() else None)


def test_when_the_sandbox_cannot_be_had_the_log_says_why_once(monkeypatch, caplog):
    monkeypatch.setattr(chromium, "_said", threading.Event())
    caplog.set_level(logging.WARNING, logger="wellsky_core.chromium")
    root = SandboxProbe(euid=0)
    for _ in range(3):
        assert chromium_args(probe=root)[0] == "--no-sandbox"
    lines = [r.getMessage() for r in caplog.records if r.name == "wellsky_core.chromium"]
    assert lines == [
        "Chromium runs without its sandbox: the connector runs as root, and Chromium refuses its sandbox for "
        "root; run it as an unprivileged user"
    ]


def test_this_host_takes_the_path_its_kernel_allows(monkeypatch, caplog):
    monkeypatch.setattr(chromium, "_said", threading.Event())
    caplog.set_level(logging.WARNING, logger="wellsky_core.chromium")
    args = chromium_args("/usr/bin/chromium")
    if os.geteuid() == 0:  # CI: Chromium cannot sandbox itself as root
        assert "--no-sandbox" in args and "runs as root" in caplog.text
    else:
        assert ("--no-sandbox" in args) == (sandbox_blocker(SandboxProbe.read("/usr/bin/chromium")) is not None)


def _children_environ() -> dict[int, bytes]:
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid():
                found[int(stat.parent.name)] = (stat.parent / "environ").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_the_playwright_driver_process_has_no_connector_secret(monkeypatch):
    """Before: the Node driver inherited the whole environment; WELLSKY_PASSWORD was in /proc/<pid>/environ."""
    from playwright._impl import transport

    monkeypatch.setattr(transport, "get_driver_env", transport.get_driver_env)  # restored after the test
    monkeypatch.setenv("WELLSKY_PASSWORD", "driver-must-not-see-this")
    failures: list[BaseException] = []

    def check() -> None:  # in a thread of its own: no asyncio loop another test left in this worker's main thread
        try:
            before = set(_children_environ())
            playwright = start_playwright()
            try:
                drivers = {pid: env for pid, env in _children_environ().items() if pid not in before}
                assert drivers, "the driver runs as a child process"
                for environ in drivers.values():
                    assert b"WELLSKY_PASSWORD" not in environ and b"driver-must-not-see-this" not in environ
                    assert b"PATH=" in environ  # a real environment was read, not an empty one
            finally:
                playwright.stop()
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=check)
    worker.start()
    worker.join()
    if failures:
        raise failures[0]


def test_downloads_land_in_a_private_directory() -> None:
    """Portal reports name patients: Chromium saves them in a 0700 directory of ours, not Playwright's default."""
    import os
    import stat
    from types import SimpleNamespace

    from wellsky_core import chromium

    seen: dict[str, object] = {}
    fake = SimpleNamespace(chromium=SimpleNamespace(launch=lambda **kw: seen.update(kw) or "browser"))
    assert chromium.launch_chromium(fake, "/usr/bin/chromium") == "browser"  # type: ignore[arg-type]
    path = str(seen["downloads_path"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700 and os.path.basename(path).startswith("wellsky-downloads-")
