"""The Home Connect channel: WellSky Personal Care's partner API (``/v1/…``), read the way the vendor documents it.

Facts from ``docs/facts/wellsky-home-connect.md`` (section numbers in comments) shape every request:

- reads are ``POST /v1/{res}/_search/?_count=100&_page=N`` with a JSON body; ``_page`` counts pages from 0
  (``home_connect_first_page`` switches to the 1-based reading of the older reference); a search stops on
  ``totalRecords``, on a short page, and a loop guard stops a server that ignores ``_page`` (§2);
- the trailing slash is mandatory except on ``locations/_search`` (``home_connect_locations_trailing_slash``
  for the other reading, §7);
- ``updated: "ge…"`` is honoured only by patients, practitioners and relatedperson (§2), so those three
  sync incrementally on the server side;
- shifts can only be read per client and month (§2, §7.6), care logs per client and date range: both are
  fanned out over the clients with bounded concurrency, every request under the client's shared token
  bucket (the vendor asks for at most 100 requests/s, §6);
- neither carries a change time, so a sync re-reads a trailing window of months and emits only records
  whose content hash differs from the last run's (:class:`ChangeMemo`, kept in the stream's state).

Streams the API lacks are reported with the reason (:data:`~wellsky_core.products.personal_care.dialect.UNAVAILABLE`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ...channels.base import Channel
from ...errors import NormalizationError, RemoteError
from .dialect import API_ROOT, MAX_COUNT, UNAVAILABLE
from .normalize import tags, task_logs, to_canonical

if TYPE_CHECKING:
    from ...transport import WellSkyClient

log = logging.getLogger(__name__)

T = TypeVar("T")

RESOURCES = {
    "patients": "patients",
    "practitioners": "practitioners",
    "appointments": "appointment",
    "encounters": "encounter",
    "related_persons": "relatedperson",
    "locations": "locations",
}
"""Canonical stream -> Home Connect resource name (plural except appointment, encounter, relatedperson; §2)."""
SERVER_INCREMENTAL = frozenset({"patients", "practitioners", "related_persons"})
"""Streams whose ``updated`` filter the server honours (§2); the others use the change memo."""
UPDATED_OVERLAP = timedelta(minutes=5)
"""Re-read this much before the bookmark: the bookmark is our clock, the filter runs on the server's."""
MEMO_LIMIT = 500_000
"""Most content hashes kept per stream (about 20 MB of state would be far past any agency's trailing window)."""


def search_path(resource: str, *, locations_slash: bool = False) -> str:
    """``/v1/{res}/_search/`` — with the one documented exception, ``/v1/locations/_search`` (§2)."""
    if resource == "locations" and not locations_slash:
        return f"{API_ROOT}/locations/_search"
    return f"{API_ROOT}/{resource}/_search/"


def record_path(resource: str, rid: str) -> str:
    """By-id reads and writes keep the trailing slash: ``/v1/{res}/{id}/``."""
    return f"{API_ROOT}/{resource}/{rid}/"


