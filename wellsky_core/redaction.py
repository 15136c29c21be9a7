"""Log redaction: secrets and patient identifiers never reach a log line.

Three kinds of sensitive text are masked in every record of the project's loggers:

- registered secrets (exact values: passwords, client secrets, TOTP secrets, tokens) → ``***``;
- credentials by shape: ``Authorization``/``Cookie`` header values, ``Bearer`` tokens, JWTs, and
  ``key=value`` / ``"key": "value"`` pairs whose key is a credential or a patient identifier
  (``password``, ``wsk_session``, ``access_token``, ``mrn``, ``birth_date``...);
- registered PHI values (patient names, dates of birth, MRNs), registered at runtime by normalizers through
  :func:`register_phi`, matched as whole words case-insensitively → ``[PHI]``. The set is bounded (least
  recently registered values are forgotten first) so a million-patient sync cannot grow it without limit.

:func:`install_redaction` redacts at record creation for the project's loggers and their children (a logger
filter alone would miss records of child loggers such as ``wellsky_core.http.client``), and also attaches
:class:`RedactionFilter` to the handlers of those loggers and of the root logger.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import SecretStr

MASK = "***"
PHI_MASK = "[PHI]"
MAX_PHI_VALUES = 200_000
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
    "mrn|ssn|dob|birth_?date|first_?name|last_?name|medicare_?mbi|medicaid_?id|member_?id|phone"
)
_KEY_VALUE: tuple[re.Pattern[str], str] = (
    re.compile(rf"(?i)\b({_SENSITIVE_KEYS})(['\"]?\s*[:=]\s*)('[^'\n]*'|\"[^\"\n]*\"|[^\s'\"&;,}}\])]+)"),
    r"\1\2***",
)
"""``password=...`` / ``"mrn": "..."``: a credential or patient-identifier key and its value."""
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer xyz / Basic xyz / Cookie: a=b; c=d / Set-Cookie: ...
    (
        re.compile(r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie)(['\"]?\s*[:=]\s*['\"]?)[^'\"\n]+"),
        r"\1\2***",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*"), r"\1 ***"),
    (re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*"), MASK),
    _KEY_VALUE,
)
_WORD = re.compile(r"\w+(?:['\-./]\w+)*")
_PART = re.compile(r"\w+")


class _Registry:
    """Process-wide registered secrets and PHI values; thread-safe, PHI bounded (LRU)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secrets: set[str] = set()
        self.phi: OrderedDict[str, None] = OrderedDict()
        self.max_phi = MAX_PHI_VALUES

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


def register_phi(*values: Any) -> None:
    """Mask these patient values (names, DOB, MRN) as whole words; multi-word values register each word."""
    with _registry.lock:
        for value in values:
            if value is None:
                continue
            text = value.isoformat() if hasattr(value, "isoformat") else str(value)
            for word in _WORD.findall(text):
                if len(word) < 2:
                    continue
                key = word.casefold()
                _registry.phi[key] = None
                _registry.phi.move_to_end(key)
            while len(_registry.phi) > _registry.max_phi:
                _registry.phi.popitem(last=False)


def clear_registry() -> None:
    """Forget every registered value (tests; a new run with other credentials)."""
    with _registry.lock:
        _registry.secrets.clear()
        _registry.phi.clear()


def _mask_phi_word(match: re.Match[str], phi: OrderedDict[str, None]) -> str:
    word = match.group(0)
    if word.casefold() in phi:
        return PHI_MASK
    if not any(sep in word for sep in "'-./"):
        return word
    return _PART.sub(lambda m: PHI_MASK if m.group(0).casefold() in phi else m.group(0), word)


def redact(text: str, *, key_values: bool = True) -> str:
    """``text`` with every registered secret, credential-shaped value and registered PHI masked."""
    if not text:
        return text
    for secret in _registry.secrets_longest_first():
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        if key_values or (pattern, replacement) != _KEY_VALUE:
            text = pattern.sub(replacement, text)
    phi = _registry.phi
    if phi:
        with _registry.lock:
            text = _WORD.sub(lambda m: _mask_phi_word(m, phi), text)
    return text


def redact_config_message(text: str) -> str:
    """A configuration error the connector wrote itself: every rule of :func:`redact` except ``key: value``.

    That rule would mask the word after a setting's name ("client_secret: required when ..."), which is the fix,
    not a secret; registered secrets, credential shapes and registered patient values are still masked.
    """
    return redact(text, key_values=False)


def _redact_record(record: logging.LogRecord) -> None:
    """Render the message now and replace it with its redacted text (args may hold secrets or PHI)."""
    if getattr(record, "_wsk_redacted", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not kill logging; keep it unformatted
        message = str(record.msg)
    record.msg = redact(message)
    record.args = ()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
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
    for name in (*names, ""):
        logger = logging.getLogger(name) if name else logging.getLogger()
        if name and not any(isinstance(f, RedactionFilter) for f in logger.filters):
            logger.addFilter(the_filter)
        for handler in logger.handlers:
            if not any(isinstance(f, RedactionFilter) for f in handler.filters):
                handler.addFilter(the_filter)
    return the_filter


_SHARED_FILTER = RedactionFilter()


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
