"""The one exception hierarchy of the core: every exception class the connector raises is defined here.

::

    WellSkyError                      base: catch this one type
    ├── ConfigError                   a setting cannot work (lists every bad key); raised before any request
    ├── AuthError                     credentials refused (login, MFA, OAuth token)
    │   ├── LoginAnswerUnusable       a login answer too large or too slow to be WellSky's
    │   └── MfaError                  no usable MFA code
    ├── WellSkyTransportError         no usable answer within the retry budget, or cannot connect
    │                                 (named so it never shadows ``httpx.TransportError``)
    ├── RemoteError                   WellSky answered an error that retrying cannot fix (4xx, unreadable body)
    ├── NormalizationError            a native record does not map to its canonical model (names the field)
    │   ├── NotThisEntity             a FHIR resource of the type that is not a record of the entity (skipped)
    │   ├── ReportFormatError         a portal report lacks its header row or a column
    │   └── Unsupported               an HL7 message type no stream carries (skipped and counted)
    ├── PortalLayoutChanged           the portal page lost an element the portal channel relies on
    ├── PortalHang                    a portal page stopped answering, even after a browser restart
    ├── LocalWriteFailed              a file the connector keeps (dead letters, audit) could not be written
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

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `--about` and discovery never need httpx (start-up time)
    import httpx


class WellSkyError(Exception):
    """Base class of every error raised by the core."""


SERVER_CODES = frozenset({
    # WellSky / Home Connect API codes the connector reacts to or names in a fix
    "authorization_exceeded", "authorization_expired", "conflict", "duplicate_external_id", "duplicate_mrn",
    "forbidden", "idempotency_key_reused", "internal_error", "invalid_credentials", "invalid_cursor",
    "invalid_idempotency_key", "invalid_json", "invalid_mfa_code", "invalid_parameter", "invalid_session",
    "invalid_signature", "invalid_token", "method_not_allowed", "mfa_locked", "not_found", "rate_limited",
    "read_only", "read_only_tenant", "server_error", "session_expired", "token_expired", "unauthenticated",
    "unknown_challenge", "unknown_entity", "unknown_field", "unknown_parameter", "unknown_resource",
    "url_expired", "validation_error", "cookie_rotated", "code_not_sent", "bad_request", "unavailable",
    "authorization_missing", "authorization_out_of_range", "service_not_authorized", "unknown_patient",
    "unknown_practitioner",
    # OAuth 2.0 (RFC 6749 5.2, RFC 6750 3.1)
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client", "unsupported_grant_type",
    "invalid_scope", "insufficient_scope",
    # FHIR OperationOutcome issue types
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown", "expired",
    "suppressed", "processing", "not-supported", "duplicate", "multiple-matches", "not-found", "deleted",
    "too-long", "code-invalid", "extension", "too-costly", "business-rule", "lock-error", "no-store",
    "exception", "timeout", "incomplete", "throttled", "transient", "informational",
    # WellSky and sandbox codes the tenant may answer with
    "account_locked", "gone", "internal", "invalid_body", "invalid_code", "invalid_events", "invalid_faults",
    "invalid_key", "invalid_option", "invalid_public_key", "invalid_setting", "invalid_url", "locked",
    "maintenance", "mfa_required", "no_modeled_dialect", "too_large", "unauthorized", "unknown_setting",
})
"""The machine codes an error may carry from a server's body: a short token from this list, else ``http_<status>``.

