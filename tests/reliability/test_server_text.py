"""Server text is untrusted patient data: it reaches no output of any face, under any failure (issue 24 #1).

A hostile loopback tenant answers errors whose text names a patient the request never carried ("Patient Jane Q
Okonkwo (MRN 00482913, DOB 1950-03-04, SSN 123-45-6789) is locked"), in WellSky's ``{error, message}`` shape, as a
FHIR OperationOutcome and as an OAuth error. Every output is then grepped: stdout and stderr of tap-wellsky,
target-wellsky, source-wellsky and destination-wellsky at ``LOGLEVEL=DEBUG`` (Airbyte LOG, TRACE and
CONNECTION_STATUS messages included), and every file the run wrote (dead letters, audit, data-quality report).
What a user still sees: the HTTP status, an allow-listed code (else ``unlisted_code``), the request id and our fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from wellsky_core.schemas import stream_schema

from .conftest import SUBPROCESS_TIMEOUT, TAP_CMD, TARGET_CMD, assert_no_traceback, child_env, write_json
from .hostile import HostileServer, Reply, config

PHI_TEXT = "Patient Jane Q Okonkwo (MRN 00482913, DOB 1950-03-04, SSN 123-45-6789, tel 303-555-0147) is locked"
PHI_VALUES = ("Okonkwo", "00482913", "1950-03-04", "123-45-6789", "555-0147")
REQUEST_ID = "req-7f3a9b2c41"
SOURCE_CMD = [sys.executable, "-m", "tap_wellsky.airbyte"]
DESTINATION_CMD = [sys.executable, "-m", "target_wellsky.destination"]

BODIES: dict[str, dict[str, Any]] = {
    "wellsky": {"error": PHI_TEXT, "message": PHI_TEXT},
    "operation_outcome": {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": PHI_TEXT, "diagnostics": PHI_TEXT, "details": {"text": PHI_TEXT}}],
    },
    "oauth": {"error": "invalid_grant", "error_description": PHI_TEXT},
}
PATIENT = {  # what the writer sends: none of the PHI values above
    "mrn": "MRN-5512",
    "first_name": "Ada",
    "last_name": "Lindqvist",
    "birth_date": "1941-07-02",
    "gender": "female",
    "status": "active",
}


def _fail(h: Reply, kind: str) -> None:
    """Answer one failure of ``kind`` whose every byte of text names the patient."""
    if kind == "html502":
        h.send_raw(502, f"<html><body><h1>Bad Gateway</h1><p>{PHI_TEXT}</p></body></html>".encode(), "text/html")
    elif kind == "truncated":  # a 200 cut off mid-body: the connection closes before content-length is reached
        body = json.dumps({"data": [{"id": "p1", "note": PHI_TEXT}], "next_cursor": None}).encode()
        h.send_raw(200, body[:70], length=len(body))
    elif kind == "malformed200":
        h.send_raw(200, f"{{'data': [{PHI_TEXT}".encode())
    elif kind == "wrongshape200":
        h.send_json(200, {"error": PHI_TEXT, "data": PHI_TEXT})
    elif kind == "429":
        h.send_json(429, BODIES["wellsky"], {"Retry-After": "0", "x-request-id": REQUEST_ID})
    else:
        h.send_json(int(kind), BODIES["wellsky"], {"x-request-id": REQUEST_ID})


FAILURES = ["400", "401", "403", "404", "422", "429", "500", "html502", "truncated", "malformed200", "wrongshape200"]


def _hostile(method: str, path: str, status: int, shape: str) -> Callable[[Reply, str, str, bytes], bool]:
    def route(h: Reply, m: str, p: str, body: bytes) -> bool:
        if m == method and p == path:
            h.send_json(status, BODIES[shape], {"x-request-id": REQUEST_ID})
            return True
        return False

    return route


def _run(cmd: list[str], tmp: Path, stdin: str = "") -> tuple[int, str]:
    env = {**child_env(), "LOGLEVEL": "DEBUG", "XDG_STATE_HOME": str(tmp / "xdg-state")}
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=env)
    return proc.returncode, proc.stdout + "\n" + proc.stderr


def _written(tmp: Path) -> str:
    """Everything the run wrote under ``tmp`` (the configs and inputs the test wrote are left out)."""
    texts = []
    for path in sorted(tmp.rglob("*")):
        if path.is_file() and not path.name.startswith("in-"):
            texts.append(f"--- {path.relative_to(tmp)}\n{path.read_bytes().decode('utf-8', 'replace')}")
    return "\n".join(texts)


def assert_no_phi(where: str, text: str) -> None:
    leaked = [value for value in PHI_VALUES if value.lower() in text.lower()]
    assert not leaked, f"{where}: the server's text leaked {leaked}:\n{text[-3000:]}"


def _target_input() -> str:
    lines = [
        {"type": "SCHEMA", "stream": "patients", "schema": stream_schema("patients"), "key_properties": ["id"]},
        {"type": "RECORD", "stream": "patients", "record": PATIENT},
        {"type": "STATE", "value": {"n": 1}},
    ]
    return "\n".join(json.dumps(m) for m in lines) + "\n"


@pytest.mark.parametrize("shape", sorted(BODIES))
def test_tap_sync_error_text_reaches_no_output_and_the_report_says_aborted(tmp_path: Path, shape: str) -> None:
    with HostileServer(_hostile("GET", "/patients", 423, shape)) as srv:
        cfg = write_json(tmp_path / "in-config.json", config(srv.base_url, dead_letter_path=str(tmp_path / "dl.jsonl")))
        code, out = _run([*TAP_CMD, "--config", str(cfg)], tmp_path)
    assert_no_phi("tap stdout/stderr", out)
    assert_no_phi("tap files", _written(tmp_path))
    assert code == 2, out
    assert "HTTP 423" in out and "the record is locked in WellSky" in out, "the status and our own fix"
    assert_no_traceback(out, "tap")
    [report] = list((tmp_path / "xdg-state").rglob("data_quality.json"))
    verdict = json.loads(report.read_text())
    assert (verdict["status"], verdict["exit_code"]) == ("aborted", code), "the report agrees with the exit code"


@pytest.mark.parametrize("shape", ["wellsky", "oauth"])
def test_tap_login_refusal_text_reaches_no_output(tmp_path: Path, shape: str) -> None:
    with HostileServer(_hostile("POST", "/sessions", 401, shape)) as srv:
        cfg = write_json(tmp_path / "in-config.json", config(srv.base_url))
        code, out = _run([*TAP_CMD, "--config", str(cfg), "--test"], tmp_path)
    assert_no_phi("tap --test", out)
    assert code == 2, out
    assert "did not accept the login (HTTP 401)" in out


@pytest.mark.parametrize("status", [409, 500])
def test_target_refusal_text_reaches_no_output_dead_letter_or_audit(tmp_path: Path, status: int) -> None:
    """409: a refusal, dead-lettered (exit 3); 500: the run aborts (exit 2) and the audit logs the failed write."""
    dead, audit = tmp_path / "dl.jsonl", tmp_path / "audit.jsonl"
    with HostileServer(_hostile("POST", "/patients", status, "wellsky")) as srv:
        extra = {"dead_letter_path": str(dead), "audit_log_path": str(audit), "write_ledger_path": str(tmp_path / "l")}
        cfg = write_json(tmp_path / "in-config.json", config(srv.base_url, **extra))
        code, out = _run([*TARGET_CMD, "--config", str(cfg)], tmp_path, _target_input())
    assert code == (3 if status == 409 else 2), out
    assert_no_traceback(out, "target")
    assert_no_phi("target stdout/stderr and summary", out)
    assert_no_phi("target files", _written(tmp_path))
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    expected = "unlisted_code" if status == 409 else "500"  # the server's code, else the HTTP status
    assert [e["code"] for e in entries] == [expected], "the audit's code is allow-listed, never free text"
    if status == 409:
        [letter] = [json.loads(line) for line in dead.read_text().splitlines()]
        assert "HTTP 409" in letter["reason"] and letter["context"]["code"] == "unlisted_code"
        assert letter["payload"]["mrn"] == PATIENT["mrn"], "the dead letter still keeps our record (by design)"


def test_target_fatal_refusal_without_dead_letters(tmp_path: Path) -> None:
    with HostileServer(_hostile("POST", "/patients", 422, "operation_outcome")) as srv:
        cfg = write_json(tmp_path / "in-config.json", config(srv.base_url))
        code, out = _run([*TARGET_CMD, "--config", str(cfg)], tmp_path, _target_input())
    assert_no_phi("target fatal line", out)
    assert code == 2, out
    assert "HTTP 422" in out and "unlisted_code" in out


def _messages(out: str) -> list[dict[str, Any]]:
    found = []
    for line in out.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return [m for m in found if isinstance(m, dict) and "type" in m]


@pytest.mark.parametrize("shape", sorted(BODIES))
def test_source_check_connection_status_carries_no_server_text(tmp_path: Path, shape: str) -> None:
    with HostileServer(_hostile("GET", "/tenant", 403, shape)) as srv:
        cfg = write_json(tmp_path / "in-config.json", config(srv.base_url))
        _, out = _run([*SOURCE_CMD, "check", "--config", str(cfg)], tmp_path)
    assert_no_phi("source-wellsky check", out)
    [status] = [m["connectionStatus"] for m in _messages(out) if m["type"] == "CONNECTION_STATUS"]
    assert status["status"] == "FAILED" and "HTTP 403" in status["message"], status


@pytest.mark.parametrize("kind", FAILURES)
def test_tap_sync_every_failure_shape_reaches_no_output(tmp_path: Path, kind: str) -> None:
    """Each status, an HTML gateway page, a body cut off mid-way, a 200 that is not JSON or not a page: all name
    the patient; the tap's stderr at DEBUG, its report and everything it wrote hold none of it."""

    def route(h: Reply, m: str, p: str, body: bytes) -> bool:
        if m == "GET" and p == "/patients":
            _fail(h, kind)
            return True
        return False

    with HostileServer(route) as srv:
        cfg = write_json(tmp_path / "in-config.json", config(srv.base_url, dead_letter_path=str(tmp_path / "dl.jsonl")))
        code, out = _run([*TAP_CMD, "--config", str(cfg)], tmp_path)
    assert_no_phi(f"tap ({kind})", out)
    assert_no_phi(f"tap files ({kind})", _written(tmp_path))
    assert code == 2, out
    assert_no_traceback(out, "tap")


