"""httpx ``Auth`` flows for WellSky: password sessions with MFA, and OAuth2 (client secret or key JWT).

Every flow shares one shape (:class:`RefreshingAuth`): make sure a credential exists (logging in through the
same pooled client if not), send the request, and on a 401 log in again *once* and replay the request. A
lock serializes logins and a generation counter makes sure that when eight threads see the same expiry, one
of them logs in and the other seven just replay with the new credential.

Login and token requests that meet a transient failure (5xx, 429, a truncated body) raise
:class:`RetryableAuthFailure`, which :class:`~wellsky_core.http.client.WellSkyClient` retries (and counts)
like any other transient failure. Definitive refusals raise :class:`~wellsky_core.errors.AuthError` naming
the settings to check.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from ..errors import (
    AuthError,
    ConfigError,
    LoginAnswerUnusable,
    MfaError,
    RemoteError,
    RequestDeadlineExceeded,
    ResponseTooLarge,
    RetryableAuthFailure,
)
from ..products import DIALECTS
from ..redaction import register_secret
from . import wire_deadline
from .bodies import read_within
from .mfa import Challenge, CodeSource, build_code_source
from .policy import needs_reauth, raise_if_transient

if TYPE_CHECKING:
    from ..config import WellSkyConfig
    from ..metrics import Metrics

SESSION_COOKIE = "wsk_session"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SESSION_RENEW_MARGIN_SECONDS = 5.0
AUTH_ANSWER_BYTES = 1024 * 1024
"""The largest login, MFA or token answer read. They are a few hundred bytes: a larger one is not WellSky's."""
ANSWER_SECONDS_OUTSIDE_A_CLIENT = 300.0
"""The deadline of a login answer when the flow runs outside a WellSkyClient attempt (whose clock, from
``request_deadline_seconds``, bounds it otherwise)."""
TOKEN_RENEW_MARGIN_SECONDS = 60.0

Flow = Generator[httpx.Request, httpx.Response, None]


