"""``WellSkyClient``: the only way the tap and target talk HTTP to WellSky.

One pooled keep-alive ``httpx.Client`` per client; every request goes through the request window, the auth
flow (login, cookie rotation, re-auth on 401) and a retry loop that composes three pieces:

- classification (``policy.py``): what one attempt got -> retry (and why), usable, or an error no retry fixes;
- backoff (``policy.Backoff``): exponential with full jitter, or the server's ``Retry-After``;
- decoding (:meth:`WellSkyClient._decode`): a truncated JSON body is retried like a dropped connection.

After ``max_retries`` the last failure is raised as :class:`~wellsky_core.errors.WellSkyTransportError` with
the URL (query values masked), status and attempt count. Which URLs may get credentials is ``trust.py``'s
(checked here before every authenticated send; redirects are never followed). The client knows HTTP, not API
shapes: paging styles are ``paging.py``'s paginators, constructed by the channels that own each API. Tests
inject an ``httpx.MockTransport`` through ``transport=``.

Each retry logs one line on ``wellsky_core.http.client`` and is counted in :class:`~wellsky_core.metrics.Metrics`
by reason (the status code, ``connection``, ``timeout`` or ``malformed``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import orjson

from ..config import WellSkyConfig
from ..errors import (
    ERROR_BODY_DIR,
    AuthError,
    ConfigError,
    RemoteError,
    RequestDeadlineExceeded,
    ResponseTooLarge,
    RetryableAuthFailure,
    WellSkyTransportError,
    redact_url,
)
from ..metrics import Metrics
from ..redaction import register_secret
from .auth import RefreshingAuth, build_auth
from .bodies import read_within
from .policy import Backoff, Retry, classify_exception, classify_response, connect_failure, is_safe
from .ratelimit import RequestWindow
from .tenant_share import TenantShare, lease_directory
from .trust import is_trusted, require_trusted
from .wire_deadline import WireClock, exchange_deadline, hold_deadlines, on_the_wire

logger = logging.getLogger(__name__)

USER_AGENT = "tap-wellsky/0.1 (+wellsky_core)"

Params = Mapping[str, Any] | None


def _no_cookie_jar() -> CookieJar:
    """A jar that stores nothing: the session cookie is owned by SessionAuth, never by httpx's shared jar."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


PACING_HEADROOM = 0.95
"""Share of ``max_requests_per_second`` the request window sustains (see ``WellSkyClient.__init__``)."""


def pool_size(config: Any) -> int:
    """Connections the pool may open: every reader that can be in flight at once (streams x windows) plus room
    for a login, so no reader waits for a connection another reader holds (a pool wait past the timeout was
    counted as a server timeout and retried)."""
    streams = int(getattr(config, "max_parallel_streams", 1) or 1)
    windows = int(getattr(config, "max_windows_per_stream", 1) or 1)
    return max(32, streams * windows + 4)