Anything else a server writes (messages, descriptions, diagnostics, an unknown code) is untrusted text that may
hold patient data (error bodies echo names and MRNs): it never enters an exception, a log line or an output.
"""
REQUEST_ID_HEADERS = ("x-request-id", "x-correlation-id", "request-id", "x-amzn-requestid", "x-ms-request-id")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _body(response: httpx.Response) -> Any:
    """The decoded JSON body, or None (not JSON, or a streamed answer nobody read)."""
    import httpx

    try:
        return response.json()
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        return None


def server_code(response: httpx.Response) -> str:
    """The answer's machine code: WellSky's ``error``, OAuth's ``error`` or an OperationOutcome's first
    ``issue.code``, kept only when it is in :data:`SERVER_CODES`; otherwise ``http_<status>``."""
    body = _body(response)
    code: Any = None
    if isinstance(body, dict):
        if body.get("resourceType") == "OperationOutcome":
            issues = body.get("issue")
            first = issues[0] if isinstance(issues, list) and issues else None
            code = first.get("code") if isinstance(first, dict) else None
        else:
            code = body.get("error") if isinstance(body.get("error"), str) else body.get("code")
    if isinstance(code, str) and code in SERVER_CODES:
        return code
    return f"http_{response.status_code}"


def request_id(response: httpx.Response) -> str | None:
    """The server's request id header (for the vendor's support), if it sent a plain token."""
    for name in REQUEST_ID_HEADERS:
        value = response.headers.get(name)
        if value and _REQUEST_ID.fullmatch(value.strip()):
            return value.strip()
    return None


ERROR_BODY_DIR = "wellsky_error_body_dir"
"""``response.extensions`` key: the private directory the client asks error bodies to be kept in (opt-in)."""


def keep_error_body(response: httpx.Response) -> str | None:
    """Write the raw body of an error answer to a 0600 file when the operator opted in (``save_error_bodies``).

    Only for an operator who needs the server's own words: the file is in the tenant's private state directory;
    the error names the file, never its content."""
    directory = response.extensions.get(ERROR_BODY_DIR) if hasattr(response, "extensions") else None
    if not directory:
        return None
    import os
    import time
    from pathlib import Path

    import httpx

    from .private_files import write_private

    try:
        content = response.content
    except httpx.ResponseNotRead:  # a stream nobody read: nothing to keep
        return None

    name = f"error-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{response.status_code}-{os.urandom(4).hex()}.body"
    try:
        return str(write_private(Path(directory) / name, content))
    except OSError:
        return None


_DEFAULT_FIXES = {
    400: "the server refused the request as malformed; check the values sent against the API docs",
    403: "the credentials lack permission for this request; check the client's role or oauth_scopes",
    404: "not found: check the id or path (and base_url)",
    409: "the record conflicts with one already in WellSky; look it up and update it instead",
    422: "the server refused the values sent; check the record against the API docs",
    423: "the record is locked in WellSky; retry once it is unlocked",
}


_CODE_FIXES = {
    "invalid_credentials": "check `username` and `password` (or `client_id` and `client_secret`)",
    "invalid_mfa_code": "the MFA code was refused; check the MFA settings (totp_secret, mfa_code_command)",
    "read_only_tenant": "the tenant is read-only for this client; ask the agency for write access or run read-only",
    "read_only": "the record or tenant is read-only; do not send writes for it",
    "authorization_exceeded": "the payer authorization has too few units left; extend it in WellSky or book fewer",
    "authorization_missing": "no payer authorization covers this visit; add one in WellSky first",
    "authorization_out_of_range": "the visit is outside the payer authorization's dates; adjust one of them",
    "service_not_authorized": "the payer authorization does not cover this service; check the service code",
    "unknown_patient": "the patient_id does not exist in the tenant; send an existing patient's id",
    "unknown_practitioner": "the practitioner_id does not exist in the tenant; send an existing practitioner's id",
    "duplicate_mrn": "another patient already has this MRN; look it up and update it instead",
    "duplicate_external_id": "another record already has this external_id; look it up and update it instead",
    "idempotency_key_reused": "an idempotency key was reused for a different body; do not edit a record mid-retry",
    "validation_error": "the server refused a value of the record; check it against the API docs",
}
"""Fixes for allow-listed codes that say more than their status does."""


def code_fix(code: str | None) -> str | None:
    """Our fix for an allow-listed code that says more than its status does, or None."""
    return _CODE_FIXES.get(code) if code else None


def default_fix(status: int, code: str | None = None) -> str:
    """What to do about an error answer, in our words (never the server's)."""
    if code in _CODE_FIXES:
        return _CODE_FIXES[code]
    if status in _DEFAULT_FIXES:
        return _DEFAULT_FIXES[status]
    from .http.policy import server_failed

    if server_failed(status):
        return "the server failed; try again later or check the tenant's status"
    return "check the request and the tenant's status"


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


class LoginAnswerUnusable(AuthError):
    """The login, MFA or token answer was larger than any WellSky sends, or took longer than the deadline: the
    host that answered is likely not WellSky's. A sign-in failure like a refusal (every stream stops, and the
    Airbyte face reports a config error), with our own sentence: nothing of the answer is in it."""

    own_text = True


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
    """WellSky answered with an error the connector cannot retry away (4xx, or a body it cannot read).

    Built from a response with :meth:`from_response`: the status, an allow-listed machine ``code``, the
    server's ``request_id`` and the fix; never the server's own text. ``message`` is always ours.
    """

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str | None,
        *,
        url: str | httpx.URL | None = None,
        request_id: str | None = None,
        body_file: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.fix = message
        self.request_id = request_id
        self.body_file = body_file
        self.url = redact_url(url) if url is not None else None
        where = f" from {self.url}" if self.url else ""
        text = f"WellSky returned {status}{where}"
        if code:
            text += f" [{code}]"
        if request_id:
            text += f" (request id {request_id})"
        if message:
            text += f": {message}"
        if body_file:
            text += f" (server's body kept in {body_file})"
        super().__init__(text)

    @property
    def tag(self) -> str:
        """``status code`` (and the request id): what other errors quote of this one."""
        rid = f", request id {self.request_id}" if self.request_id else ""
        return f"{self.status} {self.code or ''}".strip() + rid

    @classmethod
    def from_response(cls, response: httpx.Response, *, fix: str | None = None) -> RemoteError:
        """The error for a server's error answer: status, allow-listed code, request id and ``fix`` (default: by
        status; ``""`` for none), plus the file holding the raw body when ``save_error_bodies`` is on."""
        try:
            url: httpx.URL | None = response.request.url
        except RuntimeError:
            url = None
        code = server_code(response)
        return cls(
            response.status_code,
            code,
            default_fix(response.status_code, code) if fix is None else (fix or None),
            url=url,
            request_id=request_id(response),
            body_file=keep_error_body(response),
        )


class WriteOutcomeUnknown(RemoteError):
    """A write was answered 2xx with something that is not its record (not JSON, no id): it may have been
    applied. The write run stops on it (``policy.write_run_stops``); the outcome is never guessed."""


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

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None, response: Any = None
    ) -> None:
        super().__init__(f"transient failure during authentication ({reason})")
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.request: httpx.Request | None = getattr(response, "request", None)
        """The login or token request that failed (a final error names it, not the request it was made for)."""


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