def _json_body(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful auth response; a truncated body is transient, so retry."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        raise RetryableAuthFailure("malformed", status=response.status_code, response=response) from None
    if not isinstance(body, dict):
        raise RetryableAuthFailure("malformed", status=response.status_code, response=response)
    return body


class RefreshingAuth(httpx.Auth):
    """Ensure a credential, apply it, and on 401 refresh it once and replay. Thread-safe."""

    requires_response_body = False
    """The flow reads the bodies of its own login/token exchanges only (see ``sync_auth_flow``): the answer to
    the caller's request stays a stream, so the transport reads it within max_response_bytes and its deadline."""

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self.auth_flow(request)
        outgoing = next(flow)
        while True:
            outside_a_client = wire_deadline.WireClock(ANSWER_SECONDS_OUTSIDE_A_CLIENT)
            response = yield outgoing
            if outgoing is not request:  # a login, MFA or token exchange: the flow inspects its body
                try:
                    self._read_answer(response, wire_deadline.clock() or outside_a_client)
                except LoginAnswerUnusable as exc:
                    # into the login, which remembers it as a refusal: the other streams waiting to sign in
                    # stop at once instead of each reading its own endless answer
                    outgoing = flow.throw(exc)
                    continue
            try:
                outgoing = flow.send(response)
            except StopIteration:
                break

    def _read_answer(self, response: httpx.Response, clock: wire_deadline.WireClock) -> None:
        """Read a login answer whole, within AUTH_ANSWER_BYTES and the attempt's deadline (``clock``: from when the
        login reached the wire, past any wait for the request budget): httpx's own ``read()`` took an endless body
        until memory ran out, and a body dripping a byte a second held the run forever."""
        fix = "check base_url and token_url: a look-alike or a wrong host may have answered"
        status = response.status_code
        try:
            read_within(response, limit=AUTH_ANSWER_BYTES, deadline=clock.deadline)
        except ResponseTooLarge:
            raise LoginAnswerUnusable(  # our own sentence: nothing of the answer is in it
                f"the login answer (HTTP {status}) is larger than {AUTH_ANSWER_BYTES:,} bytes, where WellSky's is "
                f"a few hundred; {fix}",
                setting="base_url",
                status=status,
            ) from None
        except (RequestDeadlineExceeded, httpx.TimeoutException) as exc:
            if isinstance(exc, httpx.TimeoutException) and not clock.passed():
                raise  # a stalled read within the deadline: the client's retry rules decide
            raise LoginAnswerUnusable(
                f"the login answer (HTTP {status}) took longer than request_deadline_seconds ({clock.span:g} s); "
                f"{fix}, or raise request_deadline_seconds if the tenant's logins are that slow",
                setting="base_url",
                status=status,
            ) from None

    credential_settings = ""
    """Config keys to check when the server rejects the credential (used in messages)."""

    def __init__(self, *, timeout: float = 30.0, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.timeout = httpx.Timeout(timeout)
        self._login_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._generation = 0
        self._refused: AuthError | None = None
        self.logins = 0
        self.reauths = 0

    # -- hooks for subclasses ---------------------------------------------------------------------------
    def _current(self) -> str | None:
        """The credential to send, or None when there is none or it is about to expire."""
        raise NotImplementedError

    def _login(self) -> Flow:
        """Obtain a new credential, yielding the requests it takes."""
        raise NotImplementedError

    def _apply(self, request: httpx.Request, credential: str) -> None:
        raise NotImplementedError

    def _observe(self, response: httpx.Response, generation: int) -> None:
        """Look at every authenticated response (e.g. follow cookie rotation)."""

    def invalidate(self) -> None:
        """Forget the credential so the next request logs in (e.g. after a logout)."""
        with self._state_lock:
            self._forget()
            self._generation += 1

    def _forget(self) -> None:
        raise NotImplementedError

    # -- the flow ---------------------------------------------------------------------------------------
    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Request:
        """A login/token request carrying the client's timeout (a bare Request would have none)."""
        request = httpx.Request(method, url, **kwargs)
        request.extensions["timeout"] = self.timeout.as_dict()
        request.headers.setdefault("accept", "application/json")
        return request

    def _ensure(self, stale_generation: int | None) -> Generator[httpx.Request, httpx.Response, tuple[str, int]]:
        with self._login_lock:
            if self._refused is not None:
                # WellSky refused these credentials once: every later login (other streams waiting on this
                # lock) would be refused too, each after its own MFA wait, so fail them all at once
                raise self._refused
            with self._state_lock:
                generation = self._generation
                current = self._current()
            refreshed_by_other = stale_generation is not None and generation != stale_generation
            if current is not None and (stale_generation is None or refreshed_by_other):
                return current, generation
            if stale_generation is not None:
                self.reauths += 1
                if self.metrics is not None:
                    self.metrics.add_reauth()
            try:
                yield from self._login()
            except AuthError as exc:
                self._refused = exc
                raise
            self.logins += 1
            with self._state_lock:
                self._generation += 1
                current = self._current()
                generation = self._generation
            if current is None:
                raise AuthError(
                    "login succeeded but yielded no usable credential; the tenant may be misconfigured",
                    setting=self.credential_settings,
                )
            return current, generation

    def auth_flow(self, request: httpx.Request) -> Flow:
        credential, generation = yield from self._ensure(None)
        self._apply(request, credential)
        response = yield request
        self._observe(response, generation)
        if not needs_reauth(response.status_code):
            return
        credential, generation = yield from self._ensure(generation)
        self._apply(request, credential)
        response = yield request
        self._observe(response, generation)


class SessionAuth(RefreshingAuth):
    """Username/password login (``POST /sessions``) with optional MFA, carried as the ``wsk_session`` cookie.

    The cookie rotates: every response may carry a new ``Set-Cookie`` value, which replaces the old one (the
    old one only works for a grace period). Sessions also expire; the flow logs in again shortly before the
    announced expiry, or on a 401, and replays the request once.
    """

    credential_settings = "`username` and `password`"

    def __init__(
        self,
        base_url: str,
        username: str,
        password: SecretStr | str,
        *,
        code_source: CodeSource | None = None,
        timeout: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(timeout=timeout, metrics=metrics)
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password if isinstance(password, SecretStr) else SecretStr(password)
        register_secret(self._password)
        self.code_source = code_source
        self._cookie: str | None = None
        self._renew_at: float | None = None
        self.rotations = 0

    def _current(self) -> str | None:
        if self._cookie is None:
            return None
        if self._renew_at is not None and time.monotonic() >= self._renew_at:
            return None
        return self._cookie

    def _forget(self) -> None:
        self._cookie = None
        self._renew_at = None

    def _apply(self, request: httpx.Request, credential: str) -> None:
        request.headers["cookie"] = f"{SESSION_COOKIE}={credential}"

    @staticmethod
    def _session_cookie(response: httpx.Response) -> tuple[bool, str | None]:
        """(present, value) of ``wsk_session`` in Set-Cookie; value None when the server deletes it."""
        found, value = False, None
        for header in response.headers.get_list("set-cookie"):
            first, _, attributes = header.partition(";")
            name, sep, raw = first.partition("=")
            if not sep or name.strip() != SESSION_COOKIE:
                continue
            found = True
            raw = raw.strip().strip('"')
            attrs = attributes.lower().replace(" ", "")
            value = None if (not raw or "max-age=0" in attrs) else raw
        return found, value

    def _observe(self, response: httpx.Response, generation: int) -> None:
        found, value = self._session_cookie(response)
        if not found:
            return
        with self._state_lock:
            if generation != self._generation:
                return  # an answer to a request of an older session: never let it undo a newer login
            if value is None:
                self._forget()
            elif value != self._cookie:
                self._cookie = value
                self.rotations += 1

    def _accept(self, response: httpx.Response) -> None:
        body = _json_body(response)
        found, value = self._session_cookie(response)
        if not found or value is None:
            raise AuthError(
                f"login answered {response.status_code} without a {SESSION_COOKIE} cookie; "
                "check base_url points at the WellSky API root",
                setting="base_url",
                status=response.status_code,
            )
        ttl = body.get("session_expires_in")
        with self._state_lock:
            self._cookie = value
            if isinstance(ttl, int | float) and ttl > 0:
                # renew a little before the announced expiry; short test sessions keep most of their life
                self._renew_at = time.monotonic() + float(ttl) - min(SESSION_RENEW_MARGIN_SECONDS, ttl * 0.1)
            else:
                self._renew_at = None

    def _login(self) -> Flow:
        response = yield self._request(
            "POST",
            f"{self.base_url}/sessions",
            json={"username": self.username, "password": self._password.get_secret_value()},
        )
        raise_if_transient(response)
        if response.status_code in (200, 201):
            self._accept(response)
            return
        if response.status_code == 202:
            yield from self._mfa(_json_body(response))
            return
        refusal = RemoteError.from_response(response, fix="")
        if response.status_code in (400, 401, 403):
            raise AuthError(
                f"WellSky refused the login ({refusal.tag}); check `username` and `password`",
                setting="password",
                status=response.status_code,
            )
        raise RemoteError.from_response(response)

    def _mfa(self, challenge_body: dict[str, Any]) -> Flow:
        challenge_id = str(challenge_body.get("challenge_id") or "")
        offered = [str(m) for m in challenge_body.get("methods") or []]
        source = self.code_source
        if source is None:
            raise MfaError(
                f"the tenant asks for a second factor ({', '.join(offered) or 'unspecified'}); "
                "set `mfa_method` (and totp_secret or an mfa_code_source)",
                method="none",
                setting="mfa_method",
            )
        method = source.method
        if offered and method not in offered:
            raise MfaError(
                f"mfa_method={method} is not offered by this tenant (it offers {', '.join(offered)}); "
                "change `mfa_method`",
                method=method,
                setting="mfa_method",
            )
        issued_at = time.time()
        if method in ("sms", "email"):
            sent = yield self._request("POST", f"{self.base_url}/sessions/{challenge_id}/send", json={"method": method})
            raise_if_transient(sent)
            if sent.status_code >= 400:
                raise MfaError(
                    f"WellSky could not send the {method} code ({RemoteError.from_response(sent, fix='').tag}); "
                    "check `mfa_method`",
                    method=method,
                    setting="mfa_method",
                )
        challenge = Challenge(challenge_id, method, self.username, issued_at)
        code_value = source.get_code(challenge)
        for attempt in (1, 2):
            response = yield self._request(
                "POST",
                f"{self.base_url}/sessions/{challenge_id}/mfa",
                json={"method": method, "code": code_value},
            )
            raise_if_transient(response)
            if response.status_code in (200, 201):
                self._accept(response)
                return
            refusal = RemoteError.from_response(response, fix="")
            error = refusal.code
            rejected = MfaError(
                f"WellSky rejected the {method} code ({refusal.tag}); check `{source.setting}`",
                method=method,
                setting=source.setting,
            )
            if attempt == 1 and method == "totp" and response.status_code == 401 and error != "mfa_locked":
                # the 30 s step may have turned between computing and checking, or the server refuses a
                # code twice: try the next step's code once (bounded by mfa_code_timeout_seconds)
                try:
                    code_value = source.get_code(challenge, previous=code_value)
                except MfaError:
                    raise rejected from None
                continue
            raise rejected


def _lifetime(expires_in: Any) -> float:
    """Seconds a token lives; Apigee (Home Connect) sends ``expires_in`` as a string ("3599"), so cast it."""
    if isinstance(expires_in, str):
        try:
            expires_in = float(expires_in.strip())
        except ValueError:
            expires_in = None
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return float(expires_in)
    return 300.0


class _TokenAuth(RefreshingAuth):
    """OAuth2 bearer tokens from ``POST /oauth/token``, cached until shortly before they expire."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        *,
        scopes: str | None = None,
        timeout: float = 30.0,
        metrics: Metrics | None = None,
        renew_margin_seconds: float = TOKEN_RENEW_MARGIN_SECONDS,
    ) -> None:
        super().__init__(timeout=timeout, metrics=metrics)
        self.renew_margin_seconds = renew_margin_seconds
        """Renew this long before expiry (the product's dialect says; Home Connect production: five minutes)."""
        self.token_url = token_url
        self.client_id = client_id
        self.scopes = scopes
        self._token: str | None = None
        self._renew_at = 0.0
        self.granted_scopes: str | None = None

    def _current(self) -> str | None:
        if self._token is None or time.monotonic() >= self._renew_at:
            return None
        return self._token

    def _forget(self) -> None:
        self._token = None

    def _apply(self, request: httpx.Request, credential: str) -> None:
        request.headers["authorization"] = f"Bearer {credential}"

    def _form(self) -> dict[str, str]:
        raise NotImplementedError

    def _login(self) -> Flow:
        form = {"grant_type": "client_credentials", **self._form()}
        if self.scopes:
            form["scope"] = self.scopes
        response = yield self._request("POST", self.token_url, data=form)
        raise_if_transient(response)
        if response.status_code != 200:
            if response.status_code in (400, 401, 403):
                refusal = RemoteError.from_response(response, fix="")
                raise AuthError(
                    f"WellSky refused the token request ({refusal.tag}); check {self.credential_settings}",
                    setting=self.credential_settings,
                    status=response.status_code,
                )
            raise RemoteError.from_response(response)
        body = _json_body(response)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise RetryableAuthFailure("malformed", status=response.status_code, response=response)
        lifetime = _lifetime(body.get("expires_in"))
        margin = min(self.renew_margin_seconds, lifetime / 2)
        register_secret(token)
        with self._state_lock:
            self._token = token
            self._renew_at = time.monotonic() + lifetime - margin
            self.granted_scopes = body.get("scope")


class ClientCredentialsAuth(_TokenAuth):
    """``grant_type=client_credentials`` with ``client_id`` + ``client_secret`` as form fields."""

    credential_settings = "`client_id` and `client_secret`"

    def __init__(self, token_url: str, client_id: str, client_secret: SecretStr | str, **kwargs: Any) -> None:
        super().__init__(token_url, client_id, **kwargs)
        self._secret = client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        register_secret(self._secret)

    def _form(self) -> dict[str, str]:
        return {"client_id": self.client_id, "client_secret": self._secret.get_secret_value()}


class PrivateKeyJwtAuth(_TokenAuth):
    """SMART backend services: a short-lived JWT assertion signed with the client's private key.

    Claims: ``iss`` = ``sub`` = client_id, ``aud`` = token URL, ``exp`` = now + 300 s, a fresh ``jti``
    (uuid4, so the server's replay check passes), and the key's ``kid`` in the header.
    """

    credential_settings = "`client_id`, `private_key`/`private_key_path` and `private_key_id`"

    def __init__(
        self,
        token_url: str,
        client_id: str,
        private_key_pem: bytes | str | SecretStr,
        key_id: str,
        *,
        algorithm: str = "RS384",
        **kwargs: Any,
    ) -> None:
        super().__init__(token_url, client_id, **kwargs)
        if isinstance(private_key_pem, SecretStr):
            private_key_pem = private_key_pem.get_secret_value()
        if isinstance(private_key_pem, str):
            private_key_pem = private_key_pem.encode()
        from cryptography.hazmat.primitives.serialization import load_pem_private_key  # only this flow needs it

        try:
            self._key = load_pem_private_key(private_key_pem, password=None)
        except (ValueError, TypeError):
            raise ConfigError("private_key", "is not an unencrypted PEM private key") from None
        if algorithm not in ("RS384", "ES384"):
            raise ConfigError("jwt_algorithm", "must be RS384 or ES384")
        self.key_id = key_id
        self.algorithm = algorithm

    def assertion(self) -> str:
        """A freshly signed client assertion (each one single-use: new jti)."""
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
        }
        import jwt  # imported here: pyjwt + cryptography cost ~0.25 s of start-up that other flows never need

        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers={"kid": self.key_id})

    def _form(self) -> dict[str, str]:
        return {
            "client_id": self.client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
        }


def build_auth(config: WellSkyConfig, *, metrics: Metrics | None = None) -> RefreshingAuth:
    """The auth flow ``config`` describes; also registers its secrets with the log redaction filter."""
    register_secret(*config.secret_values())
    common: dict[str, Any] = {"timeout": config.timeout_seconds, "metrics": metrics}
    if config.auth_method == "session":
        if not config.base_url:
            raise ConfigError("base_url", "required to log in; set the tenant API root")
        if not config.username or config.password is None:
            raise ConfigError("password", "auth_method=session needs `username` and `password`")
        return SessionAuth(
            config.base_url,
            config.username,
            config.password,
            code_source=build_code_source(config),
            **common,
        )
    if not config.client_id:
        raise ConfigError("client_id", f"required when auth_method={config.auth_method}")
    token_url = config.resolved_token_url()
    product = DIALECTS.get(config.product or "")
    if product is not None:
        common["renew_margin_seconds"] = product.token_renew_margin_seconds
    if config.auth_method == "oauth_client_credentials":
        if config.client_secret is None:
            raise ConfigError("client_secret", "required when auth_method=oauth_client_credentials")
        return ClientCredentialsAuth(
            token_url, config.client_id, config.client_secret, scopes=config.oauth_scopes, **common
        )
    if not config.private_key_id:
        raise ConfigError("private_key_id", "required when auth_method=oauth_private_key_jwt")
    return PrivateKeyJwtAuth(
        token_url,
        config.client_id,
        config.private_key_pem(),
        config.private_key_id,
        algorithm=config.jwt_algorithm,
        scopes=config.oauth_scopes,
        **common,
    )


__all__ = [
    "ClientCredentialsAuth",
    "PrivateKeyJwtAuth",
    "RefreshingAuth",
    "RetryableAuthFailure",
    "SessionAuth",
    "build_auth",
]
