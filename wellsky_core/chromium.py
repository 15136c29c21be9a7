"""Starting Playwright and Chromium for the portal channels: the browser's sandbox on wherever the kernel allows
it, and no connector secret in the environment of the Node driver or the browser.

Why: the portals load third-party script, so Chromium's own sandbox is worth keeping; and ``WELLSKY_PASSWORD``
and friends must not be readable in ``/proc/<pid>/environ`` of a child process. Both portal channels
(``channels/portal.py`` and ``products/kinnser/browser.py``) start their browser through :func:`start_browser`.

Chromium's sandbox needs either unprivileged user namespaces or its setuid helper, and refuses to start
sandboxed as root. :func:`sandbox_blocker` decides from what the kernel reports; when the sandbox cannot be had,
the browser gets ``--no-sandbox`` and the log says why, once per process.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .redaction import child_environment

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

log = logging.getLogger(__name__)

BASE_ARGS = ("--disable-gpu", "--disable-dev-shm-usage")
"""Flags that let Debian's Chromium run headless in containers and CI (no GPU, a small /dev/shm)."""
BROWSER_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "XDG_RUNTIME_DIR", "FONTCONFIG_PATH", "TMPDIR")
"""All the browser inherits from the connector's environment: no credentials, no proxies."""
SANDBOX_HELPERS = ("chrome-sandbox", "chrome_sandbox")


@dataclass(frozen=True)
class SandboxProbe:
    """What decides whether Chromium can sandbox itself here (read by :meth:`read`, or given by a test)."""

    euid: int
    userns_clone: str | None = None
    """``/proc/sys/kernel/unprivileged_userns_clone`` (Debian kernels; absent elsewhere)."""
    max_user_namespaces: str | None = None
    """``/proc/sys/user/max_user_namespaces``."""
    apparmor_restrict: str | None = None
    """``/proc/sys/kernel/apparmor_restrict_unprivileged_userns`` (Ubuntu 23.10+)."""
    setuid_helper: bool = False
    """A root-owned setuid ``chrome-sandbox`` beside the browser binary."""

    @classmethod
    def read(cls, chromium_path: str | None = None) -> SandboxProbe:
        return cls(
            euid=os.geteuid(),
            userns_clone=_read("/proc/sys/kernel/unprivileged_userns_clone"),
            max_user_namespaces=_read("/proc/sys/user/max_user_namespaces"),
            apparmor_restrict=_read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
            setuid_helper=_has_setuid_helper(chromium_path),
        )


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _has_setuid_helper(chromium_path: str | None) -> bool:
    if not chromium_path:
        return False
    folder = Path(chromium_path).resolve().parent
    for name in SANDBOX_HELPERS:
        try:
            info = (folder / name).stat()
        except OSError:
            continue
        if info.st_uid == 0 and info.st_mode & 0o4000:
            return True
    return False


def sandbox_blocker(probe: SandboxProbe) -> str | None:
    """Why Chromium cannot use its sandbox here (one PHI-free sentence with the fix), or None when it can."""
    if probe.euid == 0:
        return "the connector runs as root, and Chromium refuses its sandbox for root; run it as an unprivileged user"
    if probe.setuid_helper:
        return None
    if probe.userns_clone == "0":
        return "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0); set it to 1"
    if probe.max_user_namespaces == "0":
        return "user namespaces are disabled (user.max_user_namespaces=0); allow some"
    if probe.apparmor_restrict == "1":
        return (
            "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1); "
            "add an AppArmor profile for the browser or relax the setting"
        )
    return None


_said = threading.Event()


def chromium_args(chromium_path: str | None = None, probe: SandboxProbe | None = None) -> list[str]:
    """Launch flags: ``--no-sandbox`` only where the sandbox cannot work, and then one log line saying why."""
    blocker = sandbox_blocker(probe or SandboxProbe.read(chromium_path))
    if blocker is None:
        return list(BASE_ARGS)
    if not _said.is_set():
        _said.set()
        log.warning("Chromium runs without its sandbox: %s", blocker)
    return ["--no-sandbox", *BASE_ARGS]


def browser_environment() -> dict[str, str]:
    """The browser's environment: the few variables it needs, none holding a secret."""
    return child_environment({k: v for k, v in os.environ.items() if k in BROWSER_ENV_KEYS})


def scrub_playwright_driver_environment() -> None:
    """Start Playwright's Node driver with a scrubbed environment (it would inherit ``WELLSKY_*`` secrets).

    Playwright builds the driver's environment in ``playwright._impl.transport.get_driver_env`` from
    ``os.environ``; wrapping that one function (once) keeps the rest of Playwright untouched.
    """
    from playwright._impl import transport as driver_transport

    original = driver_transport.get_driver_env
    if getattr(original, "_wellsky_scrubbed", False):
        return

    def scrubbed() -> dict[str, str]:
        return child_environment(original())

    scrubbed._wellsky_scrubbed = True  # type: ignore[attr-defined]
    driver_transport.get_driver_env = scrubbed


def start_playwright() -> Playwright:
    """Playwright's driver, started with the scrubbed environment."""
    from playwright.sync_api import sync_playwright

    scrub_playwright_driver_environment()
    return sync_playwright().start()


def launch_chromium(playwright: Playwright, chromium_path: str) -> Browser:
    """Headless Chromium at ``chromium_path``: sandboxed where possible, with the minimal environment; downloads
    (portal reports name patients) land in a private 0700 directory that is removed when the process ends."""
    return playwright.chromium.launch(
        executable_path=chromium_path,
        headless=True,
        args=chromium_args(chromium_path),
        env=browser_environment(),
        downloads_path=str(_private_downloads()),
    )


def _private_downloads() -> Path:
    import atexit
    import shutil
    import tempfile

    from .private_files import private_dir

    path = private_dir(tempfile.mkdtemp(prefix="wellsky-downloads-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def close_browser(playwright: Playwright | None, *closers: Any) -> None:
    """Close contexts and browsers, then stop Playwright: best effort each, since the browser may be gone."""
    for closer in closers:
        if closer is not None:
            try:
                closer.close()
            except Exception:
                log.debug("closing the portal browser failed", exc_info=True)
    if playwright is not None:
        try:
            playwright.stop()
        except Exception:
            log.debug("stopping playwright failed", exc_info=True)
