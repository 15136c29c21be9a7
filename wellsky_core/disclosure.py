"""What any output may say about an error: the one home of "server text never leaves the process".

Every sink — the tap's and target's stderr line and summary, Airbyte TRACE and CONNECTION_STATUS messages, log
lines (an exception passed as an argument or as ``exc_info``), uncaught exceptions in threads, dead-letter
``reason``, the audit's ``code`` — renders an exception through :func:`public_message`, never ``str(exc)``.

Why not ``str(exc)``: an error built from a response may quote the server ("Patient Jane Q Okonkwo (MRN ...)
is locked"), and a server's text is untrusted patient data. So for the errors that carry server-derived fields
(:class:`RemoteError`, :class:`AuthError`, :class:`AuthorizationRefused`, :class:`WriteAborted`, and anything
that is not ours) only *structured* fields are shown: the HTTP status, the machine code if it is on
:data:`ALLOWED_CODES` (otherwise ``unlisted_code``), the server's request id if it is token-shaped, the redacted
URL path, and a fix we wrote ourselves (the error's ``fix`` attribute, else ``errors.default_fix``).
Errors whose message is composed only by our code from our own words, setting and field names
(:data:`_OWN_TEXT`) keep their message. Everything is passed through :func:`redaction.redact` last.

Extending: a new machine code → add it to :data:`ALLOWED_CODES`; a new error class with server-derived fields →
it is rendered structurally by default; add it to :data:`_OWN_TEXT` (or give a class outside the core a class
attribute ``own_text = True``) only if no server text can reach its message.
"""

from __future__ import annotations

import functools
import re
import traceback
from types import TracebackType
from typing import Any

from . import errors
from .errors import (
    SERVER_CODES,
    AuthError,
    AuthorizationRefused,
    ConfigError,
    MfaError,
    NormalizationError,
    PortalLayoutChanged,
    RemoteError,
    RunNotClean,
    SignatureError,
    SingerInputError,
    StateError,
    WellSkyError,
    WellSkyTransportError,
    WriteAborted,
    WriteRefused,
    WriteRunRefusals,
    code_fix,
    default_fix,
)
from .private_files import UnsafePathError
from .redaction import redact

OTHER_CODE = "unlisted_code"
"""Shown instead of a machine code that is not on the allow-list (it may be free text from the server)."""

OWN_CODES: frozenset[str] = frozenset(
    {
        # our own codes (errors we raise, write refusals)
        "unexpected_shape", "malformed_json", "invalid_listing", "foreign_next_link", "input_bounds",
        "control_character", "ambiguous_natural_key", "unknown_id", "rejected", "stream_not_writable",
        "unmappable_record", "http_error", "agency_unknown", "deletion_not_written", "page_loop", "stream_refused",
        "missing_key", "foreign_bulk_url", "foreign_portal_link", "not_supported", "subscription_refused",
        # transport retry reasons (WellSkyTransportError.reason)
        "connection", "connect", "deadline", "malformed", "download", "poll_timeout",
    }
)  # fmt: skip
ALLOWED_CODES: frozenset[str] = SERVER_CODES | OWN_CODES
"""Machine codes an output may show: a server's, when on ``errors.SERVER_CODES`` (the one allow-list of server
codes), or one of ours."""

_ERROR_NAMES = frozenset(
    name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, BaseException)
)
_STATUS_CODE = re.compile(r"[1-5][0-9]{2}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{5,79}")

_OWN_TEXT: tuple[type[BaseException], ...] = (
    ConfigError,
    StateError,
    SingerInputError,
    RunNotClean,
    WriteRunRefusals,
    PortalLayoutChanged,
    SignatureError,
    NormalizationError,
    WellSkyTransportError,
    WriteRefused,
    UnsafePathError,
)
"""Errors whose message our code composes from our own words, setting names, field names and type names."""


def safe_code(code: object) -> str | None:
    """``code`` if it is an allow-listed machine code or an HTTP status, else :data:`OTHER_CODE`."""
    if code is None or code == "":
        return None
    text = str(code)
    if text in ALLOWED_CODES or _STATUS_CODE.fullmatch(text) or text in _ERROR_NAMES:
        return text
    return OTHER_CODE


_SEVERITIES = frozenset({"fatal", "error", "warning", "information"})
_FHIR_ID = re.compile(r"[A-Za-z0-9.-]{1,64}")


def public_outcome(outcome: object) -> dict[str, Any]:
    """A FHIR OperationOutcome the server wrote (a bulk export's error file), as any output may hold it: its id
    if id-shaped, and each issue's severity and allow-listed code (:func:`safe_code`). Diagnostics, details,
    expressions and locations are server text (they may name a patient): left out."""
    body = outcome if isinstance(outcome, dict) else {}
    issues = body.get("issue") if isinstance(body.get("issue"), list) else [{}]
    shown: dict[str, Any] = {"resourceType": "OperationOutcome"}
    if isinstance(body.get("id"), str) and _FHIR_ID.fullmatch(body["id"]):
        shown["id"] = body["id"]
    shown["issue"] = [
        {
            "severity": issue.get("severity") if issue.get("severity") in _SEVERITIES else None,
            "code": safe_code(issue.get("code")) or "unknown",
        }
        for issue in (i if isinstance(i, dict) else {} for i in issues or [{}])
    ]
    return shown


def safe_request_id(value: object) -> str | None:
    """The server's request id if it is token-shaped (no spaces, 6-80 characters, a letter among them)."""
    if not isinstance(value, str) or not _REQUEST_ID.fullmatch(value) or not re.search(r"[A-Za-z]", value):
        return None
    return redact(value)


