"""The one status -> action policy: what an HTTP answer (or a failed send) means, for every caller.

Every caller consults this module: the client's attempt loop, the auth flows' logins and token fetches, the
bulk export's polling and downloads, and writes (through the client). The rules (the only place they are
stated; ``tests/core/test_http_policy.py`` checks no other module names these statuses):

==================================  ==========  ==============================================================
answer                              action      notes
==================================  ==========  ==============================================================
2xx                                 ok          usable
401                                 reauth      log in again and replay once; a second 401 blames credentials
408, 5xx                            retry       only when a replay cannot apply the request twice (safe)
429, 503                            retry       even for a write without an idempotency key: the server
                                                refused it before doing anything
other 3xx / 4xx                     fail        a clear error (status, machine code, request id, fix)
connect refused / connect timeout   retry       the request never left; the very first connect fails at once
read timeout, dropped connection    retry       safe requests only: a write may have been applied
==================================  ==========  ==============================================================

The wait before a retry is the server's ``Retry-After`` when it sent one (:func:`retry_after`: delta-seconds,
an HTTP date, or the absolute epoch some servers send), capped at :data:`MAX_RETRY_AFTER_SECONDS`, else
:class:`Backoff` (exponential with full jitter). A bulk status poll (202 in progress) reads the same header.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

import httpx

from ..errors import (
    AuthError,
    RemoteError,
    RetryableAuthFailure,
    WellSkyTransportError,
    WriteOutcomeUnknown,
    redact_url,
)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
MAX_RETRY_AFTER_SECONDS = 900.0
EXPIRY_CODES = frozenset({"session_expired", "invalid_session", "cookie_rotated", "token_expired", "invalid_token"})
"""401 codes meaning "log in again", as opposed to credentials that are wrong."""


class Action(StrEnum):
    """What a caller does with one answer."""

    OK = "ok"
    RETRY = "retry"
    """Transient: wait (``Retry-After`` or backoff) and send again, within ``max_retries``."""
    REAUTH = "reauth"
    """The credential expired: log in again and replay once."""
    FAIL = "fail"
    """No retry fixes it: raise a clear error."""


@dataclass(frozen=True)
class Rule:
    """The policy for one status (or one kind of transport failure)."""

    action: Action
    unapplied: bool = False
    """The server cannot have applied the request, so even a write without an idempotency key may be replayed."""


STATUS_RULES: Mapping[int, Rule] = {
    401: Rule(Action.REAUTH),
    408: Rule(Action.RETRY),
    429: Rule(Action.RETRY, unapplied=True),
    503: Rule(Action.RETRY, unapplied=True),
}
"""Statuses with their own rule; the rest follow their class (see :func:`rule_for`)."""
SERVER_ERROR = Rule(Action.RETRY)
"""Every other 5xx."""
REFUSED = Rule(Action.FAIL)
"""Every other 3xx and 4xx (redirects are never followed: see ``trust.py``)."""
USABLE = Rule(Action.OK)

EXCEPTION_RULES: tuple[tuple[type[Exception], Rule], ...] = (
    (httpx.ConnectError, Rule(Action.RETRY, unapplied=True)),
    (httpx.ConnectTimeout, Rule(Action.RETRY, unapplied=True)),
    (httpx.TransportError, Rule(Action.RETRY)),  # read timeouts, dropped connections: may have reached the server
)
"""Transport failures, first match wins."""


def rule_for(status: int) -> Rule:
    """The rule for one HTTP status."""
    explicit = STATUS_RULES.get(status)
    if explicit is not None:
        return explicit
    if server_failed(status):
        return SERVER_ERROR
    if status >= 300:
        return REFUSED
    return USABLE


def server_failed(status: int) -> bool:
    """Whether the server failed (5xx) rather than refused the request: a write run stops instead of
    dead-lettering the record, since the same failure would meet every record after it."""
    return status >= 500


def write_run_stops(error: RemoteError) -> bool:
    """Whether a remote error during a write stops the write run rather than dead-lettering the record: the
    server failed (:func:`server_failed`), or it said yes with an answer that is not the record
    (``WriteOutcomeUnknown``), so the write's outcome is unknown and must not be guessed."""
    return server_failed(error.status) or isinstance(error, WriteOutcomeUnknown)


def is_retryable(status: int) -> bool:
    """Whether an answer with ``status`` is transient (worth the same request again after a wait)."""
    return rule_for(status).action is Action.RETRY


def needs_reauth(status: int) -> bool:
    """Whether an answer with ``status`` means the credential must be renewed."""
    return rule_for(status).action is Action.REAUTH


