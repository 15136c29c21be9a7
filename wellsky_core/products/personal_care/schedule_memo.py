"""What a Home Connect sync remembers about shifts and care logs between runs, so an incremental misses nothing.

Shifts and care logs carry no change time and the API has no ``updated`` filter for them (fact sheet §2), so the
only way to see a change is to read the record again. The memo (stored opaque under ``content_hashes`` in the
stream state, the same on both faces) makes that cheap and complete:

- ``records``: key -> ``[content hash, record date, person]`` for every record of the synced history, so an
  unchanged record is not re-emitted, and a record that is gone from a re-read (person, date range) is known
  to be deleted (a rescheduled shift occurrence changes key: the old one is gone);
- ``people``: the clients (or caregivers) whose whole schedule was read once: anyone not in it is new to the
  sync and gets every month of the history and the published future read, not only the re-read horizon;
- ``read_at`` / ``reconciled_at``: when the last run and the last full reconcile ran; the horizon reaches back
  from the older of today and ``read_at``, and the reconcile is due ``home_connect_reconcile_days`` after
  ``reconciled_at``;
- ``scope``: the fan-out the memo was built with; another scope starts over (a full read, no deletions);
- ``event_seq``: the last subscription event (``webhook_events_path``) acted on: clients named by newer
  care-log events get their whole schedule re-read, so a late clock-out older than the horizon is not missed.

Older states kept a plain ``{key: hash}`` dict: it is read as hashes of unknown date, every person counts as
new (so the first run after an upgrade reads everything, which is a reconcile), and none is lost.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

import orjson

log = logging.getLogger(__name__)

MEMO_VERSION = 2
MEMO_LIMIT = 500_000
"""Most records kept per stream (about 40 MB of state, far past any agency's synced history)."""


def content_hash(record: dict[str, Any]) -> str:
    """What a record says, minus when we saw it: every other field (``status`` included) is compared."""
    body = {k: v for k, v in record.items() if k != "updated_at"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


def _day(value: Any) -> date | None:
    try:
        return date.fromisoformat(str(value)[:10]) if value else None
    except ValueError:
        return None


def _moment(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


class ScheduleMemo:
    """The last run's knowledge of one fanned-out stream, and this run's, merged into the next memo."""

    def __init__(self, previous: dict[str, Any] | None, scope: str) -> None:
        self.scope = scope
        self.previous: dict[str, tuple[str, date | None, str | None]] = {}
        self.people: set[str] | None = None  # None: unknown, every person is new
        self.read_at: datetime | None = None
        self.reconciled_at: datetime | None = None
        self.event_seq: int | None = None  # last webhook event (subscriptions) this stream has acted on
        self.legacy = False
        if isinstance(previous, dict) and previous.get("v") == MEMO_VERSION:
            if previous.get("scope") == scope:
                for key, entry in (previous.get("records") or {}).items():
                    if isinstance(entry, list) and len(entry) == 3:
                        self.previous[key] = (str(entry[0]), _day(entry[1]), entry[2])
                self.people = {str(p) for p in previous.get("people") or ()}
                self.read_at = _moment(previous.get("read_at"))
                self.reconciled_at = _moment(previous.get("reconciled_at"))
                seq = previous.get("event_seq")
                self.event_seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        elif isinstance(previous, dict):  # an older state: {key: hash}, dates and people unknown
            self.legacy = bool(previous)
            self.previous = {k: (str(v), None, None) for k, v in previous.items() if isinstance(v, str)}
        self.by_person: dict[str | None, list[str]] = defaultdict(list)
        for key, (_, _, person) in self.previous.items():
            self.by_person[person].append(key)
        self.current: dict[str, tuple[str, date | None, str | None]] = {}
        self.covered: set[str] = set()  # previous keys whose (person, date) this run re-read
        self.deleted: set[str] = set()

    # -- during the run ------------------------------------------------------------------------------------
    def changed(self, key: str, record: dict[str, Any], day: date | None, person: str | None) -> bool:
        """Remember the record; True when it is new or its content differs from the last run's."""
        digest = content_hash(record)
        if key in self.current:  # seen twice in one run (a shift in two month windows): emit once
            self.current[key] = (digest, day, person)
            return False
        self.current[key] = (digest, day, person)
        old = self.previous.get(key)
        return old is None or old[0] != digest

    def gone(self, person: str | None, first: date, last: date) -> Iterator[str]:
        """Keys the last run saw for ``person`` dated in [first, last] that this run's re-read of it lacks."""
        for key in self.by_person.get(person, ()):
            day = self.previous[key][1]
            if day is not None and first <= day <= last:
                self.covered.add(key)
                if key not in self.current:
                    yield key

    def orphans(self, people: set[str]) -> Iterator[str]:
        """Keys the last run saw that no read of this run could find again: of persons no longer listed, and
        (after an upgrade) of unknown date. Only meaningful after a run that read every person in full."""
        for key, (_, _, person) in self.previous.items():
            if key not in self.current and key not in self.covered and (person is None or person not in people):
                yield key

    def mark_deleted(self, key: str) -> None:
        self.deleted.add(key)
        self.covered.add(key)

    # -- the next memo -------------------------------------------------------------------------------------
    def dump(
        self, *, people: set[str], floor: date, read_at: datetime, reconciled_at: datetime | None,
        event_seq: int | None = None,
    ) -> dict[str, Any]:
        """This run's records, plus the last run's that this run did not re-read and that are not older than
        the synced history (``floor``)."""
        kept = dict(self.current)
        for key, entry in self.previous.items():
            if key in kept or key in self.covered or key in self.deleted:
                continue
            if entry[1] is None or entry[1] < floor:
                continue  # aged out of the synced history (or of unknown date after a full read)
            kept[key] = entry
        if len(kept) > MEMO_LIMIT:
            log.warning("change memo above %d records; keeping the newest dates only", MEMO_LIMIT)
            newest = sorted(kept.items(), key=lambda kv: kv[1][1] or date.min)[-MEMO_LIMIT:]
            kept = dict(newest)
        return {
            "v": MEMO_VERSION,
            "scope": self.scope,
            "read_at": read_at.isoformat(),
            "reconciled_at": reconciled_at.isoformat() if reconciled_at else None,
            "event_seq": event_seq,
            "people": sorted(people),
            "records": {k: [h, d.isoformat() if d else None, p] for k, (h, d, p) in kept.items()},
        }