class WellSkyClient:
    """A connection to one tenant: pooled HTTP, auth, rate limit, retries and metrics."""

    def __init__(
        self,
        config: WellSkyConfig,
        *,
        auth: httpx.Auth | None = None,
        metrics: Metrics | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``transport`` replaces the network (an ``httpx.MockTransport`` in unit tests)."""
        if not config.base_url:
            raise ConfigError("base_url", "required to reach a tenant; set the WellSky API root URL")
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        if auth is None:
            auth = build_auth(config, metrics=self.metrics)
        elif isinstance(auth, RefreshingAuth) and auth.metrics is None:
            auth.metrics = self.metrics
        self.auth = auth
        register_secret(*config.secret_values())
        # half the budget at once and a second's worth within ~0.53 s, then PACING_HEADROOM of it on average.
        # Slots count from when a request reached the wire (``_trace``), so thread scheduling cannot push a
        # tenant's second over; the headroom is the slack left for requests on different connections arriving
        # with different delays (0.95: 53 ms at 100 req/s; before slots counted from the wire, 0.97 overran)
        # The budget is the tenant's: every process on this machine sending to it takes its share (tenant_share.py)
        identity = config.username or config.client_id
        share = (
            # the path only: the share creates it when it first counts, and paces alone if it cannot (a read-only
            # home must not fail a `check` that wrote nothing before)
            TenantShare(lease_directory(config.private_state_path(), config.base_url, identity))
            if config.max_requests_per_second
            else None
        )
        self._limiter = RequestWindow.for_budget(config.max_requests_per_second, PACING_HEADROOM, share=share)
        self._slot_at_wire = transport is None
        """httpcore's own transport reports the write of the headers (``_trace``); a replaced transport (a mock in
        tests) may not, so its requests take their slot before they are handed to it."""
        self._sleep = sleep
        self._backoff = Backoff(config.backoff_base_seconds, config.backoff_max_seconds)
        self._connected = False
        self._error_body_dir = str(config.private_state_dir() / "error-bodies") if config.save_error_bodies else None
        timeout = httpx.Timeout(config.timeout_seconds, connect=min(config.timeout_seconds, 10.0))
        connections = pool_size(config)
        self._http = httpx.Client(
            base_url=config.base_url,
            timeout=timeout,
            verify=config.tls_verify(),
            # every connection the readers use stays open between their requests: with 16 kept (as before) and up
            # to 64 readers, most requests closed their connection and the next opened one (a TCP and TLS
            # handshake, two round trips to a real tenant, for every page beyond the 16th in flight)
            limits=httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=30
            ),
            headers={"user-agent": USER_AGENT, "accept": "application/json"},
            cookies=_no_cookie_jar(),
            follow_redirects=False,
            event_hooks={"request": [self._on_request], "response": [self._on_response]},
            transport=transport,
        )
        if transport is None:
            hold_deadlines(self._http)  # request_deadline_seconds bounds the head of an answer too

    @property
    def sustained_rate(self) -> float | None:
        """Requests/s the request window sustains (``max_requests_per_second`` less the pacing headroom), or
        None without a budget."""
        return None if self._limiter is None else self._limiter.per_second

    # -- plumbing ---------------------------------------------------------------------------------------
    def _on_request(self, request: httpx.Request) -> None:
        """Every request on the wire takes its slot, logins and token fetches of the auth flows too: a budget
        that paced only data requests overran the tenant's limit by the login in the first second."""
        request.extensions["trace"] = self._trace  # httpcore reports when the request is on the wire
        if self._limiter is not None and not self._slot_at_wire:
            self.metrics.add_rate_limit_wait(self._limiter.acquire())
        self.metrics.add_request()

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace extension. The slot is taken just before the headers are written (the connection
        already held), not before the pool: a slot counts from the wire, so every millisecond between the grant
        and the socket (the pool's lock, a new connection, the GIL among many readers: 39 ms median, 150 ms p90 at
        scale M) was a millisecond the slot sat unused, and the client sent ~80 requests/s against a window of 95.
        The slot counts from when the headers were written, and so does the request's deadline (wire_deadline.py)."""
        if event.endswith("send_request_headers.started"):
            if self._limiter is not None and self._slot_at_wire:
                self.metrics.add_rate_limit_wait(self._limiter.acquire())
            on_the_wire()
        elif self._limiter is not None and event.endswith(
            ("send_request_headers.complete", "send_request_headers.failed")
        ):
            self._limiter.sent()

    def _send_once(self, request: httpx.Request, *, auth: httpx.Auth | None) -> httpx.Response:
        """``send`` with the body streamed, the request window told when the send ended (answered or not)."""
        try:
            return self._http.send(request, auth=auth, stream=True)
        finally:
            if self._limiter is not None:
                self._limiter.settle()

    def _on_response(self, response: httpx.Response) -> None:
        """Every answer (auth exchanges too) learns where an error body may be kept (``save_error_bodies``)."""
        if self._error_body_dir is not None:
            response.extensions = {**response.extensions, ERROR_BODY_DIR: self._error_body_dir}

    def _guard(self, request: httpx.Request, *, authenticated: bool) -> None:
        """Credentials go only to trusted URLs (``trust.py``): refuse before anything is sent."""
        if authenticated and not is_trusted(request.url, self.config):
            require_trusted(str(request.url), self.config, what=f"a {request.method} request with credentials")

    def _attempt(
        self, request: httpx.Request, *, safe: bool, expected: Sequence[int], parse_json: bool, attempt: int, last: bool
    ) -> tuple[httpx.Response, Any] | Retry:
        """Send once: the usable answer (response, decoded body), or the retry to make (errors are raised)."""
        clock = WireClock(self._deadline)
        try:
            with exchange_deadline(clock):
                response = self._send_once(request, auth=self.auth)
                self._read_bounded(response, clock.deadline)
        except ResponseTooLarge as exc:
            raise self._too_large(request, exc.limit, attempt) from None
        except RequestDeadlineExceeded:
            return self._past_deadline(request, None, safe=safe, attempt=attempt)
        except (RetryableAuthFailure, httpx.TransportError) as exc:
            if isinstance(exc, httpx.TimeoutException) and clock.passed():  # wire_deadline.py
                return self._past_deadline(request, _request_of(exc), safe=safe, attempt=attempt)
            return classify_exception(exc, request, safe=safe, connected=self._connected, attempt=attempt)
        self._connected = True
        response.extensions["wellsky_attempt"] = attempt  # a replay on attempt > 1 answers our own send
        self.metrics.add_bytes(len(response.content))
        verdict = classify_response(response, safe=safe, expected=expected, attempt=attempt)
        if verdict is not None:
            return verdict
        if not parse_json or response.status_code in expected:
            return response, None
        return self._decode(response, retryable=safe and not last, attempt=attempt)

    def _past_deadline(
        self, request: httpx.Request, during: httpx.Request | None, *, safe: bool, attempt: int
    ) -> Retry:
        """An attempt past request_deadline_seconds: retried when it may be. One that ran out in a sign-in
        (``during``, an exchange of the auth flow) never sent the request, or had it refused with a 401, so it
        is retried whatever the method, and the error names the sign-in."""
        signing_in = during is not None and during is not request
        if not safe and not signing_in:
            raise self._too_slow(request, attempt) from None
        return Retry(
            "deadline",
            detail=f" (over request_deadline_seconds={self._deadline:g})",
            auth_request=during if signing_in else None,
        )

    @property
    def _deadline(self) -> float:
        return float(self.config.request_deadline_seconds)

    def _read_bounded(self, response: httpx.Response, deadline: float) -> None:
        """Read the body within max_response_bytes and by ``deadline`` (``time.monotonic()``), or raise."""
        read_within(response, limit=self.config.max_response_bytes, deadline=deadline)

    def _too_large(self, request: httpx.Request, limit: int, attempt: int) -> WellSkyTransportError:
        return WellSkyTransportError(
            f"the response to {request.method} is larger than max_response_bytes ({limit:,} bytes); lower "
            "page_size, or raise max_response_bytes if the tenant's pages really are that large",
            url=request.url,
            attempts=attempt,
            reason="too_large",
        )

    def _too_slow(self, request: httpx.Request, attempt: int) -> WellSkyTransportError:
        return WellSkyTransportError(
            f"{request.method} took longer than request_deadline_seconds ({self._deadline:g} s) and may "
            "have been applied; raise request_deadline_seconds or check the tenant",
            url=request.url,
            attempts=attempt,
            reason="deadline",
        )

    def read_body(self, response: httpx.Response) -> None:
        """Read a :meth:`stream` response's body (a status document, an error page) within max_response_bytes and
        request_deadline_seconds, as every other answer is: ``response.read()`` took whatever the server sent."""
        try:
            self._read_bounded(response, time.monotonic() + self._deadline)
        except ResponseTooLarge as exc:
            raise self._too_large(response.request, exc.limit, 1) from None
        except RequestDeadlineExceeded:
            raise self._too_slow(response.request, 1) from None

    @staticmethod
    def _decode(response: httpx.Response, *, retryable: bool, attempt: int) -> tuple[httpx.Response, Any] | Retry:
        """Decode a JSON body; a truncated one is retried when it may be, else a RemoteError naming the path."""
        try:
            return response, orjson.loads(response.content)  # ~3x faster than json on big pages
        except (ValueError, UnicodeDecodeError):
            if retryable:
                return Retry("malformed", response.status_code)
            raise RemoteError(
                response.status_code,
                "malformed_json",
                f"the body of {response.request.url.path} is not valid JSON (truncated?) after {attempt} attempt(s)",
                url=response.request.url,
            ) from None

    def _send(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Params = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        expected: Sequence[int] = (),
        parse_json: bool = False,
        read: bool = False,
    ) -> tuple[httpx.Response, Any]:
        method = method.upper()
        all_headers = dict(headers or {})
        if idempotency_key:
            all_headers["Idempotency-Key"] = idempotency_key
        safe = read or is_safe(method, idempotency_key)
        attempts_allowed = self.config.max_retries + 1
        last = Retry("unknown")
        target: httpx.URL | str = url
        for attempt in range(1, attempts_allowed + 1):
            request = self._http.build_request(method, url, params=params, json=json, headers=all_headers)
            self._guard(request, authenticated=self.auth is not None)
            target = request.url
            outcome = self._attempt(
                request, safe=safe, expected=expected, parse_json=parse_json, attempt=attempt,
                last=attempt == attempts_allowed,
            )
            if not isinstance(outcome, Retry):
                return outcome
            last = outcome
            if attempt == attempts_allowed:
                break
            wait = self._backoff.delay(attempt, outcome.retry_after)
            self.metrics.add_retry(outcome.reason)
            logger.warning(
                "retrying %s %s after %s%s: attempt %d of %d, waiting %.2f s",
                method,
                redact_url(request.url),
                outcome.reason,
                outcome.detail,
                attempt + 1,
                attempts_allowed,
                wait,
            )
            if wait > 0:
                self._sleep(wait)
        if last.reason == "401":  # every replay after a fresh login was refused again: not a blip
            raise AuthError(
                f"WellSky kept refusing the session after logging in again ({attempts_allowed} attempts); check "
                "the credentials and that the account may use this API",
                status=401,
            )
        hint = (
            f"each attempt took longer than request_deadline_seconds ({self._deadline:g} s): the tenant is trickling "
            "its answers; raise request_deadline_seconds or check the tenant's status"
            if last.reason == "deadline"
            else "raise max_retries or check the tenant's status"
        )
        what = method
        if last.auth_request is not None:  # the sign-in failed, not the request it was made for
            what, target = f"the sign-in ({last.auth_request.method})", last.auth_request.url
        raise WellSkyTransportError(
            f"{what} gave no usable answer within the retry budget (last: {last.reason}); {hint}",
            url=target,
            status=last.status,
            attempts=attempts_allowed,
            reason=last.reason,
        )

    # -- public API ---------------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        expected: Sequence[int] = (),
    ) -> httpx.Response:
        """Send one request with retries; 4xx other than 401/408/429 raise RemoteError unless in ``expected``."""
        response, _ = self._send(
            method,
            path,
            params=params,
            json=json,
            headers=headers,
            idempotency_key=idempotency_key,
            expected=expected,
        )
        return response

    def get_json(self, path: str | httpx.URL, params: Params = None) -> Any:
        """GET and decode JSON; truncated bodies are retried, then raised as RemoteError naming the path."""
        _, body = self._send("GET", path, params=params, parse_json=True)
        return body

    def post_read_json(self, path: str, params: Params = None, body: Any = None) -> Any:
        """POST a *read* (a query in a JSON body) and decode JSON: retried like a GET, since repeating a read
        changes nothing."""
        _, decoded = self._send("POST", path, params=params, json=body, parse_json=True, read=True)
        return decoded

    def trusted_url(self, link: str, *, what: str, code: str = "untrusted_url") -> httpx.URL:
        """A server-given link resolved against the tenant, refused unless it may get credentials (``trust.py``)."""
        return require_trusted(link, self.config, what=what, code=code)

    @contextmanager
    def stream(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        authenticate: bool = True,
    ) -> Iterator[httpx.Response]:
        """One request whose body the caller reads in chunks (bulk files), any status; no retries.

        For bodies too large to hold in memory and for callers that decide themselves what a status means and
        whether to try again (a bulk download restarts the whole file). ``authenticate=False`` sends no
        credentials: discovery documents and files the server says need no token. Connection failures are
        raised as :class:`WellSkyTransportError`.
        """
        request = self._http.build_request(method.upper(), url, params=params, headers=dict(headers or {}))
        self._guard(request, authenticated=authenticate and self.auth is not None)
        clock = WireClock(self._deadline)
        try:
            with exchange_deadline(clock):  # the head; the caller reads the body its own way
                response = self._send_once(request, auth=self.auth if authenticate else None)
        except RetryableAuthFailure as exc:
            raise WellSkyTransportError(
                f"login failed transiently ({exc.reason}); try again", url=request.url, attempts=1, reason=exc.reason
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if not self._connected:
                raise connect_failure(exc, request, 1) from None
            raise WellSkyTransportError(
                f"{type(exc).__name__}", url=request.url, attempts=1, reason="connection"
            ) from None
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.TimeoutException) and clock.passed():
                raise self._too_slow(request, 1) from None
            raise WellSkyTransportError(
                f"{type(exc).__name__}", url=request.url, attempts=1, reason="connection"
            ) from None
        self._connected = True
        try:
            yield response
        finally:
            response.close()

    def backoff(self, attempt: int) -> float:
        """The client's retry delay for ``attempt`` (1-based), for callers that retry on their own."""
        return self._backoff.delay(attempt)

    def sleep(self, seconds: float) -> None:
        """Wait through the client's sleeper (tests inject a fake clock)."""
        if seconds > 0:
            self._sleep(seconds)

    def close(self) -> None:
        self._http.close()
        if self._limiter is not None:
            self._limiter.close()

    def __enter__(self) -> WellSkyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WellSkyClient({self.config.base_url!r}, auth={type(self.auth).__name__})"


def _request_of(exc: httpx.TransportError) -> httpx.Request | None:
    """The request an httpx error was raised for, if httpx recorded it (not for a body read outside ``send``)."""
    try:
        return exc.request
    except RuntimeError:
        return None


__all__ = ["WellSkyClient"]