class NotThisEntity(NormalizationError):
    """A resource of the entity's type that is not a record of it (a ClaimResponse for a claim, not a
    prior authorization): counted as skipped, not dead-lettered."""


class ReportFormatError(NormalizationError):
    """A downloaded report lacks its header row or a column: the vendor changed the file."""


class LocalWriteFailed(WellSkyError):
    """A file the connector keeps (dead letters, the audit trail) could not be written: a full volume, a lost
    permission. Our own sentence naming the setting and the OS reason; the run stops rather than go on as if
    the line had been kept."""

    own_text = True

    @classmethod
    def writing(cls, what: str, setting: str, exc: OSError) -> LocalWriteFailed:
        """``what`` (a file, or a line of one) that ``setting`` places could not be written, for ``exc``'s reason."""
        return cls(
            f"could not write {what} ({setting}): {exc.strerror or type(exc).__name__}; free space on its volume (or "
            f"fix its permissions), or set {setting} to another place, and run again"
        )

    @classmethod
    def from_os_error(cls, exc: BaseException) -> LocalWriteFailed | None:
        """Any other local write that failed for want of room (a window's spool under TMPDIR, a bulk export's
        spool, the Home Connect queue): the same kind of one line instead of an internal-error traceback, or
        None when ``exc`` is not such a failure (a bug stays a bug)."""
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            reason, where = exc.strerror or type(exc).__name__, exc.filename
        elif type(exc).__module__ == "sqlite3" and getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
            reason, where = "the disk is full (SQLite)", None
        else:
            return None
        import tempfile

        place = f"writing {where}" if isinstance(where, str) else "writing a temporary or state file"
        return cls(
            f"{reason} ({place}); free space on that volume, or point TMPDIR (temporary spools, now "
            f"{tempfile.gettempdir()}) or state_dir at a larger one, and run again from the last STATE"
        )


_NO_ROOM = frozenset({28, 122, 30})
"""ENOSPC, EDQUOT and EROFS on Linux: the volume is full, over quota, or read-only."""
_SQLITE_FULL = 13


class PortalHang(WellSkyError):
    """A portal page stopped answering within the configured wait, even after restarting the browser."""


class Unsupported(NormalizationError):
    """A message type no stream carries: skipped and counted by type, not dead-lettered."""

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type
        super().__init__("hl7", "MSH-9", f"unsupported message type {message_type}")
