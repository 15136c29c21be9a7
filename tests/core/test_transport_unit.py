"""Fast unit tests of the transport's pieces with ``httpx.MockTransport``: classification, backoff, decoding
and paging (the live-sandbox behaviour is covered in ``test_transport.py``)."""

from __future__ import annotations

import random

import httpx
import orjson
import pytest

from wellsky_core.channels.fhir import fhir_bundles
from wellsky_core.channels.rest import rest_pages
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import AuthError, RemoteError, WellSkyTransportError
from wellsky_core.http.client import WellSkyClient
from wellsky_core.http.policy import MAX_RETRY_AFTER_SECONDS, Backoff

BASE = "https://tenant.example.test"


def make_client(handler, *, max_retries: int = 3, **extra) -> tuple[WellSkyClient, list[float]]:
    cfg = WellSkyConfig.load(
        {"base_url": BASE, "username": "u", "password": "p", "max_retries": max_retries,
         "backoff_base_seconds": 0.5, "backoff_max_seconds": 4, "max_requests_per_second": 0, **extra},
        env={},
    )
    waits: list[float] = []
    client = WellSkyClient(cfg, auth=httpx.Auth(), sleep=waits.append, transport=httpx.MockTransport(handler))
    return client, waits


def scripted(*answers):
    """A handler answering each request with the next item (a response or an exception to raise)."""
    queue = list(answers)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


def ok(body) -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps(body))


# -- classification ---------------------------------------------------------------------------------------
def test_5xx_then_success_is_retried_and_counted():
    client, waits = make_client(scripted(httpx.Response(502), httpx.Response(500), ok({"a": 1})))
    assert client.get_json("/x") == {"a": 1}
    assert client.metrics.retries == {"502": 1, "500": 1} and len(waits) == 2


def test_429_waits_for_retry_after_seconds():
    client, waits = make_client(scripted(httpx.Response(429, headers={"Retry-After": "7"}), ok({})))
    client.get_json("/x")
    assert waits == [7.0]


def test_4xx_is_not_retried_and_names_the_server_code():
    handler = scripted(httpx.Response(422, json={"error": "validation_error", "message": "mrn is required"}))
    client, waits = make_client(handler)
    with pytest.raises(RemoteError) as info:
        client.request("POST", "/patients", json={})
    assert info.value.status == 422 and info.value.code == "validation_error" and waits == []
    assert "mrn is required" not in str(info.value), "server text never enters an error"


def test_a_code_outside_the_allow_list_becomes_http_status():
    body = {"error": "Patient Jane Q Okonkwo (MRN 00482913) is locked", "message": "DOB 1950-03-04"}
    headers = {"X-Request-Id": "req-7f3a9"}
    client, _ = make_client(scripted(httpx.Response(423, json=body, headers=headers)))
    with pytest.raises(RemoteError) as info:
        client.request("POST", "/patients", json={})
    error = info.value
    assert (error.status, error.code, error.request_id) == (423, "http_423", "req-7f3a9")
    assert "Okonkwo" not in str(error) and "00482913" not in str(error) and "1950" not in str(error)
    assert "req-7f3a9" in str(error) and error.fix


def test_expected_status_is_returned_not_raised():
    client, _ = make_client(scripted(httpx.Response(404, json={"error": "not_found"})))
    assert client.request("GET", "/patients/1", expected=(404,)).status_code == 404


def test_post_without_idempotency_key_is_not_retried_on_500():
    handler = scripted(httpx.Response(500), ok({}))
    client, _ = make_client(handler)
    with pytest.raises(RemoteError):
        client.request("POST", "/appointments", json={})
    assert len(handler.seen) == 1, "a replay could double-book"


def test_post_with_idempotency_key_is_retried_on_500():
    handler = scripted(httpx.Response(500), httpx.Response(201, json={"id": "1"}))
    client, _ = make_client(handler)
    assert client.request("POST", "/appointments", json={}, idempotency_key="k").status_code == 201
    assert [r.headers["Idempotency-Key"] for r in handler.seen] == ["k", "k"]


def test_post_is_retried_on_429_because_the_server_did_not_apply_it():
    handler = scripted(httpx.Response(429), httpx.Response(201, json={}))
    client, _ = make_client(handler)
    assert client.request("POST", "/appointments", json={}).status_code == 201


