"""Bad input of every kind gives a clear error that names the field or line, loses nothing, and never a traceback.

Families (each case is distinct; ``test_at_least_100_distinct_cases`` counts them):

- connector config values (tap and target), checked in-process and, for a sample, through the CLIs;
- Singer messages to the target: fatal (bad JSON, RECORD before SCHEMA...) stop with the line number;
  schema violations are dead-lettered with the field and line, and the good records still land;
- malformed HTTP bodies from the server (a raw socket server crafting each answer): truncated JSON, HTML error
  pages, wrong shapes and types, missing fields, cursor loops, bad bytes;
- bad FHIR resources, bad HL7 v2 messages and bad CSV export files through the core's normalizers;
- hypothesis-generated config values, Singer lines and HL7 text.

"No traceback reaches the user" is checked on real subprocesses (stderr has no ``Traceback``); in-process
cases check that the error raised is a ``WellSkyError`` (what the CLIs turn into one ``error:`` line).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wellsky_core.config import TargetConfig, WellSkyConfig, secret_fields
from wellsky_core.connection import Connection
from wellsky_core.deadletter import DeadLetter
from wellsky_core.errors import ConfigError, NormalizationError, WellSkyError
from wellsky_core.schemas import stream_schema

from .conftest import TAP_CMD, TARGET_CMD, assert_no_traceback, child_env, write_json

CASES: dict[str, int] = {}


def counted(family: str, cases: list[Any]) -> list[Any]:
    CASES[family] = len(cases)
    return cases


# ==============================================================================================================
# 1. config values
# ==============================================================================================================
BASE = {"base_url": "http://127.0.0.1:9", "username": "u", "password": "p"}
CONFIG_CASES = counted(
    "config",
    [
        ({"base_url": "ftp://agency.example"}, "base_url"),
        ({"base_url": "http://agency.example/api"}, "base_url"),
        ({"base_url": "not a url at all"}, "base_url"),
        ({"base_url": "https://agency.example/api?token=abc"}, "base_url"),
        ({"base_url": "https://"}, "base_url"),
        ({"token_url": "http://idp.example/token"}, "token_url"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 1001}, "page_size"),
        ({"page_size": "lots"}, "page_size"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 51}, "max_retries"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": "soon"}, "timeout_seconds"),
        ({"backoff_base_seconds": 5, "backoff_max_seconds": 1}, "backoff_max_seconds"),
        ({"max_requests_per_second": -1}, "max_requests_per_second"),
        ({"mfa_method": "carrier_pigeon"}, "mfa_method"),
        ({"mfa_method": "totp"}, "totp_secret"),
        ({"mfa_method": "totp", "totp_secret": "123456"}, "totp_secret"),
        ({"mfa_method": "sms"}, "mfa_code_command"),
        ({"mfa_method": "email", "mfa_code_source": "file"}, "mfa_code_file"),
        ({"mfa_code_timeout_seconds": 0}, "mfa_code_timeout_seconds"),
        ({"auth_method": "magic"}, "auth_method"),
        ({"username": None}, "username"),
        ({"password": None}, "password"),
        ({"auth_method": "oauth_client_credentials"}, "client_id"),
        ({"auth_method": "oauth_client_credentials", "client_id": "c"}, "client_secret"),
        (
            {"auth_method": "oauth_private_key_jwt", "client_id": "c", "private_key_id": "k", "private_key": "nope"},
            "private_key",
        ),
        (
            {"auth_method": "oauth_private_key_jwt", "client_id": "c", "private_key_id": "k",
             "private_key_path": "/nonexistent/key.pem"},
            "private_key_path",
        ),
        ({"jwt_algorithm": "HS256"}, "jwt_algorithm"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle"),
        ({"product": "dentistry"}, "product"),
        ({"source": "carrier_pigeon"}, "source"),
        ({"stream_sources": "{not json"}, "stream_sources"),
        ({"stream_sources": {"patients": "fax"}}, "stream_sources"),
        ({"sftp_port": 70000}, "sftp_port"),
        ({"sftp_after_read": "shred"}, "sftp_after_read"),
        ({"pasword": "typo"}, "pasword"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"verify_tls": "maybe"}, "verify_tls"),
        ({"write_concurrency": 0}, "write_concurrency"),
        ({"authorization_policy": "sometimes"}, "authorization_policy"),
        ({"dry_run": "perhaps"}, "dry_run"),
    ],
)


SECRET_KEYS = set(secret_fields(TargetConfig))


@pytest.mark.parametrize(("overrides", "field"), CONFIG_CASES, ids=[f for _, f in CONFIG_CASES])
def test_bad_config_value_names_the_setting(overrides: dict[str, Any], field: str) -> None:
    raw = {**BASE, **overrides}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        TargetConfig.load(raw, env={})
    message = str(info.value)
    assert field in message, message
    for key in SECRET_KEYS & set(overrides):  # a bad secret value is never echoed
        assert str(overrides[key]) not in message, message


def test_bad_config_through_the_clis_is_one_clear_line(tmp_path: Path) -> None:
    """A sample of bad configs, a missing file and a broken JSON file through both CLIs: exit 2, no traceback."""
    (tmp_path / "broken.json").write_text("{not json")
    runs: list[tuple[list[str], str]] = []
    for i, (overrides, field) in enumerate(CONFIG_CASES[::14]):
        cmd = TARGET_CMD if i % 2 else TAP_CMD
        cfg = write_json(tmp_path / f"cfg-{i}.json", {k: v for k, v in {**BASE, **overrides}.items() if v is not None})
        runs.append(([*cmd, "--config", str(cfg)], field))
    runs.append(([*TAP_CMD, "--config", str(tmp_path / "missing.json")], "missing.json"))
    runs.append(([*TAP_CMD, "--config", str(tmp_path / "broken.json")], "broken.json"))
    runs.append(([*TARGET_CMD, "--config", str(tmp_path / "broken.json")], "broken.json"))
    (tmp_path / "a-list.json").write_text('[{"product": "personal_care"}]')  # was a traceback on both faces
    runs.append(([*TAP_CMD, "--config", str(tmp_path / "a-list.json")], "a-list.json must hold a JSON object"))
    runs.append(([*TARGET_CMD, "--config", str(tmp_path / "a-list.json")], "a-list.json must hold a JSON object"))
    procs = [
        (subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=child_env()), field)
        for cmd, field in runs
    ]
    CASES["config via CLI (file errors)"] = 5
    for proc, field in procs:
        _, stderr = proc.communicate("", timeout=120)
        assert_no_traceback(stderr, f"CLI with bad {field}")
        assert proc.returncode != 0, f"bad {field} was accepted"
        assert field in stderr, f"error does not name {field}:\n{stderr[-800:]}"


ISSUE_28_CASES = [  # (config, the one error line must contain)
    ({"product": "personal-care"}, "product: did you mean `personal_care`?"),
    ({"product": "personal_care", "client_id": "x"}, "client_secret: required when auth_method="),
    ({"source": "portal", "username": "u", "password": "p"}, "agency_timezone: required when a stream reads"),
    ({"max_flagged_fraction": 2}, "max_flagged_fraction"),
    ({"product": "personal_care", "quality_ignore": {"appointments": ["servce_code"]}},
     "quality_ignore: appointments: no field 'servce_code'; did you mean `service_code`?"),
    # a misspelt stream was ignored: patients went on reading from `source`, without a word
    ({"stream_sources": {"patientz": "fhir"}}, "stream_sources: names no stream 'patientz'; did you mean `patients`?"),
]
TAP_ONLY = ("max_flagged_fraction", "quality_ignore")


@pytest.mark.parametrize(("config", "needle"), ISSUE_28_CASES)
def test_every_face_gives_the_same_one_line_before_any_stream(tmp_path: Path, config: dict, needle: str) -> None:
    """Issue 28: tap-wellsky (a sync, --test and --discover: stderr is that one line), target-wellsky and
    source-wellsky (check: a FAILED status; discover and read: a TRACE config_error) report a bad value as one
    line, before anything starts, with the fix."""
    cfg = write_json(tmp_path / "config.json", config)
    source = [sys.executable, "-m", "tap_wellsky.airbyte"]
    runs = {"tap sync": [*TAP_CMD, "--config", str(cfg)], "tap --test": [*TAP_CMD, "--config", str(cfg), "--test"],
            "tap --discover": [*TAP_CMD, "--config", str(cfg), "--discover"]}
    if not set(TAP_ONLY) & set(config):
        runs["target"] = [*TARGET_CMD, "--config", str(cfg)]
    procs = {
        name: subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=child_env())
        for name, cmd in runs.items()
    }
    for name, proc in procs.items():
        _, stderr = proc.communicate("", timeout=180)
        errors = [line for line in stderr.splitlines() if ": error:" in line or " ERROR " in line]
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{stderr[-800:]}"
        assert len(errors) == 1 and needle in errors[0], f"{name}: {errors}"
        assert "***" not in errors[0] and "Beginning sync" not in stderr and "status OK" not in stderr
        if name.startswith("tap"):
            assert stderr.strip().splitlines() == errors, f"{name}: more than the one line:\n{stderr[-800:]}"
    for command in ("discover", "read"):
        catalog = ["--catalog", str(cfg)] if command == "read" else []
        proc = subprocess.run([*source, command, "--config", str(cfg), *catalog], capture_output=True, text=True,
                              env=child_env(), timeout=180)
        traces = [json.loads(line)["trace"]["error"] for line in proc.stdout.splitlines() if '"TRACE"' in line]
        assert proc.returncode == 1 and len(traces) == 1, f"{command}: {proc.stdout[-800:]}"
        assert traces[0]["failure_type"] == "config_error" and needle in traces[0]["message"]
        assert '"STREAM_STATUS"' not in proc.stdout
    check = subprocess.run([*source, "check", "--config", str(cfg)], capture_output=True, text=True,
                           env=child_env(), timeout=180)
    (status,) = [json.loads(x)["connectionStatus"] for x in check.stdout.splitlines() if "CONNECTION_STATUS" in x]
    assert check.returncode == 0 and status["status"] == "FAILED" and needle in status["message"]  # the protocol's way
    CASES["one line on every face (issue 28)"] = len(ISSUE_28_CASES)


# ==============================================================================================================
# 2. Singer messages to the target
# ==============================================================================================================
def _schema(stream: str) -> str:
    return json.dumps({"type": "SCHEMA", "stream": stream, "schema": stream_schema(stream), "key_properties": ["id"]})


PATIENT = {
    "mrn": "BAD-0001",
    "first_name": "Ignatius",
    "last_name": "Quarrington",
    "birth_date": "1941-03-02",
    "gender": "male",
    "status": "active",
}
FATAL_SINGER = counted(
    "singer fatal",
    [
        ("{not json", 1, "not valid JSON"),
        ('{"type": "RECORD", "stream": "patients", "rec', 1, "not valid JSON"),
        ("[1, 2, 3]", 1, "not an object"),
        ('"just a string"', 1, "not an object"),
        ("42", 1, "not an object"),
        ("null", 1, "not an object"),
        ('{"stream": "patients"}', 1, "type"),
        ('{"type": "TELEPORT"}', 1, "TELEPORT"),
        (json.dumps({"type": "RECORD", "stream": "patients", "record": PATIENT}), 1, "before its SCHEMA"),
        (_schema("patients") + "\n" + json.dumps({"type": "RECORD", "stream": "patients"}), 2, "record"),
        (_schema("patients") + "\n" + json.dumps({"type": "RECORD", "record": PATIENT}), 2, "stream"),
        ('{"type": "SCHEMA", "stream": "patients", "key_properties": ["id"]}', 1, "schema"),
        ('{"type": "SCHEMA", "schema": {}, "key_properties": []}', 1, "stream"),
        ('{"type": "STATE"}', 1, "value"),
        (_schema("patients") + "\n\x00\x01\x02garbage", 2, "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, 1, "line 1"),
        (_schema("patients") + "\n" + '{"type": "RECORD", "stream": "patients", "record": {"a": NaN}}', 2, "JSON"),
        (_schema("patients") + "\n" + '{"type": "RECORD", "stream": "patients", "record": []}', 2, "object"),
        ('{"type": "SCHEMA", "stream": "patients", "schema": 5, "key_properties": []}', 1, "object"),
        # the SDK asks the schema for "properties" with the line's own check: "(untyped message) lacks properties"
        ('{"type": "SCHEMA", "stream": "patients", "schema": {}, "key_properties": ["id"]}', 1,
         "the SCHEMA message's schema has no properties object"),
        ('{"type": "SCHEMA", "stream": "patients", "schema": {"properties": [1]}, "key_properties": ["id"]}', 1,
         "the SCHEMA message's schema has no properties object"),
        ('{"type": "RECORD", "stream": ["patients"], "record": {}}', 1, "stream"),
        ('{"type": "BATCH"}', 1, "stream"),
        ('{"type": "BATCH", "stream": "patients", "encoding": 5, "manifest": 3}', 1, "SCHEMA"),
        ('{"type": "ACTIVATE_VERSION", "version": 1}', 1, "stream"),
        ('{"type": "ACTIVATE_VERSION", "stream": "patients", "version": 1}', 1, "SCHEMA"),
    ],
)


def run_target_inprocess(config: dict[str, Any], text: str) -> tuple[BaseException | None, Any, str]:
    """The target on ``text`` in this process; returns the error raised (if any), the target and its stderr."""
    from target_wellsky.target import TargetWellSky

    err = io.StringIO()
    target = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            target = TargetWellSky(config=config, parse_env_config=False)
            target.listen(io.StringIO(text))
        except Exception as exc:  # the assertion is about its type and message
            return exc, target, err.getvalue()
    return None, target, err.getvalue()


@pytest.fixture(scope="module")
def shared_tenant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from wellsky_sandbox.testing import SandboxServer

    with SandboxServer(scale=10, sftp_port=None, data_dir=tmp_path_factory.mktemp("bad-input-tenant")) as sb:
        yield sb


def _target_config(sb: Any, tmp: Path, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": sb.base_url,
        "username": sb.username,
        "password": sb.password,
        "product": sb.product,
        "max_requests_per_second": 0,
        "dead_letter_path": str(tmp / "dead.jsonl"),
        **extra,
    }


@pytest.mark.parametrize(("text", "line", "needle"), FATAL_SINGER, ids=[f"fatal-{i}" for i in range(len(FATAL_SINGER))])
def test_fatal_singer_input_names_the_line(shared_tenant: Any, tmp_path: Path, text: str, line: int, needle: str):
    exc, _, _ = run_target_inprocess(_target_config(shared_tenant, tmp_path), text + "\n")
    assert isinstance(exc, WellSkyError), f"expected a WellSkyError naming line {line}, got {exc!r}"
    message = str(exc)
    assert f"line {line}" in message and needle.lower() in message.lower(), message
    assert "Quarrington" not in message and "Ignatius" not in message


def test_unknown_stream_warns_or_fails_under_strict(shared_tenant: Any, tmp_path: Path) -> None:
    text = _schema("encounters") + "\n"
    exc, _, _ = run_target_inprocess(_target_config(shared_tenant, tmp_path), text)
    assert exc is None
    exc, _, _ = run_target_inprocess(_target_config(shared_tenant, tmp_path, strict=True), text)
    assert isinstance(exc, ConfigError) and "strict" in str(exc) and "encounters" in str(exc)
    CASES["singer unknown stream"] = 2


def _patient(**changes: Any) -> dict[str, Any]:
    rec = dict(PATIENT)
    for key, value in changes.items():
        if value is _DROP:
            rec.pop(key, None)
        else:
            rec[key] = value
    return rec


_DROP = object()
VIOLATIONS = counted(
    "singer schema violations",
    [
        ("patients", _patient(birth_date="not-a-date"), "birth_date"),
        ("patients", _patient(birth_date="2023-02-30"), "birth_date"),
        ("patients", _patient(gender="X"), "gender"),
        ("patients", _patient(last_name=_DROP), "last_name"),
        ("patients", _patient(first_name=123), "first_name"),
        ("patients", _patient(status="alive"), "status"),
        ("patients", _patient(address="12 Main St"), "address"),
        ("patients", _patient(coverage={"payer_id": "x"}), "coverage"),
        ("patients", _patient(mrn=["a", "b"]), "mrn"),
        ("patients", _patient(ssn="078-05-1120"), "ssn"),
        ("patients", _patient(notes="x" * 5_000_000), "notes"),  # a 5 MB line with an unknown field
        ("appointments", {"external_id": "E1", "patient_id": "HH-P000001"}, "start"),
        ("appointments", {"external_id": "E2", "patient_id": "HH-P000001", "start": "2026-01-01T10:00:00Z",
                          "end": "2026-01-01T11:00:00Z", "status": "teleported", "discipline": "SN",
                          "service_code": "G0299"}, "status"),
        ("appointments", {"external_id": "E3", "patient_id": "HH-P000001", "start": "tomorrow",
                          "end": "2026-01-01T11:00:00Z", "status": "scheduled", "discipline": "SN",
                          "service_code": "G0299"}, "start"),
        ("appointments", {"external_id": "E4", "patient_id": "HH-P000001", "start": "2026-01-01T10:00:00Z",
                          "end": "2026-01-01T11:00:00Z", "status": "scheduled", "discipline": "XX",
                          "service_code": "G0299"}, "discipline"),
        ("appointments", {"external_id": "E5", "patient_id": "NOPE-1", "start": "2026-01-01T10:00:00Z",
                          "end": "2026-01-01T11:00:00Z", "status": "scheduled", "discipline": "SN",
                          "service_code": "G0299"}, "patient"),
        ("appointments", {"external_id": "E6", "patient_id": "HH-P000001", "start": "2026-01-01T12:00:00Z",
                          "end": "2026-01-01T11:00:00Z", "status": "scheduled", "discipline": "SN",
                          "service_code": "G0299"}, "end"),  # refused before sending, naming the field (issue 24)
    ],
)


def test_schema_violations_are_dead_lettered_with_field_and_line_and_good_records_land(
    shared_tenant: Any, tmp_path: Path
) -> None:
    """One input: a good patient, then every violation. The good record is written; each bad one is dead-lettered."""
    lines = [_schema("patients"), _schema("appointments")]
    good = _patient(mrn="GOOD-0001", first_name="Valid")
    lines.append(json.dumps({"type": "RECORD", "stream": "patients", "record": good}))
    for stream, record, _ in VIOLATIONS:
        lines.append(json.dumps({"type": "RECORD", "stream": stream, "record": record}))
    cfg = _target_config(shared_tenant, tmp_path, audit_log_path=str(tmp_path / "audit.jsonl"))
    proc = subprocess.run(
        [*TARGET_CMD, "--config", str(write_json(tmp_path / "cfg.json", cfg))],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert_no_traceback(proc.stderr, "target with schema violations")
    assert proc.returncode == 3, "records were dead-lettered: exit code 3"
    dead = DeadLetter.read(tmp_path / "dead.jsonl")
    by_line = {d["context"]["input_line"]: d for d in dead}
    missing = [(i + 4, VIOLATIONS[i][2]) for i in range(len(VIOLATIONS)) if i + 4 not in by_line]
    assert not missing, f"bad records written instead of dead-lettered (line, field): {missing}"
    assert len(dead) == len(VIOLATIONS)
    for i, (_, _, field) in enumerate(VIOLATIONS):
        entry = by_line.get(i + 4)
        assert entry is not None, f"bad record on line {i + 4} was not dead-lettered"
        assert field.lower() in entry["reason"].lower(), (field, entry["reason"])
    assert [p for p in shared_tenant.truth("patients") if p.get("mrn") == "GOOD-0001"], "the good record was lost"
    for name in ("Quarrington", "Ignatius"):
        assert name not in proc.stderr


def test_huge_but_valid_field_is_written_intact_or_refused_clearly(shared_tenant: Any, tmp_path: Path) -> None:
    """A 1 MB first name: the canonical model sets no length limit, so it must at least round-trip intact."""
    huge = _patient(mrn="HUGE-0001", first_name="A" * 1_000_000)
    text = _schema("patients") + "\n" + json.dumps({"type": "RECORD", "stream": "patients", "record": huge}) + "\n"
    proc = subprocess.run(
        [*TARGET_CMD, "--config", str(write_json(tmp_path / "cfg.json", _target_config(shared_tenant, tmp_path)))],
        input=text, capture_output=True, text=True, env=child_env(), timeout=120,
    )
    assert_no_traceback(proc.stderr, "target with a huge field")
    assert "A" * 1000 not in proc.stderr, "the huge value was echoed"
    if proc.returncode == 0:
        stored = [p for p in shared_tenant.truth("patients") if p.get("mrn") == "HUGE-0001"]
        assert len(stored) == 1 and stored[0]["first_name"] == huge["first_name"], "written, but not intact"
    else:
        assert proc.returncode == 3
        assert "first_name" in DeadLetter.read(tmp_path / "dead.jsonl")[0]["reason"]
    CASES["singer huge valid field"] = 1


def test_fatal_singer_input_through_the_cli(shared_tenant: Any, tmp_path: Path) -> None:
    cfg = write_json(tmp_path / "cfg.json", _target_config(shared_tenant, tmp_path))
    sample = FATAL_SINGER[::6]
    procs = [
        subprocess.Popen([*TARGET_CMD, "--config", str(cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=child_env())
        for _ in sample
    ]
    for proc, (text, line, _) in zip(procs, sample, strict=True):
        _, stderr = proc.communicate(text + "\n", timeout=120)
        assert_no_traceback(stderr, "target with fatal input")
        assert proc.returncode == 2
        assert f"line {line}" in stderr.splitlines()[-1], stderr[-600:]


# ==============================================================================================================
# 3. malformed HTTP bodies from the server
# ==============================================================================================================
Reply = tuple[int, dict[str, str], bytes]


class CraftedServer:
    """A raw asyncio HTTP/1.1 server: ``/case/<name>/...`` answers exactly the bytes the case defines.

    Login (``POST .../sessions``) always works, so each case isolates one broken data answer.
    """

    def __init__(self, cases: dict[str, Callable[[str, int], Reply]]) -> None:
        self.cases = cases
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.hits: dict[str, int] = {}
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(asyncio.start_server(self.handle, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(10)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _ = request_line.split(" ", 2)
                length = 0
                for h in header_lines:
                    if h.lower().startswith("content-length:"):
                        length = int(h.split(":", 1)[1])
                if length:
                    await reader.readexactly(length)
                status, headers, body, close = self.answer(method, target)
                reason = {200: "OK", 201: "Created"}.get(status, "Error")
                out = [f"HTTP/1.1 {status} {reason}"]
                headers = {"content-length": str(len(body)), **headers}
                out += [f"{k}: {v}" for k, v in headers.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + body)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def answer(self, method: str, target: str) -> tuple[int, dict[str, str], bytes, bool]:
        path = target.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if len(parts) < 3 or parts[0] != "case" or parts[1] not in self.cases:
            return 404, {"content-type": "application/json"}, b'{"error":"not_found","message":"no such case"}', False
        name, rest = parts[1], "/".join(parts[2:])
        if method == "POST" and rest == "sessions":
            return 201, {"content-type": "application/json", "set-cookie": "wsk_session=ok; Path=/; HttpOnly"}, (
                b'{"session_expires_in": 3600}'
            ), False
        self.hits[name] = self.hits.get(name, 0) + 1
        status, headers, body = self.cases[name](target, self.hits[name])
        close = headers.pop("x-close", "") == "1"
        return status, headers, body, close

    def base_url(self, case: str) -> str:
        return f"http://127.0.0.1:{self.port}/case/{case}"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


NATIVE_PATIENT: dict[str, Any] = {
    "id": "HH-P000001",
    "mrn": "MRN-777001",
    "medicareMbi": None,
    "medicaidId": None,
    "name": {"first": "Ignatius", "last": "Quarrington"},
    "birthDate": "1941-03-02",
    "gender": "M",
    "phone": None,
    "address": None,
    "status": "Admitted",
    "coverage": [],
    "lastModified": "2026-01-01T00:00:00Z",
}


def _page(*records: Any, cursor: Any = None) -> bytes:
    return json.dumps({"data": list(records), "next_cursor": cursor}).encode()


def _bad_patient(**changes: Any) -> bytes:
    rec = copy.deepcopy(NATIVE_PATIENT)
    for key, value in changes.items():
        if value is _DROP:
            rec.pop(key, None)
        else:
            rec[key] = value
    return _page(rec)


JSON = {"content-type": "application/json"}
HTML = {"content-type": "text/html"}
FULL = _page(NATIVE_PATIENT)
HTTP_CASES: dict[str, tuple[Callable[[str, int], Reply], str]] = {
    "truncated": (lambda t, n: (200, dict(JSON), FULL[: len(FULL) // 2]), "not valid JSON"),
    "html-200": (lambda t, n: (200, dict(HTML), b"<html><body>Maintenance</body></html>"), "not valid JSON"),
    "html-502": (lambda t, n: (502, dict(HTML), b"<html><h1>502 Bad Gateway</h1></html>"), "retry budget"),
    "empty-200": (lambda t, n: (200, dict(JSON), b""), "not valid JSON"),
    "array": (lambda t, n: (200, dict(JSON), b"[]"), "data"),
    "data-object": (lambda t, n: (200, dict(JSON), b'{"data": {}, "next_cursor": null}'), "data"),
    "data-null": (lambda t, n: (200, dict(JSON), b'{"data": null}'), "data"),
    "data-string": (lambda t, n: (200, dict(JSON), b'{"data": "patients"}'), "data"),
    "record-not-object": (lambda t, n: (200, dict(JSON), _page(1)), "patients"),
    "record-empty": (lambda t, n: (200, dict(JSON), _page({})), "patients"),
    "birthdate-int": (lambda t, n: (200, dict(JSON), _bad_patient(birthDate=19410302)), "birth"),
    "birthdate-garbage": (lambda t, n: (200, dict(JSON), _bad_patient(birthDate="02/03/41")), "birth"),
    "gender-unknown": (lambda t, n: (200, dict(JSON), _bad_patient(gender="Z")), "gender"),
    "name-missing": (lambda t, n: (200, dict(JSON), _bad_patient(name=_DROP)), "name"),
    "name-string": (lambda t, n: (200, dict(JSON), _bad_patient(name="Quarrington, Ignatius")), "name"),
    "status-unknown": (lambda t, n: (200, dict(JSON), _bad_patient(status="Zombie")), "status"),
    "modified-garbage": (lambda t, n: (200, dict(JSON), _bad_patient(lastModified="last tuesday")), "lastModified"),
    "cursor-loop": (lambda t, n: (200, dict(JSON), _page(NATIVE_PATIENT, cursor="same")), "same next_cursor"),
    "bad-bytes": (lambda t, n: (200, dict(JSON), b'{"data": [\xff\xfe\xfa]}'), "not valid JSON"),
    "html-404": (lambda t, n: (404, dict(HTML), b"<html>Not Found</html>"), "404"),
    "json-400": (
        lambda t, n: (400, dict(JSON), b'{"error": "invalid_request", "message": "limit must be 1-1000"}'),
        "invalid_request",  # the allow-listed code; the server's own words stay out of the error
    ),
    "always-401": (lambda t, n: (401, dict(JSON), b'{"error": "invalid_session", "message": "nope"}'), "credentials"),
    "short-body": (
        lambda t, n: (200, {**JSON, "content-length": str(len(FULL) + 50), "x-close": "1"}, FULL),
        "retry budget",
    ),
    "wrong-content-type-xml": (lambda t, n: (200, {"content-type": "application/xml"}, b"<data/>"), "not valid JSON"),
}
counted("http bodies", list(HTTP_CASES))
FLAGGED_HTTP_CASES = {"birthdate-int", "birthdate-garbage", "gender-unknown", "name-missing", "name-string",
                      "status-unknown"}
"""Cases whose record is still read, the bad field null and named in ``data_quality`` (lenient on read)."""


@pytest.fixture(scope="module")
def crafted() -> Iterator[CraftedServer]:
    server = CraftedServer({name: fn for name, (fn, _) in HTTP_CASES.items()})
    yield server
    server.stop()


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_malformed_http_body_gives_a_clear_error(crafted: CraftedServer, case: str) -> None:
    cfg = WellSkyConfig.load(
        {
            "base_url": crafted.base_url(case),
            "username": "u",
            "password": "p",
            "product": "home_health",
            "max_retries": 2,
            "backoff_base_seconds": 0,
            "backoff_max_seconds": 0,
            "timeout_seconds": 5,
        },
        env={},
    )
    connection = Connection(cfg)
    try:
        if case in FLAGGED_HTTP_CASES:  # lenient read: a bad non-key value is null + a data-quality flag
            records = list(connection.channel("patients").iter_records("patients", None))
            assert len(records) == 1, case
            flags = records[0]["data_quality"]
            message = json.dumps(flags)
            assert any(HTTP_CASES[case][1].lower() in f["field"].lower() for f in flags), (case, flags)
        else:
            with pytest.raises(WellSkyError) as info:
                list(connection.channel("patients").iter_records("patients", None))
            message = str(info.value)
            assert HTTP_CASES[case][1].lower() in message.lower(), message
    finally:
        connection.close()
    for phi in ("Quarrington", "Ignatius", "MRN-777001", "1941"):
        assert phi not in message, f"{case}: the error echoes patient data"


def test_malformed_http_bodies_through_the_tap_cli(crafted: CraftedServer, tmp_path: Path) -> None:
    """A sample through the real CLI: exit 2, one error line naming what broke, no traceback, no PHI."""
    catalog_free = {"username": "u", "password": "p", "product": "home_health", "max_retries": 1,
                    "backoff_base_seconds": 0, "backoff_max_seconds": 0, "timeout_seconds": 5}
    sample = ["html-200", "modified-garbage", "always-401"]
    procs = []
    for case in sample:
        cfg = write_json(tmp_path / f"{case}.json", {**catalog_free, "base_url": crafted.base_url(case)})
        procs.append(subprocess.Popen([*TAP_CMD, "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, env=child_env()))
    for case, proc in zip(sample, procs, strict=True):
        _, stderr = proc.communicate(timeout=120)
        assert_no_traceback(stderr, f"tap on {case}")
        assert proc.returncode == 2, (case, stderr[-800:])
        assert "tap-wellsky: error:" in stderr
        for phi in ("Quarrington", "Ignatius", "MRN-777001"):
            assert phi not in stderr


# ==============================================================================================================
# 4. FHIR, HL7 and CSV
# ==============================================================================================================
SD = "https://wellsky-sandbox.example/fhir/StructureDefinition"
FHIR_PATIENT = {
    "resourceType": "Patient",
    "id": "HH-P000001",
    "identifier": [{"system": "urn:wellsky:mrn", "value": "MRN-777001"}],
    "name": [{"use": "official", "family": "Quarrington", "given": ["Ignatius"]}],
    "gender": "male",
    "birthDate": "1941-03-02",
    "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
}


def _fhir(**changes: Any) -> dict[str, Any]:
    res = copy.deepcopy(FHIR_PATIENT)
    for key, value in changes.items():
        if value is _DROP:
            res.pop(key, None)
        else:
            res[key] = value
    return res


FHIR_CASES = counted(
    "fhir",
    [
        _fhir(birthDate="1941-13-45"),
        _fhir(birthDate=1941),
        _fhir(gender="robot"),
        _fhir(name=_DROP),
        _fhir(name=[{"family": None, "given": []}]),
        _fhir(name="Quarrington"),
        _fhir(meta=_DROP),
        _fhir(meta={"lastUpdated": "soon"}),
        _fhir(id=_DROP),
        _fhir(address=[{"use": "home", "line": "not-a-list", "state": 5}]),
        _fhir(telecom=[{"system": "phone", "value": {"nested": True}}]),
        _fhir(extension=[{"url": f"{SD}/patient-status", "valueCode": "undead"}]),
    ],
)


@pytest.mark.parametrize("resource", FHIR_CASES, ids=[f"fhir-{i}" for i in range(len(FHIR_CASES))])
def test_bad_fhir_patient_names_the_field(resource: dict[str, Any]) -> None:
    from wellsky_core.normalize import fhir

    try:
        record = fhir.patient(resource)
    except NormalizationError as exc:  # only an unusable id or meta.lastUpdated refuses the record
        message = str(exc)
        assert exc.field in ("id", "updated_at"), message
    else:  # any other broken element: the record is read with the field null and named in data_quality
        assert record["data_quality"], "a broken FHIR Patient normalized without a data-quality flag"
        message = json.dumps(record["data_quality"])
    for phi in ("Quarrington", "Ignatius", "MRN-777001", "1941"):
        assert phi not in message


def _hl7_patient() -> str:
    from wellsky_sandbox.hl7 import render_patient

    rec = {
        "id": "HH-P000001", "mrn": "MRN-777001", "medicare_mbi": None, "medicaid_id": None,
        "first_name": "Ignatius", "last_name": "Quarrington", "birth_date": "1941-03-02", "gender": "male",
        "phone": None, "address": None, "status": "active", "coverage": [], "updated_at": "2026-01-01T00:00:00Z",
    }
    return render_patient(rec, event="A08", control_id="C1", facility="AGENCY")


def _hl7_cases() -> list[tuple[str, str]]:
    good = _hl7_patient()
    segments = good.replace("\n", "\r").strip("\r").split("\r")
    pid = next(i for i, s in enumerate(segments) if s.startswith("PID"))
    msh = segments[0]

    def with_field(seg: int, index: int, value: str) -> str:
        parts = segments[seg].split("|")
        while len(parts) <= index:
            parts.append("")
        parts[index] = value
        return "\r".join([*segments[:seg], "|".join(parts), *segments[seg + 1 :]])

    return [
        ("", "MSH"),
        ("PID|1||X", "MSH"),
        ("MSH", "MSH-2"),
        ("MSH|^~", "MSH-2"),
        ("MSH|aaaa|x", "MSH-2"),
        (with_field(0, 11, ""), "MSH-12"),
        (with_field(0, 11, "3.0"), "MSH-12"),
        (with_field(0, 8, ""), "MSH-9"),
        (with_field(0, 8, "XYZ^Q99"), "MSH-9"),
        (with_field(0, 6, "yesterday"), "MSH-7"),
        (with_field(pid, 7, "19411345"), "PID-7"),
        (with_field(pid, 8, "Q"), "PID-8"),
        ("\r".join([msh, "X|bad segment id"]), "segment"),
    ]


HL7_CASES = counted("hl7", _hl7_cases())


def test_the_good_hl7_message_normalizes() -> None:
    from wellsky_core.normalize.hl7 import normalize_message

    entity, rec = normalize_message(_hl7_patient())
    assert entity == "patients" and rec["last_name"] == "Quarrington"


@pytest.mark.parametrize(("text", "field"), HL7_CASES, ids=[f"hl7-{i}" for i in range(len(HL7_CASES))])
def test_bad_hl7_names_the_field(text: str, field: str) -> None:
    from wellsky_core.normalize.hl7 import normalize_message

    flagged_as = {"PID-7": "birth_date", "PID-8": "gender"}  # lenient read: null + a data-quality flag
    if field in flagged_as:
        _, record = normalize_message(text)
        message = json.dumps(record["data_quality"])
        assert [f["field"] for f in record["data_quality"]] == [flagged_as[field]], message
        assert field in message or record["data_quality"][0]["kind"] == "unmapped_code", message
    else:
        with pytest.raises(NormalizationError) as info:
            normalize_message(text)
        message = str(info.value)
        assert field in message, message
    for phi in ("Quarrington", "Ignatius", "MRN-777001", "1941"):
        assert phi not in message


CSV_HEADER = (
    "id,mrn,medicare_mbi,medicaid_id,first_name,last_name,birth_date,gender,phone,address,status,coverage,updated_at"
)
CSV_GOOD = "HH-P1,MRN-777001,,,Ignatius,Quarrington,1941-03-02,male,,,active,,2026-01-01T00:00:00Z"
CSV_CASES = counted(
    "csv",
    [
        (b"", "empty file"),
        (b"id,mrn\r\nHH-P1,M\r\n", "misses required column"),
        ((CSV_HEADER + ",favourite_colour\r\n").encode(), "unknown column"),
        ((CSV_HEADER + ",mrn\r\n").encode(), "repeats a column"),
        ((CSV_HEADER + "\r\n" + CSV_GOOD + ",extra\r\n").encode(), "cells"),
        ((CSV_HEADER + "\r\n" + CSV_GOOD.replace("1941-03-02", "02/30/1941") + "\r\n").encode(), "birth_date"),
        ((CSV_HEADER + "\r\n" + CSV_GOOD.replace(",male,", ",robot,") + "\r\n").encode(), "gender"),
        ((CSV_HEADER + "\r\n" + CSV_GOOD.replace(",active,,", ',active,"{not json",') + "\r\n").encode(), "coverage"),
        ((CSV_HEADER + "\r\n" + CSV_GOOD.replace("Ignatius", "Ign\xe9") + "\r\n").encode("latin-1"), "unreadable"),
        ((CSV_HEADER + "\r\n" + CSV_GOOD.replace(",Quarrington,", ',"Quarr\x00ington,') + "\r\n").encode(), "row"),
        ((CSV_HEADER + "\r\n" + CSV_GOOD.replace("2026-01-01T00:00:00Z", "") + "\r\n").encode(), "updated_at"),
    ],
)


@pytest.mark.parametrize(("data", "reason"), CSV_CASES, ids=[f"csv-{i}" for i in range(len(CSV_CASES))])
def test_bad_csv_is_dead_lettered_with_row_and_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    from wellsky_core.channels.export import ExportChannel

    cfg = WellSkyConfig.load({**BASE, "sftp_host": "127.0.0.1"}, env={})
    dead = DeadLetter(tmp_path / "dead.jsonl")
    channel = ExportChannel(config=cfg, via="sftp", dead_letter=dead)
    rows = list(channel._parse("patients", "patients-20260101.csv", io.BytesIO(data)))
    dead.close()
    assert rows == [], "a broken row or file was accepted"
    letters = DeadLetter.read(tmp_path / "dead.jsonl")
    assert len(letters) == 1 and reason.lower() in letters[0]["reason"].lower(), letters
    assert letters[0]["context"]["file"] == "patients-20260101.csv" and letters[0]["context"]["row"] >= 1
    assert "Quarrington" not in letters[0]["reason"]


def test_the_good_csv_row_parses(tmp_path: Path) -> None:
    from wellsky_core.channels.export import ExportChannel

    cfg = WellSkyConfig.load({**BASE, "sftp_host": "127.0.0.1"}, env={})
    channel = ExportChannel(config=cfg, via="sftp", dead_letter=DeadLetter(tmp_path / "d.jsonl"))
    rows = list(channel._parse("patients", "p.csv", io.BytesIO((CSV_HEADER + "\r\n" + CSV_GOOD + "\r\n").encode())))
    assert len(rows) == 1 and rows[0][1]["last_name"] == "Quarrington"


# ==============================================================================================================
# 5. generated input (hypothesis)
# ==============================================================================================================
HYPOTHESIS_EXAMPLES = 60
FIELDS = [f for f in TargetConfig.model_fields if f not in ("base_url",)]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1, max_size=4))
def test_generated_config_values_are_accepted_or_named(values: dict[str, Any]) -> None:
    try:
        TargetConfig.load({**BASE, **values}, env={})
    except ConfigError as exc:
        assert any(name in str(exc) for name in values) or "config" in str(exc), str(exc)


singer_lines = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda t, s, r: json.dumps({"type": t, "stream": s, "record": r}),
        st.sampled_from(["RECORD", "SCHEMA", "STATE", "BATCH", "ACTIVATE_VERSION", "record", ""]),
        st.sampled_from(["patients", "appointments", "x"]),
        json_values,
    ),
    st.builds(lambda d: json.dumps(d), st.dictionaries(st.text(max_size=6), json_values, max_size=4)),
)


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(singer_lines, min_size=1, max_size=3))
def test_generated_singer_input_never_crashes_the_target(shared_tenant: Any, tmp_path: Path, lines: list[str]) -> None:
    text = _schema("patients") + "\n" + "\n".join(line.replace("\n", " ").replace("\r", " ") for line in lines) + "\n"
    exc, _, _ = run_target_inprocess(_target_config(shared_tenant, tmp_path, dry_run=True), text)
    if exc is not None:
        assert isinstance(exc, WellSkyError), f"unhandled {type(exc).__name__}: {exc}"
        assert "line " in str(exc), str(exc)


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("MSHPIDV|^~\\&\r0123456789AO.-")), max_size=200))
def test_generated_hl7_text_is_normalized_or_named(text: str) -> None:
    from wellsky_core.normalize.hl7 import normalize_message

    try:
        normalize_message("MSH|^~\\&|" + text)
    except NormalizationError as exc:
        assert exc.field, str(exc)


CASES["hypothesis (config, singer, hl7)"] = 3 * HYPOTHESIS_EXAMPLES


def _parametrized_cases() -> dict[str, list[Any]]:
    """The parameter sets really attached to this module's tests (not a tally kept beside them)."""
    found: dict[str, list[Any]] = {}
    for name, test in sorted(globals().items()):
        if name.startswith("test_") and callable(test):
            for mark in getattr(test, "pytestmark", []):
                if mark.name == "parametrize":
                    found[name] = list(mark.args[1])
    return found


