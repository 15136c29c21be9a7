"""The write audit trail: one JSON line per write decision, with no patient data in it.

Fields: time, stream, action, WellSky id, idempotency key, a hash of the natural key (so runs can be
correlated without holding MRNs), error code and input line. Lines are flushed one by one, so a killed run
leaves a consistent prefix.
"""

from __future__ import annotations

from datetime import UTC, datetime

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
                "code": code,
                "input_line": line,
            }
        )
