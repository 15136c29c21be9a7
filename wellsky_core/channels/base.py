"""The one interface every source channel implements, so streams never care where data comes from."""

from __future__ import annotations

import abc
import logging
import queue
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from ..deadletter import DeadLetter
from ..errors import NormalizationError
from ..snapshot_deletions import SnapshotView

if TYPE_CHECKING:
    from ..config import WellSkyConfig
    from ..http.client import WellSkyClient

T = TypeVar("T")
ClientUse = Literal["required", "optional", "none"]


class Progress:
    """A stream's known plan: ``planned`` units of work (client-months, bulk files, offices) and how many are done.

    Fed by the channel (any thread), read by the read loop's progress line, which adds a total and an ETA."""

    def __init__(self, planned: int, unit: str) -> None:
        self.planned = planned
        self.unit = unit
        self.done = 0
        self._lock = threading.Lock()

    def advance(self, units: int = 1) -> None:
        with self._lock:
            self.done += units

    def note(self, elapsed: float) -> str:
        """``, 120/960 client-months (12%), ETA 3m05s`` (no ETA before the first unit is done)."""
        done, planned = min(self.done, self.planned), self.planned
        text = f", {done}/{planned} {self.unit}"
        if planned:
            text += f" ({done / planned:.0%})"
        if 0 < done < planned and elapsed > 0:
            left = int(elapsed * (planned - done) / done)
            text += f", ETA {left // 60}m{left % 60:02d}s"
        return text


