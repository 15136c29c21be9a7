"""Deterministic idempotency keys for writes.

A write replayed from any process (a retried batch, a re-run target, a second worker) must carry the same
``Idempotency-Key`` so the server answers with the original response instead of writing twice. The key is a
SHA-256 over canonical JSON of (tenant, resource, natural key, body, and for updates the version the update
was computed against): sorted keys, no whitespace, UTF-8, with
volatile fields (``updated_at`` by default) left out because they change between replays of the same write.
No ``hash()``, no process state: the same inputs give the same key everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

KEY_PREFIX = "wsk1-"
DEFAULT_VOLATILE = ("updated_at",)


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot canonicalize a {type(value).__name__} for an idempotency key")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: one spelling per value, whatever the dict order was."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def idempotency_key(
    tenant: str,
    resource: str,
    natural_key: Any,
    body: Mapping[str, Any],
    *,
    exclude: Iterable[str] = DEFAULT_VOLATILE,
    based_on: Any = None,
) -> str:
    """The key for writing ``body`` to ``resource``; ``exclude`` names top-level volatile fields.

    ``based_on`` binds the key to the state the write was computed against (for an update: the server's
    version of the record and the values being replaced). A key must name one *intended write*, not a
    content: phone A -> B -> A is three writes, and if the third reused the first's key the server would
    replay the first answer and keep B. The same update computed twice against the same version (a retry,
    a replayed batch, two runs racing) still gets one key, so it is applied once.

    ``natural_key`` is whatever identifies the record without a WellSky id (an MRN, an external id, a tuple
    of fields); it is part of the hash so two records with identical bodies but different keys never collide.
    """
    skip = set(exclude)
    stable_body = {k: v for k, v in body.items() if k not in skip}
    if isinstance(natural_key, tuple):
        natural_key = list(natural_key)
    parts: dict[str, Any] = {"t": tenant, "r": resource, "k": natural_key, "b": stable_body}
    if based_on is not None:
        parts["v"] = based_on
    payload = canonical_json(parts)
    return KEY_PREFIX + hashlib.sha256(payload.encode("utf-8")).hexdigest()
