"""Log redaction: secrets and patient identifiers never reach a log line.

Sensitive text is masked in every record of the project's loggers (and by every sink that calls :func:`redact`):

- registered secrets (exact values: passwords, client secrets, TOTP secrets, tokens) → ``***``;
- credentials by shape: ``Authorization``/``Cookie`` header values, ``Bearer`` tokens, JWTs, and
  ``key=value`` / ``"key": "value"`` pairs whose key is a credential or a patient identifier
  (``password``, ``wsk_session``, ``sessionCacheKey``, ``access_token``, ``mrn``, ``birth_date``...);
- patient data by shape: the fields of a FHIR or native record quoted as JSON or a Python dict
  (``"family"``, ``"given"``, ``telecom`` / identifier ``"value"``, address ``"line"``, ``"first"``/``"last"``...),
  labelled identifiers in prose (``MRN 00482913``, ``DOB 1950-03-04``, ``SSN ...``), and US SSN and phone
  number shapes → ``[PHI]``.

There is deliberately no registry of PHI *values* (an earlier ``register_phi`` was never called by a
normalizer and is gone): a name in free prose ("Patient Jane Q Okonkwo is locked") cannot be recognised by shape,
so server prose never reaches a log line or any other output in the first place — every sink renders errors
through :func:`wellsky_core.disclosure.public_message` (structured fields only). This module is the second line.

:func:`install_redaction` redacts at record creation for the project's loggers and their children (a logger
filter alone would miss records of child loggers such as ``wellsky_core.http.client``), and also attaches
:class:`RedactionFilter` to the handlers of those loggers and of the root logger.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from pydantic import SecretStr

MASK = "***"
PHI_MASK = "[PHI]"
MIN_SECRET_LENGTH = 3

DEFAULT_LOGGERS = (
    "wellsky_core",
    "tap_wellsky",
    "target_wellsky",
    "tap-wellsky",
    "target-wellsky",
    "source-wellsky",
    "singer_sdk",
    "httpx",
    "httpcore",
)

_SENSITIVE_KEYS = (  # ``_?`` so snake_case and camelCase spellings (birth_date, birthDate) both match
    "password|passwd|pwd|secret|client_?secret|client_?assertion|totp_?secret|private_?key|access_?token|"
    "refresh_?token|id_?token|token|api_?key|wsk_session|wsk_portal|session|code|signature|"
    "session_?cache_?key|jsessionid|mrn|ssn|dob|birth_?date|first_?name|last_?name|medicare_?mbi|medicaid_?id|"
    "member_?id|phone"
)
_PHI_JSON_KEYS = (  # record fields that hold patient data, when quoted as JSON or a Python dict
    "family|given|prefix|suffix|line|city|postal_?code|zip|text|div|value|first|last|middle|email|"
    "street|address_?line\\d?|full_?name|patient_?name"
)
_LABELLED_ID = (  # prose labels of identifiers: "MRN 00482913", "DOB: 1950-03-04", "SSN#123-45-6789"
    r"MRN|DOB|SSN|MBI|medical\s+record\s+(?:number|no\.?|#)|date\s+of\s+birth|birth\s*date|born|"
    r"social\s+security(?:\s+number)?|medicaid(?:\s+id)?|medicare(?:\s+id)?"
)
_KEYED_VALUE = re.compile(rf"(?i)\b({_SENSITIVE_KEYS})(['\"]?\s*[:=]\s*)('[^'\n]*'|\"[^\"\n]*\"|[^\s'\"&;,}}\])]+)")
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer xyz / Basic xyz / Cookie: a=b; c=d / Set-Cookie: ...
    (
        re.compile(r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie)(['\"]?\s*[:=]\s*['\"]?)[^'\"\n]+"),
        r"\1\2***",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*"), r"\1 ***"),
    (re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*"), MASK),
    (_KEYED_VALUE, r"\1\2***"),
    (  # "given": ["Jane", "Q"] / 'line': ['1 Main St'] / "family": "Okonkwo" / "value": "5558675309"
        re.compile(
            rf"""(?i)(["'](?:{_PHI_JSON_KEYS})["']\s*:\s*)"""
            r"""(\[[^\]\n]*\]|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""  # strings, lists: not numbers
        ),
        rf"\1{PHI_MASK}",
    ),
    (
        re.compile(rf"(?i)\b({_LABELLED_ID})(\s*(?:[:#=]|is|no\.?)?\s*)(?=[\w/.-]*\d)[\w/.-]+"),
        rf"\1\2{PHI_MASK}",
    ),
    (re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])"), PHI_MASK),  # SSN shape
    (re.compile(r"(?<![\w-])(?:\+?1[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?![\w-])"), PHI_MASK),  # US phone shape
)


class _Registry:
    """Process-wide registered secrets; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secrets: set[str] = set()

    def secrets_longest_first(self) -> list[str]:
        with self.lock:
            return sorted(self.secrets, key=len, reverse=True)


_registry = _Registry()


def register_secret(*values: str | SecretStr | None) -> None:
    """Mask these exact values wherever they appear (too-short values are ignored to keep logs readable)."""
    with _registry.lock:
        for value in values:
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value and len(value) >= MIN_SECRET_LENGTH:
                _registry.secrets.add(value)


def clear_registry() -> None:
    """Forget every registered value (tests; a new run with other credentials)."""
    with _registry.lock:
        _registry.secrets.clear()


def redact(text: str, *, keyed_values: bool = True) -> str:
    """``text`` with every registered secret, credential-shaped value and PHI-shaped value masked.

    ``keyed_values=False`` leaves ``key: value`` prose alone (labelled identifiers with digits are still masked):
    for our own messages, which name a field and its rule ("birth_date: Field required") and never its value.
    """
    if not text:
        return text
    for secret in _registry.secrets_longest_first():
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        if keyed_values or pattern is not _KEYED_VALUE:
            text = pattern.sub(replacement, text)
    return text


def redact_config_message(text: str) -> str:
    """A configuration error the connector wrote itself: every rule of :func:`redact` except ``key: value``.

    That rule would mask the word after a setting's name ("client_secret: required when ..."), which is the fix,
    not a secret; registered secrets, credential shapes and registered patient values are still masked.
    """
    return redact(text, keyed_values=False)


def _redact_record(record: logging.LogRecord) -> None:
    """Render the message now and replace it with its redacted text (args may hold secrets or PHI)."""
    if getattr(record, "_wsk_redacted", False):
        return
    from .disclosure import public_message, public_traceback

    # An exception logged as an argument ("failed: %s", exc) is shown as its public message, never str(exc):
    # its text may quote the server.
    if isinstance(record.args, tuple):
        record.args = tuple(public_message(a) if isinstance(a, BaseException) else a for a in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {k: public_message(v) if isinstance(v, BaseException) else v for k, v in record.args.items()}
    if isinstance(record.msg, BaseException):
        record.msg = public_message(record.msg)
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not kill logging; keep it unformatted
        message = str(record.msg)
    record.msg = redact(message)
    record.args = ()
    if record.exc_info and not record.exc_text:
        record.exc_text = public_traceback(record.exc_info[1], record.exc_info[2])
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    record._wsk_redacted = True


class RedactionFilter(logging.Filter):
    """Masks secrets and PHI in every record it sees; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


_install_lock = threading.Lock()
_installed_prefixes: set[str] = set()
_factory_installed = False


def _matches(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def install_redaction(*logger_names: str) -> RedactionFilter:
    """Redact every record of these loggers (default: the project's and its HTTP/SDK libraries').

    Idempotent: calling it again adds names and filters handlers created since, never twice.
    """
    global _factory_installed
    names = logger_names or DEFAULT_LOGGERS
    the_filter = _SHARED_FILTER
    with _install_lock:
        _installed_prefixes.update(names)
        if not _factory_installed:
            previous = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                if _matches(record.name, _installed_prefixes):
                    _redact_record(record)
                return record

            logging.setLogRecordFactory(factory)
            _factory_installed = True
    _install_excepthooks()
    for name in (*names, ""):
        logger = logging.getLogger(name) if name else logging.getLogger()
        if name and not any(isinstance(f, RedactionFilter) for f in logger.filters):
            logger.addFilter(the_filter)
        for handler in logger.handlers:
            if not any(isinstance(f, RedactionFilter) for f in handler.filters):
                handler.addFilter(the_filter)
    return the_filter


_SHARED_FILTER = RedactionFilter()


def _install_excepthooks() -> None:
    """Uncaught exceptions (main thread or a worker thread) print their public traceback, never their text."""
    from .disclosure import public_traceback

    if getattr(sys.excepthook, "_wsk_public", False):
        return

    def main_hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        print(public_traceback(value, tb), file=sys.stderr, flush=True)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        name = args.thread.name if args.thread is not None else "?"
        print(f"Exception in thread {name}:\n{public_traceback(args.exc_value, args.exc_traceback)}", file=sys.stderr)

    main_hook._wsk_public = True  # type: ignore[attr-defined]
    sys.excepthook = main_hook
    threading.excepthook = thread_hook


SECRET_ENV_PREFIXES = ("WELLSKY_",)


def child_environment(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """An environment for a child process (Playwright's driver, Chromium, an MFA command) without our secrets.

    Drops every ``WELLSKY_*`` variable (the config's environment fallback: passwords, client secrets) and any
    variable whose value holds a registered secret, then adds ``extra``. A child that crashes, logs its
    environment or is inspected through /proc must not hand the tenant's credentials on.
    """
    source = dict(os.environ if base is None else base)
    secrets = _registry.secrets_longest_first()
    env = {
        key: value
        for key, value in source.items()
        if not key.upper().startswith(SECRET_ENV_PREFIXES) and not any(s in value for s in secrets)
    }
    env.update(extra)
    return env
