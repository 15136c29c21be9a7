"""Every file the connector writes is private: 0600 in 0700 directories, never written through a symlink (issue 24 #2).

Checked while a target run is still going (a hostile tenant holds its second write open) and after it, for the
tap's data-quality report in the per-tenant state directory, and for the stores the receivers and the portal
channel keep. A planted symlink is refused with one line, and the file it points at is left untouched.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wellsky_core.private_files import UnsafePathError
from wellsky_core.schemas import stream_schema

from .conftest import SUBPROCESS_TIMEOUT, TAP_CMD, TARGET_CMD, assert_no_traceback, child_env, write_json
from .hostile import HostileServer, Reply, config

VICTIM_TEXT = "not yours\n"
SOURCE_CMD = [sys.executable, "-m", "tap_wellsky.airbyte"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def assert_private(root: Path, *, skip: tuple[str, ...] = ()) -> list[Path]:
    """Every file under ``root`` is 0600 and every directory 0700 (test inputs named ``in-*`` aside)."""
    files = []
    for path in [root, *root.rglob("*")]:
        if path.name.startswith("in-") or path.name in skip:
            continue
        if path.is_dir():
            assert _mode(path) == 0o700, f"{path}: directory {oct(_mode(path))}"
        else:
            assert _mode(path) == 0o600, f"{path}: file {oct(_mode(path))}"
            files.append(path)
    return files


def _patients(n: int) -> str:
    lines: list[dict] = [
        {"type": "SCHEMA", "stream": "patients", "schema": stream_schema("patients"), "key_properties": ["id"]}
    ]
    for i in range(n):
        record = {"mrn": f"MRN-90{i}", "first_name": "Ada", "last_name": f"Lind{i}", "birth_date": "1941-07-02",
                  "gender": "female", "status": "active"}
        lines.append({"type": "RECORD", "stream": "patients", "record": record})
    return "\n".join(json.dumps(m) for m in lines) + "\n"


def test_target_files_are_private_during_and_after_the_run(tmp_path: Path) -> None:
    state = tmp_path / "state"  # a fresh directory the run creates: it must come out 0700
    hold, held = threading.Event(), threading.Event()
    posts = []

    def route(h: Reply, method: str, path: str, body: bytes) -> bool:
        if method == "POST" and path == "/patients":
            posts.append(body)
            if len(posts) == 2:  # the second write waits until the test has looked at the files
                held.set()
                hold.wait(60)
            h.send_json(409, {"error": "conflict", "message": "refused"})
            return True
        return False

    with HostileServer(route) as srv:
        settings = config(
            srv.base_url,
            dead_letter_path=str(state / "dead.jsonl"),
            audit_log_path=str(state / "audit" / "audit.jsonl"),
            write_ledger_path=str(state / "ledger.sqlite"),
            write_concurrency=1,
        )
        cfg = write_json(tmp_path / "in-config.json", settings)
        proc = subprocess.Popen(
            [*TARGET_CMD, "--config", str(cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**child_env(), "XDG_STATE_HOME": str(tmp_path / "xdg")},
        )
        try:
            assert proc.stdin is not None
            proc.stdin.write(_patients(2))
            proc.stdin.close()
            proc.stdin = None
            assert held.wait(SUBPROCESS_TIMEOUT), "the second write never arrived"
            during = {p.name for p in assert_private(state)}  # whatever exists mid-run is private already
            assert {"audit.jsonl.key", "ledger.sqlite", "ledger.sqlite-wal"} <= during, during
        finally:
            hold.set()
            _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 3, err
    after = {p.name for p in assert_private(state)}
    assert {"dead.jsonl", "audit.jsonl", "ledger.sqlite"} <= after
    assert len((state / "dead.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("which", ["dead_letter_path", "audit_log_path", "write_ledger_path"])
def test_a_planted_symlink_is_refused_in_one_line_and_its_target_left_alone(tmp_path: Path, which: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    planted = tmp_path / "state" / "planted"
    planted.parent.mkdir(mode=0o700)
    planted.symlink_to(victim)

    def route(h: Reply, method: str, path: str, body: bytes) -> bool:
        if method == "POST" and path == "/patients":
            h.send_json(409, {"error": "conflict", "message": "refused"})
            return True
        return False

    with HostileServer(route) as srv:
        paths = {"dead_letter_path": str(tmp_path / "state" / "dead.jsonl"), which: str(planted)}
        settings = config(srv.base_url, **paths)
        cfg = write_json(tmp_path / "in-config.json", settings)
        proc = subprocess.run(
            [*TARGET_CMD, "--config", str(cfg)], input=_patients(1), capture_output=True, text=True,
            timeout=SUBPROCESS_TIMEOUT, env=child_env(),
        )
    assert proc.returncode == 2, proc.stderr
    assert "symbolic link" in proc.stderr, proc.stderr
    assert_no_traceback(proc.stderr, "target")
    assert victim.read_text() == VICTIM_TEXT, "nothing was written through the link"


def test_tap_report_is_per_tenant_private_and_agrees_with_the_exit_code(tmp_path: Path) -> None:
    """Default path: the tenant's own directory under XDG_STATE_HOME (not one shared data_quality.json)."""
    xdg = tmp_path / "xdg"
    env = {**child_env(), "XDG_STATE_HOME": str(xdg)}
    with HostileServer(lambda *_: False) as srv:
        cfg = write_json(tmp_path / "in-config.json", config(srv.base_url))
        ok = subprocess.run([*TAP_CMD, "--config", str(cfg)], capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT, env=env)
    assert ok.returncode == 0, ok.stderr
    report = xdg / "tap-wellsky" / "home_health-loopback" / "data_quality.json"
    assert not (xdg / "tap-wellsky" / "data_quality.json").exists(), "no report shared by every tenant"
    assert_private(xdg / "tap-wellsky")
    verdict = json.loads(report.read_text())
    assert (verdict["status"], verdict["exit_code"]) == ("ok", 0)

    report.unlink()
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    report.symlink_to(victim)
    with HostileServer(lambda *_: False) as srv:
        cfg = write_json(tmp_path / "in-config.json", config(srv.base_url))
        again = subprocess.run([*TAP_CMD, "--config", str(cfg)], capture_output=True, text=True,
                               timeout=SUBPROCESS_TIMEOUT, env=env)
    assert again.returncode == 0, again.stderr
    assert victim.read_text() == VICTIM_TEXT, "the report was not written through the planted link"
    assert not report.is_symlink() and _mode(report) == 0o600, "the link itself was replaced by a private file"

    # a run refused at sign-in (one line, exit 2, no stream) still replaces the last run's "ok"
    with HostileServer(_refuse("POST", "/sessions", 401)) as srv:
        cfg = write_json(tmp_path / "in-config.json", config(srv.base_url))
        refused = subprocess.run([*TAP_CMD, "--config", str(cfg)], capture_output=True, text=True,
                                 timeout=SUBPROCESS_TIMEOUT, env=env)
    assert refused.returncode == 2, refused.stderr
    verdict = json.loads(report.read_text())
    assert (verdict["status"], verdict["exit_code"]) == ("aborted", 2)
    assert_private(xdg / "tap-wellsky")