@functools.cache
def _known_fields() -> frozenset[str]:
    """Every field name of the canonical models, nested models (``Address``, list items) included."""
    from typing import get_args

    from .models import ENTITIES

    names: set[str] = set()
    seen: set[object] = set()

    def walk(annotation: object) -> None:
        if annotation in seen:
            return
        seen.add(annotation)
        fields = getattr(annotation, "model_fields", None)
        if isinstance(fields, dict):
            names.update(fields)
            for info in fields.values():
                walk(info.annotation)
        for arg in get_args(annotation):
            walk(arg)

    for spec in ENTITIES.values():
        walk(spec.model)
    return frozenset(names)


_FIELD_PATH = re.compile(r"[a-z][a-z0-9_]{0,40}(?:(?:\.|\[)[a-z0-9_]{1,40}\]?){0,4}")


def safe_field(value: object) -> str | None:
    """A field path the server named (``end``, ``address.postal_code``), if every name in it is one of our
    canonical field names; a value or free text is not shown."""
    if not isinstance(value, str) or not _FIELD_PATH.fullmatch(value):
        return None
    parts = [p for p in re.split(r"[.\[\]]", value) if p and not p.isdigit()]
    known = _known_fields()
    return value if parts and all(p in known for p in parts) else None


def _fix(exc: BaseException, status: int | None) -> str | None:
    fix = getattr(exc, "fix", None)
    if isinstance(fix, str) and fix:
        return fix  # written by our code where the error is built, never the server's text
    code = getattr(exc, "code", None)
    known = code_fix(code) if isinstance(code, str) else None
    return known or (default_fix(status) if status else None)


def _structured(what: str, exc: BaseException, *, status: int | None, code: object, url: str | None = None) -> str:
    parts = [what]
    if url:
        parts.append(f"from {url}")
    if status is not None:
        parts.append(f"(HTTP {status})")
    shown = safe_code(code)
    if shown:
        parts.append(f"[{shown}]")
    field = safe_field(getattr(exc, "field", None))
    if field:
        parts.append(f"field {field}")
    request_id = safe_request_id(getattr(exc, "request_id", None))
    if request_id:
        parts.append(f"request id {request_id}")
    text = " ".join(parts)
    fix = _fix(exc, status)
    return f"{text}; {fix}" if fix else text


def _render(exc: BaseException) -> str:
    if isinstance(exc, WriteAborted):  # its result's reason is the cause's public message (writes._aborted)
        reason = getattr(exc.result, "reason", None)
        return "the write run stopped: " + (reason if isinstance(reason, str) and reason else "fatal error")
    if isinstance(exc, _OWN_TEXT) or type(exc) is WellSkyError or getattr(type(exc), "own_text", False):
        return str(exc)  # a plain WellSkyError, or a class marked ``own_text``: our channels' own sentences
    if isinstance(exc, MfaError):
        setting = f"; check `{exc.setting}`" if exc.setting else ""
        return f"no usable MFA code ({exc.method}){setting}"
    if isinstance(exc, AuthError):
        if not exc.setting:
            setting = "the credentials"
        elif "`" in exc.setting:  # a phrase that quotes its own settings ("`client_id` and `client_secret`")
            setting = exc.setting
        else:  # one setting's name
            setting = f"`{exc.setting}`"
        status = f" (HTTP {exc.status})" if exc.status is not None else ""
        code = safe_code(getattr(exc, "code", None))
        label = f" [{code}]" if code else ""
        fix = getattr(exc, "fix", None)
        return f"WellSky did not accept the login{status}{label}; " + (
            fix if isinstance(fix, str) and fix else f"check {setting}"
        )
    if isinstance(exc, RemoteError):
        return _structured("WellSky returned an error", exc, status=exc.status, code=exc.code, url=exc.url)
    if isinstance(exc, AuthorizationRefused):
        return _structured("the payer authorization does not cover this appointment", exc, status=None, code=exc.code)
    if isinstance(exc, WellSkyError):
        return _structured(f"{type(exc).__name__}", exc, status=getattr(exc, "status", None), code=None)
    if isinstance(exc, OSError):
        where = f" ({exc.strerror})" if exc.strerror else ""
        return f"{type(exc).__name__}{where}"
    return f"unexpected {type(exc).__module__}.{type(exc).__name__}"


def public_message(exc: BaseException) -> str:
    """The text any output may show for ``exc``: structured fields and our own words only, redacted."""
    try:
        return redact(_render(exc), keyed_values=not isinstance(exc, _OWN_TEXT))
    except Exception:  # rendering must never fail a sink
        return f"{type(exc).__name__}"


def public_traceback(exc: BaseException | None, tb: TracebackType | None = None) -> str:
    """A traceback whose frames are kept but whose every exception line is :func:`public_message`.

    Frames name our files, functions and source lines (no data); the messages are what would leak.
    """
    if exc is None:
        return ""
    chunks: list[str] = []
    seen: set[int] = set()
    chain: list[tuple[BaseException, str]] = []
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            link = "\nThe above exception was the direct cause of the following exception:\n\n"
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            link = "\nDuring handling of the above exception, another exception occurred:\n\n"
            current = current.__context__
        else:
            current = None
    for error, link in reversed(chain):
        frames = traceback.format_tb(tb if error is exc and tb is not None else error.__traceback__)
        if frames:
            chunks.append("Traceback (most recent call last):\n" + "".join(frames))
        chunks.append(f"{type(error).__module__}.{type(error).__name__}: {public_message(error)}\n")
        if link:
            chunks.append(link)
    return redact("".join(chunks)).rstrip("\n")


__all__ = [
    "ALLOWED_CODES",
    "OTHER_CODE",
    "public_message",
    "public_traceback",
    "safe_code",
    "safe_field",
    "safe_request_id",
]
