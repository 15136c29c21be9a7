"""The write audit trail: one JSON line per write decision, with no patient data in it.

Fields: time, stream, action, WellSky id, idempotency key, a keyed hash of the natural key (so runs can be
correlated without holding MRNs), error code and input line. ``code`` is an allow-listed machine code
(``disclosure.safe_code``): a server's free text never lands in it. Lines are flushed one by one, so a killed
run leaves a consistent prefix; the file is private (0600, never through a symlink).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from .disclosure import safe_code
from .errors import ConfigError, LocalWriteFailed
from .jsonl import JsonlAppender
from .private_files import UnsafePathError, open_private

if TYPE_CHECKING:
    from .config import WellSkyConfig


class AuditLog(JsonlAppender):
    setting = "audit_log_path"
    keeps = "a write decision"

    def record(
        self,
        *,
        stream: str,
        action: str,
        wellsky_id: str | None,
        idempotency_key: str | None,
        key_hash: str | None,
        code: str | None = None,
        line: int | None = None,
    ) -> None:
        self.append(
            {
                "at": datetime.now(UTC).isoformat(),
                "stream": stream,
                "action": action,
                "wellsky_id": wellsky_id,
                "idempotency_key": idempotency_key,
                "key_hash": key_hash,
                "code": safe_code(code),  # an allow-listed machine code: never a server's free text
                "input_line": line,
            }
        )


def tenant_secret(config: WellSkyConfig) -> bytes:
    """Without a configured secret or key file: a key derived from the tenant's own credentials (never written).

    Stable across runs with the same credentials, so audit entries and the write ledger correlate; unknown to
    anyone holding only the audit or ledger file, so a guessed MRN or name and birth date cannot be tested
    against a hash. Set ``audit_hash_secret`` (or keep the key file beside the audit log) for a key that
    survives a credential rotation.
    """
    material = "\x1f".join([str(config.base_url or ""), *sorted(config.secret_values())])
    return hashlib.sha256(b"wellsky-audit-key-hash\x1f" + material.encode()).digest()


def key_hash_secret(configured: SecretStr | None, audit_path: str | None) -> bytes | None:
    """The secret keying the audit's ``key_hash`` and the write ledger: the configured one, else one kept
    beside the audit log; None without either (the caller then uses :func:`tenant_secret`).

    Kept (0600, created once, never through a symlink) so key hashes correlate across runs of the same audit log.
    """
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value().encode()
    if not audit_path:
        return None
    path = Path(f"{audit_path}.key")
    try:
        with open_private(path, "ab") as handle:  # created 0600 if missing, refused if a symlink
            if handle.tell() == 0:
                value = secrets.token_bytes(32)
                handle.write(value.hex().encode())
                handle.flush()
                return value
    except UnsafePathError:
        raise
    except OSError as exc:  # a full volume: no half key is left for the next run to read as another key
        with contextlib.suppress(OSError):
            if path.stat().st_size != KEY_HEX_DIGITS:
                path.unlink()
        raise LocalWriteFailed.writing(f"the audit key file {path}", "audit_log_path", exc) from None
    text = path.read_text(errors="replace").strip()
    if len(text) != KEY_HEX_DIGITS or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ConfigError(
            "audit_log_path",
            f"the audit key file {path} is damaged (not {KEY_HEX_DIGITS} hex digits): restore it from a backup, or "
            "remove it to start a new key (key_hash values of earlier runs will then no longer match)",
        )
    return bytes.fromhex(text)


KEY_HEX_DIGITS = 64
"""The audit key file holds 32 random bytes as hex."""
