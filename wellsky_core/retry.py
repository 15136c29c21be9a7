"""Whether one attempt of a request is retried, and how long to wait first.

Two pure pieces the client (``transport.py``) composes per attempt:

- **classification** — :func:`classify_exception` and :func:`classify_response` turn what one attempt got
  (an exception or a response) into a :class:`Retry` (why, and any server-requested wait), ``None`` (the
  response is usable) or a raised error that no retry can fix. The rules:

  - retried: 5xx, 408, 429, dropped connections, read timeouts (and truncated JSON, see ``transport.py``);
  - writes that are not idempotent (POST without an idempotency key) are retried only when the server cannot
    have applied them (429, 503, connection refused), since a replay could double-book a visit;
  - a host that refuses the very first connection fails at once (a wrong ``base_url``, not a blip);
  - a 401 after the auth flow already logged in again is a credentials problem, except a session that died
    once more between the re-login and its replay (retried within the retry budget: parallel streams can
    meet several expiries in a row).

- **backoff** — :class:`Backoff`: exponential with full jitter (``uniform(0, min(max, base * 2**(n-1)))``),
  or the server's ``Retry-After`` (capped) when it sent one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from .auth import parse_retry_after
from .errors import AuthError, RemoteError, RetryableAuthFailure, WellSkyTransportError, error_fields, redact_url

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
MAX_RETRY_AFTER_SECONDS = 900.0
EXPIRY_CODES = frozenset({"session_expired", "invalid_session", "cookie_rotated", "token_expired", "invalid_token"})
"""401 codes meaning "log in again", as opposed to credentials that are wrong."""


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


def is_safe(method: str, idempotency_key: str | None) -> bool:
    """Whether replaying the request cannot apply it twice."""
    return method.upper() in IDEMPOTENT_METHODS or idempotency_key is not None


def classify_exception(
    exc: Exception, request: httpx.Request, *, safe: bool, connected: bool, attempt: int
) -> Retry:
    """An attempt that raised: the retry to make, or raise the error that no retry can fix."""
    method = request.method
    if isinstance(exc, RetryableAuthFailure):
        return Retry(exc.reason, exc.status, exc.retry_after, " during login")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        if not connected:
            raise connect_failure(exc, request, attempt) from None
        return Retry("connection", detail=f" ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError):  # timeouts included: both may have reached the server
        reason = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
        if not safe:
            raise WellSkyTransportError(
                _MAY_HAVE_APPLIED[reason].format(method=method), url=request.url, attempts=attempt, reason=reason
            ) from None
        return Retry(reason, detail=f" ({type(exc).__name__})")
    raise exc


def classify_response(
    response: httpx.Response, *, safe: bool, expected: Sequence[int], attempt: int
) -> Retry | None:
    """A response: ``None`` when it is usable (2xx or ``expected``), a retry, or raise what cannot be retried."""
    status = response.status_code
    url = response.request.url
    if status in expected:
        return None
    if status == 401:
        code, message = error_fields(response)
        if safe and code in EXPIRY_CODES:
            # the session died again between the re-login and its replay (a mass expiry, or parallel streams
            # meeting several expiries): another pass through the auth flow logs in afresh or replays with the
            # session another thread just opened. Bad credentials fail at login instead; the retry budget
            # bounds a tenant that kills every session it hands out.
            return Retry("401", 401)
        raise AuthError(
            f"WellSky rejected the credentials for {redact_url(url)} even after logging "
            f"in again ({code or 401}: {message or 'no detail'}); check the auth settings",
            status=401,
        )
    if status in (408, 429) or status >= 500:
        if not safe and status not in (429, 503):
            code, message = error_fields(response)
            raise RemoteError(status, code, message, url=url)
        wait = parse_retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
        return Retry(str(status), status, wait)
    if status >= 300:
        code, message = error_fields(response)
        raise RemoteError(status, code, message, url=url)
    return None


def connect_failure(exc: Exception, request: httpx.Request, attempt: int) -> WellSkyTransportError:
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
