"""``WellSkyClient``: the only way the tap and target talk HTTP to WellSky.

One pooled keep-alive ``httpx.Client`` per client; every request goes through the token bucket, the auth
flow (login, cookie rotation, re-auth on 401) and a retry loop:

- retried: 5xx, 408, 429, dropped connections, read timeouts, and truncated JSON bodies, with exponential
  backoff and full jitter (``uniform(0, min(max, base * 2**n))``), or the server's ``Retry-After`` on
  429/503 (seconds or an HTTP date);
- writes (POST without an idempotency key) are only retried when the server cannot have applied them
  (429, 503, connection refused), since a replay could double-book a visit;
- a host that refuses the very first connection fails at once (it is a wrong ``base_url``, not a blip);
- after ``max_retries`` the last failure is raised as :class:`~wellsky_core.errors.WellSkyTransportError` with
  the URL (query values masked), status and attempt count.

Each retry logs one line on ``wellsky_core.transport`` and is counted in :class:`~wellsky_core.metrics.Metrics`
by reason (the status code, ``connection``, ``timeout`` or ``malformed``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import orjson

from wellsky_core.auth import RefreshingAuth, build_auth, parse_retry_after
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import (
    AuthError,
    ConfigError,
    RemoteError,
    RetryableAuthFailure,
    WellSkyTransportError,
    error_fields,
    redact_url,
)
from wellsky_core.metrics import Metrics
from wellsky_core.ratelimit import TokenBucket
from wellsky_core.redaction import register_secret

logger = logging.getLogger("wellsky_core.transport")

USER_AGENT = "tap-wellsky/0.1 (+wellsky_core)"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
MAX_RETRY_AFTER_SECONDS = 900.0

Params = Mapping[str, Any] | None


def _no_cookie_jar() -> CookieJar:
    """A jar that stores nothing: the session cookie is owned by SessionAuth, never by httpx's shared jar."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


EXPIRY_CODES = frozenset({"session_expired", "invalid_session", "cookie_rotated", "token_expired", "invalid_token"})
"""401 codes meaning "log in again", as opposed to credentials that are wrong."""


