"""A stream's state, the same on both faces, and the checks an input state passes before any work starts.

One per-stream dict, on the Singer tap (``bookmarks[stream]``) and the Airbyte source (``stream_state``) alike:
``{"replication_key": "updated_at", "replication_key_value": <ISO bookmark>, "content_hashes": <channel memo>,
"stamp": {product, host, agency, source}}``. The Airbyte face also reads the older ``{"updated_at": ...}``.

The stamp says whose state it is. A state stamped for another product, host, agency or source is refused with
one line (exit 2) naming both sides and the override (``accept_foreign_state``); an unstamped state (older
versions) is accepted with a warning unless a bookmark is in the future, then refused.

Input checks (one clear line per problem instead of a traceback):

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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import StateError

if TYPE_CHECKING:
    from .config import WellSkyConfig

log = logging.getLogger("wellsky_core.state")

CURSOR_KEY = "updated_at"
"""The replication key of every canonical stream."""
VALUE_KEY = "replication_key_value"
MEMO_KEY = "content_hashes"
"""A channel's memo from the last complete read (content hashes of re-read windows, opaque to the faces)."""
STAMP_KEY = "stamp"
STAMP_FIELDS = ("product", "host", "agency", "source")
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


def cursor_value(state: Mapping[str, Any] | None) -> str | None:
    """The bookmark of a per-stream state (``replication_key_value``, or the older ``updated_at``)."""
    if not state:
        return None
    value = state.get(VALUE_KEY, state.get(CURSOR_KEY))
    return str(value) if value is not None else None


def parse_cursor(stream: str, value: str) -> datetime:
    """A bookmark as a UTC datetime; a malformed one is a StateError naming the stream and the fix."""
    parsed = _parse_timestamp(value)
    if parsed is None:
        raise StateError(
            f'stream {stream!r}: the bookmark must be an ISO 8601 timestamp such as "2026-01-31T00:00:00Z"; {FIX}'
        )
    return parsed


def _host(config: WellSkyConfig) -> str:
    """The tenant's host; every loopback server (the embedded or a local sandbox) is ``local``."""
    if not config.base_url:
        return "local"
    host = urlsplit(config.base_url).hostname or "local"
    return "local" if host in ("127.0.0.1", "localhost", "::1") else host


def state_stamp(config: WellSkyConfig, stream: str) -> dict[str, str]:
    """Whose state this is: product, host, agency (where configured) and the stream's source."""
    stamp = {
        "product": config.product,
        "host": _host(config),
        "agency": getattr(config, "agency_id", None),
        "source": config.source_for(stream),
    }
    return {k: str(v) for k, v in stamp.items() if v}


def _describe(stamp: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {stamp[k]}" for k in STAMP_FIELDS if stamp.get(k))


def check_ownership(
    bookmarks: Mapping[str, Any], config: WellSkyConfig, *, accept_foreign: bool = False, now: datetime | None = None
) -> None:
    """Refuse a state written for another tenant or source (``StateError``, one line), before any work starts."""
    current = now or datetime.now(UTC)
    unstamped: list[str] = []
    for stream, bookmark in bookmarks.items():
        if not isinstance(bookmark, Mapping):
            continue
        stamp = bookmark.get(STAMP_KEY)
        if not isinstance(stamp, Mapping):
            unstamped.append(stream)
            value = _parse_timestamp(cursor_value(bookmark))
            if value is not None and value > current + FUTURE_TOLERANCE:
                raise StateError(
                    f"stream {stream!r}: an unstamped state (from an older version, or not this connector's) has a "
                    f"bookmark in the future ({value.isoformat()}); it would skip every record. Delete the "
                    "bookmark, or pass the state this version wrote"
                )
            continue
        expected = state_stamp(config, stream)
        differ = [k for k in STAMP_FIELDS if stamp.get(k) and expected.get(k) and str(stamp[k]) != expected[k]]
        if differ and not accept_foreign:
            raise StateError(
                f"stream {stream!r}: this state was written for {_describe(stamp)}, but the config is "
                f"{_describe(expected)} ({', '.join(differ)} differ); pass this tenant's own state, or none for a "
                "full sync (Meltano: `meltano run --full-refresh …`; accept_foreign_state: true overrides)"
            )
        if differ:
            log.warning("state: stream %r was written for %s; used anyway (accept_foreign_state)", stream,
                        _describe(stamp))
    if unstamped:
        log.warning(
            "state: %d stream bookmark(s) carry no owner stamp (written by an older version): %s; accepted. "
            "The next STATE is stamped with this tenant",
            len(unstamped),
            ", ".join(sorted(unstamped)[:8]),
        )
