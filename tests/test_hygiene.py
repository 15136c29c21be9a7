"""Test hygiene (issue 29): tests never write to the user's home directory, and start Python subprocesses with
``sys.executable`` (the interpreter running the tests), never whatever ``python`` is first on PATH."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from wellsky_core.private_files import state_root
from wellsky_core.quality import default_report_path
from wellsky_sandbox.testing import SandboxServer

from .conftest import TEST_STATE_HOME

TESTS = Path(__file__).resolve().parent
BARE_PYTHON = re.compile(r"""[\[(,]\s*["']python[0-9.]*["']\s*[,\])]""")


def test_state_paths_point_at_the_tests_own_directory_not_home() -> None:
    home = Path.home().resolve()
    assert os.environ["XDG_STATE_HOME"] == str(TEST_STATE_HOME)
    assert not TEST_STATE_HOME.resolve().is_relative_to(home) or home == Path("/")
    assert default_report_path().is_relative_to(TEST_STATE_HOME) and state_root().is_relative_to(TEST_STATE_HOME)


def test_a_tap_subprocess_writes_its_report_under_the_tests_state_home(tmp_path: Path) -> None:
    """The default report path of a tap run as users run it (no data_quality_report_path) is the test's."""
    with SandboxServer(scale=5, sftp_port=None, data_dir=tmp_path / "tenant") as sb:
        config = {"base_url": sb.base_url, "username": sb.username, "password": sb.password, "page_size": 100}
        (tmp_path / "config.json").write_text(json.dumps(config))
        proc = subprocess.run(
            [sys.executable, "-m", "tap_wellsky.tap", "--config", str(tmp_path / "config.json")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the tenant's own report (issue 24: never one file shared by every run), under the tests' state home
    written = [p for p in default_report_path().parent.parent.rglob("data_quality*.json") if str(p) in proc.stderr]
    assert len(written) == 1, proc.stderr[-1500:]  # the tap says where it wrote it
    assert json.loads(written[0].read_text())["status"] == "ok"


def test_no_test_starts_a_bare_python() -> None:
    offenders = [
        f"{path.relative_to(TESTS)}:{n}"
        for path in sorted(TESTS.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if BARE_PYTHON.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == [], f"use sys.executable, not a bare python: {offenders}"