def test_at_least_100_distinct_cases() -> None:
    cases = _parametrized_cases()
    for name, params in cases.items():
        spelled = [repr(p) for p in params]
        assert len(set(spelled)) == len(spelled), f"{name} repeats a case"
    hand_written = sum(len(params) for params in cases.values())
    assert hand_written >= 100, {name: len(params) for name, params in cases.items()}
    print(f"FIGURES bad input: {hand_written} hand-written parametrized cases in {len(cases)} tests + "
          f"{CASES['hypothesis (config, singer, hl7)']} generated; by family {CASES}")


# ==============================================================================================================
# 5. FHIR, HL7 and CSV samples through the real tap CLI
# ==============================================================================================================
CAPABILITY = json.dumps(
    {
        "resourceType": "CapabilityStatement",
        "rest": [{"mode": "server", "resource": [{"type": "Patient", "interaction": [{"code": "search-type"}]}]}],
    }
).encode()


def _fhir_server_case(resource: dict[str, Any]) -> Callable[[str, int], Reply]:
    """A FHIR server whose only Patient is ``resource`` (and which offers no other resource type)."""
    bundle = json.dumps(
        {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": resource}], "link": []}
    ).encode()

    def answer(target: str, n: int) -> Reply:
        if "/fhir/metadata" in target:
            return 200, dict(JSON), CAPABILITY
        if "/fhir/Patient" in target:
            return 200, {"content-type": "application/fhir+json"}, bundle
        if target.endswith("/tenant"):
            return 200, dict(JSON), b'{"product": "home_health", "name": "crafted"}'
        return 404, dict(JSON), b'{"error": "not_found", "message": "no such resource"}'

    return answer


FHIR_CLI_SAMPLE = {"fhir-birthdate": 0, "fhir-gender": 2, "fhir-lastupdated": 7}
FHIR_CLI_REFUSED = {"fhir-lastupdated"}
"""Only an unusable key or timestamp refuses a record; the other samples are read with the field flagged."""


def test_bad_fhir_through_the_tap_cli(tmp_path: Path) -> None:
    server = CraftedServer({name: _fhir_server_case(FHIR_CASES[i]) for name, i in FHIR_CLI_SAMPLE.items()})
    try:
        procs = {}
        for case in FHIR_CLI_SAMPLE:
            cfg = write_json(tmp_path / f"{case}.json", {
                "base_url": server.base_url(case), "username": "u", "password": "p", "product": "home_health",
                "source": "fhir", "max_retries": 1, "backoff_base_seconds": 0, "backoff_max_seconds": 0,
            })
            procs[case] = subprocess.Popen([*TAP_CMD, "--config", str(cfg)], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, env=child_env())
        for case, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=120)
            assert_no_traceback(stderr, f"tap on {case}")
            if case in FHIR_CLI_REFUSED:
                assert proc.returncode == 2, (case, stderr[-1500:])
                assert "tap-wellsky: error:" in stderr and "patients." in stderr, (case, stderr[-1500:])
                assert '"type":"RECORD"' not in stdout.replace(" ", "")
            else:  # lenient read: the record lands, the bad field null and named in data_quality
                assert proc.returncode == 0, (case, stderr[-1500:])
                [record] = [json.loads(line)["record"] for line in stdout.splitlines() if '"RECORD"' in line]
                field = case.split("-")[1].replace("birthdate", "birth_date")
                assert field in [f["field"] for f in record["data_quality"]] and record[field] is None
            for phi in ("Quarrington", "Ignatius", "MRN-777001"):
                assert phi not in stderr
    finally:
        server.stop()


