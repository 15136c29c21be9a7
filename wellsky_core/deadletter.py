"""The dead-letter file: everything that could not be read or written, with the reason, so nothing is lost.

One JSON object per line: ``{"at", "stage", "stream", "reason", "context", "payload"}``. The payload is the
original record or raw message exactly as received: the file holds patient data by design, so it is created
with owner-only permissions and its *contents* never go to logs — only counts and reasons do.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .disclosure import public_message, safe_code
from .jsonl import JsonlAppender
from .redaction import redact


class DeadLetter(JsonlAppender):
    """Append-only JSONL sink shared by the tap (unreadable inputs) and the target (refused writes)."""

    setting = "dead_letter_path"
    keeps = "a refused input"

    def __init__(self, path: str | Path | None) -> None:
        super().__init__(path)
        self.counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    def write(
        self,
        *,
        stage: str,
        stream: str | None,
        reason: str | BaseException,
        payload: Any,
        context: dict[str, Any] | None = None,
    ) -> None:
        """Record one rejected item. ``reason`` is shown (counted, logged): an error becomes its public message
        (never its text, which may quote the server), our own text is redacted, a ``code`` is allow-listed."""
        reason = public_message(reason) if isinstance(reason, BaseException) else redact(reason, keyed_values=False)
        context = dict(context or {})
        if "code" in context:
            context["code"] = safe_code(context["code"])
        with self._count_lock:
            self.counts[f"{stage}:{stream or '-'}"] += 1
        self.append(
            {
                "at": datetime.now(UTC).isoformat(),
                "stage": stage,
                "stream": stream,
                "reason": reason,
                "context": context,
                "payload": payload,
            }
        )

    @property
    def total(self) -> int:
        return sum(self.counts.values())