def _refuse(method: str, path: str, status: int) -> Callable[[Reply, str, str, bytes], bool]:
    def route(h: Reply, m: str, p: str, body: bytes) -> bool:
        if (m, p) == (method, path):
            h.send_json(status, {"error": "locked", "message": "no"})
            return True
        return False

    return route


@pytest.mark.parametrize(
    ("route", "code", "status", "incomplete"),
    [
        (lambda *_: False, 0, "ok", []),
        (_refuse("GET", "/patients", 423), 1, "incomplete", ["patients"]),
        (_refuse("POST", "/sessions", 401), 1, "aborted", []),
    ],
    ids=["clean", "one-stream-failed", "login-refused"],
)
def test_airbyte_read_report_is_per_tenant_private_and_agrees_with_the_exit_code(
    tmp_path: Path, route: Any, code: int, status: str, incomplete: list[str]
) -> None:
    """source-wellsky read writes the tap's report in the same place (the tenant's private directory), and its
    status and exit_code are what the process exits with: it said ``ok`` in a per-run file for a read that
    returned 1."""
    xdg = tmp_path / "xdg"
    catalog = {
        "streams": [
            {
                "stream": {"name": name, "json_schema": {}, "supported_sync_modes": ["full_refresh"]},
                "sync_mode": "full_refresh",
                "destination_sync_mode": "append",
            }
            for name in ("patients", "practitioners")
        ]
    }
    with HostileServer(route) as srv:
        cfg = write_json(tmp_path / "in-config.json", config(srv.base_url))
        cat = write_json(tmp_path / "in-catalog.json", catalog)
        proc = subprocess.run(
            [*SOURCE_CMD, "read", "--config", str(cfg), "--catalog", str(cat)],
            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env={**child_env(), "XDG_STATE_HOME": str(xdg)},
        )
    assert proc.returncode == code, proc.stdout[-2000:]
    report = xdg / "tap-wellsky" / "home_health-loopback" / "data_quality.json"
    assert [p.name for p in xdg.rglob("*.json")] == ["data_quality.json"], "one report, the tenant's own"
    assert_private(xdg)
    verdict = json.loads(report.read_text())
    assert (verdict["status"], verdict["exit_code"], verdict["incomplete_streams"]) == (status, code, incomplete)