FEED_SAMPLES = {
    "hl7_sftp": ("hl7", "zzzz_broken.hl7", "MSH-7"),  # an unusable updated_at: the message is refused
    "export": ("exports", "patients_29991231T235959Z_0001.csv", "birth_date"),
}


def _feed_run(sb: Any, tmp_path: Path, source: str, **extra: Any) -> tuple[subprocess.CompletedProcess[str], str]:
    """Put one broken HL7 message or CSV row on the tenant's SFTP and sync patients from it through the CLI."""
    folder, name, _ = FEED_SAMPLES[source]
    content = next(t for t, f in HL7_CASES if f == "MSH-7").encode() if source == "hl7_sftp" else next(
        d for d, r in CSV_CASES if r == "birth_date"
    )
    outbound = sb.data_dir / "sftp" / "outbound" / folder
    outbound.mkdir(parents=True, exist_ok=True)
    (outbound / name).write_bytes(content)
    config = {**sb.credentials(), "stream_sources": {"patients": source}, "max_retries": 1, **extra}
    proc = subprocess.run(
        [*TAP_CMD, "--config", str(write_json(tmp_path / f"{source}.json", config))],
        capture_output=True, text=True, timeout=300, env=child_env(),
    )
    assert_no_traceback(proc.stderr, f"tap on a broken {source} file")
    for phi in ("Quarrington", "Ignatius", "MRN-777001"):
        assert phi not in proc.stderr
    return proc, name