class WellSkyClient:
    """A connection to one tenant: pooled HTTP, auth, rate limit, retries, pagination and metrics."""

    def __init__(
        self,
        config: WellSkyConfig,
        *,
        auth: httpx.Auth | None = None,
        metrics: Metrics | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
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
        self._limiter = TokenBucket(config.max_requests_per_second or None, burst=1)
        self._sleep = sleep
        self._rng = random.Random()
        self._connected = False
        timeout = httpx.Timeout(config.timeout_seconds, connect=min(config.timeout_seconds, 10.0))
        self._http = httpx.Client(
            base_url=config.base_url,
            timeout=timeout,
            verify=config.tls_verify(),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16, keepalive_expiry=30),
            headers={"user-agent": USER_AGENT, "accept": "application/json"},
            cookies=_no_cookie_jar(),
            follow_redirects=False,
            event_hooks={"request": [self._on_request]},
        )
        self._origin = self._http.base_url.copy_with(raw_path=b"/")

    # -- plumbing ---------------------------------------------------------------------------------------
    def _on_request(self, request: httpx.Request) -> None:
        self.metrics.add_request()

    def _backoff(self, attempt: int) -> float:
        """Full jitter: anywhere between 0 and the capped exponential step, so clients do not synchronize."""
        cap = min(self.config.backoff_max_seconds, self.config.backoff_base_seconds * 2 ** (attempt - 1))
        return self._rng.uniform(0, cap)

    def _fail_connect(self, exc: httpx.TransportError, request: httpx.Request, attempt: int) -> WellSkyTransportError:
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
    ) -> tuple[httpx.Response, Any]:
        method = method.upper()
        all_headers = dict(headers or {})
        if idempotency_key:
            all_headers["Idempotency-Key"] = idempotency_key
        safe = method in IDEMPOTENT_METHODS or idempotency_key is not None
        attempts_allowed = self.config.max_retries + 1
        status: int | None = None
        reason = "unknown"
        target: httpx.URL | str = url
        for attempt in range(1, attempts_allowed + 1):
            self.metrics.add_rate_limit_wait(self._limiter.acquire())
            request = self._http.build_request(method, url, params=params, json=json, headers=all_headers)
            target = request.url
            retry_after: float | None = None
            detail = ""
            try:
                response = self._http.send(request, auth=self.auth)
            except RetryableAuthFailure as exc:
                status, reason, retry_after = exc.status, exc.reason, exc.retry_after
                detail = " during login"
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if not self._connected:
                    raise self._fail_connect(exc, request, attempt) from None
                status, reason, detail = None, "connection", f" ({type(exc).__name__})"
            except httpx.TimeoutException as exc:
                status, reason, detail = None, "timeout", f" ({type(exc).__name__})"
                if not safe:
                    raise WellSkyTransportError(
                        f"{method} timed out and may have been applied; retry it with an idempotency key "
                        "or raise timeout_seconds",
                        url=request.url,
                        attempts=attempt,
                        reason=reason,
                    ) from None
            except httpx.TransportError as exc:
                status, reason, detail = None, "connection", f" ({type(exc).__name__})"
                if not safe:
                    raise WellSkyTransportError(
                        f"connection dropped during {method}; the write may have been applied: resend it "
                        "with an idempotency key",
                        url=request.url,
                        attempts=attempt,
                        reason=reason,
                    ) from None
            else:
                self._connected = True
                self.metrics.add_bytes(len(response.content))
                status = response.status_code
                if status in expected:
                    return response, None
                if status == 401 and safe and error_fields(response)[0] in EXPIRY_CODES and attempt == 1:
                    # the session died again between the re-login and its replay (e.g. a mass expiry):
                    # one more pass through the auth flow logs in afresh; bad credentials fail at login instead
                    reason = "401"
                elif status == 401:
                    code, message = error_fields(response)
                    raise AuthError(
                        f"WellSky rejected the credentials for {redact_url(request.url)} even after logging "
                        f"in again ({code or 401}: {message or 'no detail'}); check the auth settings",
                        status=401,
                    )
                elif status in (408, 429) or status >= 500:
                    reason = str(status)
                    if status in (429, 503):
                        retry_after = parse_retry_after(response.headers.get("retry-after"))
                    if not safe and status not in (429, 503):
                        code, message = error_fields(response)
                        raise RemoteError(status, code, message, url=request.url)
                elif status >= 300:
                    code, message = error_fields(response)
                    raise RemoteError(status, code, message, url=request.url)
                elif not parse_json:
                    return response, None
                else:
                    try:
                        return response, orjson.loads(response.content)  # ~3x faster than json on big pages
                    except (ValueError, UnicodeDecodeError):
                        reason = "malformed"
                        if not safe or attempt == attempts_allowed:
                            raise RemoteError(
                                status,
                                "malformed_json",
                                f"the body of {request.url.path} is not valid JSON (truncated?) after "
                                f"{attempt} attempt(s)",
                                url=request.url,
                            ) from None
            if attempt == attempts_allowed:
                break
            wait = self._backoff(attempt)
            if retry_after is not None:
                wait = min(retry_after, MAX_RETRY_AFTER_SECONDS)
            self.metrics.add_retry(reason)
            logger.warning(
                "retrying %s %s after %s%s: attempt %d of %d, waiting %.2f s",
                method,
                redact_url(request.url),
                reason,
                detail,
                attempt + 1,
                attempts_allowed,
                wait,
            )
            if wait > 0:
                self._sleep(wait)
        raise WellSkyTransportError(
            f"{method} gave no usable answer within the retry budget (last: {reason}); raise max_retries "
            "or check the tenant's status",
            url=target,
            status=status,
            attempts=attempts_allowed,
            reason=reason,
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

    def iter_pages(self, path: str, params: Params = None) -> Iterator[list[dict[str, Any]]]:
        """Yield ``data`` of each REST page, following ``next_cursor`` until it is null.

        A page is fetched again (same cursor) after any retry or re-login, so no page is lost or repeated.
        """
        query = dict(params or {})
        query.setdefault("limit", self.config.page_size)
        previous: str | None = None
        while True:
            body = self.get_json(path, query)
            if not isinstance(body, dict) or not isinstance(body.get("data"), list):
                raise RemoteError(
                    200, "unexpected_shape", f'{path} did not answer {{"data": [...], "next_cursor": ...}}', url=path
                )
            page: list[dict[str, Any]] = body["data"]
            self.metrics.add_page(len(page))
            yield page
            cursor = body.get("next_cursor")
            if not cursor:
                return
            if cursor == previous:
                raise RemoteError(200, "cursor_loop", f"{path} returned the same next_cursor twice", url=path)
            previous = cursor
            query["cursor"] = cursor

    def same_origin(self, link: str) -> httpx.URL:
        """A server-given link resolved against the tenant, refused when it points elsewhere (see below)."""
        return self._same_origin(link)

    def _same_origin(self, link: str) -> httpx.URL:
        """Resolve a Bundle ``next`` link; refuse other hosts so credentials never leave the tenant."""
        url = self._http.base_url.join(link) if not httpx.URL(link).is_absolute_url else httpx.URL(link)
        if (url.scheme, url.host, url.port) != (self._origin.scheme, self._origin.host, self._origin.port):
            raise RemoteError(
                200,
                "foreign_next_link",
                "a FHIR Bundle next link points to another host; refusing to send credentials there",
                url=url.copy_with(query=None),
            )
        return url

    def iter_fhir_bundles(self, path: str, params: Params = None) -> Iterator[dict[str, Any]]:
        """Yield each searchset Bundle, following ``link[relation=next]`` until there is none."""
        target: str | httpx.URL = path
        query: dict[str, Any] | None = dict(params or {})
        seen: set[str] = set()
        while True:
            bundle = self.get_json(target, query or None)
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise RemoteError(200, "unexpected_shape", f"{path} did not answer a FHIR Bundle", url=path)
            self.metrics.add_page(len(bundle.get("entry") or []))
            yield bundle
            links = bundle.get("link") or []
            next_link = next((lk.get("url") for lk in links if lk.get("relation") == "next" and lk.get("url")), None)
            if not next_link:
                return
            target = self._same_origin(str(next_link))
            if str(target) in seen:
                raise RemoteError(200, "link_loop", f"{path} returned the same next link twice", url=path)
            seen.add(str(target))
            query = None

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
        self.metrics.add_rate_limit_wait(self._limiter.acquire())
        request = self._http.build_request(method.upper(), url, params=params, headers=dict(headers or {}))
        try:
            response = self._http.send(request, auth=self.auth if authenticate else None, stream=True)
        except RetryableAuthFailure as exc:
            raise WellSkyTransportError(
                f"login failed transiently ({exc.reason}); try again", url=request.url, attempts=1, reason=exc.reason
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if not self._connected:
                raise self._fail_connect(exc, request, 1) from None
            raise WellSkyTransportError(
                f"{type(exc).__name__}", url=request.url, attempts=1, reason="connection"
            ) from None
        except httpx.TransportError as exc:
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
        return self._backoff(attempt)

    def sleep(self, seconds: float) -> None:
        """Wait through the client's sleeper (tests inject a fake clock)."""
        if seconds > 0:
            self._sleep(seconds)

    def tenant(self) -> dict[str, Any]:
        """``GET /tenant``: proves the URL, TLS and credentials work (the connector's health check)."""
        body = self.get_json("/tenant")
        if not isinstance(body, dict):
            raise RemoteError(200, "unexpected_shape", "/tenant did not answer a JSON object", url="/tenant")
        return body

    check = tenant

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> WellSkyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WellSkyClient({self.config.base_url!r}, auth={type(self.auth).__name__})"


__all__ = ["WellSkyClient"]
