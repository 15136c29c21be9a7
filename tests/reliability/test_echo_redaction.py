"""A server whose error bodies echo the request never gets our secrets or the patient's data onto stderr.

Issue 16 #2: the CLI wrapper's one-line fatal error printed server messages verbatim, so a tenant (or a proxy)
echoing its input handed back the password, the session cookie and the patient's name, MRN and birth date.
Real subprocesses against a hostile loopback server; the tap's ``--test`` and a sync, the target with and
without a dead-letter file, at ``LOGLEVEL=DEBUG``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from wellsky_core.schemas import stream_schema

from .conftest import assert_no_traceback, child_env, run_target_cli, tap_args, write_json
from .hostile import SESSION_VALUE, HostileServer, Reply, config

PATIENT = {
    "mrn": "MRN-77812345",
    "first_name": "Wilhelmina",
    "last_name": "Quintanilla",
    "birth_date": "1937-04-19",
    "gender": "female",
    "phone": "555-867-5309",
    "status": "active",
}
PHI = ("MRN-77812345", "77812345", "Wilhelmina", "Quintanilla", "1937-04-19", "867-5309")


def _echo(status: int, path_echoed: str) -> Any:
    def route(h: Reply, method: str, path: str, body: bytes) -> bool:
        if method == "POST" and path == path_echoed:
            h.send_json(status, {"error": "bad_request", "message": f"cannot accept {body.decode()}"})
            return True
        return False

    return route


def _echo_cookie(h: Reply, method: str, path: str, body: bytes) -> bool:
    if path == "/tenant":
        h.send_json(400, {"error": "bad_request", "message": f"headers were {dict(h.headers)}"})
        return True
    return False


def _run(cmd: list[str], stdin: str | None = None) -> tuple[int, str]:
    import subprocess

    env = {**child_env(), "LOGLEVEL": "DEBUG"}
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def _assert_clean(output: str, *values: str) -> None:
    leaked = [v for v in values if v.lower() in output.lower()]
    assert not leaked, f"leaked {leaked}:\n{output[-2000:]}"


def test_tap_test_login_echo_hides_the_password(tmp_path: Path) -> None:
    with HostileServer(_echo(401, "/sessions")) as srv:
        cfg = config(srv.base_url)
        code, out = _run([*tap_args(tmp_path, cfg), "--test"])
    assert code == 2, out
    assert "cannot accept" not in out, "issue 24: the server's text never reaches stderr, not even masked"
    assert_no_traceback(out, "tap --test")
    _assert_clean(out, cfg["password"])


def test_tap_test_cookie_echo_hides_the_session(tmp_path: Path) -> None:
    with HostileServer(_echo_cookie) as srv:
        code, out = _run([*tap_args(tmp_path, config(srv.base_url)), "--test"])
    assert code == 2, out
    assert "400" in out
    assert_no_traceback(out, "tap --test")
    _assert_clean(out, SESSION_VALUE)


def _target_input() -> str:
    lines = [
        {"type": "SCHEMA", "stream": "patients", "schema": stream_schema("patients"), "key_properties": ["id"]},
        {"type": "RECORD", "stream": "patients", "record": PATIENT},
    ]
    return "\n".join(json.dumps(m) for m in lines) + "\n"


def test_target_fatal_refusal_hides_patient_data(tmp_path: Path) -> None:
    """No dead-letter file: the refusal is the run's one-line fatal error (the path that leaked)."""
    with HostileServer(_echo(422, "/patients")) as srv:
        cfg = write_json(tmp_path / "t.json", config(srv.base_url))
        code, out = _run([sys.executable, "-m", "target_wellsky.target", "--config", str(cfg)], _target_input())
    assert code == 2, out
    assert "HTTP 422" in out and "cannot accept" not in out, "status and our fix, never the server's text"
    assert_no_traceback(out, "target")
    _assert_clean(out, *PHI, SESSION_VALUE)


def test_target_dead_lettered_refusal_hides_patient_data_in_logs(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    with HostileServer(_echo(400, "/patients")) as srv:
        proc = run_target_cli(tmp_path, config(srv.base_url, dead_letter_path=str(dead)), _target_input())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out
    assert_no_traceback(out, "target")
    _assert_clean(out, *PHI)
    entry = json.loads(dead.read_text().splitlines()[0])
    assert entry["payload"]["mrn"] == PATIENT["mrn"]  # the dead letter keeps the record by design...
    _assert_clean(entry["reason"], *PHI)  # ...but its reason (which is also logged) does not
