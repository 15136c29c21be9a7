"""WAN-like sandbox: latency on every request without serializing the server, and the soft rate limit's meter."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from wellsky_sandbox.testing import SandboxServer
from wellsky_sandbox.wan import RateMeter, WanPlan, parse_duration


def test_durations_parse_and_refuse_nonsense() -> None:
    assert parse_duration("150ms") == pytest.approx(0.15)
    assert parse_duration("0.2s") == pytest.approx(0.2)
    assert parse_duration(0.3) == pytest.approx(0.3)
    assert parse_duration("") == 0.0
    for bad in ("fast", "-5ms", "150 minutes"):
        with pytest.raises(ValueError, match="150ms"):
            parse_duration(bad)
    plan = WanPlan.parse("150ms")
    assert plan.latency_seconds == pytest.approx(0.15) and plan.jitter_seconds == pytest.approx(0.03)
    assert WanPlan.parse("150ms", "0ms").jitter_seconds == 0.0


def test_meter_counts_overruns_per_second_only_above_the_limit() -> None:
    meter = RateMeter(3)
    for _ in range(5):
        meter.count()
    snap = meter.snapshot()
    # five counts inside one monotonic second are two overruns, unless the second rolled over in between
    assert snap["requests"] == 5 and snap["overruns"] in (0, 1, 2) and snap["limit_per_second"] == 3
    unlimited = RateMeter(0)
    for _ in range(50):
        unlimited.count()
    assert unlimited.snapshot()["overruns"] == 0 and unlimited.snapshot()["peak_per_second"] >= 1
    with pytest.raises(ValueError, match="requests/s"):
        RateMeter(-1)


def test_latency_delays_every_request_but_the_server_stays_concurrent() -> None:
    with SandboxServer(scale=20, sftp_port=None, latency="400ms", jitter="50ms") as sandbox:
        creds = sandbox.credentials()
        with httpx.Client(base_url=sandbox.base_url, timeout=30) as client:
            assert client.post("/sessions", json={"username": creds["username"], "password": creds["password"]})
            started = time.monotonic()
            assert client.get("/patients", params={"limit": 5}).status_code == 200
            assert time.monotonic() - started >= 0.35  # the delay is a floor, whatever the machine's load
            sandbox.stats()  # control calls are neither delayed nor counted

            def one(_: int) -> int:
                return client.get("/patients", params={"limit": 5}).status_code

            with ThreadPoolExecutor(8) as pool:
                assert set(pool.map(one, range(8))) == {200}
        rate = sandbox.rate()
        assert rate["requests"] == 10  # login + 1 + 8; control calls are not counted
        assert rate["peak_in_flight"] >= 2  # a blocking delay would hold one request at a time
        assert sandbox.stats()["wan"] == {"latency_seconds": 0.4, "jitter_seconds": 0.05}


def test_soft_limit_answers_every_request_and_counts_overruns_for_the_modeled_rest() -> None:
    with SandboxServer(scale=20, sftp_port=None, rate_limit=5) as sandbox:
        creds = sandbox.credentials()
        statuses = set()
        with httpx.Client(base_url=sandbox.base_url, timeout=30) as client:
            client.post("/sessions", json={"username": creds["username"], "password": creds["password"]})
            deadline = time.monotonic() + 60
            while sandbox.rate()["overruns"] == 0 and time.monotonic() < deadline:
                for _ in range(10):
                    statuses.add(client.get("/patients", params={"limit": 1}).status_code)
        rate = sandbox.rate()
        assert statuses == {200}
        assert rate["overruns"] >= 1 and rate["peak_per_second"] > 5 and rate["limit_per_second"] == 5


def test_personal_care_defaults_to_the_documented_limit_and_others_to_none() -> None:
    with SandboxServer(scale=5, product="personal_care", sftp_port=None) as sandbox:
        stats = sandbox.stats()
        assert stats["rate"]["limit_per_second"] == 100 and stats["homeconnect"]["limit_per_second"] == 100
    with SandboxServer(scale=5, sftp_port=None) as sandbox:
        assert sandbox.rate()["limit_per_second"] == 0


def test_cli_refuses_a_bad_latency_naming_the_form() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wellsky_sandbox.cli", "serve", "--scale", "5", "--latency", "soon"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "150ms" in done.stderr
    assert not done.stdout.strip() or "base_url" not in json.loads(done.stdout.splitlines()[0])