def test_dropped_connection_during_post_is_an_error_not_a_retry():
    client, _ = make_client(scripted(ok({}), httpx.RemoteProtocolError("peer closed")))
    client.get_json("/tenant")
    with pytest.raises(WellSkyTransportError) as info:
        client.request("POST", "/appointments", json={})
    assert "idempotency key" in str(info.value) and info.value.reason == "connection"


def test_first_connection_refused_fails_at_once_naming_base_url():
    handler = scripted(httpx.ConnectError("refused"), ok({}))
    client, waits = make_client(handler)
    with pytest.raises(WellSkyTransportError) as info:
        client.get_json("/tenant")
    assert info.value.reason == "connect" and "base_url" in str(info.value) and waits == []


def test_connection_refused_after_a_success_is_retried():
    client, _ = make_client(scripted(ok({}), httpx.ConnectError("refused"), ok({"b": 2})))
    client.get_json("/tenant")
    assert client.get_json("/x") == {"b": 2}
    assert client.metrics.retries == {"connection": 1}


def test_read_timeout_of_a_get_is_retried():
    client, _ = make_client(scripted(httpx.ReadTimeout("slow"), ok({})))
    client.get_json("/x")
    assert client.metrics.retries == {"timeout": 1}


def test_401_with_expiry_code_is_retried_once_then_credentials_are_blamed():
    expired = httpx.Response(401, json={"error": "session_expired"})
    client, _ = make_client(scripted(expired, ok({})))
    assert client.get_json("/x") == {}
    client, _ = make_client(scripted(httpx.Response(401, json={"error": "bad_credentials"})))
    with pytest.raises(AuthError, match="check the auth settings"):
        client.get_json("/x")


def test_budget_exhausted_names_the_last_reason_and_attempts():
    client, waits = make_client(scripted(*[httpx.Response(503)] * 3), max_retries=2)
    with pytest.raises(WellSkyTransportError) as info:
        client.get_json("/x?cursor=secret")
    assert info.value.attempts == 3 and info.value.status == 503 and len(waits) == 2
    assert "secret" not in str(info.value), "query values are masked"


# -- decoding ---------------------------------------------------------------------------------------------
def test_truncated_json_is_retried_then_reported_with_the_path():
    truncated = httpx.Response(200, content=b'{"data": [')
    client, _ = make_client(scripted(truncated, ok({"ok": True})))
    assert client.get_json("/x") == {"ok": True} and client.metrics.retries == {"malformed": 1}
    client, _ = make_client(scripted(*[truncated] * 2), max_retries=1)
    with pytest.raises(RemoteError) as info:
        client.get_json("/patients")
    assert info.value.code == "malformed_json" and "/patients" in str(info.value)


# -- backoff ----------------------------------------------------------------------------------------------
def test_backoff_is_full_jitter_under_the_capped_exponential_step():
    backoff = Backoff(0.5, 4.0, rng=random.Random(3))
    for attempt, cap in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)):
        samples = [backoff.delay(attempt) for _ in range(200)]
        assert all(0 <= s <= cap for s in samples) and max(samples) > cap * 0.8


def test_backoff_prefers_retry_after_but_caps_it():
    backoff = Backoff(0.5, 4.0)
    assert backoff.delay(1, retry_after=12.0) == 12.0
    assert backoff.delay(1, retry_after=10**6) == MAX_RETRY_AFTER_SECONDS


# -- paging -----------------------------------------------------------------------------------------------
def test_cursor_pages_are_followed_to_the_end():
    pages = {None: ([1, 2], "c1"), "c1": ([3], "c2"), "c2": ([], None)}

    def handler(request: httpx.Request) -> httpx.Response:
        data, nxt = pages[request.url.params.get("cursor")]
        assert request.url.params["limit"] == "2"
        return ok({"data": [{"id": i} for i in data], "next_cursor": nxt})

    client, _ = make_client(handler, page_size=2)
    assert [r["id"] for page in rest_pages(client, "/patients") for r in page] == [1, 2, 3]
    assert client.metrics.snapshot()["pages"] == 3


def test_a_cursor_seen_before_stops_the_loop():
    pages = {None: "a", "a": "b", "b": "a"}  # a -> b -> a: not consecutive, still a loop
    client, _ = make_client(lambda r: ok({"data": [], "next_cursor": pages[r.url.params.get("cursor")]}))
    with pytest.raises(RemoteError) as info:
        list(rest_pages(client, "/patients"))
    assert info.value.code == "cursor_loop"


def test_a_page_without_data_is_an_unexpected_shape():
    client, _ = make_client(scripted(ok({"items": []})))
    with pytest.raises(RemoteError) as info:
        list(rest_pages(client, "/patients"))
    assert info.value.code == "unexpected_shape"


