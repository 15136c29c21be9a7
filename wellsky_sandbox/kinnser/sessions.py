"""Portal sessions as the public record describes them: one live session per user, a per-tab session cache key.

Facts (docs/sandbox-kinnser-portal.md): a second login sees an "already logged in / active session" prompt
with a Terminate button; every ``.cfm``/``.cfc`` URL carries ``sessionCacheKey`` (8-4-4-16 alphanumerics,
``:``, 8 more); an expired session lands on the login page. MODELED: the idle timeout (default 30 min), the
optional 2-step verification (TOTP or emailed code; the real channel is unknown), and the test switches
(``expire_every_pages``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pyotp

from ..security import Security
from .data import DATA_OFFICES, Office

ALNUM = string.ascii_letters + string.digits


def new_cache_key() -> str:
    parts = [8, 4, 4, 16]
    head = "-".join("".join(secrets.choice(ALNUM) for _ in range(n)) for n in parts)
    return head + ":" + "".join(secrets.choice(ALNUM) for _ in range(8))


@dataclass
class PortalSettings:
    """Switchable through ``POST /_sandbox/kinnser``."""

    two_step: str = "off"  # off | totp | email
    idle_timeout_seconds: float = 1800.0
    expire_every_pages: int = 0  # a session dies after serving this many pages (0: never)
    guide_every: int = 0  # every Nth page of a session opens a covering in-app guide (0: never)
    grid_delay_ms: int = 150  # the billing grid's JSON endpoints answer after this delay (spinner shows)
    layout: str = "v1"  # v2: the vendor renamed hooks (login uses #UserName/#Password, schedule table renamed)


@dataclass
class PortalSession:
    token: str
    user: str
    office: Office
    keys: set[str] = field(default_factory=set)
    last_seen: float = field(default_factory=time.monotonic)
    pages: int = 0
    ended: str | None = None  # "terminated" | "expired" | "logged_out"


@dataclass
class Pending:
    """A login that passed the password and waits for the 2-step code or the terminate decision."""

    user: str
    stage: str  # "verify" | "terminate"
    code: str | None = None
    attempts: int = 0
    expires_at: float = field(default_factory=lambda: time.monotonic() + 300)


class Sessions:
    def __init__(self, security: Security) -> None:
        self.security = security
        self.settings = PortalSettings()
        self.lock = threading.Lock()
        self.sessions: dict[str, PortalSession] = {}
        self.pending: dict[str, Pending] = {}
        self.logins = 0
        self.terminations = 0
        self.served: deque[dict[str, Any]] = deque(maxlen=100_000)
        """Every signed-in page served: path, the session's office then, patient, tab (a digest of the cache
        key), status. The test oracle for "no office switch while a tab was mid-read" (``GET
        /_sandbox/kinnser/served``); not something the portal shows."""

    # -- login ------------------------------------------------------------------------------------------
    def start(self, user: str) -> tuple[str, Pending]:
        pid = secrets.token_urlsafe(16)
        stage = "verify" if self.settings.two_step != "off" else "terminate"
        pending = Pending(user, stage)
        if stage == "verify" and self.settings.two_step == "email":
            pending.code = f"{secrets.randbelow(1_000_000):06d}"
            with self.security.lock:
                self.security.outbox.append(
                    {"to": user, "method": "email", "code": pending.code, "channel": "portal", "sent_at": time.time()}
                )
                del self.security.outbox[:-200]
        with self.lock:
            self.pending[pid] = pending
        return pid, pending

    def get_pending(self, pid: str | None) -> Pending | None:
        with self.lock:
            pending = self.pending.get(pid or "")
            if pending is not None and pending.expires_at < time.monotonic():
                self.pending.pop(pid or "", None)
                return None
            return pending

    def check_code(self, pid: str, code: str) -> bool:
        pending = self.get_pending(pid)
        if pending is None:
            return False
        pending.attempts += 1
        if pending.attempts > 5:
            with self.lock:
                self.pending.pop(pid, None)
            return False
        if self.settings.two_step == "totp":
            ok = pyotp.TOTP(self.security.totp_secret).verify(code, valid_window=1)
        else:
            ok = pending.code is not None and hmac.compare_digest(pending.code, code)
        if ok:
            pending.stage = "terminate"
        return ok

    def live_session_of(self, user: str) -> PortalSession | None:
        with self.lock:
            for s in self.sessions.values():
                if s.user == user and s.ended is None and not self._idle(s):
                    return s
        return None

    def finish(self, pid: str, terminate_others: bool) -> PortalSession:
        with self.lock:
            pending = self.pending.pop(pid)
            for s in self.sessions.values():
                if s.user == pending.user and s.ended is None and terminate_others:
                    s.ended = "terminated"
                    self.terminations += 1
            session = PortalSession(secrets.token_urlsafe(24), pending.user, DATA_OFFICES[0])
            session.keys.add(new_cache_key())
            self.sessions[session.token] = session
            self.logins += 1
            return session

    # -- per request ------------------------------------------------------------------------------------
    def _idle(self, s: PortalSession) -> bool:
        return time.monotonic() - s.last_seen > self.settings.idle_timeout_seconds

    def lookup(self, token: str | None) -> tuple[PortalSession | None, str]:
        """The live session for a cookie, or None and why not ("none", "expired", "terminated", "logged_out")."""
        with self.lock:
            s = self.sessions.get(token or "")
            if s is None:
                return None, "none"
            if s.ended is None and self._idle(s):
                s.ended = "expired"
            limit = self.settings.expire_every_pages
            if s.ended is None and limit and s.pages >= limit:
                s.ended = "expired"
            if s.ended is not None:
                return None, s.ended
            s.last_seen = time.monotonic()
            return s, "ok"

    def end(self, token: str | None, why: str = "logged_out") -> None:
        with self.lock:
            s = self.sessions.get(token or "")
            if s is not None and s.ended is None:
                s.ended = why

    def record_page(self, path: str, s: PortalSession, key: str, patient: str | None, status: int) -> None:
        tab = hashlib.sha256(key.encode()).hexdigest()[:8]
        with self.lock:
            self.served.append(
                {"path": path, "office": s.office.value, "patient": patient, "tab": tab, "status": status}
            )

    def expire_all(self) -> None:
        with self.lock:
            for s in self.sessions.values():
                if s.ended is None:
                    s.ended = "expired"

    def stats(self) -> dict[str, Any]:
        with self.lock:
            live = sum(1 for s in self.sessions.values() if s.ended is None)
        return {"logins": self.logins, "terminations": self.terminations, "live_sessions": live}
