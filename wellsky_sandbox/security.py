"""Who may call the tenant: password sessions with MFA and rotating cookies, and OAuth2 clients.

Sessions and tokens live in memory on purpose: a restarted sandbox forgets them, exactly like a real
tenant after a deploy, and a client must log in again (the reliability suite relies on that).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import pyotp

SESSION_COOKIE = "wsk_session"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SUPPORTED_SCOPES = ("system/*.read", "system/*.write")


class AuthFailure(Exception):
    """Maps to a 401/403 JSON error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Principal:
    name: str
    scopes: frozenset[str]
    kind: str  # "session" | "oauth"

    def can_write(self) -> bool:
        return "system/*.write" in self.scopes


@dataclass
class _Session:
    user: str
    expires_at: float
    token: str
    issued_at: float
    previous: dict[str, float] = field(default_factory=dict)  # old token -> grace deadline


@dataclass
class _Challenge:
    user: str
    expires_at: float
    codes: dict[str, str] = field(default_factory=dict)
    attempts: int = 0


@dataclass
class Settings:
    """Tenant security knobs (also switchable at runtime through ``POST /_sandbox/tenant``)."""

    mfa: bool = False
    session_ttl_seconds: float = 3600.0
    cookie_rotate_seconds: float = 60.0
    cookie_grace_seconds: float = 10.0
    token_ttl_seconds: float = 3600.0


def derived_secret(seed: int, label: str, nbytes: int = 20) -> bytes:
    return hashlib.sha256(f"wellsky-sandbox:{seed}:{label}".encode()).digest()[:nbytes]


