"""The one exception hierarchy of the core: every exception class the connector raises is defined here.

::

    WellSkyError                      base: catch this one type
    ├── ConfigError                   a setting cannot work (lists every bad key); raised before any request
    ├── AuthError                     credentials refused (login, MFA, OAuth token)
    │   └── MfaError                  no usable MFA code
    ├── WellSkyTransportError         no usable answer within the retry budget, or cannot connect
    │                                 (named so it never shadows ``httpx.TransportError``)
    ├── RemoteError                   WellSky answered an error that retrying cannot fix (4xx, unreadable body)
    ├── NormalizationError            a native record does not map to its canonical model (names the field)
    ├── PortalLayoutChanged           the portal page lost an element the portal channel relies on
    ├── SignatureError                a webhook delivery whose signature is missing, wrong or too old
    ├── AuthorizationRefused          a booking the payer authorization does not cover
    ├── WriteRefused                  a record the target cannot write (machine-readable ``code``)
    ├── WriteAborted                  a write stopped by a fatal error; carries what was sent, for the audit
    ├── WriteRunRefusals              a write run ended with refused (dead-lettered) records: not plainly successful
    ├── SingerInputError              the Singer input itself is broken (names the line)
    ├── StateError                    the tap's input state is unusable (names the stream and the fix)
    └── RunNotClean                   a sync finished with dead letters (exit 3) or too many flagged records (exit 4)

    RetryableAuthFailure (Exception)  internal signal from auth to transport: retry the whole request;
                                      never surfaced to users
    LineOverBounds (Exception)        an input line past max_record_bytes/max_record_depth: the run dead-letters it
    ResponseTooLarge, RequestDeadlineExceeded (Exception)
                                      internal signals inside the transport's bounded body read

The target's ``RecordBeforeSchema`` also derives from singer-sdk's ``RecordsWithoutSchemaException``, so it
lives with the target (the core imports no singer-sdk).

Every error a tap, target or Airbyte face can see from WellSky derives from :class:`WellSkyError`, so callers
can catch one type. Messages say *what* setting or request was wrong and *how* to fix it; they never carry
secrets (passwords, tokens, cookies) or patient data (names, dates of birth, MRNs): URLs are reduced to their
path with query values masked, and normalization errors name the field, never the value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

if TYPE_CHECKING:  # imported where used: `--about` and discovery never need httpx (start-up time)
    import httpx


class WellSkyError(Exception):
    """Base class of every error raised by the core."""


MAX_SERVER_TEXT = 300
"""Server error codes and messages are cut to this many characters: a message is a hint, not a payload."""
_ECHO_MIN_LENGTH = 2
_ECHO_SUBSTRING_LENGTH = 6


def _request_values(request: httpx.Request | None) -> list[str]:
    """Every value the request carried (JSON/form body leaves, query values, credential headers), longest first.

    A server that echoes its input in an error message would otherwise hand our own password, session cookie
    or the patient's name, MRN and birth date straight back into an exception, a log line or stderr.
    """
    if request is None:
        return []
    values: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str | int | float) and not isinstance(node, bool):
            values.append(str(node))

    import httpx

    try:
        content = request.content
    except httpx.RequestNotRead:
        content = b""
    if content:
        text = content.decode("utf-8", "replace")
        try:
            walk(json.loads(text))
        except ValueError:
            walk([v for _, v in parse_qsl(text, keep_blank_values=False)])
    walk([v for _, v in request.url.params.multi_items()])
    for name in ("cookie", "authorization", "idempotency-key"):
        header = request.headers.get(name)
        if header:
            values.append(header)
            values += [part.partition("=")[2].strip() for part in header.split(";")]
            values += header.split()
    return sorted({v for v in values if len(v) >= _ECHO_MIN_LENGTH}, key=len, reverse=True)


def scrub_server_text(text: str | None, request: httpx.Request | None) -> str | None:
    """A server-supplied message with everything echoed from ``request`` masked, then the log redaction applied."""
    if not text:
        return text
    from .redaction import MASK, redact

    for value in _request_values(request):
        if value not in text:
            continue
        if len(value) >= _ECHO_SUBSTRING_LENGTH:
            text = text.replace(value, MASK)
        else:  # short values (a 2-letter surname, a count) only as whole words, so "10" leaves "100" alone
            text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", MASK, text)
    text = redact(text)
    return text if len(text) <= MAX_SERVER_TEXT else text[:MAX_SERVER_TEXT] + "…"


def error_fields(response: httpx.Response) -> tuple[str | None, str | None]:
    """The server's error code and message, from WellSky's ``{error, message}`` shape, OAuth's
    ``{error, error_description}`` or a FHIR OperationOutcome (``issue[0].code`` / ``diagnostics``).

    Both are scrubbed of anything the request carried (see :func:`scrub_server_text`): this is the one door
    through which server text enters our errors.
    """
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    if body.get("resourceType") == "OperationOutcome":
        issues = body.get("issue") or [{}]
        issue = issues[0] if isinstance(issues, list) and isinstance(issues[0], dict) else {}
        code = issue.get("code")
        details = issue.get("details")
        message = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else None)
    else:
        code = body.get("error")
        message = body.get("message") or body.get("error_description")
    try:
        request: httpx.Request | None = response.request
    except RuntimeError:  # a Response built by hand, without a request
        request = None
    return (
        scrub_server_text(str(code), request) if code else None,
        scrub_server_text(str(message), request) if message else None,
    )


@dataclass(frozen=True)
class ConfigProblem:
    """One bad configuration key and what to do about it."""

    field: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field}: {self.fix}"


class ConfigError(WellSkyError):
    """The configuration cannot work; raised before any request is made (fail fast)."""

    def __init__(self, field: str, fix: str, *, problems: Sequence[ConfigProblem] = ()) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems) or (ConfigProblem(field, fix),)
        self.field = self.problems[0].field
        self.fix = self.problems[0].fix
        if len(self.problems) == 1:
            message = f"invalid configuration: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"invalid configuration ({len(self.problems)} problems):\n{lines}"
        super().__init__(message)

    @classmethod
    def from_problems(cls, problems: Iterable[ConfigProblem]) -> ConfigError:
        """Build one error that lists every bad key, so a user fixes them all in one round trip."""
        items = tuple(problems)
        if not items:
            raise ValueError("ConfigError needs at least one problem")
        return cls(items[0].field, items[0].fix, problems=items)

    @property
    def fields(self) -> list[str]:
        return [p.field for p in self.problems]


class AuthError(WellSkyError):
    """WellSky refused the credentials (login, MFA or OAuth token request)."""

    def __init__(self, message: str, *, setting: str | None = None, status: int | None = None) -> None:
        self.setting = setting
        self.status = status
        super().__init__(message)


class MfaError(AuthError):
    """No usable MFA code: none arrived in time, or the tenant rejected it."""

    def __init__(self, message: str, *, method: str, setting: str | None = None) -> None:
        self.method = method
        super().__init__(message, setting=setting)


def redact_url(url: str | httpx.URL) -> str:
    """The URL with every query value masked: cursors, MRN filters and signatures stay out of messages."""
    import httpx

    parsed = httpx.URL(str(url))
    base = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}{parsed.path}" if parsed.scheme else parsed.path
    if not parsed.query:
        return base
    keys = [key for key, _ in parsed.params.multi_items()]
    return base + "?" + "&".join(f"{key}=***" for key in keys)


class WellSkyTransportError(WellSkyError):
    """The request could not get a usable answer within the retry budget (or could not connect at all)."""

    def __init__(
        self,
        message: str,
        *,
        url: str | httpx.URL,
        status: int | None = None,
        attempts: int = 1,
        reason: str | None = None,
    ) -> None:
        self.url = redact_url(url)
        self.status = status
        self.attempts = attempts
        self.reason = reason
        detail = f"status {status}" if status is not None else (reason or "no response")
        super().__init__(f"{message} [{self.url}; {detail}; {attempts} attempt(s)]")


class RemoteError(WellSkyError):
    """WellSky answered with an error the connector cannot retry away (4xx, or a body it cannot read)."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str | None,
        *,
        url: str | httpx.URL | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.server_message = message
        self.url = redact_url(url) if url is not None else None
        where = f" from {self.url}" if self.url else ""
        text = f"WellSky returned {status}{where}"
        if code:
            text += f" [{code}]"
        if message:
            text += f": {message}"
        super().__init__(text)


