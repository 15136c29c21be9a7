"""Transport against a real sandbox: retries under injected faults, Retry-After, budget, pagination, rate limit."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from wellsky_core.channels.fhir import fhir_bundles
from wellsky_core.channels.rest import rest_pages
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import RemoteError, WellSkyTransportError
from wellsky_core.http.client import WellSkyClient
from wellsky_core.http.policy import parse_retry_after

FAST = {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05, "max_requests_per_second": 0}


def config(sb, **extra) -> WellSkyConfig:
    base = {"base_url": sb.base_url, "username": sb.username, "password": sb.password, **FAST}
    return WellSkyConfig.load({**base, **extra}, env={})


def visit_ids(client: WellSkyClient, **params) -> list[str]:
    return [rec["visitId"] for page in rest_pages(client, "/appointments", params) for rec in page]


@pytest.fixture
def tenant(sandbox_factory):
    return sandbox_factory(scale=100, sftp_port=None)


def test_unreachable_url_fails_fast_naming_base_url():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = WellSkyConfig.load(
        {"base_url": f"http://127.0.0.1:{port}", "username": "u", "password": "p", "max_retries": 6}, env={}
    )
    start = time.monotonic()
    with pytest.raises(WellSkyTransportError) as info, WellSkyClient(cfg) as client:
        client.get_json("/tenant")
    assert time.monotonic() - start < 2
    assert "base_url" in str(info.value) and info.value.reason == "connect"


def test_pagination_is_complete_and_ordered(tenant):
    truth = [r["id"] for r in tenant.truth("appointments")]
    with WellSkyClient(config(tenant)) as client:
        ids = visit_ids(client, limit=25)
        assert ids == truth
        snap = client.metrics.snapshot()
        assert snap["pages"] == -(-len(truth) // 25) and snap["records"] == len(truth)
        assert snap["retries"] == 0 and snap["bytes"] > 0


def test_retries_under_faults_match_the_sandbox_counters(tenant, caplog):
    """Every injected 5xx, 429, dropped connection and truncated page is retried exactly once, and logged."""
    truth = [r["id"] for r in tenant.truth("appointments")]
    tenant.set_faults("error=0.15,429=0.1,reset=0.08,malformed=0.08,retry_after=0,seed=11")
    caplog.set_level(logging.WARNING, logger="wellsky_core.http.client")
    with WellSkyClient(config(tenant, max_retries=12)) as client:
        ids = visit_ids(client, limit=20) + visit_ids(client, limit=50)
        retries = client.metrics.retries
    assert ids == truth + truth, "no page lost or repeated"
    faults = tenant.stats()["faults"]
    fired = {k: faults.get(k, 0) for k in ("500", "502", "503", "429", "reset", "malformed")}
    assert fired["429"] and fired["reset"] and fired["malformed"] and fired["500"] + fired["502"] + fired["503"], fired
    for status in ("500", "502", "503"):
        assert retries.get(status, 0) == faults.get(status, 0)
    assert retries.get("429", 0) == faults.get("429", 0)
    assert retries.get("connection", 0) == faults.get("reset", 0)
    assert retries.get("malformed", 0) == faults.get("malformed", 0)
    lines = [r.getMessage() for r in caplog.records if r.name == "wellsky_core.http.client"]
    assert len(lines) == sum(retries.values())
    assert all("cursor=***" in line or "cursor" not in line for line in lines)


def test_retry_after_is_honoured(tenant):
    tenant.set_faults("429=1.0,retry_after=1")
    with WellSkyClient(config(tenant, max_retries=1)) as client:
        client.get_json("/tenant")  # log in first: /tenant is not a faulted data endpoint
        start = time.monotonic()
        with pytest.raises(WellSkyTransportError) as info:
            client.get_json("/patients", {"limit": 5, "mrn": "MRN-SECRET-1"})
        waited = time.monotonic() - start
    assert 0.95 <= waited < 2.0, f"waited {waited:.2f}s for Retry-After: 1 (backoff alone would be < 0.05 s)"
    err = info.value
    assert (err.status, err.attempts) == (429, 2)
    assert err.url.endswith("/patients?limit=***&mrn=***") and "MRN-SECRET-1" not in str(err)


def test_retry_after_http_date():
    now = 1_800_000_000.0
    assert parse_retry_after("Fri, 15 Jan 2027 08:00:03 GMT", now=1_800_000_000.0) is not None
    from email.utils import formatdate

    assert parse_retry_after(formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7, abs=1)
    assert parse_retry_after("3") == 3 and parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_retry_budget_exhausted(tenant):
    tenant.set_faults("error=1.0,retry_after=0")
    with WellSkyClient(config(tenant, max_retries=3)) as client:
        client.get_json("/tenant")
        with pytest.raises(WellSkyTransportError) as info:
            client.get_json("/patients")
        assert sum(client.metrics.retries.values()) == 3
    assert info.value.attempts == 4 and info.value.status in (500, 502, 503)
    assert "/patients" in str(info.value) and "max_retries" in str(info.value)
    assert tenant.stats()["faults_total"] == 4


def test_always_truncated_page_raises_naming_the_path(tenant):
    tenant.set_faults("malformed=1.0")
    with WellSkyClient(config(tenant, max_retries=2)) as client, pytest.raises(RemoteError) as info:
        client.get_json("/appointments", {"limit": 10})
    assert info.value.code == "malformed_json" and "/appointments" in str(info.value)


def test_client_errors_are_not_retried(tenant):
    with WellSkyClient(config(tenant)) as client:
        with pytest.raises(RemoteError) as info:
            client.get_json("/patients", {"limit": 5000})
        assert info.value.status == 400 and info.value.code == "invalid_parameter"
        assert info.value.fix, "the error says what to do, in our words (never the server's text)"
        with pytest.raises(RemoteError) as info:
            client.get_json("/no-such-thing")
        assert info.value.status == 404
        response = client.request("GET", "/patients/HH-P999999", expected=(404,))
        assert response.status_code == 404
        assert client.metrics.retries == {}


def test_session_expiry_mid_pagination_loses_and_repeats_nothing(tenant):
    truth = [r["id"] for r in tenant.truth("appointments")]
    with WellSkyClient(config(tenant)) as client:
        ids: list[str] = []
        for n, page in enumerate(rest_pages(client, "/appointments", {"limit": 30})):
            ids.extend(rec["visitId"] for rec in page)
            if n in (1, 5, 9):
                tenant.set_tenant(expire_sessions=True)
        assert ids == truth
        assert client.metrics.reauths == 3 and client.auth.logins == 4


def test_early_expiry_fault_every_n_requests(tenant):
    tenant.set_faults("expire_every=4")
    truth = [r["id"] for r in tenant.truth("appointments")]
    with WellSkyClient(config(tenant)) as client:
        assert visit_ids(client, limit=25) == truth
        assert client.metrics.reauths == tenant.stats()["faults"]["expire"] >= 3


def test_rate_limiter_keeps_requests_per_second_under_the_limit(tenant):
    """20/s over real HTTP: the first 20 requests (the login and /tenant among them) go at once and the rest wait
    for the slots freed 1/0.95 s later. Only lower bounds here (a loaded machine can only make it slower); the
    exact slots and the tenant-second guarantee are tested on a fake clock in test_ratelimit.py."""
    with WellSkyClient(config(tenant, max_requests_per_second=20)) as client:
        client.get_json("/tenant")
        start = time.monotonic()
        for _ in range(30):
            client.get_json("/patients", {"limit": 1})
        elapsed = time.monotonic() - start
        sent = client.metrics.snapshot()["requests"]
        waited = client.metrics.snapshot()["rate_limit_wait_seconds"]
    assert sent >= 31
    assert elapsed >= 1.0, f"{sent} requests at 20/s took only {elapsed:.2f}s"
    assert waited > 1.0


def test_fhir_bundles_follow_next_links(tenant):
    with WellSkyClient(config(tenant)) as client:
        bundles = list(fhir_bundles(client, "/fhir/Patient", {"_count": 30}))
    entries = [e["resource"]["id"] for b in bundles for e in b.get("entry", [])]
    assert len(bundles) >= 4 and len(entries) == len(set(entries)) == len(tenant.truth("patients"))
