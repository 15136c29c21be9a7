"""The audit log is the truth about what reached the server (issue 16 #7).

Before: writes that other workers had sent when one write aborted the run were never logged (``pool.map``
stopped accounting at the failure), the write the run stopped on left no trace although it had been sent, and
an idempotent replay was logged as ``created``. Now every server-side create appears once as ``created`` (or as
``failed`` when its answer was lost, with the key it carried), and replays as ``replayed``. Real target
subprocesses, a loopback wire proxy (``proxy.py``) and the tenant's own audit log as the oracle.
"""

from __future__ import annotations

from collections import Counter

from tests.target.helpers import bookable_appointments, new_patients, singer_lines
from wellsky_core.jsonl import JsonlAppender

from .conftest import assert_no_traceback, run_target_cli
from .proxy import Exchange, WireProxy


def _config(base_url: str, sb, tmp_path, **extra) -> dict:
    return {
        "base_url": base_url,
        "username": sb.username,
        "password": sb.password,
        "max_requests_per_second": 0,
        "audit_log_path": str(tmp_path / "audit.jsonl"),
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.02,
        **extra,
    }


def _server_created(sb, keys: set[str]) -> Counter[str]:
    return Counter(
        e["idempotency_key"] for e in sb.audit() if e["action"] == "created" and e["idempotency_key"] in keys
    )


def test_an_aborted_run_logs_every_write_its_workers_sent(small_tenant, tmp_path):
    sb = small_tenant
    patients = new_patients(sb, 16, prefix="ABORT")
    creates = {"n": 0}

    def lose_fifth_answer(exchange: Exchange) -> bool:
        if exchange.method == "POST" and exchange.path == "/patients" and exchange.status == 201:
            creates["n"] += 1
            return creates["n"] == 5
        return False

    with WireProxy(sb.base_url, drop=lose_fifth_answer).running() as proxy:
        config = _config(proxy.base_url, sb, tmp_path, max_retries=0, write_concurrency=4)
        proc = run_target_cli(tmp_path, config, "\n".join(singer_lines("patients", patients)) + "\n")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert_no_traceback(proc.stderr, "aborted target")
    audit = JsonlAppender.read(tmp_path / "audit.jsonl")
    sent = {e.idempotency_key for e in proxy.writes("/patients")}
    server = _server_created(sb, sent)
    assert len(server) == len(sent) >= 5, "every create the proxy forwarded was committed"
    logged = Counter((e["idempotency_key"], e["action"]) for e in audit)
    failed = [e for e in audit if e["action"] == "failed"]
    assert len(failed) == 1 and failed[0]["idempotency_key"] in server, "the write the run stopped on is logged"
    for key in server:
        assert logged[(key, "created")] + logged[(key, "failed")] == 1, f"server create {key[:16]} not logged once"
    assert sum(1 for e in audit if e["action"] == "created") == len(server) - 1


def test_replays_and_in_batch_duplicates_are_logged_as_replayed(small_tenant, tmp_path):
    """Two identical bookings without an external id: the second is answered from the tenant's memory."""
    sb = small_tenant
    visit = {k: v for k, v in bookable_appointments(sb, 1, prefix="DUP")[0].items() if k != "external_id"}
    lines = singer_lines("appointments", [visit, dict(visit)])
    proc = run_target_cli(tmp_path, _config(sb.base_url, sb, tmp_path, write_concurrency=1), "\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    audit = JsonlAppender.read(tmp_path / "audit.jsonl")
    assert [e["action"] for e in audit] == ["created", "replayed"]
    key = audit[0]["idempotency_key"]
    assert audit[1]["idempotency_key"] == key
    assert [e["action"] for e in sb.audit() if e["idempotency_key"] == key] == ["created", "replayed"]


def test_key_hash_is_keyed_per_tenant_secret(small_tenant, tmp_path):
    """The audit's key_hash is an HMAC under a per-tenant secret, not a bare SHA-256 of the MRN."""
    import hashlib

    sb = small_tenant
    patient = new_patients(sb, 1, prefix="HMAC")[0]
    lines = "\n".join(singer_lines("patients", [patient])) + "\n"
    run_target_cli(tmp_path, _config(sb.base_url, sb, tmp_path), lines, tag="a")
    run_target_cli(tmp_path, _config(sb.base_url, sb, tmp_path), lines, tag="b")
    entries = JsonlAppender.read(tmp_path / "audit.jsonl")
    assert [e["action"] for e in entries] == ["created", "unchanged"]
    assert entries[0]["key_hash"] == entries[1]["key_hash"], "the kept secret correlates runs"
    assert not entries[0]["key_hash"].startswith(hashlib.sha256(patient["mrn"].encode()).hexdigest()[:16])
    assert oct((tmp_path / "audit.jsonl.key").stat().st_mode & 0o777) == "0o600"
    other = tmp_path / "other"
    other.mkdir()
    run_target_cli(other, _config(sb.base_url, sb, other, audit_hash_secret="tenant-b-secret"), lines)
    assert JsonlAppender.read(other / "audit.jsonl")[0]["key_hash"] != entries[0]["key_hash"]
