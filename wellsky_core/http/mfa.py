"""Where MFA codes come from: a TOTP secret, or an SMS/email code fetched by a command, a file or the sandbox.

Each source blocks until a *fresh* code is available (one produced after the challenge was issued) or its
timeout passes, then raises :class:`~wellsky_core.errors.MfaError` naming the method and the setting to fix.
Codes are never logged.
"""

from __future__ import annotations

import abc
import logging
import re
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pyotp
from pydantic import SecretStr

from wellsky_core.errors import ConfigError, MfaError
from wellsky_core.redaction import child_environment

if TYPE_CHECKING:
    from wellsky_core.config import WellSkyConfig

logger = logging.getLogger(__name__)

CODE_RE = re.compile(r"(?<!\d)(\d{6})(?!\d)")
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Challenge:
    """What a code source may need to know about the login that asked for a code."""

    challenge_id: str
    method: str
    username: str | None
    issued_at: float
    """Wall-clock time (``time.time()``) just before the code was requested."""


class CodeSource(abc.ABC):
    """A way to obtain a 6-digit code for one MFA method."""

    method: str
    setting: str
    """The config key to fix when no code comes (named in the error)."""

    def __init__(self, method: str, timeout_seconds: float) -> None:
        self.method = method
        self.timeout_seconds = timeout_seconds

    @abc.abstractmethod
    def get_code(self, challenge: Challenge, *, previous: str | None = None) -> str:
        """A fresh code for ``challenge``; ``previous`` is a code the server just rejected."""

    def _timeout(self, detail: str) -> MfaError:
        return MfaError(
            f"no {self.method} MFA code arrived within {self.timeout_seconds:g} s ({detail}); "
            f"check `{self.setting}` or raise mfa_code_timeout_seconds",
            method=self.method,
            setting=self.setting,
        )