class Channel(abc.ABC):
    """A way to reach one tenant's data that yields canonical records per entity."""

    name: ClassVar[str]
    ordered: ClassVar[bool] = True
    """True when records come in ``(updated_at, id)`` order, so a bookmark may advance as records are sent."""
    client_use: ClassVar[ClientUse] = "optional"
    """What this channel needs of the tenant's HTTP API (``WellSkyClient``): ``required`` (HTTP channels),
    ``optional`` (file channels that may also use it when ``base_url`` is set) or ``none`` (own session)."""
    thread_safe: ClassVar[bool] = True
    """False when the channel must be used from one thread (a Playwright browser): its streams are not synced
    in parallel (``max_parallel_streams``) but one after another, in the main thread."""
    memo_streams: ClassVar[frozenset[str]] = frozenset()
    """Streams whose change detection needs a memo from the last run (kept in the stream's state)."""

    def __init__(
        self,
        *,
        config: WellSkyConfig,
        client: WellSkyClient | None = None,
        product: str | None = None,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        if self.client_use == "required" and client is None:
            raise ValueError(f"the {self.name} channel needs a WellSkyClient")
        self.config = config
        self.client = client
        self.product = product
        self._own_dead_letter = dead_letter is None
        self.dead_letter = dead_letter or DeadLetter(config.dead_letter_path)
        self.skipped: Counter[str] = Counter()
        """Inputs deliberately not read, by type (e.g. an HL7 message type no stream carries)."""
        self.plans: dict[str, Progress] = {}
        """Per stream, the plan of a read whose size is known up front (:meth:`plan_progress`)."""
        self.views: dict[str, SnapshotView] = {}
        """Per stream, the view this read fills when :meth:`snapshot_view` (handed in by the read loop)."""

    def snapshot_view(self, entity: str) -> bool:
        """Whether a read of ``entity`` can be a complete view of the tenant, so that a record the last one had
        and this one lacks is deleted (:mod:`wellsky_core.snapshot_deletions`). Such a channel feeds
        ``self.views[entity]`` (``see`` every record read, ``complete`` once the whole view was read)."""
        return False

    def deletions_note(self, entity: str) -> str | None:
        """Why a read of ``entity`` cannot know deletions, for the run-end line; None when the channel reports
        its own (Home Connect's schedule re-reads)."""
        return f"not knowable through source '{self.name}': it sees changes, never a complete view (docs/deletions.md)"

    def full_view_every(self, entity: str) -> int:
        """Days between complete views read on purpose inside incremental syncs (``since=None``), for a channel
        whose incremental read is not one (a bulk export's ``_since``); 0: never."""
        return 0

    def plan_progress(self, entity: str, planned: int, unit: str) -> Progress:
        """Announce that reading ``entity`` takes ``planned`` units; advance the returned Progress as they finish."""
        self.plans[entity] = Progress(planned, unit)
        return self.plans[entity]

    def progress_note(self, entity: str, elapsed: float) -> str:
        """The plan's part of the read loop's progress line ('' when the channel knows no plan)."""
        plan = self.plans.get(entity)
        return plan.note(elapsed) if plan is not None else ""

    def reject(self, entity: str | None, problem: Exception | str, payload: Any, **context: Any) -> None:
        """Refuse one input that cannot become a canonical record — the one reject path of every channel.

        With a dead-letter file the input is kept there with the reason and the sync goes on; without one the
        sync stops with the error (never a silent drop). ``problem`` is a PHI-free reason or exception.
        """
        view = self.views.get(entity) if entity else None
        if view is not None:
            view.incomplete("an input was dead-lettered, so the view lacks a record that may exist")
        if self.dead_letter.path is None:
            if isinstance(problem, Exception):
                raise problem
            raise NormalizationError(
                entity or "input", context.get("field", "$"),
                f"{problem} ({self.name} channel); set dead_letter_path to set such inputs aside and continue",
            )
        self.dead_letter.write(
            stage="read", stream=entity, reason=problem, payload=payload,
            context={"channel": self.name, **context},
        )
        logging.getLogger(type(self).__module__).warning("dead-lettered one %s input: %s", entity, problem)

    @classmethod
    def offers(cls, entity: str, product: str | None) -> bool:
        """Whether this channel can ever carry ``entity`` for ``product``: static, so discovery opens no
        connection. ``supports`` refines it at run time (the server's capabilities and permissions)."""
        from ..models import ENTITIES

        spec = ENTITIES.get(entity)
        return spec is not None and spec.modeled_rest and (spec.sources is None or cls.name in spec.sources)

    @abc.abstractmethod
    def supports(self, entity: str) -> bool:
        """Whether this channel can deliver ``entity`` for this tenant (product and permissions)."""

    def unavailable_reason(self, entity: str) -> str | None:
        """Why the tenant's API has no ``entity`` at all (reported to the user, never faked), or None."""
        from ..models import ENTITIES
        from ..products import DIALECTS

        if entity in ENTITIES and not ENTITIES[entity].modeled_rest:
            owners = [p for p, d in DIALECTS.items() if d.api_channel and entity in d.streams]
            return f"only the API of product {' or '.join(owners) or '(none)'} (source api) has {entity}"
        return None

    def load_memo(self, entity: str, previous: dict[str, Any] | None) -> None:  # noqa: B027 - optional hook
        """Hand the memo of the last run in (only for ``memo_streams``)."""

    def dump_memo(self, entity: str) -> dict[str, Any] | None:
        """The memo to keep for the next run, once ``iter_records`` is exhausted."""
        return None

    @abc.abstractmethod
    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        """Yield canonical records (JSON-ready dicts) with ``updated_at >= since``."""

    def resume_point(self, entity: str) -> datetime | None:
        """Where the next incremental run of ``entity`` should start, when the channel knows better than the
        newest ``updated_at`` it emitted (a bulk export's ``transactionTime``); None: the newest ``updated_at``.
        Valid after ``iter_records(entity, ...)`` was read to the end."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most channels hold nothing
        """Release connections, browsers and temporary files."""

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prefetch(pages: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Fetch the next pages in a background thread while the caller processes the current one.

    Overlapping network/server time with normalization and Singer output is most of the speed of a sync.
    Order is preserved; an exception in the producer is re-raised in the consumer at the same position;
    closing the consumer stops the producer.
    """
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in pages:
                while not stop.is_set():
                    try:
                        slots.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("done", None))
        except BaseException as exc:
            slots.put(("error", exc))

    worker = threading.Thread(target=produce, name="wellsky-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.join(timeout=5)


def stored_instant(moment: datetime) -> str:
    """A moment as :class:`LatestVersions` stores ``updated_at`` (UTC, whole seconds, ``Z``): comparable as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LatestVersions:
    """The newest version of each record seen in a batch feed, kept on disk so memory stays flat at any size.

    Batch files (HL7, nightly exports) repeat a record each time it changes; the channel must emit each
    record once, in its latest version, in (updated_at, id) order. A temporary SQLite table does the
    "latest wins" bookkeeping and the ordering without holding the tenant in memory.

    Streams sync in parallel and share one channel, so several threads use the table: every statement runs
    under one lock, and reads page by (updated_at, id) instead of holding a cursor open across yields.
    """

    PAGE = 1000

    def __init__(self, *, sources: bool = False) -> None:
        """``sources``: also keep which file (``rank[0]``) held each version of a record, not only the newest
        (:meth:`late`), for a channel that must find versions older than its bookmark in new files."""
        import tempfile
        import threading

        from ..private_files import private_sqlite

        self._lock = threading.Lock()
        self._dir = tempfile.TemporaryDirectory(prefix="wellsky-latest-")  # 0700, removed on close
        # whole patient records: 0600 like every file we write (private_files)
        self._db = private_sqlite(f"{self._dir.name}/latest.sqlite", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE latest (entity TEXT, id TEXT, updated_at TEXT, rank_a INTEGER, rank_b INTEGER, "
            "body BLOB, PRIMARY KEY (entity, id))"
        )
        self._sources = sources
        if sources:
            self._db.execute("CREATE TABLE seen (entity TEXT, id TEXT, updated_at TEXT, source INTEGER)")
        self._db.execute("BEGIN")

    def offer(self, entity: str, record: dict[str, Any], rank: tuple[int, int]) -> None:
        """Keep ``record`` unless a version with a later (updated_at, rank) is already held."""
        import orjson

        body = orjson.dumps(record)
        with self._lock:
            self._offer(entity, record, rank, body)

    def _offer(self, entity: str, record: dict[str, Any], rank: tuple[int, int], body: bytes) -> None:
        self._db.execute(
            "INSERT INTO latest VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (entity, id) DO UPDATE SET "
            "updated_at = excluded.updated_at, rank_a = excluded.rank_a, rank_b = excluded.rank_b, "
            "body = excluded.body WHERE (excluded.updated_at, excluded.rank_a, excluded.rank_b) >= "
            "(latest.updated_at, latest.rank_a, latest.rank_b)",
            (entity, record["id"], record["updated_at"], rank[0], rank[1], body),
        )
        if self._sources:
            row = (entity, record["id"], record["updated_at"], rank[0])
            self._db.execute("INSERT INTO seen VALUES (?, ?, ?, ?)", row)

    def late(self, entity: str, before: str, not_before: str, sources: set[int]) -> tuple[dict[str, str], set[int]]:
        """Records with a version from one of ``sources`` (files never delivered) dated in ``[not_before,
        before)``: id -> the oldest such ``updated_at``, and the sources holding them. Needs ``sources=True``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, updated_at, source FROM seen WHERE entity = ? AND updated_at < ? AND updated_at >= ?",
                (entity, before, not_before),
            ).fetchall()
        found: dict[str, str] = {}
        holding: set[int] = set()
        for record_id, updated, source in rows:
            if source in sources:
                holding.add(source)
                if record_id not in found or updated < found[record_id]:
                    found[record_id] = updated
        return found, holding

    def newest_before(self, entity: str, ids: Iterable[str], before: str) -> list[dict[str, Any]]:
        """The held (newest) version of each of ``ids`` dated before ``before``, in (updated_at, id) order."""
        import orjson

        wanted, rows = sorted(set(ids)), []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows += self._db.execute(
                    f"SELECT updated_at, id, body FROM latest WHERE entity = ? AND updated_at < ? AND id IN ({marks})",
                    (entity, before, *chunk),
                ).fetchall()
        return [orjson.loads(body) for _, _, body in sorted(rows)]

    def records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        """The held records of ``entity`` with ``updated_at >= since``, in (updated_at, id) order."""
        import orjson

        floor = stored_instant(since) if since is not None else ""
        after = (floor, "")
        while True:
            with self._lock:
                page = self._db.execute(
                    "SELECT updated_at, id, body FROM latest WHERE entity = ? AND updated_at >= ? "
                    "AND (updated_at, id) > (?, ?) ORDER BY updated_at, id LIMIT ?",
                    (entity, floor, *after, self.PAGE),
                ).fetchall()
            for _, _, body in page:
                yield orjson.loads(body)
            if len(page) < self.PAGE:
                return
            after = (page[-1][0], page[-1][1])

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._dir.cleanup()