class NormalizationError(WellSkyError):
    """A native record could not be mapped to its canonical model. Names the field, never the value."""

    def __init__(self, entity: str, field: str, reason: str, *, record_id: str | None = None) -> None:
        self.entity = entity
        self.field = field
        self.reason = reason
        self.record_id = record_id
        where = f" (record {record_id})" if record_id else ""
        super().__init__(f"cannot normalize {entity}.{field}{where}: {reason}")


class AuthorizationRefused(WellSkyError):
    """A write was refused because the payer authorization does not cover it (or policy forbids it)."""

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        self.reason = reason
        self.code = code
        super().__init__(f"authorization refused{f' [{code}]' if code else ''}: {reason}")


class RetryableAuthFailure(Exception):  # a signal to the transport, never surfaced to users
    """A login or token request got a transient answer; the transport retries the whole request."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"transient failure during authentication ({reason})")
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class ResponseTooLarge(Exception):  # internal signal: the transport raises WellSkyTransportError naming the setting
    """A response body past ``max_response_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response larger than {limit} bytes")
        self.limit = limit


class RequestDeadlineExceeded(Exception):  # internal signal: retried like a timeout, then named in the error
    """One attempt took longer than ``request_deadline_seconds`` (headers and body together)."""


class PortalLayoutChanged(WellSkyError):
    """An element the portal channel relies on is missing: the vendor changed the page. Names page and selector."""

    def __init__(self, page: str, selector: str) -> None:
        self.page = page
        self.selector = selector
        super().__init__(
            f"portal layout changed: {selector} not found on {page}; the portal channel needs updating for the "
            "new layout (no records were emitted for this stream)"
        )