class TotpSource(CodeSource):
    """Codes computed locally from the enrolled base32 secret (RFC 6238, 30 s steps)."""

    setting = "totp_secret"

    def __init__(
        self,
        secret: SecretStr | str,
        timeout_seconds: float = 120,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__("totp", timeout_seconds)
        raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        self._totp = pyotp.TOTP(raw)
        self._clock = clock
        self._sleep = sleep

    def get_code(self, challenge: Challenge, *, previous: str | None = None) -> str:
        """The current code; if the server rejected it (clock step edge, replay rule) wait for the next."""
        deadline = self._clock() + self.timeout_seconds
        while True:
            code = self._totp.at(self._clock())
            if code != previous:
                return code
            if self._clock() >= deadline:
                raise self._timeout("the TOTP code did not change")
            remaining = self._totp.interval - (self._clock() % self._totp.interval)
            self._sleep(min(remaining + 0.05, max(0.0, deadline - self._clock())))


class CommandSource(CodeSource):
    """Runs a shell command (``mfa_code_command``) and reads the first 6-digit number it prints.

    The command gets ``WELLSKY_MFA_METHOD``, ``WELLSKY_MFA_CHALLENGE_ID``, ``WELLSKY_MFA_ISSUED_AT`` and
    ``WELLSKY_MFA_USERNAME`` in its environment. If it exits without printing a code it is run again until
    the timeout, so a command that checks a mailbox once is enough.
    """

    setting = "mfa_code_command"

    def __init__(self, method: str, command: str, timeout_seconds: float = 120) -> None:
        super().__init__(method, timeout_seconds)
        self.command = command

    def get_code(self, challenge: Challenge, *, previous: str | None = None) -> str:
        deadline = time.monotonic() + self.timeout_seconds
        env = {
            **child_environment(),  # the operator's command gets the challenge, not the connector's secrets
            "WELLSKY_MFA_METHOD": challenge.method,
            "WELLSKY_MFA_CHALLENGE_ID": challenge.challenge_id,
            "WELLSKY_MFA_ISSUED_AT": f"{challenge.issued_at:.3f}",
            "WELLSKY_MFA_USERNAME": challenge.username or "",
        }
        last_status = "it printed no 6-digit code"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(f"mfa_code_command: {last_status}")
            try:
                done = subprocess.run(  # the operator's own configured command: a shell by design
                    self.command,
                    shell=True,
                    capture_output=True,
                    text=True,
                    timeout=remaining,
                    env=env,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise self._timeout("mfa_code_command was still running") from None
            codes = [c for c in CODE_RE.findall(done.stdout or "") if c != previous]
            if codes:
                return codes[-1]
            last_status = f"it exited {done.returncode} without a 6-digit code on stdout"
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


class FileSource(CodeSource):
    """Watches ``mfa_code_file`` until it is written after the challenge and holds a 6-digit code."""

    setting = "mfa_code_file"

    def __init__(self, method: str, path: str | Path, timeout_seconds: float = 120) -> None:
        super().__init__(method, timeout_seconds)
        self.path = Path(path).expanduser()

    def get_code(self, challenge: Challenge, *, previous: str | None = None) -> str:
        deadline = time.monotonic() + self.timeout_seconds
        fresh_after = challenge.issued_at  # written after the code was requested: never a stale code
        while True:
            try:
                stat = self.path.stat()
                if stat.st_mtime >= fresh_after:
                    text = self.path.read_text(errors="replace")
                    codes = [c for c in CODE_RE.findall(text) if c != previous]
                    if codes:
                        return codes[-1]
            except FileNotFoundError:
                pass
            if time.monotonic() >= deadline:
                raise self._timeout(f"{self.path} got no fresh code")
            time.sleep(POLL_SECONDS)


class SandboxOutboxSource(CodeSource):
    """Polls the sandbox's ``GET /_sandbox/outbox`` for the newest code sent for this challenge.

    Only the emulated tenant has an outbox; against a real tenant use the command or file source.
    """

    setting = "mfa_code_source"

    def __init__(
        self,
        method: str,
        base_url: str,
        timeout_seconds: float = 120,
        *,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        super().__init__(method, timeout_seconds)
        self.base_url = base_url.rstrip("/")
        self.verify = verify

    def _messages(self, http: httpx.Client) -> list[dict[str, object]]:
        body = http.get(f"{self.base_url}/_sandbox/outbox").raise_for_status().json()
        if isinstance(body, dict):
            body = body.get("messages") or body.get("data") or body.get("outbox") or []
        return [m for m in body if isinstance(m, dict)]

    def get_code(self, challenge: Challenge, *, previous: str | None = None) -> str:
        deadline = time.monotonic() + self.timeout_seconds
        detail = "the outbox had no matching message"
        with httpx.Client(timeout=10, verify=self.verify) as http:
            while True:
                try:
                    messages = self._messages(http)
                except (httpx.HTTPError, ValueError) as exc:
                    detail = f"GET /_sandbox/outbox failed ({type(exc).__name__})"
                    messages = []
                matching = [m for m in messages if self._matches(m, challenge) and m.get("code") != previous]
                if matching:
                    newest = max(matching, key=lambda m: float(m.get("sent_at") or 0))  # type: ignore[arg-type]
                    return str(newest["code"])
                if time.monotonic() >= deadline:
                    raise self._timeout(detail)
                time.sleep(POLL_SECONDS)

    @staticmethod
    def _matches(message: dict[str, object], challenge: Challenge) -> bool:
        if message.get("method") != challenge.method or not message.get("code"):
            return False
        if message.get("challenge_id") is not None:
            return message["challenge_id"] == challenge.challenge_id
        if challenge.username and message.get("to") not in (None, challenge.username):
            return False
        return float(message.get("sent_at") or 0) >= challenge.issued_at - 1.0  # type: ignore[arg-type]


def build_code_source(config: WellSkyConfig) -> CodeSource | None:
    """The code source ``config`` asks for, or None when the login needs no second factor."""
    method = config.mfa_method
    timeout = config.mfa_code_timeout_seconds
    if method == "none":
        return None
    if method == "totp":
        if config.totp_secret is None:
            raise ConfigError("totp_secret", "required when mfa_method=totp; set the base32 secret")
        return TotpSource(config.totp_secret, timeout)
    if config.mfa_code_source == "command":
        if not config.mfa_code_command:
            raise ConfigError("mfa_code_command", f"required for mfa_method={method} (source: command)")
        return CommandSource(method, config.mfa_code_command, timeout)
    if config.mfa_code_source == "file":
        if not config.mfa_code_file:
            raise ConfigError("mfa_code_file", f"required for mfa_method={method} with mfa_code_source=file")
        return FileSource(method, config.mfa_code_file, timeout)
    if not config.base_url:
        raise ConfigError("base_url", "mfa_code_source=sandbox_outbox needs the sandbox's base_url")
    return SandboxOutboxSource(method, config.base_url, timeout, verify=config.tls_verify())
