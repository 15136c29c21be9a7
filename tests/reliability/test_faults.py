"""A full tap sync through a tenant having a bad day delivers exactly the clean record set.

The sandbox injects 20% faults on data requests (500/502/503, 429 with ``Retry-After``, connections dropped
mid-response, slow responses, truncated JSON pages) and, on the second request of every stream, kills every
session (an early expiry mid-pagination). The sync must deliver the same records as a clean sync — nothing
lost, nothing repeated — and the client's retry log must match the sandbox's injected-fault counters one for
one (a retry the server did not cause, or a fault the client swallowed, both fail the test).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import httpx

from .conftest import STREAMS, capture_logs, duplicates, record_key, record_set, records, run_tap_inprocess, tap_config

FAULTS = "error=0.12,429=0.03,reset=0.02,slow=0.01,malformed=0.02,retry_after=0,slow_seconds=0.2,seed=20260"
"""20% of data requests fail. Retry-After is 0 s here to keep CI fast; test_transport measures a real wait."""
PAGE_SIZE = 4  # every stream (even the 5 practitioners) spans at least two pages, so every stream sees an expiry
PATH_STREAM = {"/" + s.replace("_", "-"): s for s in STREAMS}


class ExpireUntilUnauthorized:
    """An httpx request hook: from the 2nd data request of each stream on, until that stream has met a 401,
    the server drops every session before the request.

    The hook only *tells the server* to expire its sessions (the sandbox's control API); the client learns
    of it the way it would in production, from a 401 on its next request. "Until it met a 401" because the
    fault middleware answers before authentication: a request answered 500 never sees its expiry, and by the
    time it is retried another stream may already have logged in again.
    """

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox
        self.seen: Counter[str] = Counter()
        self.expired: list[str] = []
        self.unauthorized: Counter[str] = Counter()

    def __call__(self, request: httpx.Request) -> None:
        stream = PATH_STREAM.get(request.url.path)
        if stream is None:
            return
        self.seen[stream] += 1
        if self.seen[stream] >= 2 and not self.unauthorized[stream]:
            self.sandbox.set_tenant(expire_sessions=True)
            self.expired.append(stream)

    def response(self, response: httpx.Response) -> None:
        """A 401 counts for its stream once that stream is past its first request: a 401 on the very first one
        (another stream's expiry, met before this stream paged at all) is no expiry mid-pagination, and the
        stream must still meet its own."""
        stream = PATH_STREAM.get(response.request.url.path)
        if stream is not None and response.status_code == 401 and self.seen[stream] >= 2:
            self.unauthorized[stream] += 1


def test_faulted_sync_delivers_exactly_the_clean_set_and_retries_match_the_sandbox(sandbox_factory, monkeypatch):
    sb = sandbox_factory(scale=100, sftp_port=None)
    config = tap_config(sb, page_size=PAGE_SIZE)

    clean_messages, clean_tap, _ = run_tap_inprocess(config)
    clean = [record_key(s, r) for s, r in records(clean_messages)]
    assert not duplicates(clean) and len(clean) > 1000
    assert clean_tap.connection.metrics.snapshot()["retries"] == 0

    requests_before = sb.stats()["data_requests"]
    sb.set_faults(FAULTS)
    hook = ExpireUntilUnauthorized(sb)
    original_init = httpx.Client.__init__

    def init_with_hook(self: httpx.Client, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.event_hooks["request"].append(hook)
        self.event_hooks["response"].append(hook.response)

    monkeypatch.setattr(httpx.Client, "__init__", init_with_hook)
    with capture_logs("wellsky_core", level=logging.INFO) as logs:
        messages, tap, stderr = run_tap_inprocess(config)
    delivered = [record_key(s, r) for s, r in records(messages)]

    # 1. exactly the clean set: same records, same content, no loss, no duplicate
    assert not duplicates(delivered), f"{sum(duplicates(delivered).values())} records delivered twice"
    assert set(delivered) == set(clean), (
        f"lost {len(set(clean) - set(delivered))}, unexpected {len(set(delivered) - set(clean))}"
    )
    assert record_set(messages) == record_set(clean_messages)

    # 2. every injected fault was met by exactly one retry of the matching kind; 401 replays are the expiries'
    #    own (parallel streams have several requests in flight when a session dies: each replays, any number)
    stats = sb.stats()
    faults = stats["faults"]
    metrics = tap.connection.metrics.snapshot()
    retries = metrics["retries_by_reason"]
    injected = sum(faults.get(k, 0) for k in ("500", "502", "503", "429", "reset", "malformed"))
    faulted_requests = stats["data_requests"] - requests_before
    assert injected >= 0.15 * faulted_requests, f"too few faults to prove anything: {faults} in {faulted_requests}"
    for kind in ("500", "502", "503", "429", "reset", "malformed", "slow"):
        assert faults.get(kind, 0) > 0, f"no {kind} fault fired; change the seed so every kind is exercised"
    for status in ("500", "502", "503", "429"):
        assert retries.get(status, 0) == faults.get(status, 0), (status, retries, faults)
    assert retries.get("malformed", 0) == faults["malformed"], (retries, faults)
    # a dropped connection is the one fault the machine can add on its own: on a loaded CI host a loopback read
    # can time out or a socket die without the sandbox injecting it. Those are retried like any other and may
    # exceed the injected count by a little, never fall short of it (a reset the client swallowed).
    transport = retries.get("connection", 0) + retries.get("timeout", 0)
    machine_made = transport - faults["reset"]
    assert 0 <= machine_made <= 2, (retries, faults)
    replays_401 = retries.get("401", 0)
    assert metrics["retries"] - replays_401 - machine_made == injected, "a retry without a fault (slow: none)"

    # 3. one early expiry per stream, mid-pagination; each expiry costs at most one re-login (threads that meet
    #    the same expiry share one), and every stream met its 401 and went on
    assert set(hook.expired) == set(STREAMS)
    assert 1 <= metrics["reauths"] <= len(hook.expired), metrics
    assert set(hook.unauthorized) == set(STREAMS), f"streams without a 401: {set(STREAMS) - set(hook.unauthorized)}"
    assert sum(hook.unauthorized.values()) >= len(STREAMS)

    print(f"FIGURES faults: {stats['data_requests'] - requests_before} data requests, {injected} faults injected "
          f"and survived {dict(faults)}, {len(hook.expired)} early expiries, {metrics['reauths']} re-logins, "
          f"{sum(hook.unauthorized.values())} 401s, {machine_made} machine-made transport retries, retries {retries}")

    # 4. the retry log says what happened, one line per retry
    retry_lines = [line for line in logs.lines if line.startswith("wellsky_core.http.client: retrying")]
    assert len(retry_lines) == injected + replays_401 + machine_made
    assert f"{injected + replays_401 + machine_made} retries" in stderr and f"{metrics['reauths']} re-logins" in stderr


def test_one_session_expiry_under_parallel_streams_costs_one_relogin(sandbox_factory, monkeypatch):
    """Eight streams in flight when the server drops every session: one re-login, the others replay with it.

    Any number of 401s (one per request in flight) is fine; the records stay exactly the clean set.
    """
    sb = sandbox_factory(scale=60, sftp_port=None)
    config = tap_config(sb, page_size=PAGE_SIZE, max_parallel_streams=8)
    clean_messages, _, _ = run_tap_inprocess(config)

    class ExpireOnce:
        """Before the 12th data request (every stream is paging by then), drop every session, once."""

        def __init__(self) -> None:
            self.data_requests = 0
            self.unauthorized = 0
            self.expired = 0

        def __call__(self, request: httpx.Request) -> None:
            if request.url.path in PATH_STREAM:
                self.data_requests += 1
                if self.data_requests == 12:
                    sb.set_tenant(expire_sessions=True)
                    self.expired += 1

        def response(self, response: httpx.Response) -> None:
            if response.request.url.path in PATH_STREAM and response.status_code == 401:
                self.unauthorized += 1

    hook = ExpireOnce()
    original_init = httpx.Client.__init__

    def init_with_hook(self: httpx.Client, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.event_hooks["request"].append(hook)
        self.event_hooks["response"].append(hook.response)

    monkeypatch.setattr(httpx.Client, "__init__", init_with_hook)
    messages, tap, _ = run_tap_inprocess(config)
    assert hook.expired == 1 and hook.unauthorized >= 1
    assert tap.connection.metrics.snapshot()["reauths"] == 1
    delivered = [record_key(s, r) for s, r in records(messages)]
    assert not duplicates(delivered)
    assert record_set(messages) == record_set(clean_messages)


def test_persistent_outage_fails_with_a_clear_error_after_the_retry_budget(sandbox_factory):
    """When a tenant never recovers, the sync stops after 1 + max_retries attempts with an actionable error."""
    from wellsky_core.errors import WellSkyTransportError

    sb = sandbox_factory(scale=30, sftp_port=None)
    sb.set_faults("error=1.0,retry_after=0,seed=3")
    config = tap_config(sb, max_retries=3, max_parallel_streams=1)  # one stream: its one request's budget counted
    try:
        run_tap_inprocess(config)
    except WellSkyTransportError as exc:
        text = str(exc)
    else:  # pragma: no cover - the assertion below explains
        raise AssertionError("a tenant answering only 5xx must fail the sync")
    assert "retry budget" in text and "max_retries" in text and "4" in text
    assert sb.stats()["faults_total"] == 4, "1 try + max_retries retries, then stop"
