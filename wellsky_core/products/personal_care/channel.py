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
- neither carries a change time, so a sync re-reads them and emits only records whose content hash differs
  from the last run's; what is re-read is decided per person by the schedule memo kept in the stream state
  (:mod:`.schedule_memo`): a client new to the sync is read in full (history and published future), known
  clients over the re-read horizon (``home_connect_trailing_months`` back from the last run), and every
  ``home_connect_reconcile_days`` one sync reads everything again (a reconcile), which also finds deletions.
  A record gone from a re-read range is emitted with ``_sdc_deleted_at``. See docs/home-connect-incremental.md.

Streams the API lacks are reported with the reason (:data:`~wellsky_core.products.personal_care.dialect.UNAVAILABLE`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from ...channels.base import Channel
from ...errors import NormalizationError, RemoteError
from ...http.paging import PageNumberPaginator
from ...snapshot_deletions import tombstone as deletion
from ...webhooks import EventStore
from .dialect import API_ROOT, MAX_COUNT, UNAVAILABLE
from .normalize import tags, task_logs, to_canonical
from .schedule_memo import ScheduleMemo

if TYPE_CHECKING:
    from ...http.client import WellSkyClient

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
FANNED_OUT = frozenset({"appointments", "encounters"})
"""Streams read per client (or caregiver) and date range, with the schedule memo (:mod:`.schedule_memo`)."""


def search_path(resource: str, *, locations_slash: bool = False) -> str:
    """``/v1/{res}/_search/`` — with the one documented exception, ``/v1/locations/_search`` (§2)."""
    if resource == "locations" and not locations_slash:
        return f"{API_ROOT}/locations/_search"
    return f"{API_ROOT}/{resource}/_search/"


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""What a Home Connect id looks like (numbers and UUIDs in practice): anything else never reaches a path."""


def record_path(resource: str, rid: str) -> str:
    """By-id reads and writes keep the trailing slash: ``/v1/{res}/{id}/``. The id comes from a server or a
    webhook: it is validated and quoted, so it cannot walk to another path (``../``) or add a query."""
    if not isinstance(rid, str) or not _ID.fullmatch(rid) or rid in (".", ".."):
        raise NormalizationError(resource, "id", "is not a Home Connect id (letters, digits, '.', '-', '_')")
    return f"{API_ROOT}/{resource}/{quote(rid, safe='')}/"


def search_pages(
    client: WellSkyClient,
    resource: str,
    body: dict[str, Any],
    *,
    first_page: int,
    page_size: int = MAX_COUNT,
    locations_slash: bool = False,
    on_request: Callable[[], None] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Each page of one ``_search`` (§2): ``_page`` numbering from ``first_page``, at most ``MAX_COUNT`` a page;
    stops on ``totalRecords``, on a short or empty page, and refuses a server that ignores ``_page``."""
    path = search_path(resource, locations_slash=locations_slash)

    def fetch(page: int, count: int) -> Any:
        if on_request is not None:
            on_request()
        return client.post_read_json(path, {"_count": count, "_page": page}, body)

    paginator = PageNumberPaginator(
        fetch,
        entries=lambda bundle: _entries(bundle, path),
        total=_total,
        metrics=client.metrics,
        page_size=page_size,
        api_max=MAX_COUNT,
        first_page=first_page,
        loop_fix="the server ignores _page (try home_connect_first_page)",
    )
    return paginator.pages(path)


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


@dataclass
class ReadPlan:
    """One run's re-read of a fanned-out stream, and what it did (reported at the end of the stream)."""

    now: datetime
    floor: date
    """First date of the synced history (``start_date``, else ``home_connect_history_months`` back)."""
    last: date
    """Last date of the published future (``home_connect_future_months`` ahead)."""
    horizon: date
    """First date re-read for known persons; a change to an older record waits for the reconcile."""
    reconcile: bool
    reconciled_at: datetime | None
    every: timedelta
    people: set[str] = field(default_factory=set)
    noun: str = "clients"
    new: int = 0
    deleted: int = 0
    notified: int = 0
    """Clients re-read in full because a subscription event named one of their care logs."""
    event_seq: int | None = None

    @property
    def unseen_before(self) -> date | None:
        """Records dated before this may hold changes this run could not see (None after a reconcile)."""
        return None if self.reconcile or self.horizon <= self.floor else self.horizon

    def report(self, entity: str, requests: int) -> str:
        """The run-end line: what was re-read, deletions, and from when a change could still be unseen."""
        span = f"{self.floor} to {self.last}"
        due = (self.reconciled_at + self.every).strftime("%Y-%m-%dT%H:%MZ") if self.reconciled_at else "now"
        if self.reconcile:
            read = f"reconcile: re-read all {len(self.people)} {self.noun} in full ({span})"
            unseen = f"no change in the synced history is unseen; next reconcile due {due}"
        else:
            read = (
                f"re-read {len(self.people) - self.new} known {self.noun} from {self.horizon} to {self.last} and "
                f"{self.new} new {self.noun} in full from {self.floor}"
                + (f" ({self.notified} named by subscription events, also in full)" if self.notified else "")
            )
            unseen = (
                f"changes to records dated before {self.unseen_before} may be unseen until the reconcile due {due}"
                if self.unseen_before else f"no change in the synced history is unseen; next reconcile due {due}"
            )
        return f"{entity}: {read}; {self.deleted} deleted; {unseen}; {requests} requests"


def tombstone(entity: str, key: str, client_id: str | None, observed: datetime) -> dict[str, Any]:
    """A shift occurrence or care log the server no longer has (the core's one deletion shape, with the
    occurrence's series id)."""
    extra = {"series_id": key.split("@", 1)[0]} if entity == "appointments" and "@" in key else {}
    return deletion(entity, key, client_id, observed, **extra)


def _day(value: Any) -> date | None:
    try:
        return date.fromisoformat(str(value)[:10]) if value else None
    except ValueError:
        return None


def _ref_id_of(subject: Any) -> str | None:
    ref = subject.get("reference") if isinstance(subject, dict) else None
    return ref.split("/", 1)[1] if isinstance(ref, str) and ref.startswith("Patient/") and "/" in ref else None


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
        self.memos: dict[str, ScheduleMemo] = {}
        self.reports: dict[str, str] = {}
        self.quality: dict[str, Counter[str]] = {}
        self.requests_by_stream: Counter[str] = Counter()
        self._clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._people: dict[str, list[str]] = {}
        self._plans: dict[str, ReadPlan] = {}
        self._tag_names: dict[str, str | None] = {}

    @staticmethod
    def probe(client: WellSkyClient) -> None:
        """Prove URL, TLS and credentials with one request (Home Connect has no ``GET /tenant``)."""
        client.post_read_json(search_path("patients"), {"_count": 1, "_page": 0}, {})

    # -- what this API has ------------------------------------------------------------------------------
    @classmethod
    def offers(cls, entity: str, product: str | None) -> bool:
        return entity in RESOURCES

    def supports(self, entity: str) -> bool:
        return entity in RESOURCES

    def unavailable_reason(self, entity: str) -> str | None:
        return UNAVAILABLE.get(entity) if entity not in RESOURCES else None

    def snapshot_view(self, entity: str) -> bool:
        return entity == "locations"

    def deletions_note(self, entity: str) -> str | None:
        return None if entity in FANNED_OUT else super().deletions_note(entity)  # the schedule report says it

    def load_memo(self, entity: str, previous: dict[str, Any] | None) -> None:
        """The memo the stream's state kept from the last run (appointments, encounters, locations); a plain
        ``{key: hash}`` dict of older versions is read too."""
        self.memos[entity] = ScheduleMemo(previous, self._scope(entity))

    def dump_memo(self, entity: str) -> dict[str, Any] | None:
        memo = self.memos.get(entity)
        plan = self._plans.get(entity)
        if memo is None:
            return None
        if plan is None:  # locations: read whole every run
            return memo.dump(people=set(), floor=date.max, read_at=self._clock(), reconciled_at=None)
        return memo.dump(people=plan.people, floor=plan.floor, read_at=plan.now, reconciled_at=plan.reconciled_at,
                         event_seq=plan.event_seq)

    def _scope(self, entity: str) -> str:
        """What a memo's persons and dates mean: another fan-out or history start begins a new memo."""
        if entity not in FANNED_OUT:
            return entity
        by = "caregiver" if entity == "appointments" and self.config.home_connect_shift_fanout == "caregiver" else (
            "client" if not self.config.home_connect_fanout_prospects else "client+prospect")
        start = self.config.start_date
        since = start.astimezone(UTC).date().isoformat() if start else f"{self.config.home_connect_history_months}m"
        return f"{entity}:{by}:{since}"

    # -- paging ------------------------------------------------------------------------------------------
    def search(self, resource: str, body: dict[str, Any], *, stream: str = "") -> Iterator[dict[str, Any]]:
        """Every resource of one search, page by page (§2): stop on ``totalRecords``, on a short or empty page,
        and refuse a server that answers the same page twice (it ignores ``_page``: paging would never end)."""
        pages = search_pages(
            self.client,
            resource,
            body,
            first_page=self.config.home_connect_first_page,
            page_size=self.config.page_size,
            locations_slash=self.config.home_connect_locations_trailing_slash,
            on_request=lambda: self.requests_by_stream.update((stream or resource,)),
        )
        for page in pages:
            yield from page

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
        if entity == "locations":  # read whole every run: a complete view, so a closed office is a deletion
            memo = self.memos.setdefault(entity, ScheduleMemo(None, self._scope(entity)))
            records = self._locations(records, memo, observed)
        try:
            yield from records
            plan = self._plans.get(entity)
            if plan is not None:
                self.reports[entity] = plan.report(entity, self.requests_by_stream[entity])
                log.info("%s", self.reports[entity])
            else:
                log.info("%s: %d requests this run", entity, self.requests_by_stream[entity])
        finally:
            flagged = self.quality.get(entity)
            if flagged:
                log.warning(
                    "%s: fields the source left empty or unusable (read as null, named in data_quality): %s",
                    entity, ", ".join(f"{k} {v}" for k, v in flagged.most_common()),
                )

    def _locations(
        self, records: Iterable[dict[str, Any]], memo: ScheduleMemo, observed: datetime
    ) -> Iterator[dict[str, Any]]:
        """The changed locations; every one read goes into the stream's view, complete once the list ends."""
        view = self.views.get("locations")
        for record in records:
            if view is not None:
                view.see(record)
            if memo.changed(record["id"], record, None, None):
                yield record
        if view is not None:
            view.complete(f"the locations list read at {observed.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}", observed)

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

    def plan(self, entity: str, memo: ScheduleMemo) -> ReadPlan:
        """What this run re-reads of a fanned-out stream, from the last run's memo and the settings."""
        now = self._clock()
        today = now.date()
        start_date = self.config.start_date
        history = self.config.home_connect_history_months
        floor = start_date.astimezone(UTC).date() if start_date else month_start(today, history)
        last = month_start(today, -self.config.home_connect_future_months - 1) - timedelta(days=1)
        # edits land within the horizon of when they are made: a run after a long pause reaches back further
        anchor = min(today, memo.read_at.astimezone(UTC).date()) if memo.read_at else today
        horizon = max(floor, month_start(anchor, self.config.home_connect_trailing_months))
        every = timedelta(days=self.config.home_connect_reconcile_days)
        due = memo.people is None or memo.reconciled_at is None or now - memo.reconciled_at >= every
        return ReadPlan(
            now=now, floor=floor, last=last, horizon=horizon, reconcile=due,
            reconciled_at=now if due else memo.reconciled_at, every=every,
        )

    def _fan_out(
        self,
        entity: str,
        per_client: Callable[[str, date, date, datetime], list[dict[str, Any]]],
        since: datetime | None,
        observed: datetime,
    ) -> Iterator[dict[str, Any]]:
        """Every person's schedule over its own range: in full for a person new to the sync (or on a
        reconcile), over the re-read horizon otherwise; then what the re-read ranges no longer hold, as
        deletions. ``since`` is not used: the memo, not the bookmark, says what was read when."""
        memo = self.memos.get(entity) or self.memos.setdefault(entity, ScheduleMemo(None, self._scope(entity)))
        plan = self._plans[entity] = self.plan(entity, memo)
        by_caregiver = entity == "appointments" and self.config.home_connect_shift_fanout == "caregiver"
        people = self.caregiver_ids() if by_caregiver else self.client_ids()
        plan.people = set(people)
        plan.noun = "caregivers" if by_caregiver else "clients"
        known = memo.people or set()
        notified = self._notified_clients(memo, plan) if not by_caregiver else set()

        def first_for(pid: str) -> date:
            return plan.floor if plan.reconcile or pid not in known or pid in notified else plan.horizon

        def units(pid: str) -> int:  # one search per person and month for shifts, one per client for care logs
            return len(months(first_for(pid), plan.last)) if entity == "appointments" else 1

        unit = ("caregiver" if by_caregiver else "client") + ("-months" if entity == "appointments" else "s")
        progress = self.plan_progress(entity, sum(units(pid) for pid in people), unit)

        def read(pid: str) -> tuple[str, date, list[dict[str, Any]]]:
            first = first_for(pid)
            batch = per_client(pid, first, plan.last, observed)
            progress.advance(units(pid))
            return pid, first, batch

        workers = max(1, self.config.home_connect_concurrency)
        candidates: list[tuple[str, str]] = []
        for pid, first, batch in bounded_map(read, people, workers):
            if first == plan.floor and not plan.reconcile and pid not in notified:
                plan.new += 1
            for record in batch:
                if memo.changed(record["id"], record, _day(record.get("start")), pid):
                    yield record
            candidates.extend((key, pid) for key in memo.gone(pid, first, plan.last))
        if plan.reconcile:  # every person read in full: what no read found again is gone too
            candidates.extend((key, memo.previous[key][2] or "") for key in memo.orphans(plan.people))
        for key, pid in candidates:
            if key in memo.current:  # found under another person (a shift handed to another caregiver)
                continue
            found = self._still_there(entity, key, observed) if entity == "encounters" else None
            if found is not None:  # a care log whose date moved out of the range re-read: not deleted
                if memo.changed(found["id"], found, _day(found.get("start")), found.get("patient_id") or pid):
                    yield found
                continue
            memo.mark_deleted(key)
            plan.deleted += 1
            yield tombstone(entity, key, None if by_caregiver else pid or None, observed)

    def _notified_clients(self, memo: ScheduleMemo, plan: ReadPlan) -> set[str]:
        """Clients named by care-log events of the subscriptions (``encounter.clockout.changed``, received into
        ``webhook_events_path``) since the last run: their whole schedule is re-read, whatever its age. They
        only add to what is re-read; no documented criterion covers shift edits, cancellations or addenda,
        so they never replace the horizon or the reconcile."""
        path = self.config.webhook_events_path
        if not path or not Path(path).is_file():
            return set()
        store = EventStore(path)
        try:
            clients: set[str] = set()
            last = memo.event_seq
            for event in store.iter_events(last or 0):
                plan.event_seq = event["seq"]
                record = event.get("record") if isinstance(event.get("record"), dict) else {}
                if last is not None and event.get("entity") == "encounters" and record.get("patient_id"):
                    clients.add(str(record["patient_id"]))
            if plan.event_seq is None:
                plan.event_seq = last
        finally:
            store.close()
        plan.notified = len(clients)
        return clients

    def _still_there(self, entity: str, key: str, observed: datetime) -> dict[str, Any] | None:
        """A care log a re-read no longer lists, read by id: None when the server no longer has it (404)."""
        try:
            resource = self.client.get_json(record_path("encounter", key))
        except RemoteError as exc:
            if exc.status in (404, 410):
                return None
            raise
        finally:
            self.requests_by_stream[entity] += 1
        client_id = _ref_id_of(resource.get("subject") if isinstance(resource, dict) else None)
        logs: list[dict[str, Any]] = []
        if self.config.home_connect_task_logs:
            logs = task_logs(self.client.get_json(f"{API_ROOT}/encounter/{key}/tasklog/"))
            self.requests_by_stream[entity] += 1
        out = list(self._normalized(entity, [resource], observed, client_id=client_id, task_logs=logs))
        return out[0] if out else None

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
                try:
                    path = record_path("encounter", str(rid)) + "tasklog/"
                except NormalizationError as exc:  # a server id we will not put into a path
                    self.reject("encounters", exc, resource)
                    continue
                bundle = self.client.get_json(path)
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