def test_source_read_every_failure_shape_reaches_no_output(tmp_path: Path) -> None:
    """One read, one failure per stream (the read goes on after each): TRACE errors, LOG lines, the report."""
    # one per stream (404 and 422 are the tap's cases; a 401 stops the read: the login and token tests)
    kinds = ["400", "403", "429", "500", "html502", "truncated", "malformed200", "wrongshape200"]
    served: dict[str, str] = {}

    def route(h: Reply, m: str, p: str, body: bytes) -> bool:
        if m != "GET" or p == "/tenant":
            return False
        if p not in served and len(served) < len(kinds):
            served[p] = kinds[len(served)]
        if p in served:
            _fail(h, served[p])
            return True
        return False

    names = ["patients", "practitioners", "appointments", "encounters", "care_plans", "authorizations", "referrals",
             "coverage"]
    code, out = _source_read(tmp_path, route, names)
    assert code == 1, out
    assert sorted(served.values()) == sorted(kinds), served
    traces = [m for m in _messages(out) if m["type"] == "TRACE" and m["trace"]["type"] == "ERROR"]
    assert len(traces) == len(names), [t["trace"]["error"]["message"] for t in traces]
    [report] = list((tmp_path / "xdg-state").rglob("data_quality.json"))
    verdict = json.loads(report.read_text())
    assert (verdict["status"], verdict["exit_code"]) == ("incomplete", 1) and len(verdict["incomplete_streams"]) == 8


