"""fhir_bulk's protocol handling, fast, against an in-process fake server (``httpx.MockTransport``) speaking the
Bulk Data IG: the IG's manifest and OperationOutcome examples (tests/fixtures/bulk), polling with every
``Retry-After`` spelling, failed and transient jobs, gzip both ways, truncated files, kill and resume, expired
jobs, foreign file hosts, SMART discovery, and the poll timeout."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from wellsky_core.channels import open_channel
from wellsky_core.channels.fhir_bulk import FhirBulkChannel
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import ConfigError, RemoteError, WellSkyTransportError
from wellsky_core.http.client import WellSkyClient
from wellsky_core.http.policy import parse_retry_after

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bulk"
BASE = "https://example.com"
STATUS = f"{BASE}/status/job-1"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def us_core_patient(pid: str, family: str) -> dict[str, Any]:
    """A US Core Patient as a certified server exports it (MR identifier, no WellSky extensions)."""
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {
            "lastUpdated": "2020-12-01T10:00:00Z",
            "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
        },
        "identifier": [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": "http://hospital.smarthealthit.org",
                "value": f"MRN-{pid}",
            }
        ],
        "active": True,
        "name": [{"family": family, "given": ["Amy", "V."]}],
        "gender": "female",
        "birthDate": "1987-02-20",
        "address": [{"line": ["49 Meadow St"], "city": "Mounds", "state": "OK", "postalCode": "74047"}],
    }


def ndjson(resources: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in resources)


PATIENTS_1 = [us_core_patient(f"p{i}", "Shaw") for i in range(1, 4)]
PATIENTS_2 = [us_core_patient(f"p{i}", "Lee") for i in range(4, 6)]


class FakeBulkServer:
    """One Bulk Data server: scripted status answers, files (each a list of answers, the last one repeats)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.smart: dict[str, Any] | None = None
        self.kickoff: httpx.Response | None = None
        self.status: list[httpx.Response] = [
            httpx.Response(202, headers={"Retry-After": "2", "X-Progress": "10% complete"}),
            httpx.Response(200, content=fixture("manifest.json")),
        ]
        self.files: dict[str, list[httpx.Response]] = {
            f"{BASE}/output/patient_file_1.ndjson": [httpx.Response(200, content=ndjson(PATIENTS_1))],
            f"{BASE}/output/patient_file_2.ndjson": [httpx.Response(200, content=ndjson(PATIENTS_2))],
            f"{BASE}/output/observation_file_1.ndjson": [httpx.Response(200, content=b"")],
            f"{BASE}/output/err_file_1.ndjson": [httpx.Response(200, content=fixture("err_file_1.ndjson"))],
        }
        self.kickoffs = 0
        self.tokens: list[dict[str, str]] = []

    def count(self, method: str, url_part: str) -> int:
        return sum(1 for m, u in self.calls if m == method and url_part in u)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url.copy_with(query=None))
        self.calls.append((request.method, str(request.url)))
        if url.endswith("/.well-known/smart-configuration"):
            assert "authorization" not in request.headers, "discovery is sent without credentials"
            return httpx.Response(200, json=self.smart) if self.smart else httpx.Response(404)
        if request.method == "POST" and url.endswith("/token"):
            form = dict(httpx.QueryParams(request.content.decode()))
            self.tokens.append({"url": url, **form})
            return httpx.Response(200, json={"access_token": "tok", "token_type": "Bearer", "expires_in": 300})
        if url.endswith("/metadata"):
            resources = [{"type": t, "interaction": [{"code": "read"}]} for t in ("Patient", "Observation")]
            return httpx.Response(
                200, json={"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "resource": resources}]}
            )
        if url.endswith("/$export"):
            self.kickoffs += 1
            assert request.headers["prefer"] == "respond-async" and request.headers["accept"] == "application/fhir+json"
            if self.kickoff is not None:
                return self.kickoff
            return httpx.Response(202, headers={"Content-Location": STATUS})
        if url == STATUS and request.method == "DELETE":
            return httpx.Response(202)
        if url == STATUS:
            return self.status.pop(0) if len(self.status) > 1 else self.status[0]
        if url in self.files:
            answers = self.files[url]
            return answers.pop(0) if len(answers) > 1 else answers[0]
        return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": [{"code": "not-found"}]})


def make(
    server: FakeBulkServer, tmp: Path, sleeps: list[float] | None = None, **extra: Any
) -> tuple[FhirBulkChannel, WellSkyClient]:
    config = WellSkyConfig.load(
        {
            "base_url": BASE,
            "auth_method": "oauth_client_credentials",
            "client_id": "bulk-client",
            "client_secret": "bulk-secret",
            "product": "home_health",
            "source": "fhir_bulk",
            "fhir_bulk_job_dir": str(tmp / "jobs"),
            "max_requests_per_second": 0,
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.02,
            **extra,
        },
        env={},
    )
    record: Callable[[float], None] = sleeps.append if sleeps is not None else (lambda _: None)
    client = WellSkyClient(config, sleep=record)
    client._http._transport = httpx.MockTransport(server)  # no network: the fake server answers
    client._http._mounts = {}
    channel = open_channel("fhir_bulk", config, client, "home_health")
    assert isinstance(channel, FhirBulkChannel)
    return channel, client


def test_the_igs_manifest_end_to_end(tmp_path: Path) -> None:
    server = FakeBulkServer()
    sleeps: list[float] = []
    dead = tmp_path / "dead.jsonl"
    channel, client = make(server, tmp_path, sleeps, dead_letter_path=str(dead))
    records = list(channel.iter_records("patients", None))
    assert sorted(r["id"] for r in records) == ["p1", "p2", "p3", "p4", "p5"]
    assert {r["last_name"] for r in records} == {"Shaw", "Lee"} and records[0]["updated_at"] == "2020-12-01T10:00:00Z"
    assert str(channel.resume_point("patients")) == "2021-01-01 00:00:00+00:00"  # the manifest's transactionTime
    assert sleeps == [2.0], "the status URL's Retry-After was honoured"
    kick = next(u for m, u in server.calls if u.split("?")[0].endswith("/$export"))
    assert "_type=Patient" in kick and "_since" not in kick
    assert server.count("GET", "observation_file_1") == 0, "a type the export was not asked for is not downloaded"
    assert server.count("DELETE", "/status/job-1") == 1, "the job is deleted once its files are in"
    assert channel.export_issues == 2
    outcomes = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [o["payload"]["id"] for o in outcomes] == ["1", "2"]
    assert "processing" in outcomes[0]["reason"] and "An internal timeout" not in outcomes[0]["reason"]
    channel.close()
    client.close()
    assert not list((tmp_path / "jobs").glob("*/job.json")), "a finished run removes its spool"


def test_an_export_error_file_leaves_only_codes_in_the_dead_letters(tmp_path: Path, caplog: Any) -> None:
    """An error file is server text (issue 24 #1): its OperationOutcomes may name a patient. The dead letter keeps
    the outcome's id, and each issue's severity and allow-listed code; diagnostics, details and expressions stay
    out, like everywhere else."""
    phi = "Patient Jane Q Okonkwo (MRN 00482913, DOB 1950-03-04, SSN 123-45-6789, phone 303-555-0147) not exported"
    outcomes = [
        {"resourceType": "OperationOutcome", "id": "e1", "issue": [
            {"severity": "error", "code": "processing", "diagnostics": phi, "details": {"text": phi},
             "expression": [f"Patient.name.where(family='{phi}')"], "location": [phi]}]},
        {"resourceType": "OperationOutcome", "id": phi, "issue": [{"severity": phi, "code": phi}]},
    ]
    server = FakeBulkServer()
    server.files[f"{BASE}/output/err_file_1.ndjson"] = [
        httpx.Response(200, content=b"\n".join(json.dumps(o).encode() for o in outcomes))
    ]
    dead = tmp_path / "dead.jsonl"
    channel, client = make(server, tmp_path, dead_letter_path=str(dead))
    with caplog.at_level("DEBUG"):
        assert len(list(channel.iter_records("patients", None))) == 5
    channel.close()
    client.close()
    text = dead.read_text() + caplog.text
    for value in ("Okonkwo", "00482913", "1950-03-04", "123-45-6789", "555-0147"):
        assert value not in text, f"{value} reached the dead letters or the log"
    letters = [json.loads(line)["payload"] for line in dead.read_text().splitlines()]
    assert letters == [
        {"resourceType": "OperationOutcome", "id": "e1", "issue": [{"severity": "error", "code": "processing"}]},
        {"resourceType": "OperationOutcome", "issue": [{"severity": None, "code": "unlisted_code"}]},
    ]


def test_retry_after_every_spelling() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("5", now=now) == 5.0
    assert parse_retry_after("0.25", now=now) == 0.25
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(str(int(now) + 45), now=now) == 45.0  # absolute epoch seconds (reference server)
    assert parse_retry_after(str(int(now * 1000) + 60_000), now=now) == 60.0  # absolute epoch milliseconds
    assert parse_retry_after(str(int(now) - 10), now=now) == 0.0  # an epoch in the past: poll now
    assert parse_retry_after("soon", now=now) is None and parse_retry_after(None) is None


def test_polling_caps_absolute_waits_and_counts_transient_errors(tmp_path: Path) -> None:
    server = FakeBulkServer()
    far_future_ms = str((2**41) * 1000)  # an absolute epoch far away: must be capped, never slept through
    server.status = [
        httpx.Response(202, headers={"Retry-After": far_future_ms, "X-Progress": "building"}),
        httpx.Response(503, json={"error": "busy"}, headers={"Retry-After": "1"}),
        httpx.Response(500, content=fixture("transient.json")),
        httpx.Response(202),  # no Retry-After: the channel's own backoff
        httpx.Response(200, content=fixture("manifest.json")),
    ]
    sleeps: list[float] = []
    channel, client = make(server, tmp_path, sleeps)
    assert len(list(channel.iter_records("patients", None))) == 5
    assert sleeps[0] == 120.0 and sleeps[1] == 1.0 and len(sleeps) == 4 and 0 < sleeps[3] <= 30
    assert client.metrics.snapshot()["retries_by_reason"] == {"503": 1, "500": 1}
    channel.close()
    client.close()


def test_a_refused_kickoff_names_the_servers_reason(tmp_path: Path) -> None:
    server = FakeBulkServer()
    server.kickoff = httpx.Response(
        400, content=fixture("kickoff-error.json"), headers={"Content-Type": "application/fhir+json"}
    )
    channel, client = make(server, tmp_path, fhir_bulk_type_filter=["Observation?code=8867-4"])
    with pytest.raises(RemoteError) as info:
        list(channel.iter_records("patients", None))
    assert info.value.status == 400 and info.value.code == "processing"
    assert "_typeFilter parameter is not supported" not in str(info.value), "server text stays out of errors"
    kick = next(u for m, u in server.calls if "$export" in u)
    assert "_typeFilter=Observation%3Fcode%3D8867-4" in kick
    channel.close()
    client.close()


def test_a_failed_job_is_an_error_with_the_outcome(tmp_path: Path) -> None:
    server = FakeBulkServer()
    server.status = [httpx.Response(500, content=fixture("job-failed.json"))]
    channel, client = make(server, tmp_path)
    with pytest.raises(RemoteError) as info:
        list(channel.iter_records("patients", None))
    assert info.value.status == 500 and "storage quota exceeded" not in str(info.value)
    assert "failed on the server" in str(info.value)
    assert server.count("GET", "/status/") == 1, "a failed job is not polled again"
    channel.close()
    client.close()
    left = [p.name for p in (tmp_path / "jobs").iterdir()]
    assert left == ["run.lock"], f"a job that cannot be resumed leaves no spool behind (only the run lock): {left}"


def test_gzip_as_content_encoding_and_as_a_gz_body(tmp_path: Path) -> None:
    server = FakeBulkServer()
    server.files[f"{BASE}/output/patient_file_1.ndjson"] = [
        httpx.Response(200, content=gzip.compress(ndjson(PATIENTS_1)), headers={"Content-Encoding": "gzip"})
    ]
    server.files[f"{BASE}/output/patient_file_2.ndjson"] = [
        httpx.Response(200, content=gzip.compress(ndjson(PATIENTS_2)), headers={"Content-Type": "application/gzip"})
    ]
    channel, client = make(server, tmp_path)
    assert sorted(r["id"] for r in channel.iter_records("patients", None)) == ["p1", "p2", "p3", "p4", "p5"]
    channel.close()
    client.close()


def test_truncated_and_failing_files_are_downloaded_again(tmp_path: Path) -> None:
    server = FakeBulkServer()
    whole = ndjson(PATIENTS_1)
    manifest = json.loads(fixture("manifest.json"))
    manifest["output"][0]["count"] = 3
    server.status = [httpx.Response(200, json=manifest)]
    server.files[f"{BASE}/output/patient_file_1.ndjson"] = [
        httpx.Response(200, content=whole[: len(whole) // 2]),  # cut mid-line: not JSON
        httpx.Response(200, content=whole[: whole.index(b"\n") + 1]),  # cut at a line end: count says 1 of 3
        httpx.Response(200, content=gzip.compress(whole)[:40], headers={"Content-Encoding": "gzip"}),
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(200, content=whole),
    ]
    sleeps: list[float] = []
    channel, client = make(server, tmp_path, sleeps)
    assert len(list(channel.iter_records("patients", None))) == 5
    assert server.count("GET", "patient_file_1") == 5 and 3.0 in sleeps
    assert client.metrics.snapshot()["retries_by_reason"]["download"] == 4
    channel.close()
    client.close()


def test_kill_then_resume_downloads_only_unfinished_files(tmp_path: Path) -> None:
    server = FakeBulkServer()
    server.files[f"{BASE}/output/patient_file_2.ndjson"] = [httpx.Response(403, json={"error": "forbidden"})]
    channel, client = make(server, tmp_path, fhir_bulk_parallel_downloads=1)  # file 1 surely finishes first
    with pytest.raises(RemoteError):
        list(channel.iter_records("patients", None))
    channel.close()
    client.close()
    assert server.kickoffs == 1 and server.count("DELETE", "/status/") == 0
    server.files[f"{BASE}/output/patient_file_2.ndjson"] = [httpx.Response(200, content=ndjson(PATIENTS_2))]
    before = Counter(u.rsplit("/", 1)[-1] for m, u in server.calls if m == "GET")
    channel, client = make(server, tmp_path)
    assert len(list(channel.iter_records("patients", None))) == 5
    after = Counter(u.rsplit("/", 1)[-1] for m, u in server.calls if m == "GET")
    assert server.kickoffs == 1, "the same job was resumed"
    assert after["patient_file_1.ndjson"] == before["patient_file_1.ndjson"], "a finished file was fetched again"
    assert after["patient_file_2.ndjson"] == before["patient_file_2.ndjson"] + 1
    assert after["job-1"] == before["job-1"], "the saved manifest is used, the status URL is not polled again"
    channel.close()
    client.close()


def test_an_expired_job_is_exported_again(tmp_path: Path) -> None:
    server = FakeBulkServer()
    server.files[f"{BASE}/output/patient_file_2.ndjson"] = [
        httpx.Response(404, content=fixture("kickoff-error.json")),
        httpx.Response(200, content=ndjson(PATIENTS_2)),
    ]
    server.status = [httpx.Response(200, content=fixture("manifest.json"))]
    channel, client = make(server, tmp_path)
    assert len(list(channel.iter_records("patients", None))) == 5
    assert server.kickoffs == 2 and server.count("GET", "patient_file_1") == 2
    channel.close()
    client.close()


def test_files_on_another_host(tmp_path: Path) -> None:
    manifest = json.loads(fixture("manifest.json"))
    for item in manifest["output"]:
        item["url"] = item["url"].replace(BASE, "https://files.example.net")
    manifest["error"] = []
    server = FakeBulkServer()
    server.status = [httpx.Response(200, json=manifest)]
    channel, client = make(server, tmp_path)
    with pytest.raises(RemoteError, match="another host"):
        list(channel.iter_records("patients", None))
    channel.close()
    client.close()

    manifest["requiresAccessToken"] = False  # presigned URLs: fetched, but never with the token
    server = FakeBulkServer()
    server.status = [httpx.Response(200, json=manifest)]
    for i, rows in ((1, PATIENTS_1), (2, PATIENTS_2)):
        server.files[f"https://files.example.net/output/patient_file_{i}.ndjson"] = [
            httpx.Response(200, content=ndjson(rows))
        ]
    seen: list[httpx.Request] = []
    inner = server.__call__

    def spy(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return inner(request)

    channel, client = make(server, tmp_path / "fresh")  # the refused run above keeps its job for resuming
    client._http._transport = httpx.MockTransport(spy)
    assert len(list(channel.iter_records("patients", None))) == 5
    foreign = [r for r in seen if r.url.host == "files.example.net"]
    assert foreign and all("authorization" not in r.headers for r in foreign)
    channel.close()
    client.close()


def test_smart_discovery_points_the_assertion_at_the_token_endpoint(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    server = FakeBulkServer()
    server.smart = {
        "token_endpoint": f"{BASE}/auth/token",
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "capabilities": ["client-confidential-asymmetric"],
    }
    jwt_settings = {
        "auth_method": "oauth_private_key_jwt",
        "client_id": "bulk-client",
        "private_key": pem,
        "private_key_id": "kid-1",
        "client_secret": None,
    }
    channel, client = make(server, tmp_path, **jwt_settings)
    assert len(list(channel.iter_records("patients", None))) == 5
    (token,) = server.tokens
    assert token["url"] == f"{BASE}/auth/token" and token["grant_type"] == "client_credentials"
    claims = jwt.decode(token["client_assertion"], options={"verify_signature": False})
    header = jwt.get_unverified_header(token["client_assertion"])
    assert claims["aud"] == f"{BASE}/auth/token" and claims["iss"] == claims["sub"] == "bulk-client"
    assert header["alg"] == "RS384" and header["kid"] == "kid-1"
    channel.close()
    client.close()

    server.smart["token_endpoint_auth_signing_alg_values_supported"] = ["ES384"]
    channel, client = make(server, tmp_path, **jwt_settings)
    with pytest.raises(ConfigError) as info:
        list(channel.iter_records("patients", None))
    assert info.value.field == "jwt_algorithm" and "ES384" in str(info.value)
    channel.close()
    client.close()


@pytest.mark.parametrize(
    "endpoint", ["https://collector.example.net/token", "https://example.com:8443/token", "http://example.com/token"]
)
def test_a_foreign_token_endpoint_is_refused_with_one_line(tmp_path: Path, endpoint: str) -> None:
    """SMART discovery's token_endpoint replaces the default token URL only on a trusted origin (https): another
    host, port or plain http would receive the client secret."""
    server = FakeBulkServer()
    server.smart = {"token_endpoint": endpoint, "token_endpoint_auth_methods_supported": ["client_secret_post"]}
    channel, client = make(server, tmp_path)
    with pytest.raises(ConfigError) as info:
        list(channel.iter_records("patients", None))
    assert info.value.field == "token_url" and "\n" not in str(info.value)
    assert "trusted_origins" in str(info.value) and "another origin" in str(info.value)
    assert server.tokens == [] and not [u for _, u in server.calls if "collector" in u or ":8443" in u]
    channel.close()
    client.close()

    trusted = "https://collector.example.net"
    server = FakeBulkServer()
    server.smart = {"token_endpoint": f"{trusted}/token"}
    channel, client = make(server, tmp_path / "trusted", trusted_origins=[trusted])
    if endpoint.startswith(trusted):
        assert len(list(channel.iter_records("patients", None))) == 5, "an origin the operator trusts is used"
        assert server.tokens[0]["url"] == f"{trusted}/token"
    channel.close()
    client.close()


def test_the_poll_timeout_is_a_clear_error_and_keeps_the_job(tmp_path: Path) -> None:
    server = FakeBulkServer()
    server.status = [httpx.Response(202, headers={"Retry-After": "0.02", "X-Progress": "still working"})]
    config_timeout = 0.15
    channel, client = make(server, tmp_path, fhir_bulk_poll_timeout_seconds=config_timeout)
    client._sleep = __import__("time").sleep  # real waits: the deadline is wall-clock
    with pytest.raises(WellSkyTransportError) as info:
        list(channel.iter_records("patients", None))
    assert "fhir_bulk_poll_timeout_seconds=0.15" in str(info.value) and info.value.reason == "poll_timeout"
    channel.close()
    client.close()
    saved = json.loads(next((tmp_path / "jobs").glob("*/job.json")).read_text())
    assert saved["status_url"] == STATUS and saved["manifest"] is None, "the next run resumes this job"


def test_settings_are_validated() -> None:
    base = {"base_url": BASE, "username": "u", "password": "p"}
    with pytest.raises(ConfigError) as info:
        WellSkyConfig.load({**base, "fhir_bulk_level": "group"}, env={})
    assert info.value.field == "fhir_bulk_group_id"
    with pytest.raises(ConfigError) as info:
        WellSkyConfig.load({**base, "fhir_bulk_type_filter": ["status=finished"]}, env={})
    assert info.value.field == "fhir_bulk_type_filter"
    loaded = WellSkyConfig.load(
        {**base}, env={"WELLSKY_FHIR_BULK_TYPE_FILTER": '["Encounter?status=finished","Patient?_lastUpdated=ge2026"]'}
    )
    assert loaded.fhir_bulk_type_filter == ["Encounter?status=finished", "Patient?_lastUpdated=ge2026"]


def test_an_unreachable_server_names_base_url(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = WellSkyConfig.load(
        {"base_url": f"http://127.0.0.1:{port}", "username": "u", "password": "p", "fhir_bulk_job_dir": str(tmp_path)},
        env={},
    )
    with WellSkyClient(config) as client:
        channel = open_channel("fhir_bulk", config, client, "home_health")
        with pytest.raises(WellSkyTransportError) as info:
            channel.discover()
        assert info.value.reason == "connect" and "base_url" in str(info.value)


def test_the_download_logs_progress_against_the_manifest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 28 item 6: the manifest is the plan, so the download line carries done/total files (and an ETA)."""
    caplog.set_level("INFO", logger="wellsky_core.channels.fhir_bulk.download")
    channel, client = make(FakeBulkServer(), tmp_path, None, dead_letter_path=str(tmp_path / "dead.jsonl"))
    list(channel.iter_records("patients", None))
    channel.close()
    client.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bulk export: downloading")]
    assert lines, caplog.text
    last = re.search(r", (\d+)/(\d+) files \((\d+)%\)", lines[-1])
    assert last is not None and last.group(1) == last.group(2) and int(last.group(2)) >= 2 and last.group(3) == "100"
