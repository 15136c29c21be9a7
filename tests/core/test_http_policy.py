"""The one status -> action policy (``wellsky_core/http/policy.py``): stated once, consulted by every caller.

The first test reads the package's source: no other module names a retryable status or parses ``Retry-After``.
The others drive real callers (the client's attempt loop, a login, a write, the trust check) through
``httpx.MockTransport``.
"""

from __future__ import annotations

import ast
import io
import os
import re
import stat
import tokenize
from pathlib import Path

import httpx
import pytest

import wellsky_core
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import SERVER_CODES, RemoteError
from wellsky_core.http import policy
from wellsky_core.http.auth import SessionAuth
from wellsky_core.http.client import WellSkyClient
from wellsky_core.http.policy import Action, exception_rule, rule_for
from wellsky_core.http.trust import is_trusted

BASE = "https://tenant.example.test"
PACKAGE = Path(wellsky_core.__file__).parent
POLICY = PACKAGE / "http" / "policy.py"
SERVER_ERROR_TEST = re.compile(r"(>=\s*500|>\s*499|<\s*500|//\s*100\s*==\s*5)\b")


def _numbers_and_strings(path: Path) -> tuple[set[str], list[str]]:
    numbers: set[str] = set()
    strings: list[str] = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.NUMBER:
            numbers.add(token.string)
        elif token.type == tokenize.STRING:
            try:
                value = ast.literal_eval(token.string)
            except (ValueError, SyntaxError):  # an f-string
                continue
            if isinstance(value, str):
                strings.append(value.lower())
    return numbers, strings


def test_retryable_statuses_and_retry_after_are_stated_only_in_the_policy() -> None:
    offenders: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == POLICY:
            continue
        numbers, strings = _numbers_and_strings(path)
        for status in ("408", "429", "503"):
            if status in numbers:
                offenders.append(f"{path.relative_to(PACKAGE)} names status {status}")
        if SERVER_ERROR_TEST.search(path.read_text()):
            offenders.append(f"{path.relative_to(PACKAGE)} decides what a 5xx is itself (use policy.server_failed)")
        if "retry-after" in strings:
            offenders.append(f"{path.relative_to(PACKAGE)} reads the Retry-After header itself")
        if "def parse_retry_after" in path.read_text():
            offenders.append(f"{path.relative_to(PACKAGE)} parses Retry-After")
    assert not offenders, "the status -> action policy lives in http/policy.py only:\n" + "\n".join(offenders)
    numbers, strings = _numbers_and_strings(POLICY)
    assert {"408", "429", "503"} <= numbers and "retry-after" in strings, "the test reads the policy"


@pytest.mark.parametrize(
    ("status", "action", "unapplied"),
    [
        (200, Action.OK, False),
        (204, Action.OK, False),
        (302, Action.FAIL, False),
        (400, Action.FAIL, False),
        (401, Action.REAUTH, False),
        (403, Action.FAIL, False),
        (404, Action.FAIL, False),
        (408, Action.RETRY, False),
        (422, Action.FAIL, False),
        (429, Action.RETRY, True),
        (500, Action.RETRY, False),
        (502, Action.RETRY, False),
        (503, Action.RETRY, True),
        (504, Action.RETRY, False),
    ],
)
def test_the_table(status: int, action: Action, unapplied: bool) -> None:
    assert rule_for(status) == policy.Rule(action, unapplied=unapplied)


def test_transport_failures() -> None:
    assert exception_rule(httpx.ConnectError("refused")) == policy.Rule(Action.RETRY, unapplied=True)
    assert exception_rule(httpx.ConnectTimeout("slow")) == policy.Rule(Action.RETRY, unapplied=True)
    assert exception_rule(httpx.ReadTimeout("slow")) == policy.Rule(Action.RETRY)
    assert exception_rule(httpx.RemoteProtocolError("dropped")) == policy.Rule(Action.RETRY)
    assert exception_rule(ValueError("not transport")) is None


def _config(**extra: object) -> WellSkyConfig:
    return WellSkyConfig.load(
        {"base_url": BASE, "username": "u", "password": "p", "max_retries": 2, "backoff_base_seconds": 0.5,
         "backoff_max_seconds": 4, "max_requests_per_second": 0, **extra},
        env={},
    )


def _client(handler, auth: httpx.Auth | None = None, **extra: object) -> tuple[WellSkyClient, list[float]]:
    waits: list[float] = []
    client = WellSkyClient(
        _config(**extra), auth=auth or httpx.Auth(), sleep=waits.append, transport=httpx.MockTransport(handler)
    )
    return client, waits