@pytest.mark.parametrize("face", ["tap", "tap_test", "check", "read", "target", "destination"])
def test_a_token_endpoint_refusal_reaches_no_output(tmp_path: Path, face: str) -> None:
    """OAuth client credentials: the token endpoint answers 401 with an ``error_description`` (and an
    ``error_uri``) naming the patient."""

    def route(h: Reply, m: str, p: str, body: bytes) -> bool:
        if (m, p) == ("POST", "/oauth/token"):
            oauth = {"error": "invalid_client", "error_description": PHI_TEXT, "error_uri": f"https://x/{PHI_TEXT}"}
            h.send_json(401, oauth, {"x-request-id": REQUEST_ID})
            return True
        return False

    oauth = {"auth_method": "oauth_client_credentials", "client_id": "cid-7", "client_secret": "sec-Zx91qqW"}
    with HostileServer(route) as srv:
        settings = {k: v for k, v in config(srv.base_url, **oauth).items() if k not in ("username", "password")}
        cfg = write_json(tmp_path / "in-config.json", settings)
        cat = write_json(tmp_path / "in-catalog.json", {"streams": [{
            "stream": {"name": "patients", "json_schema": {}, "supported_sync_modes": ["full_refresh"]},
            "sync_mode": "full_refresh", "destination_sync_mode": "append_dedup"}]})
        cmd, stdin = {
            "tap": ([*TAP_CMD, "--config", str(cfg)], ""),
            "tap_test": ([*TAP_CMD, "--config", str(cfg), "--test"], ""),
            "check": ([*SOURCE_CMD, "check", "--config", str(cfg)], ""),
            "read": ([*SOURCE_CMD, "read", "--config", str(cfg), "--catalog", str(cat)], ""),
            "target": ([*TARGET_CMD, "--config", str(cfg)], _target_input()),
            "destination": ([*DESTINATION_CMD, "write", "--config", str(cfg), "--catalog", str(cat)],
                            json.dumps({"type": "RECORD", "record": {"stream": "patients", "data": PATIENT,
                                                                      "emitted_at": 1}}) + "\n"),
        }[face]
        code, out = _run(cmd, tmp_path, stdin)
    assert_no_phi(f"{face} after a token refusal", out)
    assert_no_phi(f"{face} files", _written(tmp_path))
    assert "sec-Zx91qqW" not in out + _written(tmp_path), "nor the client secret"
    assert "HTTP 401" in out and "client_secret" in out, "the status and the setting to fix"
    assert code == (0 if face == "check" else 1 if face in ("read", "destination") else 2), out


