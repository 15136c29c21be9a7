"""The tap's input state, checked before the SDK sees it: one clear line per problem instead of a traceback.

Accepted: the Singer form ``{"bookmarks": {stream: {"replication_key", "replication_key_value", ...}}}`` and
Meltano's wrapped form ``{"singer_state": {...}}``. Refused (exit 2, the stream and the fix named): a state
that is not an object, bookmarks that are not objects, a replication key other than the stream's, and a
bookmark value of the wrong type (an ``updated_at`` bookmark must be an ISO 8601 timestamp, ``seq`` an
integer). Warned about: bookmarks for streams this tap does not have (dropped) and bookmarks in the future
(every record updated before them would be skipped).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from wellsky_core.errors import StateError

log = logging.getLogger("tap_wellsky.state")

FUTURE_TOLERANCE = timedelta(minutes=5)
FIX = "fix the value or delete this stream's bookmark to sync it again from start_date"


def _parse_timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def checked_state(state: Any, replication_keys: Mapping[str, str], *, now: datetime | None = None) -> dict[str, Any]:
    """``state`` as a plain Singer state dict (unwrapped, unknown streams dropped), or :class:`StateError`."""
    if state is None:
        return {}
    if not isinstance(state, dict):
        raise StateError(f'the state must be a JSON object like {{"bookmarks": {{...}}}}, not a {_kind(state)}')
    if isinstance(state.get("singer_state"), dict):  # Meltano's `meltano state get` form
        state = state["singer_state"]
    bookmarks = state.get("bookmarks", {})
    if bookmarks is None:
        bookmarks = {}
    if not isinstance(bookmarks, dict):
        raise StateError(f"`bookmarks` must be an object of stream name -> bookmark, not a {_kind(bookmarks)}")
    current = now or datetime.now(UTC)
    kept: dict[str, Any] = {}
    for stream, bookmark in bookmarks.items():
        if stream not in replication_keys:
            log.warning(
                "state has a bookmark for unknown stream %r; ignored (valid streams: %s)",
                str(stream)[:60],
                ", ".join(sorted(replication_keys)),
            )
            continue
        kept[stream] = _checked_bookmark(stream, bookmark, replication_keys[stream], current)
    return {**state, "bookmarks": kept}


def _checked_bookmark(stream: str, bookmark: Any, key: str, now: datetime) -> Any:
    where = f"stream {stream!r}"
    if not isinstance(bookmark, dict):
        raise StateError(
            f'{where}: the bookmark must be an object like {{"replication_key": "{key}", '
            f'"replication_key_value": ...}}, not a {_kind(bookmark)}; {FIX}'
        )
    declared = bookmark.get("replication_key")
    if declared is not None and declared != key:
        raise StateError(
            f"{where}: the bookmark's replication_key is {str(declared)[:40]!r} but this stream replicates on "
            f"{key!r}; {FIX}"
        )
    if "replication_key_value" not in bookmark:
        return bookmark
    value = bookmark["replication_key_value"]
    if key == "seq":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise StateError(
                f"{where}: replication_key_value must be a non-negative integer (a seq), not a {_kind(value)}; {FIX}"
            )
        return bookmark
    parsed = _parse_timestamp(value)
    if parsed is None:
        raise StateError(
            f'{where}: replication_key_value must be an ISO 8601 timestamp such as "2026-01-31T00:00:00Z", not '
            f"{'an unparseable string' if isinstance(value, str) else 'a ' + _kind(value)}; {FIX}"
        )
    if parsed > now + FUTURE_TOLERANCE:
        log.warning(
            "state: stream %r has a bookmark in the future (%s); records updated before it are skipped. Check the "
            "clock of whatever wrote this state, or delete the bookmark to sync the stream again",
            stream,
            parsed.isoformat(),
        )
    return bookmark