def test_receiver_stores_and_portal_state_are_private_and_refuse_symlinks(tmp_path: Path) -> None:
    from wellsky_core.products.kinnser.state import PortalState
    from wellsky_core.products.personal_care.webhooks import NotificationQueue
    from wellsky_core.webhooks import EventStore

    store = EventStore(tmp_path / "hooks" / "events.sqlite")
    queue = NotificationQueue(tmp_path / "hooks" / "events.sqlite.queue")
    queue.db.execute("SELECT count(*) FROM notifications").fetchone()
    portal = PortalState(str(tmp_path / "portal" / "state.json"))
    portal.save()
    files = assert_private(tmp_path)
    names = {p.name for p in files}
    assert {"events.sqlite", "events.sqlite.queue", "state.json"} <= names, names
    assert any(n.endswith("-wal") for n in names), "the WAL files are private too"
    store.close()

    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    for maker, name in ((EventStore, "planted.sqlite"), (NotificationQueue, "planted.queue")):
        link = tmp_path / "hooks" / name
        link.symlink_to(victim)
        with pytest.raises(UnsafePathError):
            maker(link)
    link = tmp_path / "portal" / "planted.json"
    link.symlink_to(victim)
    with pytest.raises(UnsafePathError):
        PortalState(str(link))
    portal.path = link  # even a state object pointed at the link later replaces the link, not its target
    portal.save()
    assert victim.read_text() == VICTIM_TEXT and not link.is_symlink() and _mode(link) == 0o600


def test_the_batch_channels_latest_version_table_is_private() -> None:
    """HL7 and export reads keep whole records in a temporary SQLite table: 0600 in a 0700 directory."""
    from wellsky_core.channels.base import LatestVersions

    table = LatestVersions()
    try:
        table.offer("patients", {"id": "p1", "updated_at": "2026-01-01T00:00:00Z"}, (0, 0))
        root = Path(table._dir.name)
        assert _mode(root) == 0o700 and _mode(root / "latest.sqlite") == 0o600
    finally:
        table.close()


def test_a_state_directory_that_cannot_be_made_is_one_line_before_any_work(tmp_path: Path, sandbox: Any) -> None:
    """``state_dir`` under a regular file: the tap read every stream, then died with a FileNotFoundError traceback
    writing its report (exit 1, records already out); source-wellsky said "an unexpected FileNotFoundError; report
    it"; the target and destination wrote on. Every face now refuses it first, in one line naming ``state_dir``."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = {"base_url": sandbox.base_url, "username": sandbox.username, "password": sandbox.password,
           "product": "home_health", "state_dir": str(blocker / "state")}
    cfg_path = write_json(tmp_path / "config.json", cfg)
    needle = "state_dir: cannot create"
    tap = subprocess.run([*TAP_CMD, "--config", str(cfg_path)], capture_output=True, text=True, env=child_env(),
                         timeout=SUBPROCESS_TIMEOUT)
    assert tap.returncode == 2 and needle in tap.stderr and '"RECORD"' not in tap.stdout, tap.stderr[-1500:]
    assert_no_traceback(tap.stderr, "tap")
    target = subprocess.run([*TARGET_CMD, "--config", str(cfg_path)], input="", capture_output=True, text=True,
                            env=child_env(), timeout=SUBPROCESS_TIMEOUT)
    assert target.returncode == 2 and needle in target.stderr, target.stderr[-1500:]
    catalog = write_json(tmp_path / "catalog.json", {"streams": [
        {"stream": {"name": "patients", "json_schema": {}, "supported_sync_modes": ["full_refresh"]},
         "sync_mode": "full_refresh", "destination_sync_mode": "append"}]})
    for cmd in ([*SOURCE_CMD, "read"], [sys.executable, "-m", "target_wellsky.destination", "write"]):
        proc = subprocess.run([*cmd, "--config", str(cfg_path), "--catalog", str(catalog)], input="",
                              capture_output=True, text=True, env=child_env(), timeout=SUBPROCESS_TIMEOUT)
        traces = [json.loads(line)["trace"]["error"] for line in proc.stdout.splitlines() if '"TRACE"' in line]
        assert len(traces) == 1 and needle in traces[0]["message"], (cmd, proc.stdout[-1500:])
        assert traces[0]["failure_type"] == "config_error" and '"RECORD"' not in proc.stdout