@pytest.mark.parametrize("source", list(FEED_SAMPLES))
def test_bad_feed_file_is_dead_lettered_through_the_tap_cli(sandbox_factory: Any, tmp_path: Path, source: str):
    sb = sandbox_factory(scale=5)
    dead = tmp_path / "dead.jsonl"
    proc, name = _feed_run(sb, tmp_path, source, dead_letter_path=str(dead))
    assert proc.returncode == 3, proc.stderr[-1500:]  # finished, but with refusals: never plain success
    assert "tap-wellsky: completed with refusals: 1 input(s)" in proc.stderr
    letters = DeadLetter.read(dead)
    assert len(letters) == 1 and name in json.dumps(letters[0]["context"]), letters
    assert FEED_SAMPLES[source][2] in letters[0]["reason"], letters[0]["reason"]
    assert "Quarrington" not in letters[0]["reason"]
    assert '"stream":"patients"' in proc.stdout.replace(" ", ""), "the good records still land"


@pytest.mark.parametrize("source", list(FEED_SAMPLES))
def test_bad_feed_file_without_dead_letter_stops_the_tap_cli(sandbox_factory: Any, tmp_path: Path, source: str):
    sb = sandbox_factory(scale=5)
    proc, _name = _feed_run(sb, tmp_path, source)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert "tap-wellsky: error:" in proc.stderr and FEED_SAMPLES[source][2] in proc.stderr, proc.stderr[-1500:]