class SignatureError(WellSkyError):
    """A webhook request whose signature is missing, malformed, wrong or too old. Never holds the secret."""


class WriteRefused(WellSkyError):
    """A record that cannot be written; ``code`` is machine-readable, the message says why and how to fix it."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class WriteAborted(WellSkyError):
    """A write stopped by an error the run cannot continue past (5xx, transport); ``result`` says what was sent.

    The audit trail records ``result`` (action ``failed``, with the idempotency key already on the wire), so an
    aborted run still logs what it sent; the message is the cause's.
    """

    def __init__(self, result: object, cause: BaseException) -> None:
        self.result = result
        super().__init__(str(cause))


class WriteRunRefusals(WellSkyError):
    """Some records of a write run were refused (dead-lettered): the run must not look plainly successful."""


class LineOverBounds(Exception):
    """An input line past ``max_record_bytes`` / ``max_record_depth``: refused, kept as received, never parsed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SingerInputError(WellSkyError):
    """The Singer input itself is broken; the message names the line (never echoes its content)."""


class StateError(WellSkyError):
    """The tap's input state cannot be used; names the stream and the fix (never a traceback)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"invalid state: {problem}")


class RunNotClean(WellSkyError):
    """A sync that finished but must not be reported as plain success.

    ``exit_code`` 3: records were dead-lettered (the same code the target uses for refused writes);
    4: the share of flagged records of a stream exceeded ``max_flagged_fraction``.
    """

    def __init__(self, message: str, *, exit_code: int, label: str) -> None:
        self.exit_code = exit_code
        self.label = label
        super().__init__(message)