def months(first: date, last: date) -> list[str]:
    """``monthNo`` values (YYYYMM) from the month of ``first`` to the month of ``last``, inclusive."""
    out, year, month = [], first.year, first.month
    while (year, month) <= (last.year, last.month):
        out.append(f"{year:04d}{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def month_start(day: date, back: int) -> date:
    """The first day of the month ``back`` months before ``day``'s month."""
    index = day.year * 12 + day.month - 1 - back
    return date(index // 12, index % 12 + 1, 1)


def content_hash(record: dict[str, Any]) -> str:
    """What a record says, minus when we saw it: the change memo compares these between runs."""
    body = {k: v for k, v in record.items() if k != "updated_at"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


class ChangeMemo:
    """Content hashes of the records seen in the last run's window, so only changed records are emitted.

    The stream hands the previous memo in (``load``) and stores ``dump()`` in its state after the stream ends.
    The new memo holds only what this run saw, so it is bounded by the window, never by history.
    """

    def __init__(self, previous: dict[str, str] | None = None) -> None:
        self.previous = dict(previous or {})
        self.current: dict[str, str] = {}

    def changed(self, key: str, record: dict[str, Any]) -> bool:
        digest = content_hash(record)
        if key in self.current:  # seen twice in one run (a shift in two month windows): emit once
            self.current[key] = digest
            return False
        self.current[key] = digest
        return self.previous.get(key) != digest

    def dump(self) -> dict[str, str]:
        if len(self.current) > MEMO_LIMIT:
            log.warning("change memo above %d records; keeping the newest keys only", MEMO_LIMIT)
            return dict(list(self.current.items())[-MEMO_LIMIT:])
        return dict(self.current)


def bounded_map(fn: Callable[[T], Any], items: Iterable[T], workers: int) -> Iterator[Any]:
    """``fn`` over ``items`` on ``workers`` threads, results in input order, at most ``2*workers`` in flight."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsk-fanout") as pool:
        pending: list[Future[Any]] = []
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= workers * 2:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for future in pending:
                future.cancel()


class HomeConnectChannel(Channel):
    """``source: api`` for ``product: personal_care``: the documented Home Connect partner API."""

    name = "api"
    ordered = False  # records carry no server change time; the bookmark moves when a stream completes
    client_use = "required"
    client: WellSkyClient
    memo_streams = frozenset({"appointments", "encounters", "locations"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first_page = self.config.home_connect_first_page
        self.count = min(self.config.page_size, MAX_COUNT)
        self.memos: dict[str, ChangeMemo] = {}
        self.quality: dict[str, Counter[str]] = {}
        self.requests_by_stream: Counter[str] = Counter()
        self._clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._people: dict[str, list[str]] = {}
        self._tag_names: dict[str, str | None] = {}

    @staticmethod
    def probe(client: WellSkyClient) -> None:
        """Prove URL, TLS and credentials with one request (Home Connect has no ``GET /tenant``)."""
        client.search_json(search_path("patients"), {"_count": 1, "_page": 0}, {})

    # -- what this API has ------------------------------------------------------------------------------
    @classmethod
    def offers(cls, entity: str, product: str | None) -> bool:
        return entity in RESOURCES

    def supports(self, entity: str) -> bool:
        return entity in RESOURCES

    def unavailable_reason(self, entity: str) -> str | None:
        return UNAVAILABLE.get(entity) if entity not in RESOURCES else None

    def load_memo(self, entity: str, previous: dict[str, str] | None) -> None:
        """The content hashes the stream's state kept from the last run (appointments, encounters, locations)."""
        self.memos[entity] = ChangeMemo(previous)

    def dump_memo(self, entity: str) -> dict[str, str] | None:
        memo = self.memos.get(entity)
        return memo.dump() if memo is not None else None

    # -- paging ------------------------------------------------------------------------------------------
    def search(self, resource: str, body: dict[str, Any], *, stream: str = "") -> Iterator[dict[str, Any]]:
        """Every resource of one search, page by page (§2): stop on ``totalRecords``, on a short or empty page,
        and refuse a server that answers the same page twice (it ignores ``_page``: paging would never end)."""
        path = search_path(resource, locations_slash=self.config.home_connect_locations_trailing_slash)
        page, seen, previous_ids = self.first_page, 0, None
        while True:
            bundle = self.client.search_json(path, {"_count": self.count, "_page": page}, body)
            self.requests_by_stream[stream or resource] += 1
            entries = _entries(bundle, path)
            self.client.metrics.add_page(len(entries))
            ids = tuple(str(e.get("id")) if isinstance(e, dict) else "" for e in entries)
            if entries and ids == previous_ids:
                raise RemoteError(
                    200, "page_loop", f"{path} answered page {page} with the same records as the page before; "
                    "the server ignores _page (try home_connect_first_page)", url=path,
                )
            yield from entries
            seen += len(entries)
            total = _total(bundle)
            if not entries or len(entries) < self.count or (total is not None and seen >= total):
                return
            previous_ids, page = ids, page + 1

    # -- streams -----------------------------------------------------------------------------------------
    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        if entity not in RESOURCES:
            raise ValueError(f"Home Connect has no {entity}: {UNAVAILABLE.get(entity, 'unknown stream')}")
        observed = self._clock()
        self.quality[entity] = Counter()
        if entity in SERVER_INCREMENTAL:
            body: dict[str, Any] = {}
            if since is not None:
                floor = since.astimezone(UTC) - UPDATED_OVERLAP
                body["updated"] = "ge" + floor.strftime("%Y-%m-%dT%H:%M:%S")
            hint = {"profile_tag_name": self.profile_tag_name} if entity == "practitioners" else {}
            records = self._normalized(entity, self.search(RESOURCES[entity], body, stream=entity), observed, **hint)
        elif entity == "locations":
            records = self._normalized(entity, self.search("locations", {}, stream=entity), observed)
        elif entity == "appointments":
            records = self._fan_out(entity, self._shifts_of, since, observed)
        else:
            records = self._fan_out(entity, self._care_logs_of, since, observed)
        if entity in self.memo_streams:
            memo = self.memos.setdefault(entity, ChangeMemo())
            records = (r for r in records if memo.changed(r["id"], r))
        try:
            yield from records
        finally:
            flagged = self.quality.get(entity)
            if flagged:
                log.warning(
                    "%s: fields the source left empty or unusable (read as null, named in data_quality): %s",
                    entity, ", ".join(f"{k} {v}" for k, v in flagged.most_common()),
                )

    def _normalized(
        self, entity: str, resources: Iterable[dict[str, Any]], observed: datetime, **hint: Any
    ) -> Iterator[dict[str, Any]]:
        for resource in resources:
            try:
                record = to_canonical(entity, resource, observed, **hint)
            except NormalizationError as exc:
                self.reject(entity, exc, resource)
                continue
            for flag in record.get("data_quality") or ():
                self.quality[entity][flag["field"]] += 1
            yield record

    def profile_tag_name(self, tag_id: str) -> str | None:
        """A caregiver profile tag's name (``GET /v1/profileTags/{id}/``, once per id: the collection cannot be
        listed, §2); None when the tenant does not name it (the id is kept as ``profile_tag:<id>``)."""
        if not tag_id.isdigit():  # ids are numeric (§3); anything else never reaches a URL path
            return None
        if tag_id not in self._tag_names:
            try:
                body = self.client.get_json(f"{API_ROOT}/profileTags/{tag_id}/")
            except RemoteError:
                body = None
            self.requests_by_stream["practitioners"] += 1
            name = body.get("name") if isinstance(body, dict) else None
            self._tag_names[tag_id] = name.strip() if isinstance(name, str) and name.strip() else None
        return self._tag_names[tag_id]

    # -- fan-out over clients ------------------------------------------------------------------------------
    def client_ids(self) -> list[str]:
        """Ids of every client (and prospect, unless ``home_connect_fanout_prospects`` is off), read once."""
        if "clients" not in self._people:
            everyone = self.config.home_connect_fanout_prospects
            self._people["clients"] = [
                str(r["id"])
                for r in self.search("patients", {}, stream="fan_out_list")
                if r.get("id") is not None and (everyone or tags(r).get("isClient", "true").lower() != "false")
            ]
        return self._people["clients"]

    def caregiver_ids(self) -> list[str]:
        """Ids of every hired caregiver (applicants work no shifts), read once per channel."""
        if "caregivers" not in self._people:
            self._people["caregivers"] = [
                str(r["id"])
                for r in self.search("practitioners", {}, stream="fan_out_list")
                if r.get("id") is not None and tags(r).get("isHired", "true").lower() != "false"
            ]
        return self._people["caregivers"]

    def window(self, since: datetime | None) -> tuple[date, date]:
        """The dates re-read this run: the trailing months (or from the bookmark/start_date when older) up to
        the scheduled future."""
        today = self._clock().date()
        if since is None:
            start_date = self.config.start_date
            first = start_date.date() if start_date else month_start(today, self.config.home_connect_history_months)
        else:
            first = min(since.astimezone(UTC).date(), month_start(today, self.config.home_connect_trailing_months))
        last = month_start(today, -self.config.home_connect_future_months - 1) - timedelta(days=1)
        return first, last

    def _fan_out(
        self,
        entity: str,
        per_client: Callable[[str, date, date, datetime], list[dict[str, Any]]],
        since: datetime | None,
        observed: datetime,
    ) -> Iterator[dict[str, Any]]:
        first, last = self.window(since)
        by_caregiver = entity == "appointments" and self.config.home_connect_shift_fanout == "caregiver"
        people = self.caregiver_ids() if by_caregiver else self.client_ids()
        workers = max(1, self.config.home_connect_concurrency)
        # the plan is known up front: one search per person and month for shifts, one per client for care logs
        per_person = len(months(first, last)) if entity == "appointments" else 1
        unit = ("caregiver" if by_caregiver else "client") + ("-months" if entity == "appointments" else "s")
        plan = self.plan_progress(entity, len(people) * per_person, unit)

        def read(pid: str) -> list[dict[str, Any]]:
            batch = per_client(pid, first, last, observed)
            plan.advance(per_person)
            return batch

        for batch in bounded_map(read, people, workers):
            yield from batch

    def _shifts_of(self, person_id: str, first: date, last: date, observed: datetime) -> list[dict[str, Any]]:
        """One client's (or caregiver's) shifts, one ``monthNo`` search per month (§2: appointments need a client
        or caregiver and a window)."""
        by_caregiver = self.config.home_connect_shift_fanout == "caregiver"
        hint = {} if by_caregiver else {"client_id": person_id}
        out: list[dict[str, Any]] = []
        for month in months(first, last):
            body = {"caregiverId" if by_caregiver else "clientId": person_id, "monthNo": month}
            for record in self._normalized(
                "appointments", self.search("appointment", body, stream="appointments"), observed, **hint
            ):
                if first.isoformat() <= record["start"][:10] <= last.isoformat():
                    out.append(record)
        return out

    def _care_logs_of(self, client_id: str, first: date, last: date, observed: datetime) -> list[dict[str, Any]]:
        """One client's care logs in one date-range search, each with its task logs (one GET per care log: the
        API has no bulk task-log read, §2) unless ``home_connect_task_logs`` is off."""
        body = {"clientId": client_id, "startDate": first.strftime("%Y%m%d"), "endDate": last.strftime("%Y%m%d")}
        out: list[dict[str, Any]] = []
        for resource in self.search("encounter", body, stream="encounters"):
            logs: list[dict[str, Any]] = []
            rid = resource.get("id") if isinstance(resource, dict) else None
            if self.config.home_connect_task_logs and rid is not None:
                bundle = self.client.get_json(f"{API_ROOT}/encounter/{rid}/tasklog/")
                self.requests_by_stream["encounters"] += 1
                logs = task_logs(bundle)
            out.extend(self._normalized("encounters", [resource], observed, client_id=client_id, task_logs=logs))
        return out


def _entries(bundle: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise RemoteError(200, "unexpected_shape", f"{path} did not answer a search Bundle", url=path)
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise RemoteError(200, "unexpected_shape", f"{path} answered a Bundle whose entry is not a list", url=path)
    return [e["resource"] if isinstance(e, dict) and isinstance(e.get("resource"), dict) else e for e in entries]


def _total(bundle: dict[str, Any]) -> int | None:
    """``totalRecords`` on search Bundles; ``total`` as some readers saw it (§7 conflicts)."""
    for key in ("totalRecords", "total"):
        value = bundle.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return None
