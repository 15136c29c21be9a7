"""The write audit trail: one JSON line per write decision, with no patient data in it.

Fields: time, stream, action, WellSky id, idempotency key, a hash of the natural key (so runs can be
correlated without holding MRNs), error code and input line. Lines are flushed one by one, so a killed run
leaves a consistent prefix.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr

from .disclosure import safe_code
from .jsonl import JsonlAppender


class AuditLog(JsonlAppender):
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


def key_hash_secret(configured: SecretStr | None, audit_path: str | None) -> bytes | None:
    """The secret keying the audit's ``key_hash``: the configured one, else one kept beside the audit log.

    Kept (owner-only, created once) so key hashes correlate across runs of the same audit log; without an
    audit log there is nothing to correlate and the writer uses a random per-run key (None).
    """
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value().encode()
    if not audit_path:
        return None
    path = Path(f"{audit_path}.key")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    value = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(value.hex())
    return value