def bundle(next_url: str | None, n: int = 1) -> dict:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{}] * n, "link": links}


def test_bundle_next_links_are_followed_and_loops_stopped():
    client, _ = make_client(scripted(ok(bundle(f"{BASE}/fhir/Patient?page=2")), ok(bundle(None))))
    assert len(list(fhir_bundles(client, "/fhir/Patient", {"_count": 1}))) == 2
    looping = scripted(ok(bundle("/fhir/Patient?page=2")), ok(bundle("/fhir/Patient?page=2")))
    client, _ = make_client(looping)
    with pytest.raises(RemoteError) as info:
        list(fhir_bundles(client, "/fhir/Patient"))
    assert info.value.code == "link_loop"


def test_bundle_next_link_to_another_host_is_refused():
    handler = scripted(ok(bundle("https://evil.example.test/fhir/Patient?page=2")))
    client, _ = make_client(handler)
    with pytest.raises(RemoteError) as info:
        list(fhir_bundles(client, "/fhir/Patient"))
    assert info.value.code == "foreign_next_link" and len(handler.seen) == 1


class _LoginFirst(httpx.Auth):
    """An auth flow that logs in before the first request, as SessionAuth and the OAuth flows do."""

    def __init__(self) -> None:
        self.logged_in = False

    def auth_flow(self, request: httpx.Request):
        if not self.logged_in:
            yield httpx.Request("POST", BASE + "/sessions")
            self.logged_in = True
        yield request


def test_auth_flow_requests_take_tokens_from_the_one_budget_too():
    """The login is a request on the wire like any other: it must not slip past the rate budget."""
    cfg = WellSkyConfig.load(
        {"base_url": BASE, "username": "u", "password": "p", "max_requests_per_second": 4}, env={}
    )
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return ok({"data": [], "next_cursor": None})

    client = WellSkyClient(cfg, auth=_LoginFirst(), transport=httpx.MockTransport(handler))
    waits: list[float] = []
    client._limiter._sleep = waits.append  # count the waits instead of sleeping them
    client.get_json("/patients")
    client.get_json("/patients")
    assert seen == ["/sessions", "/patients", "/patients"]
    # 3 requests at 4/s (2 per half window): the login took a slot, so the 3rd waits for the 1st's to free
    assert len(waits) == 1 and waits[0] > 0


@pytest.mark.parametrize(("streams", "windows"), [(1, 1), (8, 8), (16, 8)])
def test_the_pool_has_a_connection_for_every_reader_and_a_login(streams: int, windows: int) -> None:
    """Eight streams of eight windows in flight: a pool smaller than its readers made some wait for a connection
    past the timeout under load (counted as server timeouts, retried, and then one expiry cost several logins)."""
    from wellsky_core.config import TapConfig
    from wellsky_core.http.client import pool_size

    config = TapConfig.load({"base_url": "https://tenant.example", "username": "u", "password": "p",
                             "max_parallel_streams": streams, "max_windows_per_stream": windows}, env={})
    client = WellSkyClient(config)
    try:
        pool = client._http._transport._pool  # httpx's connection pool: what the readers really share
        assert pool._max_connections == pool_size(config) >= streams * windows + 1
    finally:
        client.close()


def test_a_read_response_is_freed_by_reference_counting_not_left_to_the_cyclic_gc():
    """httpx's stream wrapper refers back to its response; once the body is read the client drops the spent
    stream, so a page's body is freed when the caller lets go of it (the cyclic GC runs rarely in a sync,
    ``cli.tune_gc``), and the body is still readable."""
    import gc
    import weakref

    client, _ = make_client(scripted(ok({"entry": ["x" * 1000]})))
    enabled = gc.isenabled()
    gc.disable()
    try:
        response = client.request("GET", "/x")
        assert orjson.loads(response.read()) == {"entry": ["x" * 1000]}
        gone = weakref.ref(response)
        del response
        assert gone() is None
    finally:
        if enabled:
            gc.enable()