def _source_read(tmp_path: Path, route: Any, names: list[str]) -> tuple[int, str]:
    """``source-wellsky read`` of full-refresh ``names`` against a hostile tenant; its output and every file it
    wrote carry no patient value (checked here for every caller)."""
    catalog = {
        "streams": [
            {
                "stream": {"name": name, "json_schema": {}, "supported_sync_modes": ["full_refresh", "incremental"]},
                "sync_mode": "full_refresh",
                "destination_sync_mode": "append",
            }
            for name in names
        ]
    }
    with HostileServer(route) as srv:
        cfg = write_json(tmp_path / "in-config.json", config(srv.base_url))
        cat = write_json(tmp_path / "in-catalog.json", catalog)
        code, out = _run([*SOURCE_CMD, "read", "--config", str(cfg), "--catalog", str(cat)], tmp_path)
    assert_no_phi("source-wellsky read", out)
    assert_no_phi("source-wellsky files", _written(tmp_path))
    return code, out


def test_source_read_trace_and_logs_carry_no_server_text(tmp_path: Path) -> None:
    code, out = _source_read(tmp_path, _hostile("GET", "/patients", 423, "wellsky"), ["patients", "practitioners"])
    assert code == 1, out
    traces = [m["trace"]["error"] for m in _messages(out) if m["type"] == "TRACE" and m["trace"]["type"] == "ERROR"]
    assert traces and "HTTP 423" in traces[0]["message"] and "HTTP 423" in traces[0]["internal_message"]