class Security:
    """Users, sessions, MFA challenges, OAuth clients and tokens of one tenant."""

    def __init__(self, seed: int, settings: Settings) -> None:
        import base64

        self.settings = settings
        self.lock = threading.Lock()
        self.username = "demo@agency.test"
        self.password = "sandbox-" + derived_secret(seed, "password", 6).hex()
        self.totp_secret = base64.b32encode(derived_secret(seed, "totp")).decode()
        self.client_id = "sandbox-client"
        self.client_secret = derived_secret(seed, "client-secret", 16).hex()
        self.clients: dict[str, dict[str, Any]] = {
            self.client_id: {"secret": self.client_secret, "keys": {}, "scopes": set(SUPPORTED_SCOPES)}
        }
        self.sessions: dict[str, _Session] = {}
        self.token_index: dict[str, str] = {}  # cookie value -> session id
        self.challenges: dict[str, _Challenge] = {}
        self.tokens: dict[str, tuple[Principal, float]] = {}
        self.seen_jti: dict[str, float] = {}
        self.outbox: list[dict[str, Any]] = []
        self.expire_all_requested = False

    # -- password sessions ----------------------------------------------------------------------------
    def check_password(self, username: Any, password: Any) -> None:
        if not isinstance(username, str) or not isinstance(password, str):
            raise AuthFailure(400, "invalid_request", 'body must be {"username": str, "password": str}')
        ok = hmac.compare_digest(username, self.username) & hmac.compare_digest(password, self.password)
        if not ok:
            raise AuthFailure(401, "invalid_credentials", "username or password is wrong")

    def new_session(self, user: str) -> tuple[str, str]:
        now = time.monotonic()
        sid = secrets.token_hex(8)
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.sessions[sid] = _Session(user, now + self.settings.session_ttl_seconds, token, now)
            self.token_index[token] = sid
        return sid, token

    def start_challenge(self, user: str) -> str:
        cid = secrets.token_urlsafe(12)
        with self.lock:
            self.challenges[cid] = _Challenge(user, time.monotonic() + 300)
        return cid

    def send_code(self, cid: str, method: Any) -> None:
        challenge = self._challenge(cid)
        if method not in ("sms", "email"):
            raise AuthFailure(400, "invalid_request", 'method must be "sms" or "email" (TOTP needs no send)')
        code = f"{secrets.randbelow(1_000_000):06d}"
        with self.lock:
            challenge.codes[method] = code
            self.outbox.append(
                {"to": challenge.user, "method": method, "code": code, "challenge_id": cid, "sent_at": time.time()}
            )
            del self.outbox[:-200]

    def complete_challenge(self, cid: str, method: Any, code: Any) -> str:
        challenge = self._challenge(cid)
        if not isinstance(code, str) or not code.isdigit():
            raise AuthFailure(400, "invalid_request", "code must be a string of digits")
        challenge.attempts += 1
        if challenge.attempts > 5:
            with self.lock:
                self.challenges.pop(cid, None)
            raise AuthFailure(401, "mfa_locked", "too many wrong codes; start a new session")
        if method == "totp":
            ok = pyotp.TOTP(self.totp_secret).verify(code, valid_window=1)
        elif method in ("sms", "email"):
            sent = challenge.codes.get(method)
            if sent is None:
                raise AuthFailure(400, "code_not_sent", f"no {method} code was sent; POST /sessions/{{id}}/send first")
            ok = hmac.compare_digest(sent, code)
        else:
            raise AuthFailure(400, "invalid_request", "method must be one of totp, sms, email")
        if not ok:
            raise AuthFailure(401, "invalid_mfa_code", f"the {method} code is wrong or expired")
        with self.lock:
            self.challenges.pop(cid, None)
        return challenge.user

    def _challenge(self, cid: str) -> _Challenge:
        with self.lock:
            challenge = self.challenges.get(cid)
        if challenge is None or challenge.expires_at < time.monotonic():
            raise AuthFailure(404, "unknown_challenge", "MFA challenge not found or expired; log in again")
        return challenge

    def session_for_cookie(self, token: str) -> tuple[Principal, str | None]:
        """Validate a session cookie; returns the principal and a rotated cookie value to set (or None)."""
        now = time.monotonic()
        with self.lock:
            sid = self.token_index.get(token)
            session = self.sessions.get(sid) if sid else None
            if session is None:
                raise AuthFailure(401, "invalid_session", "session cookie unknown; log in with POST /sessions")
            if session.expires_at <= now:
                self._drop(sid)
                raise AuthFailure(401, "session_expired", "session expired; log in again")
            if token != session.token:
                deadline = session.previous.get(token, 0)
                if deadline <= now:
                    raise AuthFailure(
                        401, "cookie_rotated", "this session cookie was rotated out; use the latest Set-Cookie value"
                    )
                return Principal(session.user, frozenset(SUPPORTED_SCOPES), "session"), None
            rotated = None
            if now - session.issued_at >= self.settings.cookie_rotate_seconds:
                rotated = secrets.token_urlsafe(24)
                session.previous[token] = now + self.settings.cookie_grace_seconds
                session.previous = {t: d for t, d in session.previous.items() if d > now}
                for old in [t for t, s in self.token_index.items() if s == sid and t not in session.previous]:
                    self.token_index.pop(old, None)
                session.token, session.issued_at = rotated, now
                self.token_index[rotated] = sid
        return Principal(session.user, frozenset(SUPPORTED_SCOPES), "session"), rotated

    def logout(self, token: str) -> None:
        with self.lock:
            sid = self.token_index.get(token)
            if sid:
                self._drop(sid)

    def _drop(self, sid: str) -> None:
        self.sessions.pop(sid, None)
        for t in [t for t, s in self.token_index.items() if s == sid]:
            self.token_index.pop(t, None)

    def expire_everything(self) -> None:
        """Fault injection: every live session and token dies now (an early expiry)."""
        with self.lock:
            self.sessions.clear()
            self.token_index.clear()
            self.tokens.clear()

    # -- OAuth2 ---------------------------------------------------------------------------------------
    def register_client(
        self,
        client_id: str,
        *,
        secret: str | None = None,
        public_key_pem: str | None = None,
        kid: str | None = None,
        scopes: list[str] | None = None,
    ) -> None:
        if not client_id:
            raise AuthFailure(400, "invalid_request", "client_id is required")
        with self.lock:
            client = self.clients.setdefault(client_id, {"secret": None, "keys": {}, "scopes": set(SUPPORTED_SCOPES)})
            if secret:
                client["secret"] = secret
            if public_key_pem:
                try:
                    key = jwt.algorithms.get_default_algorithms()["RS384"].prepare_key(public_key_pem)
                except Exception:
                    try:
                        key = jwt.algorithms.get_default_algorithms()["ES384"].prepare_key(public_key_pem)
                    except Exception as exc:
                        raise AuthFailure(400, "invalid_key", "public_key_pem is not an RSA or EC public key") from exc
                client["keys"][kid or "default"] = key
            if scopes is not None:
                client["scopes"] = set(scopes)

    def issue_token(self, form: dict[str, str], basic: tuple[str, str] | None, token_url: str) -> dict[str, Any]:
        if form.get("grant_type") != "client_credentials":
            raise AuthFailure(400, "unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") == ASSERTION_TYPE or "client_assertion" in form:
            client_id = self._verify_assertion(form.get("client_assertion", ""), token_url)
        else:
            client_id, secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
            client = self.clients.get(client_id)
            if not client or not client["secret"] or not hmac.compare_digest(client["secret"], secret or ""):
                raise AuthFailure(401, "invalid_client", "client_id or client_secret is wrong")
        allowed = self.clients[client_id]["scopes"]
        wanted = set((form.get("scope") or " ".join(sorted(allowed))).split())
        unknown = wanted - set(SUPPORTED_SCOPES)
        if unknown:
            raise AuthFailure(400, "invalid_scope", f"unknown scope(s) {sorted(unknown)}; use {list(SUPPORTED_SCOPES)}")
        granted = wanted & allowed
        if not granted:
            raise AuthFailure(400, "invalid_scope", "none of the requested scopes is granted to this client")
        token = secrets.token_urlsafe(32)
        ttl = self.settings.token_ttl_seconds
        with self.lock:
            self.tokens[token] = (Principal(client_id, frozenset(granted), "oauth"), time.monotonic() + ttl)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(ttl),
            "scope": " ".join(sorted(granted)),
        }

    def _verify_assertion(self, assertion: str, token_url: str) -> str:
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthFailure(401, "invalid_client", "client_assertion is not a JWT") from exc
        if header.get("alg") not in ("RS384", "ES384"):
            raise AuthFailure(401, "invalid_client", "client_assertion must be signed with RS384 or ES384")
        client_id = claims.get("iss")
        client = self.clients.get(client_id or "")
        if not client or claims.get("sub") != client_id:
            raise AuthFailure(401, "invalid_client", "client_assertion iss/sub is not a registered client")
        key = client["keys"].get(header.get("kid") or "default")
        if key is None:
            raise AuthFailure(401, "invalid_client", "client_assertion kid is not registered for this client")
        try:
            verified = jwt.decode(
                assertion,
                key=key,
                algorithms=[header["alg"]],
                audience=token_url,
                options={"require": ["exp", "jti", "iss", "sub", "aud"]},
                leeway=5,
            )
        except jwt.PyJWTError as exc:
            raise AuthFailure(401, "invalid_client", f"client_assertion rejected: {exc}") from exc
        if verified["exp"] > time.time() + 300 + 5:
            raise AuthFailure(401, "invalid_client", "client_assertion exp is more than 5 minutes ahead")
        with self.lock:
            now = time.time()
            self.seen_jti = {j: e for j, e in self.seen_jti.items() if e > now}
            if verified["jti"] in self.seen_jti:
                raise AuthFailure(401, "invalid_client", "client_assertion jti was already used (replay)")
            self.seen_jti[verified["jti"]] = verified["exp"]
        return client_id

    def principal_for_bearer(self, token: str) -> Principal:
        with self.lock:
            entry = self.tokens.get(token)
            if entry is None:
                raise AuthFailure(401, "invalid_token", "bearer token unknown; request a new one at /oauth/token")
            principal, expires = entry
            if expires <= time.monotonic():
                self.tokens.pop(token, None)
                raise AuthFailure(401, "token_expired", "access token expired; request a new one")
        return principal