def test_a_sign_in_that_keeps_failing_is_named_not_the_request_it_was_for() -> None:
    """The login answers 500 on every attempt: the error names the sign-in and its URL (an operator chasing
    ``/tenant`` would look in the wrong place), with the retry budget's fix."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/sessions":
            return httpx.Response(500, json={"error": "internal"})
        return httpx.Response(200, json={"product": "home_health"})

    cfg = WellSkyConfig.load(
        {"base_url": BASE, "username": "u", "password": "p", "max_retries": 1, "backoff_base_seconds": 0,
         "backoff_max_seconds": 0, "max_requests_per_second": 0},
        env={},
    )
    client = WellSkyClient(cfg, sleep=lambda s: None, transport=httpx.MockTransport(handler))
    with pytest.raises(WellSkyTransportError) as caught:
        client.get_json("/tenant")
    text = str(caught.value)
    assert text.startswith("the sign-in (POST) gave no usable answer within the retry budget (last: 500)"), text
    assert "/sessions;" in text and "test/tenant" not in text and "raise max_retries" in text, text
    assert seen == ["POST /sessions", "POST /sessions"], "the data request never went out"


@pytest.mark.parametrize("answer", ["endless", "dripping"])
def test_an_unusable_login_answer_is_a_sign_in_failure_that_stops_every_stream(answer: str) -> None:
    """A login answer larger than any WellSky sends (or slower than the deadline) was a plain WellSkyError: the
    Airbyte face called it a system error, and every stream waiting to sign in read its own endless answer
    before failing alike. It is a sign-in failure now: remembered like a refusal (one login, every later
    request refused at once), a config error naming base_url, in our own words only."""
    import time as clock

    from wellsky_core.airbyte import describe_error
    from wellsky_core.errors import LoginAnswerUnusable
    from wellsky_core.http.auth import AUTH_ANSWER_BYTES

    logins: list[str] = []
    secret = b'{"name": "Ada Patient", "mrn": "MRN-5521"}'

    def drip():
        for _ in range(20):
            clock.sleep(0.1)
            yield secret

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/sessions":
            logins.append(request.method)
            if answer == "endless":
                return httpx.Response(201, content=secret * (AUTH_ANSWER_BYTES // len(secret) + 2))
            return httpx.Response(201, content=drip())
        return httpx.Response(200, json={"product": "home_health"})

    cfg = WellSkyConfig.load(
        {"base_url": BASE, "username": "u", "password": "p", "max_retries": 1, "backoff_base_seconds": 0,
         "backoff_max_seconds": 0, "max_requests_per_second": 0, "request_deadline_seconds": 0.5},
        env={},
    )
    client = WellSkyClient(cfg, sleep=lambda s: None, transport=httpx.MockTransport(handler))
    for _ in range(2):
        with pytest.raises(LoginAnswerUnusable) as caught:
            client.get_json("/tenant")
    assert logins == ["POST"], "a second stream signed in again after the answer was found unusable"
    message, internal, failure_type = describe_error(caught.value)
    assert failure_type == "config_error", failure_type
    assert message.startswith("the login answer (HTTP 201)") and "base_url" in message, message
    assert "Ada" not in internal and "MRN-5521" not in internal


def test_a_session_that_expires_again_on_the_replay_is_signed_in_afresh_and_read() -> None:
    """docs/reliability.md listed this as read from the code only: the session expires, the flow signs in and
    replays, and the replay meets an expired session again (a mass expiry, parallel streams). A read goes through
    the auth flow once more (a third sign-in) and succeeds; each sign-in and every replay is counted."""
    sessions = iter(["s1", "s2", "s3"])
    seen: list[str] = []
    refused = {"": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        cookie = request.headers.get("cookie", "")
        seen.append(f"{request.method} {request.url.path} {cookie}")
        if request.url.path == "/sessions":
            value = next(sessions)
            return httpx.Response(201, json={"session_expires_in": 3600},
                                  headers={"set-cookie": f"wsk_session={value}; Path=/"})
        if "wsk_session=s3" not in cookie:
            refused[""] += 1
            return httpx.Response(401, json={"error": "session_expired"})
        return httpx.Response(200, json={"ok": True})

    cfg = WellSkyConfig.load(
        {"base_url": BASE, "username": "u", "password": "p", "max_retries": 2, "backoff_base_seconds": 0,
         "backoff_max_seconds": 0, "max_requests_per_second": 0},
        env={},
    )
    client = WellSkyClient(cfg, sleep=lambda s: None, transport=httpx.MockTransport(handler))
    assert client.get_json("/tenant") == {"ok": True}
    logins = [line for line in seen if line.startswith("POST /sessions")]
    # s1 refused, sign in, replay with s2 refused; the retry sends with s2 (refused), signs in, replays with s3
    assert len(logins) == 3 and refused[""] == 3, seen
    assert client.metrics.retries == {"401": 1}, client.metrics.retries
