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

How it is stored (version 3, docs/home-connect-incremental.md "The memo"): the records travel as one string,
base64 of a zlib stream holding the records grouped per person and month (the person and month once per group, a
shift key ``<series>@<date>T<time>`` stored as series and time, its date being the record's) and then each
record's 8-byte hash, in the same order. A STATE message repeats the whole memo, and a string costs the SDK one
compare and no deep copy, where 500,000 small lists cost seconds each time.

Older states are still read: a version 2 memo (``records: {key: [hex hash, date, person]}``) keeps everything (its
hash is the first 8 bytes of the same digest, so no record is re-emitted); a plain ``{key: hash}`` dict is read as
hashes of unknown date, every person counts as new (so the first run after an upgrade reads everything, which is
a reconcile), and none is lost. A memo that cannot be decoded (truncated, edited) is named in one warning line
and the sync becomes a reconcile that re-emits every record; what it cannot give back (deletions since the last
run, which only the lost memo knew) is said in that line.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from typing import Any

import orjson

from ...state_codec import MemoError, pack, unpack

log = logging.getLogger(__name__)

MEMO_VERSION = 3
MEMO_LIMIT = 500_000
"""Most records kept per stream (about 6 MB of state at 12 bytes a record, far past any agency's history)."""
HASH_BYTES = 8
"""A record's content hash: the first 8 bytes of SHA-256 (collision odds in docs/home-connect-incremental.md)."""

MAX_PAYLOAD = MEMO_LIMIT * 400
"""Most bytes a memo's records may decompress to (400 a record: far above any real key and person)."""

Entry = tuple[bytes, date | None, str | None]
"""What the memo keeps per record key: content hash, record date, person (client or caregiver)."""


def content_hash(record: Mapping[str, Any]) -> bytes:
    """What a record says, minus when we saw it: every other field (``status`` included) is compared."""
    body = {k: v for k, v in record.items() if k != "updated_at"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()[:HASH_BYTES]


def _stored_hash(value: Any) -> bytes:
    """A hex hash of an older memo as bytes: version 2 kept 20 hex digits of the same SHA-256, so its first 16
    are this version's hash; anything else never equals a hash (that record is emitted again, never lost)."""
    try:
        return bytes.fromhex(value[: HASH_BYTES * 2]) if isinstance(value, str) else b""
    except ValueError:
        return b""


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


def _order(item: tuple[str, Entry]) -> tuple[bool, str, date, str]:
    key, (_, day, person) = item
    return person is None, person or "", day or date.min, key


def encode_records(records: Mapping[str, Entry]) -> str:
    """The records as one string: base64 of zlib of ``groups`` (JSON) + newline + the hashes, same order.

    ``groups`` is ``[[person, [[month "YYYY-MM" | null, [[day, key] | [day, series, time], ...]], ...]], ...]``:
    a key ``<series>@<date>T<time>`` whose date is the record's is kept as series and time. Sorted, so both faces
    (and two runs that saw the same records) write the same string."""
    groups: list[list[Any]] = []
    hashes = bytearray()
    person_group: list[Any] | None = None
    month_group: list[Any] | None = None
    for key, (digest, day, person) in sorted(records.items(), key=_order):
        if person_group is None or person_group[0] != person:
            person_group, month_group = [person, []], None
            groups.append(person_group)
        month = day.isoformat()[:7] if day else None
        if month_group is None or month_group[0] != month:
            month_group = [month, []]
            person_group[1].append(month_group)
        series, at, rest = key.partition("@")
        if day is not None and at and rest[:11] == f"{day.isoformat()}T":
            month_group[1].append([day.day, series, rest[11:]])
        else:
            month_group[1].append([day.day if day else None, key])
        hashes += digest.ljust(HASH_BYTES, b"\0")[:HASH_BYTES] if digest else bytes(HASH_BYTES)
    return pack(orjson.dumps(groups) + b"\n" + bytes(hashes))


def decode_records(text: Any, count: Any) -> dict[str, Entry]:
    """The records :func:`encode_records` wrote; :class:`MemoError` naming what is wrong when they cannot be."""
    payload = unpack(text, "records", MAX_PAYLOAD)
    structure, newline, hashes = payload.partition(b"\n")
    try:
        groups = orjson.loads(structure) if newline else None
    except orjson.JSONDecodeError:
        groups = None
    if not isinstance(groups, list):
        raise MemoError("records holds no record groups")
    out: dict[str, Entry] = {}
    seen = 0
    try:
        for person, months in groups:
            if person is not None and not isinstance(person, str):
                raise MemoError("a record group's person is not a string")
            for month, entries in months:
                year, mon = (int(month[:4]), int(month[5:7])) if month is not None else (0, 0)
                for entry in entries:
                    digest = hashes[seen * HASH_BYTES : (seen + 1) * HASH_BYTES]
                    seen += 1
                    if entry[0] is None or month is None:
                        day, key = None, entry[1]
                    else:
                        day = date(year, mon, entry[0])
                        key = entry[1] if len(entry) == 2 else f"{entry[1]}@{day.isoformat()}T{entry[2]}"
                    if not isinstance(key, str) or len(digest) != HASH_BYTES:
                        raise MemoError("a record entry is malformed")
                    out[key] = (digest, day, person)
    except MemoError:
        raise
    except (TypeError, ValueError, IndexError, KeyError):
        raise MemoError("a record group is malformed") from None
    if len(hashes) != seen * HASH_BYTES or count != seen or len(out) != seen:
        raise MemoError(f"records holds {seen} entries ({len(out)} keys) and {len(hashes) // HASH_BYTES} hashes, "
                        f"count says {count}")
    return out


def records_of(memo: Mapping[str, Any]) -> dict[str, Entry]:
    """The records of a stored memo of any version (for reports, tests and bench scripts)."""
    return ScheduleMemo(dict(memo), str(memo.get("scope") or "")).previous


class ScheduleMemo:
    """The last run's knowledge of one fanned-out stream, and this run's, merged into the next memo."""

    def __init__(self, previous: dict[str, Any] | None, scope: str) -> None:
        self.scope = scope
        self.previous: dict[str, Entry] = {}
        self.people: set[str] | None = None  # None: unknown, every person is new
        self.read_at: datetime | None = None
        self.reconciled_at: datetime | None = None
        self.event_seq: int | None = None  # last webhook event (subscriptions) this stream has acted on
        self.legacy = False
        self.unreadable: str | None = None  # why the stored memo could not be decoded (the run is a reconcile)
        version = previous.get("v") if isinstance(previous, dict) else None
        if isinstance(previous, dict) and version in (2, MEMO_VERSION):
            if previous.get("scope") == scope:
                self._load(previous, version)
        elif isinstance(previous, dict) and "v" in previous:
            self._unreadable(f"version {str(version)[:12]!r} is not one this tap knows (2 or {MEMO_VERSION})")
        elif isinstance(previous, dict):  # an older state: {key: hash}, dates and people unknown
            self.legacy = bool(previous)
            self.previous = {k: (_stored_hash(v), None, None) for k, v in previous.items() if isinstance(v, str)}
        elif previous is not None:
            self._unreadable(f"it is a {type(previous).__name__}, not an object")
        self.by_person: dict[str | None, list[str]] = defaultdict(list)
        for key, (_, _, person) in self.previous.items():
            self.by_person[person].append(key)
        self.current: dict[str, Entry] = {}
        self.covered: set[str] = set()  # previous keys whose (person, date) this run re-read
        self.deleted: set[str] = set()

    def _load(self, previous: dict[str, Any], version: int) -> None:
        people = previous.get("people") or []
        if not isinstance(people, list) or not all(isinstance(p, str | int) for p in people):
            self._unreadable("its people is not a list of ids")
            return
        if version == MEMO_VERSION:
            try:
                self.previous = decode_records(previous.get("records"), previous.get("count"))
            except MemoError as exc:
                self._unreadable(str(exc))
                return
        else:  # version 2: {key: [hex hash, date, person]}
            records = previous.get("records") or {}
            if not isinstance(records, dict):
                self._unreadable("its version 2 records is not an object")
                return
            for key, entry in records.items():
                if isinstance(entry, list) and len(entry) == 3:
                    person = str(entry[2]) if entry[2] is not None else None
                    self.previous[key] = (_stored_hash(entry[0]), _day(entry[1]), person)
        self.people = {str(p) for p in people}
        self.read_at = _moment(previous.get("read_at"))
        self.reconciled_at = _moment(previous.get("reconciled_at"))
        seq = previous.get("event_seq")
        self.event_seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None

    def _unreadable(self, why: str) -> None:
        """Start over as a reconcile, saying so once: the lost memo alone knew what was deleted since."""
        self.unreadable = why
        self.previous, self.people = {}, None
        log.warning(
            "%s: the change memo in the state (content_hashes) cannot be read: %s. This sync re-reads every "
            "record in full and emits it again (a reconcile); records deleted at the source since the last sync "
            "cannot be reported as deleted. Restore the state that sync wrote to keep them, or run a full refresh "
            "of this stream to rebuild its table",
            self.scope.split(":", 1)[0], why,
        )

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
            "count": len(kept),
            "records": encode_records(kept),
        }