def test_a_login_answered_503_waits_the_servers_retry_after_like_any_request() -> None:
    answers = [
        httpx.Response(503, headers={"Retry-After": "4"}),
        httpx.Response(200, json={"session_expires_in": 600}, headers={"set-cookie": "wsk_session=s1; Path=/"}),
        httpx.Response(200, json={"ok": True}),
    ]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return answers.pop(0)

    client, waits = _client(handler, auth=SessionAuth(BASE, "u", "p"))
    assert client.get_json("/tenant") == {"ok": True}
    assert seen == ["/sessions", "/sessions", "/tenant"] and waits == [4.0]
    assert client.metrics.retries == {"503": 1}


@pytest.mark.parametrize(("status", "replayed"), [(502, False), (503, True), (429, True), (408, False)])
def test_a_write_without_idempotency_key_is_replayed_only_when_the_server_cannot_have_applied_it(
    status: int, replayed: bool
) -> None:
    answers = [httpx.Response(status), httpx.Response(201, json={"id": "1"})]
    client, _ = _client(lambda request: answers.pop(0))
    if replayed:
        assert client.request("POST", "/appointments", json={}).status_code == 201
    else:
        with pytest.raises(RemoteError) as info:
            client.request("POST", "/appointments", json={})
        assert info.value.status == status and "idempotency key" in str(info.value)


def test_a_redirect_is_never_followed_with_credentials() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"Location": "https://collector.example.net/steal"})

    client, _ = _client(handler)
    with pytest.raises(RemoteError) as info:
        client.get_json("/patients")
    assert info.value.status == 302 and [r.url.host for r in seen] == ["tenant.example.test"]


def test_an_authenticated_request_to_another_origin_is_refused_before_sending() -> None:
    seen: list[httpx.Request] = []
    client, _ = _client(lambda request: seen.append(request) or httpx.Response(200, json={}))
    for url in ("https://collector.example.net/x", "https://tenant.example.test:8443/x", "http://tenant.example.test/x"):
        with pytest.raises(RemoteError, match="another host or port"):
            client.get_json(url)
    assert seen == []
    client, _ = _client(lambda request: httpx.Response(200, json={"ok": 1}), trusted_origins=["https://files.example.net"])
    assert client.get_json("https://files.example.net/x") == {"ok": 1}


def test_trust_is_one_function_of_the_configured_origins() -> None:
    config = _config(token_url="https://auth.example.test/oauth/token", trusted_origins="https://files.example.net:8443")
    assert is_trusted(f"{BASE}/fhir/bulkstatus/1", config)
    assert is_trusted("https://auth.example.test/other", config)
    assert is_trusted("https://files.example.net:8443/f.ndjson", config)
    assert not is_trusted("https://files.example.net/f.ndjson", config), "another port is another origin"
    assert not is_trusted("http://tenant.example.test/x", config), "plain http only for loopback"
    loop = WellSkyConfig.load({"base_url": "http://127.0.0.1:8080", "username": "u", "password": "p"}, env={})
    assert is_trusted("http://127.0.0.1:8080/x", loop) and not is_trusted("http://127.0.0.1:8081/x", loop)


def test_trusted_origins_must_be_origins() -> None:
    from wellsky_core.errors import ConfigError

    with pytest.raises(ConfigError, match="trusted_origins"):
        _config(trusted_origins=["http://files.example.net"])
    with pytest.raises(ConfigError, match="trusted_origins"):
        _config(trusted_origins=["https://files.example.net/path"])


def test_error_codes_are_allow_listed_and_the_body_is_kept_only_on_request(tmp_path: Path) -> None:
    body = {"error": "patient_locked", "message": "Patient Jane Q Okonkwo (MRN 00482913) is locked"}
    answer = httpx.Response(409, json=body, headers={"x-request-id": "abc-123"})
    client, _ = _client(lambda request: answer, state_dir=str(tmp_path / "state"))
    with pytest.raises(RemoteError) as info:
        client.request("POST", "/patients", json={})
    assert info.value.code == "http_409" and "patient_locked" not in SERVER_CODES
    assert "Okonkwo" not in str(info.value) and info.value.request_id == "abc-123"
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").rglob("*.body"))

    client, _ = _client(lambda request: answer, state_dir=str(tmp_path / "state"), save_error_bodies=True)
    with pytest.raises(RemoteError) as info:
        client.request("POST", "/patients", json={})
    (kept,) = (tmp_path / "state" / "error-bodies").glob("*.body")
    assert info.value.body_file == str(kept) and str(kept) in str(info.value)
    assert "Okonkwo" in kept.read_text() and "Okonkwo" not in str(info.value)
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(kept.parent).st_mode) == 0o700