def exception_rule(exc: BaseException) -> Rule | None:
    """The rule for a failed send, or None for an exception that is not a transport failure."""
    for kind, rule in EXCEPTION_RULES:
        if isinstance(exc, kind):
            return rule
    return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad.

    A number too large to be a delay is read as the absolute epoch some servers send instead (in seconds, or in
    milliseconds above 1e12, as SMART's reference Bulk Data server does).
    """
    if not value:
        return None
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if number > 1e9:
            clock = time.time() if now is None else now
            return max(0.0, (number / 1000 if number > 1e12 else number) - clock)
        return max(0.0, number)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after(response: httpx.Response) -> float | None:
    """The wait the server asked for with this answer (``Retry-After``), or None."""
    return parse_retry_after(response.headers.get("retry-after"))


# -- the client's attempt loop ------------------------------------------------------------------------------
_MAY_HAVE_APPLIED = {
    "timeout": "{method} timed out and may have been applied; retry it with an idempotency key or raise "
    "timeout_seconds",
    "connection": "connection dropped during {method}; the write may have been applied: resend it with an "
    "idempotency key",
}
"""Why a non-idempotent request is not replayed after it may have reached the server, and what to do."""


@dataclass(frozen=True)
class Retry:
    """One failed attempt worth repeating."""

    reason: str
    """Metrics and log label: the status code, ``connection``, ``timeout``, ``malformed`` or an auth reason."""
    status: int | None = None
    retry_after: float | None = None
    """Seconds the server asked us to wait (``Retry-After``), if it did."""
    detail: str = ""
    """Extra words for the retry log line (the exception type, "during login")."""
    auth_request: httpx.Request | None = None
    """The login or token request that failed, when it was one."""


def is_safe(method: str, idempotency_key: str | None) -> bool:
    """Whether replaying the request cannot apply it twice."""
    return method.upper() in IDEMPOTENT_METHODS or idempotency_key is not None


def raise_if_transient(response: httpx.Response) -> None:
    """For the auth flows: a transient answer to a login or token request becomes a retry of the whole request."""
    status = response.status_code
    if is_retryable(status):
        raise RetryableAuthFailure(str(status), status=status, retry_after=retry_after(response), response=response)


def classify_exception(
    exc: Exception, request: httpx.Request, *, safe: bool, connected: bool, attempt: int
) -> Retry:
    """An attempt that raised: the retry to make, or raise the error that no retry can fix."""
    method = request.method
    if isinstance(exc, RetryableAuthFailure):
        return Retry(exc.reason, exc.status, exc.retry_after, " during login", auth_request=exc.request)
    rule = exception_rule(exc)
    if rule is None:
        raise exc
    if rule.unapplied:
        if not connected:
            raise connect_failure(exc, request, attempt) from None
        return Retry("connection", detail=f" ({type(exc).__name__})")
    reason = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
    if not safe:
        raise WellSkyTransportError(
            _MAY_HAVE_APPLIED[reason].format(method=method), url=request.url, attempts=attempt, reason=reason
        ) from None
    return Retry(reason, detail=f" ({type(exc).__name__})")


def classify_response(
    response: httpx.Response, *, safe: bool, expected: Sequence[int], attempt: int
) -> Retry | None:
    """A response: ``None`` when it is usable (2xx or ``expected``), a retry, or raise what cannot be retried."""
    status = response.status_code
    if status in expected:
        return None
    rule = rule_for(status)
    if rule.action is Action.OK:
        return None
    if rule.action is Action.REAUTH:
        # the auth flow already logged in again and replayed once (``RefreshingAuth.auth_flow``)
        error = RemoteError.from_response(response, fix="")
        if safe and error.code in EXPIRY_CODES:
            # the session died again between the re-login and its replay (a mass expiry, or parallel streams
            # meeting several expiries): another pass through the auth flow logs in afresh or replays with the
            # session another thread just opened. Bad credentials fail at login instead; the retry budget
            # bounds a tenant that kills every session it hands out.
            return Retry(str(status), status)
        raise AuthError(
            f"WellSky rejected the credentials for {redact_url(response.request.url)} even after logging in again "
            f"({error.tag}); check the auth settings",
            status=status,
        )
    if rule.action is Action.RETRY and (safe or rule.unapplied):
        return Retry(str(status), status, retry_after(response))
    fix = (
        "the write was not replayed because it may have been applied; resend it with an idempotency key"
        if rule.action is Action.RETRY
        else None
    )
    raise RemoteError.from_response(response, fix=fix)


def connect_failure(exc: BaseException, request: httpx.Request, attempt: int) -> WellSkyTransportError:
    """The very first connection failed: name the setting to fix (``ca_bundle`` for TLS, else ``base_url``)."""
    tls = "CERTIFICATE_VERIFY_FAILED" in str(exc) or "SSL" in type(exc).__name__
    fix = (
        "the server certificate is not trusted; set `ca_bundle` to your CA's PEM (or verify_tls=false "
        "for a test tenant)"
        if tls
        else "check `base_url` (host, port and scheme) and that the tenant is reachable from here"
    )
    return WellSkyTransportError(
        f"cannot connect to {request.url.host}: {fix}", url=request.url, attempts=attempt, reason="connect"
    )


class Backoff:
    """How long to wait before attempt ``n + 1``: full jitter, so clients do not synchronize."""

    def __init__(self, base_seconds: float, max_seconds: float, *, rng: random.Random | None = None) -> None:
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self._rng = rng or random.Random()

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait after failed attempt ``attempt`` (1-based); the server's ``Retry-After`` wins, capped."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_SECONDS)
        cap = min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))
        return self._rng.uniform(0, cap)