def test_destination_write_refusal_carries_no_server_text(tmp_path: Path) -> None:
    dead, audit = tmp_path / "dl.jsonl", tmp_path / "audit.jsonl"
    catalog = {
        "streams": [
            {
                "stream": {"name": "patients", "json_schema": {}, "supported_sync_modes": ["full_refresh"]},
                "sync_mode": "full_refresh",
                "destination_sync_mode": "append_dedup",
            }
        ]
    }
    lines = [
        {"type": "RECORD", "record": {"stream": "patients", "data": PATIENT, "emitted_at": 1}},
        {"type": "STATE", "state": {"type": "STREAM", "stream": {"stream_descriptor": {"name": "patients"},
                                                                "stream_state": {"n": 1}}}},
    ]
    stdin = "\n".join(json.dumps(m) for m in lines) + "\n"
    with HostileServer(_hostile("POST", "/patients", 409, "wellsky")) as srv:
        cfg = write_json(
            tmp_path / "in-config.json",
            config(srv.base_url, dead_letter_path=str(dead), audit_log_path=str(audit)),
        )
        cat = write_json(tmp_path / "in-catalog.json", catalog)
        code, out = _run([*DESTINATION_CMD, "write", "--config", str(cfg), "--catalog", str(cat)], tmp_path, stdin)
    assert code != 0, out
    assert dead.exists() and "HTTP 409" in dead.read_text()
    assert_no_phi("destination-wellsky", out)
    assert_no_phi("destination-wellsky files", _written(tmp_path))


def test_home_connect_writer_refusal_skips_the_server_text() -> None:
    """The Home Connect writer quoted ``error``/``message`` raw (not even the request-echo scrubber)."""
    from tests.core.home_connect_fake import FakeHomeConnect, patient
    from wellsky_core.config import TargetConfig
    from wellsky_core.connection import Connection
    from wellsky_core.http.client import WellSkyClient
    from wellsky_core.products.personal_care.writer import HomeConnectWriter

    fake = FakeHomeConnect()
    fake.data["patients"] = [patient(1)]

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method in ("POST", "PUT") and request.url.path.startswith(("/v1/patients", "/v1/encounter")):
            return httpx.Response(422, json=BODIES["wellsky"], headers={"x-request-id": REQUEST_ID})
        return fake.handle(request)

    settings = {"product": "personal_care", "client_id": "cid-123", "client_secret": "secret-xyz"}
    cfg = TargetConfig.load({**settings, "max_requests_per_second": 0}, env={})
    connection = Connection(cfg)
    connection._client = WellSkyClient(cfg, transport=httpx.MockTransport(handle), sleep=lambda s: None)
    writer = HomeConnectWriter(connection)
    address = {"line1": "9 Elm St", "city": "Denver", "state": "CO", "postal_code": "80203"}
    new = {"first_name": "Rosa", "last_name": "Parkes", "birth_date": "1938-04-01", "gender": "female",
           "status": "active", "address": address}
    result = writer.write("patients", new)
    assert_no_phi("Home Connect write result", json.dumps(result.__dict__))
    assert result.action == "rejected" and "HTTP 422" in (result.reason or ""), result
    assert result.code == "unlisted_code"


@pytest.mark.parametrize("kind", ["malformed200", "wrongshape200", "truncated", "html201"])
def test_a_write_answered_with_something_other_than_the_record_stops_in_one_clear_line(
    tmp_path: Path, kind: str
) -> None:
    """A 2xx to a create that is not the written record (not JSON, cut off, an HTML page, JSON without an id):
    the write may have been applied, so the run stops (exit 2) with one line that says so and what to do, never
    "unexpected JSONDecodeError", never a 'created' without an id, and none of the body's text. A body cut off
    in transit is the transport's: a keyed create is retried and the tenant replays it (here no retries left)."""

    def route(h: Reply, m: str, p: str, body: bytes) -> bool:
        if (m, p) == ("POST", "/patients"):
            if kind == "html201":
                h.send_raw(201, f"<html><body>Saved {PHI_TEXT}</body></html>".encode(), "text/html")
            else:
                _fail(h, kind)
            return True
        return False

    with HostileServer(route) as srv:
        cfg = write_json(tmp_path / "in-config.json", config(srv.base_url, max_retries=0))
        code, out = _run([*TARGET_CMD, "--config", str(cfg)], tmp_path, _target_input())
    assert_no_phi(f"target ({kind})", out)
    assert code == 2, out[-3000:]
    assert_no_traceback(out, "target")
    [line] = [line for line in out.splitlines() if line.startswith("target-wellsky: error:")]
    if kind == "truncated":  # cut off in transit: a keyed create is retried (the tenant replays it), here 0 times
        assert "POST gave no usable answer within the retry budget" in line and "raise max_retries" in line, line
    else:
        assert "POST /patients" in line and "may have been applied" in line and "re-run the same input" in line, line
    assert "JSONDecodeError" not in out
