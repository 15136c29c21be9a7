"""fhir_bulk against real sandbox tenants over loopback HTTP: full and incremental (``_since``) exports of every
FHIR stream equal the tenant's logical truth, at system, Group and Patient level, with SMART discovery and
private_key_jwt, under injected faults, and through the tap (bookmark = the export's transactionTime)."""

from __future__ import annotations

import http.server
import json
import re
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fhir_only import comparable, without_fhir_only
from tests.tap.helpers import bookmarks, last_state, messages, records_by_stream, run_tap
from tests.waiting import wait_for
from wellsky_core.channels import open_channel
from wellsky_core.channels.fhir_bulk import FhirBulkChannel
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import RemoteError
from wellsky_core.http.client import WellSkyClient
from wellsky_core.models import ENTITIES
from wellsky_core.normalize import fhir as fhir_norm
from wellsky_sandbox.testing import SandboxServer

FHIR_ENTITIES = [e for e in ENTITIES if e in fhir_norm.ENTITY_TYPES]
"""Entities a FHIR resource carries (Home Connect's related persons and locations have none)."""
UNSUPPORTED = {"personal_care": {"care_plans"}, "hospice": {"referrals"}, "home_health": set()}
FAST = {"max_requests_per_second": 0, "backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05}


def canonical(entity: str, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    model = ENTITIES[entity].model
    return {
        r["id"]: comparable(entity, model.model_validate(r).model_dump(mode="json", by_alias=True)) for r in records
    }


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Records by id, without the FHIR-only fields (see ``tests/fhir_only.py``)."""
    out = {r["id"]: without_fhir_only(r) for r in records}
    assert len(out) == len(records), "a record was emitted twice"
    return out


def bulk_config(server: SandboxServer, tmp: Path, **extra: Any) -> WellSkyConfig:
    return WellSkyConfig.load(
        {
            "base_url": server.base_url,
            "auth_method": "oauth_client_credentials",
            "client_id": server.client_id,
            "client_secret": server.client_secret,
            "source": "fhir_bulk",
            "fhir_bulk_job_dir": str(tmp / "bulk-jobs"),
            **FAST,
            **extra,
        },
        env={},
    )


@pytest.fixture
def fast_jobs() -> Callable[[SandboxServer], None]:
    def apply(server: SandboxServer) -> None:
        server.control("POST", "/_sandbox/bulk", json={"delay_seconds": 0.05, "retry_after_seconds": 0})

    return apply


def open_bulk(server: SandboxServer, tmp: Path, **extra: Any) -> tuple[FhirBulkChannel, WellSkyClient]:
    config = bulk_config(server, tmp, **extra)
    client = WellSkyClient(config)
    channel = open_channel("fhir_bulk", config, client, server.product)
    assert isinstance(channel, FhirBulkChannel)
    return channel, client


@pytest.fixture
def tenant(request: pytest.FixtureRequest, sandbox_factory: Callable[..., SandboxServer], fast_jobs) -> SandboxServer:
    server = sandbox_factory(product=request.param, scale=60, sftp_port=None)
    fast_jobs(server)
    return server


@pytest.fixture
def bulk(tenant: SandboxServer, tmp_path: Path) -> Iterator[FhirBulkChannel]:
    channel, client = open_bulk(tenant, tmp_path)
    yield channel
    channel.close()
    client.close()


@pytest.mark.parametrize("tenant", ["home_health", "hospice", "personal_care"], indirect=True)
def test_full_then_incremental_export_of_every_fhir_stream(tenant: SandboxServer, bulk: FhirBulkChannel) -> None:
    exported: dict[str, datetime] = {}
    for entity in ENTITIES:
        if entity not in fhir_norm.ENTITY_TYPES:  # entities no FHIR resource carries (e.g. Home Connect's)
            assert not bulk.supports(entity)
            continue
        if entity in UNSUPPORTED[tenant.product]:
            assert not bulk.supports(entity)
            with pytest.raises(RemoteError, match="source=api"):
                list(bulk.iter_records(entity, None))
            continue
        got = by_id(list(bulk.iter_records(entity, None)))
        want = canonical(entity, tenant.truth(entity))
        assert got == want, entity
        point = bulk.resume_point(entity)
        assert point is not None
        exported[entity] = point
    assert len(set(exported.values())) == 1, "one export job serves every stream"
    jobs = tenant.stats()
    assert jobs["data_requests"] > 0

    since = next(iter(exported.values()))
    changed = tenant.advance(count=60, seed=3)
    assert changed
    for entity in exported:
        fresh = by_id(list(bulk.iter_records(entity, since)))
        # _since is inclusive on the sandbox: exactly the records changed at or after transactionTime
        iso = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert fresh == canonical(entity, tenant.truth(entity, updated_since=iso)), entity
        assert bulk.resume_point(entity) is not None and bulk.resume_point(entity) > since
    assert sum(len(tenant.truth(e, updated_since=since.strftime("%Y-%m-%dT%H:%M:%SZ"))) for e in exported) > 0


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_group_and_patient_level_exports(tenant: SandboxServer, tmp_path: Path) -> None:
    patients = tenant.truth("patients")
    active = {p["id"] for p in patients if p["status"] in ("pending", "active")}
    assert 0 < len(active) < len(patients)
    group, client = open_bulk(tenant, tmp_path, fhir_bulk_level="group", fhir_bulk_group_id="active")
    try:
        assert not group.supports("practitioners")  # not in the patient compartment
        assert set(by_id(list(group.iter_records("patients", None)))) == active
        visits = list(group.iter_records("appointments", None))
        want = {a["id"] for a in tenant.truth("appointments") if a["patient_id"] in active}
        assert {v["id"] for v in visits} == want and want
    finally:
        group.close()
        client.close()
    every, client = open_bulk(tenant, tmp_path, fhir_bulk_level="patient")
    try:
        assert set(by_id(list(every.iter_records("encounters", None)))) == {e["id"] for e in tenant.truth("encounters")}
    finally:
        every.close()
        client.close()
    missing, client = open_bulk(tenant, tmp_path, fhir_bulk_level="group", fhir_bulk_group_id="no-such-group")
    try:
        with pytest.raises(RemoteError) as info:
            list(missing.iter_records("patients", None))
        assert info.value.status == 404 and "Group/no-such-group" in str(info.value)
    finally:
        missing.close()
        client.close()


@pytest.mark.parametrize("tenant", ["hospice"], indirect=True)
def test_type_filter_is_sent_and_a_refused_filter_is_reported(tenant: SandboxServer, tmp_path: Path) -> None:
    truth = tenant.truth("appointments")
    pivot = truth[len(truth) // 2]["updated_at"]
    channel, client = open_bulk(tenant, tmp_path, fhir_bulk_type_filter=[f"Appointment?_lastUpdated=ge{pivot}"])
    try:
        got = by_id(list(channel.iter_records("appointments", None)))
        assert got == canonical("appointments", tenant.truth("appointments", updated_since=pivot))
        assert len(got) < len(truth)
    finally:
        channel.close()
        client.close()
    bad, client = open_bulk(tenant, tmp_path, fhir_bulk_type_filter=["Appointment?status=booked"])
    try:
        with pytest.raises(RemoteError) as info:
            list(bad.iter_records("appointments", None))
        assert info.value.status == 400 and "_typeFilter" in str(info.value)
    finally:
        bad.close()
        client.close()


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_smart_discovery_and_private_key_jwt(tenant: SandboxServer, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    tenant.control(
        "POST", "/_sandbox/clients", json={"client_id": "bulk-client", "public_key_pem": public, "kid": "k1"}
    )
    config = WellSkyConfig.load(
        {
            "base_url": tenant.base_url,
            "auth_method": "oauth_private_key_jwt",
            "client_id": "bulk-client",
            "private_key": pem,
            "private_key_id": "k1",
            "jwt_algorithm": "ES384",
            "oauth_scopes": "system/*.read",
            "source": "fhir_bulk",
            "fhir_bulk_job_dir": str(tmp_path / "jobs"),
            **FAST,
        },
        env={},
    )
    with WellSkyClient(config) as client:
        channel = open_channel("fhir_bulk", config, client, tenant.product)
        smart = channel.discover()
        assert smart is not None and smart["token_endpoint"].endswith("/oauth/token")
        assert client.auth.token_url == smart["token_endpoint"]  # type: ignore[attr-defined]
        got = by_id(list(channel.iter_records("coverage", None)))
        assert got == canonical("coverage", tenant.truth("coverage"))
        channel.close()


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_survives_faults_and_leaves_no_job_behind(tenant: SandboxServer, tmp_path: Path) -> None:
    tenant.set_faults("error=0.12,429=0.08,reset=0.08,malformed=0.1,retry_after=0,seed=5")
    tenant.control("POST", "/_sandbox/bulk", json={"file_max_resources": 40})  # many files, many chances to fail
    channel, client = open_bulk(tenant, tmp_path, max_retries=10)
    try:
        for entity in ("patients", "appointments", "encounters"):
            assert by_id(list(channel.iter_records(entity, None))) == canonical(entity, tenant.truth(entity)), entity
        assert client.metrics.snapshot()["retries"] > 0
    finally:
        channel.close()
        client.close()
    tenant.set_faults(None)
    assert not list((tmp_path / "bulk-jobs").glob("*/job.json")), "a finished run removes its spool"
    jobs = Path(tenant.data_dir) / "bulk"
    assert not [p for p in jobs.iterdir() if (p / "job.json").exists()], "every server job was DELETEd"


@pytest.mark.parametrize("tenant", ["personal_care"], indirect=True)
def test_a_killed_run_downloads_only_the_unfinished_files(tenant: SandboxServer, tmp_path: Path) -> None:
    tenant.control("POST", "/_sandbox/bulk", json={"file_max_resources": 50})
    first, client = open_bulk(tenant, tmp_path)
    original = first.downloader.fetch_file
    calls: list[str] = []

    started: list[str] = []

    def dies_on_the_third(job, url, *args, **kw):  # type: ignore[no-untyped-def]
        started.append(url)
        if len(started) == 3:
            raise KeyboardInterrupt  # the process is killed mid-download
        original(job, url, *args, **kw)
        calls.append(url)  # finished

    first.downloader.fetch_file = dies_on_the_third  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        list(first.iter_records("appointments", None))
    first.close()
    client.close()
    assert list((tmp_path / "bulk-jobs").glob("*/job.json")), "the job file survives the kill"

    second, client = open_bulk(tenant, tmp_path)
    fetched: list[str] = []
    original2 = second.downloader.fetch_file

    def spy(job, url, *args, **kw):  # type: ignore[no-untyped-def]
        fetched.append(url)
        return original2(job, url, *args, **kw)

    second.downloader.fetch_file = spy  # type: ignore[method-assign]
    try:
        got = by_id(list(second.iter_records("appointments", None)))
        assert got == canonical("appointments", tenant.truth("appointments"))
        assert calls and fetched and not set(fetched) & set(calls), "finished files were downloaded again"
        assert {u.rsplit("/", 2)[-2] for u in fetched} == {u.rsplit("/", 2)[-2] for u in calls}, "same server job"
    finally:
        second.close()
        client.close()


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_an_expired_job_is_started_again(tenant: SandboxServer, tmp_path: Path) -> None:
    first, client = open_bulk(tenant, tmp_path)

    def killed_after_manifest(job):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    first.downloader.download = killed_after_manifest  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        list(first.iter_records("referrals", None))
    first.close()
    client.close()
    (job_file,) = (tmp_path / "bulk-jobs").glob("*/job.json")
    status_url = json.loads(job_file.read_text())["status_url"]
    tenant.control("POST", "/_sandbox/bulk", json={"expiry_seconds": 0})  # the job expires on the server
    with WellSkyClient(bulk_config(tenant, tmp_path)) as probe:
        assert probe.request("GET", status_url, expected=(404,)).status_code == 404
    tenant.control("POST", "/_sandbox/bulk", json={"expiry_seconds": 3600})
    second, client = open_bulk(tenant, tmp_path)
    try:
        assert by_id(list(second.iter_records("referrals", None))) == canonical("referrals", tenant.truth("referrals"))
    finally:
        second.close()
        client.close()


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_export_errors_are_reported_and_a_failed_job_is_an_error(tenant: SandboxServer, tmp_path: Path) -> None:
    tenant.control("POST", "/_sandbox/bulk", json={"error_types": ["Goal"]})
    dead = tmp_path / "dead.jsonl"
    channel, client = open_bulk(tenant, tmp_path, dead_letter_path=str(dead))
    try:
        plans = list(channel.iter_records("care_plans", None))
        assert channel.export_issues > 0
        text = dead.read_text()
        assert "OperationOutcome" in text and "(processing); its text is not kept" in text
        assert "could not be exported" not in text, "the error file's text is the server's: codes only (issue 24)"
        # lenient read: a care plan whose goals the server could not export is emitted with goals empty and
        # each missing goal named in data_quality (never silently shorter)
        with_goals = {p["id"]: p for p in tenant.truth("care_plans") if p["goals"]}
        assert len(plans) == len(tenant.truth("care_plans"))
        for plan in plans:
            if plan["id"] in with_goals:
                assert plan["goals"] == []
                flagged = {f["field"] for f in plan["data_quality"] if f["kind"] == "unresolved_reference"}
                assert flagged == {f"goals.{i}" for i in range(len(with_goals[plan["id"]]["goals"]))}
    finally:
        channel.close()
        client.close()
    tenant.control("POST", "/_sandbox/bulk", json={"error_types": [], "fail_jobs": True})
    channel, client = open_bulk(tenant, tmp_path)
    try:
        with pytest.raises(RemoteError) as info:
            list(channel.iter_records("patients", None))
        assert info.value.status == 500 and "export storage unavailable" not in str(info.value)
    finally:
        channel.close()
        client.close()


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_tap_bookmark_is_the_transaction_time(tenant: SandboxServer, tmp_path: Path) -> None:
    config = {
        **tenant.credentials(),
        "source": "fhir_bulk",
        "fhir_bulk_job_dir": str(tmp_path / "jobs"),
        "max_requests_per_second": 0,
    }
    first = messages(run_tap(tmp_path, config).stdout)
    streams = records_by_stream(first)
    assert {s: len(r) for s, r in streams.items()} == {e: len(tenant.truth(e)) for e in FHIR_ENTITIES}
    marks = bookmarks(last_state(first) or {})
    assert set(marks) == set(FHIR_ENTITIES) and len(set(marks.values())) == 1, marks
    transaction_time = next(iter(marks.values()))
    newest = max(r["updated_at"] for r in streams["appointments"])
    assert transaction_time >= newest

    tenant.advance(count=30, seed=9)
    second = messages(run_tap(tmp_path, config, state=last_state(first)).stdout)
    again = records_by_stream(second)
    for entity in FHIR_ENTITIES:
        want = {r["id"] for r in tenant.truth(entity, updated_since=transaction_time)}
        assert {r["id"] for r in again.get(entity, [])} == want, entity
    assert sum(len(v) for v in again.values()) > 0
    assert all(v > transaction_time for v in bookmarks(last_state(second) or {}).values())


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_sigkilled_tap_resumes_the_same_export(tenant: SandboxServer, tmp_path: Path) -> None:
    """A real SIGKILL mid-download: the next run resumes the job and fetches only the files not yet spooled."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys

    tenant.control("POST", "/_sandbox/bulk", json={"file_max_resources": 25})
    tenant.set_faults("slow=1.0,slow_seconds=0.15")  # every FHIR request takes a while: room to kill mid-way
    jobs = tmp_path / "jobs"
    config = {**tenant.credentials(), "source": "fhir_bulk", "fhir_bulk_job_dir": str(jobs)}
    (tmp_path / "config.json").write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "tap_wellsky.tap", "--config", str(tmp_path / "config.json")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WELLSKY_")}
    with (tmp_path / "first.err").open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)

        def files_spooled() -> int:
            assert proc.poll() is None, "the tap finished before it could be killed"
            for spool in jobs.glob("*/spool-v2.sqlite"):
                try:
                    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=1) as db:
                        found = int(db.execute("SELECT count(*) FROM files").fetchone()[0])
                except sqlite3.Error:
                    continue
                return found if found >= 4 else 0
            return 0

        done = wait_for(files_spooled, timeout=120, what="four bulk files in the spool")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    (job_file,) = jobs.glob("*/job.json")
    manifest = json.loads(job_file.read_text())["manifest"]
    assert manifest is not None and len(manifest["output"]) > done, "killed before every file was in"

    tenant.set_faults(None)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = re.search(r"resuming bulk job: (\d+) file\(s\) already downloaded, (\d+) to go", second.stderr)
    assert resumed and int(resumed[1]) >= done and int(resumed[2]) > 0, second.stderr[-2000:]
    got = records_by_stream(messages(second.stdout))
    assert {s: len(r) for s, r in got.items()} == {e: len(tenant.truth(e)) for e in FHIR_ENTITIES}
    assert not list(jobs.glob("*/job.json")), "the finished run removed its spool"


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A second loopback server (another port: another origin) that records what reaches it."""

    seen: list[tuple[str, str, str | None]] = []

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        self.send_response(202)
        self.send_header("Retry-After", "0")
        self.end_headers()

    do_GET = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def other_origin() -> Iterator[tuple[str, list[tuple[str, str, str | None]]]]:
    seen: list[tuple[str, str, str | None]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _killed_after_manifest(tenant: SandboxServer, tmp_path: Path, entity: str) -> Path:
    first, client = open_bulk(tenant, tmp_path)

    def killed(job: Any) -> None:
        raise KeyboardInterrupt

    first.downloader.download = killed  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        list(first.iter_records(entity, None))
    first.close()
    client.close()
    (job_file,) = (tmp_path / "bulk-jobs").glob("*/job.json")
    return job_file


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_a_planted_job_file_never_sends_the_token_to_another_origin(
    tenant: SandboxServer, tmp_path: Path, other_origin: tuple[str, list[tuple[str, str, str | None]]]
) -> None:
    elsewhere, seen = other_origin
    job_file = _killed_after_manifest(tenant, tmp_path, "referrals")
    job = json.loads(job_file.read_text())
    job.update(status_url=f"{elsewhere}/fhir/bulkstatus/planted", manifest=None)
    job_file.write_text(json.dumps(job))

    second, client = open_bulk(tenant, tmp_path)
    try:
        with pytest.raises(RemoteError) as info:
            list(second.iter_records("referrals", None))
    finally:
        second.close()
        client.close()
    assert info.value.code == "foreign_bulk_url" and "another host or port" in str(info.value)
    assert not [auth for _, _, auth in seen if auth], "no Authorization header reached the other origin"
    assert seen == [], "nothing at all was sent there"
    assert not job_file.exists(), "the planted job cannot be resumed: its directory is wiped"


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_the_spool_and_job_file_are_private(tenant: SandboxServer, tmp_path: Path) -> None:
    job_file = _killed_after_manifest(tenant, tmp_path, "referrals")
    job_dir = job_file.parent
    spool = job_dir / "spool-v2.sqlite"
    assert spool.exists()
    for path in (tmp_path / "bulk-jobs", job_dir):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in job_dir.iterdir():  # job.json, the spool and its -wal/-shm
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name

    second, client = open_bulk(tenant, tmp_path)
    try:
        records = list(second.iter_records("referrals", None))
        assert records
        for path in job_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path.name} while streaming"
    finally:
        second.close()
        client.close()
    assert not job_dir.exists(), "a finished run removes its spool"


def test_the_default_job_root_is_the_tenants_private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wellsky_core.channels.fhir_bulk.spool import job_root

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    config = WellSkyConfig.load(
        {"base_url": "https://agency.example.test/api", "product": "home_health", "username": "u", "password": "p"},
        env={},
    )
    root = job_root(config)
    assert root.is_relative_to(tmp_path / "xdg") and root.name == "fhir-bulk"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and stat.S_IMODE(root.parent.stat().st_mode) == 0o700


def test_a_symlinked_job_root_is_refused_and_prune_never_follows_links(tmp_path: Path) -> None:
    import os

    from wellsky_core.channels.fhir_bulk.spool import job_root, prune
    from wellsky_core.private_files import UnsafePathError

    precious = tmp_path / "precious"
    (precious / "old-job").mkdir(parents=True)
    (precious / "old-job" / "keep.txt").write_text("not ours")
    os.utime(precious / "old-job", (0, 0))
    link = tmp_path / "jobs-link"
    link.symlink_to(precious)
    config = WellSkyConfig.load(
        {"base_url": "https://a.example.test", "username": "u", "password": "p", "fhir_bulk_job_dir": str(link)}, env={}
    )
    with pytest.raises(UnsafePathError):
        job_root(config)
    prune(link)  # a symlinked root: never walked
    assert (precious / "old-job" / "keep.txt").exists()

    root = tmp_path / "jobs"
    root.mkdir(mode=0o700)
    (root / "linked-job").symlink_to(precious / "old-job")
    stale = root / "stale-job"
    stale.mkdir()
    os.utime(stale, (0, 0))
    prune(root)
    assert not stale.exists(), "a real stale job directory is pruned"
    assert (precious / "old-job" / "keep.txt").exists(), "a symlinked job is not followed"


def test_identifier_references_resolve_in_a_bulk_export(
    sandbox_factory: Callable[..., SandboxServer], fast_jobs, tmp_path: Path
) -> None:
    """A US Core server names practitioners by NPI (``Practitioner?identifier=…``). A full export carries the
    Practitioners, so encounters and appointments resolve against the export itself; an incremental (``_since``)
    export holds only what changed, so the rest is looked up by identifier search, batched, once per sync."""
    server = sandbox_factory(product="home_health", scale=60, sftp_port=None, fhir_references="identifier")
    fast_jobs(server)
    channel, client = open_bulk(server, tmp_path)
    try:
        for entity in ("encounters", "appointments", "practitioners"):
            got = by_id(list(channel.iter_records(entity, None)))
            want = canonical(entity, server.truth(entity))
            assert got == want, entity
            assert any(r.get("practitioner_id") or r.get("roles") for r in got.values()), entity
        since = channel.resume_point("encounters")
        assert since is not None
    finally:
        channel.close()
        client.close()
    server.advance(count=40, seed=11)
    iso = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    channel, client = open_bulk(server, tmp_path)  # a new sync: nothing indexed yet
    try:
        fresh = by_id(list(channel.iter_records("encounters", since)))
        assert fresh == canonical("encounters", server.truth("encounters", updated_since=iso))
        assert any(r["practitioner_id"] for r in fresh.values()), "resolved by identifier search"
        assert all(not r["data_quality"] for r in fresh.values())
    finally:
        channel.close()
        client.close()


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_a_second_run_waits_for_the_one_using_the_job_directory_then_stops_in_one_line(
    tenant: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs of one tenant at once resumed the same job and shared its spool; the first to finish DELETEd the
    job and removed the spool under the other. The second now waits for the first (``machine_lock``), and stops
    in one line, without kicking off an export, if the first is still there when the wait ends."""
    from tests.core.holder_process import start_holder
    from wellsky_core.channels.fhir_bulk import channel as bulk_channel
    from wellsky_core.errors import WellSkyError

    channel, client = open_bulk(tenant, tmp_path)
    setup = "from wellsky_core.machine_lock import MachineLock\nlock = MachineLock(target)\nassert lock.acquire(5)"
    first = start_holder(setup, channel.job_root / "run.lock")  # the other run, in its own process
    monkeypatch.setattr(bulk_channel, "JOB_WAIT_SECONDS", 0.3)
    jobs = Path(tenant.data_dir) / "bulk"
    try:
        with pytest.raises(WellSkyError, match="bulk export job directory") as refused:
            list(channel.iter_records("patients", None))
        assert "\n" not in str(refused.value) and "fhir_bulk_job_dir" in str(refused.value)
        assert not jobs.exists() or not [p for p in jobs.iterdir() if (p / "job.json").exists()], "no kick-off"
    finally:
        first.kill()
        first.wait(10)
    assert by_id(list(channel.iter_records("patients", None))) == canonical("patients", tenant.truth("patients"))
    channel.close()
    client.close()
