"""In-stream partitioning: one large stream read as several ``updated_at`` windows at once, emitted in order.

A REST or FHIR search stream pages serially: at 150 ms a page, the largest stream bounds the sync however many
streams run in parallel. Like airbyte-cdk's concurrent cursor, the stream's ``[since, now]`` is cut into
``updated_at`` windows (``[lo, hi)``) read in parallel under the connection's one request budget. Unlike it,
the output stays **ordered by (updated_at, id)**: window 1 is emitted as it arrives while later windows
prefetch into an on-disk spool (one private file each, one page in memory at a time), so

- a checkpoint names the ``updated_at`` of the last record emitted, exactly as a serial read would;
- a window that fails stops the stream only after everything before it was emitted: the bookmark is then
  inside (or at the start of) the oldest unfinished window, where the next run resumes;
- memory stays flat: records wait on disk, never in lists.

The windows come from the first page: the first page is fetched unbounded; a stream whose first page is not
full is one request, as before. Otherwise ``plan`` estimates the rest from that page (neither API reports a
total) and every window starts at once, so the stream is at full width after one round trip. Once a window
is done, its idle reader halves the remaining range of the window with the most pages left (estimated from
the density that window has seen): the old window stops at the midpoint (its reader drops what lies past it,
at most one page of overshoot), the new one reads ``[midpoint, old end)``, so a wrong estimate is corrected
where it was wrong (the density is the larger of the window's average and its last full page's: edits get
denser toward now, and the average left the newest window read serially at a sync's tail). Boundaries are
whole seconds (what the APIs' timestamps carry); the last window is open-ended, as a serial read is.

At a sync's tail one large stream is often left alone with its ``max_windows_per_stream`` readers, a few
requests per round trip while most of the budget idles. A stream with more to split than readers borrows
readers (``_borrow``) while the process's window readers stay under ``readers_cap`` (what the connection pool
was sized for, less a connection per stream), so the tail reads wider without more connections than a sync
holds at its start. For the same reason a reader with nothing left to read or split leaves while its stream
has another reader busy, and a large stream's first plan may be wider than its own readers.

Under a request budget, every split costs what a budget-bound sync is made of: a request (the shrunk window's
partial last page). So a window is planned or split only while its pages, one after another, would still be read
when the budget has sent every page the process has left (``_outlasts_budget``: the open reads publish their
pages left, ``pages_left_everywhere``). A page's time is the stream's fastest page (a request without the
budget's queue) or, while the readers keep the budget busy, a reader's share of it. A busy reader re-checks after
each full page (``_widen``), so a stream planned narrow widens as the rest of the sync ends. Scale M at 150 ms:
557-567 requests instead of 582-592, the sync 6.4-6.5 s instead of 6.8-7.2 s (docs/benchmarks.md, run 10).

A channel plugs in with one function, ``fetch(lo, hi)``: the pages of canonical records with ``lo <=
updated_at < hi`` (``None``: unbounded), each page in (updated_at, id) order.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .. import waits
from ..errors import WellSkyError
from ..private_files import open_private

if TYPE_CHECKING:
    from ..http.client import WellSkyClient

Page = list[dict[str, Any]]
FetchWindow = Callable[[datetime | None, datetime | None], Iterator[Page]]

MAX_WINDOWS = 32
"""Windows of a stream open (not finished) at once at most, and its readers at most; each split costs about one
request (the shrunk window's last page overshoots). Counting every window a stream ever had stopped a large
stream's splits for good once it had had 32, and its newest window was then read serially at the sync's tail."""
MIN_PAGES_TO_SPLIT = 2
"""An idle reader splits a window only while its estimated remaining pages are at least this many (a split
costs about one request and saves at least one round trip)."""
PLAN_PAGES_PER_WINDOW = 3
"""The first plan gives each window about this many estimated pages: every window ends on a partial page (one
request of overhead on average half spent), and at a full budget more windows only add those requests."""
EMIT_CHUNK_BYTES = 1024 * 1024
"""The emitter reads a window's spool this much at a time: reading all that waited at once held a whole window
in memory when the emitter fell behind (an L tenant's windows are tens of MB each), so peak RSS grew with scale."""
SPOOL_AHEAD_BYTES = 256 * 1024 * 1024
"""Spooled bytes not yet emitted above which windows ahead of the emitted one pause (disk, not memory)."""


class _Readers:
    """Window readers alive in this process, so a stream left alone can borrow the readers finished streams
    no longer use (a sync's tail is one large stream; its ``max_windows_per_stream`` readers alone leave most
    of the budget idle) without the process ever holding more than the connection pool was sized for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.alive = 0

    def enter(self) -> None:
        with self._lock:
            self.alive += 1

    def try_enter(self, cap: int) -> bool:
        with self._lock:
            if self.alive >= cap:
                return False
            self.alive += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.alive -= 1


READERS = _Readers()

_OPEN: set[WindowedRead] = set()
"""The windowed reads in progress in this process (their estimated pages left, summed, say how long the budget
still has to run)."""


def pages_left_everywhere() -> float:
    """Pages the open windowed reads still estimate to read (a sum of floats each read updates under its lock)."""
    return sum(read.pages_left for read in list(_OPEN))


_SPOOLS: set[Path] = set()
"""Spool directories of reads in progress: removed at exit too (a signal's exit skips the readers' cleanup)."""


@atexit.register
def _remove_spools() -> None:
    for directory in list(_SPOOLS):
        shutil.rmtree(directory, ignore_errors=True)


def parse_instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def estimated_rest(first: datetime, last: datetime, kept: int, now: datetime) -> float:
    """Records estimated after a first page of ``kept`` records over ``[first, last]`` (see :func:`plan`)."""
    span = max((last - first).total_seconds(), 1.0)
    total = (now - first).total_seconds()
    return 0.0 if total <= span else kept * ((total / span) ** 2 - 1)


def plan(first: datetime, last: datetime, kept: int, page_size: int, now: datetime,
         most: int = MAX_WINDOWS) -> list[datetime]:
    """The lower bounds of the windows after the first page's (``[first, last]``, ``kept`` records), so every
    window is read at once after that one round trip (no total is reported by either API).

    Edits are denser the more recent they are (records are created over years and touched recently), so the
    model is a density growing linearly from the first record to ``now``: the count up to ``t`` grows as
    ``(t - first)²``. The first page's average density alone under-counts a recent-heavy stream by 5-10x
    (the sandbox's S coverage: 2 pages estimated, 13 read), which left such a stream serial. Boundaries sit at
    equal shares of the estimated rest, about ``PLAN_PAGES_PER_WINDOW`` pages each; a wrong guess costs at most
    one partial page per window, and idle readers still split the windows that turn out larger (``_split``).
    Up to ``MAX_WINDOWS``, not only as many as the stream has own readers: the windows beyond those are read by
    readers borrowed at once, and then by its own as they finish (a sync's largest stream planned at 8 windows
    of ~25 pages ended on a 17-page chain; planned wide it ends on 11-13). Whole seconds, strictly increasing,
    after ``last``; empty when one window is enough.
    """
    span = max((last - first).total_seconds(), 1.0)
    rest = estimated_rest(first, last, kept, now)
    if not rest:
        return []
    count = min(most, MAX_WINDOWS, math.ceil(rest / page_size / PLAN_PAGES_PER_WINDOW))
    bounds: list[datetime] = []
    floor = last.replace(microsecond=0) + timedelta(seconds=1)
    for k in range(1, count):
        bound = first + timedelta(seconds=math.floor(span * math.sqrt((kept + k * rest / count) / kept)))
        if bound > floor and bound < now and (not bounds or bound > bounds[-1]):
            bounds.append(bound)
    return bounds


class _Window:
    """One ``[lo, hi)`` window: its pages spooled to a private file by a worker, tailed by the emitter.

    ``hi`` only ever shrinks (a split hands ``[m, hi)`` to a new window); ``pos`` is the newest ``updated_at``
    the window's reader kept, so a split point is always after everything it already spooled.
    """

    def __init__(self, lo: datetime | None, hi: datetime | None, path: Path, pages: Iterator[Page] | None = None,
                 first: Page | None = None) -> None:
        self.lo, self.hi, self.path = lo, hi, path
        self.pages = pages  # window 1: the unbounded first read, going on
        self.first = first
        self.origin = lo if lo is not None or not first else parse_instant(first[0]["updated_at"])
        """Where the window's records start (for the density estimate)."""
        self.size = 0  # bytes of whole pages written
        self.kept = 0  # records kept (for the density estimate)
        self.pos: datetime | None = None
        self.planned = 0.0  # pages estimated before its first page (a planned or split-off window)
        self.recent: tuple[int, float] | None = None
        """Records and seconds of the last full page read: the density where the window is reading now."""
        self.started = False
        self.done = False
        self.error: BaseException | None = None


class WindowedRead:
    """The ordered, windowed read of one stream (see the module docstring); iterate it once."""

    def __init__(self, fetch: FetchWindow, since: datetime | None, first: Page, rest: Iterator[Page],
                 page_size: int, now: datetime, workers: int, readers_cap: int = 0,
                 budget: float | None = None, first_seconds: float = 0.0) -> None:
        self._fetch = fetch
        self._budget = budget  # requests/s the connection sustains; None: no budget
        self._pace = first_seconds  # the fastest page this stream has had: a request without the budget's queue
        self.pages_left = 0.0
        self._workers = workers
        self._readers_cap = readers_cap  # window readers of every stream at most; 0: no borrowing
        self._page_size = page_size
        self._now = now
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._failed: _Window | None = None
        self._emitting: _Window | None = None
        self._ahead = 0  # bytes spooled and not yet emitted
        self._dir = Path(tempfile.mkdtemp(prefix="wellsky-windows-"))  # 0700
        _SPOOLS.add(self._dir)
        self._made = 0
        self._busy = 0  # readers reading a window now
        self._readers = 0  # readers alive now, own and borrowed
        self._threads: list[threading.Thread] = []
        head = self._window(since, None, pages=rest, first=first)
        head.pos, head.kept = parse_instant(first[-1]["updated_at"]), len(first)  # the first page is known
        self.windows = [head]
        start = parse_instant(first[0]["updated_at"])
        rest = estimated_rest(start, head.pos, len(first), now) / page_size
        bounds = plan(start, head.pos, len(first), page_size, now, self._windows_needed(rest))
        if bounds:  # every window at once, from the first page alone: full width after one round trip
            head.hi = bounds[0]
            for lo, hi in zip(bounds, [*bounds[1:], None], strict=True):
                self.windows.append(self._window(lo, hi))
        for window in self.windows:
            window.planned = rest / len(self.windows)
        self._count_pages_left()
        _OPEN.add(self)

    def _windows_needed(self, pages: float) -> int:
        """Under a budget, the fewest windows whose chains end when the budget has sent every page the process
        has left: more only add partial last pages, i.e. requests, which a budget-bound sync is made of."""
        if not self._budget or not self._pace:
            return MAX_WINDOWS
        budget_seconds = (pages_left_everywhere() + pages) / self._budget
        return max(1, math.ceil(pages * self._paced() / budget_seconds))

    def _window(self, lo: datetime | None, hi: datetime | None, **kw: Any) -> _Window:
        self._made += 1
        return _Window(lo, hi, self._dir / f"w{self._made}.jsonl", **kw)

    # -- splitting (under the condition's lock) -------------------------------------------------------------
    def _remaining_pages(self, window: _Window) -> float:
        """Pages ``window`` still has to read, by the density of what it read so far (before its first page: as
        planned)."""
        if window.done:
            return 0.0
        if window.pos is None or window.kept == 0 or window.origin is None:
            return window.planned
        read_span = max((window.pos - window.origin).total_seconds(), 1.0)
        end = window.hi or max(self._now, window.pos)
        left = (end - window.pos).total_seconds()
        density = window.kept / read_span
        if window.recent is not None:  # edits get denser toward now: the last full page knows it best
            density = max(density, window.recent[0] / window.recent[1])
        return density * left / self._page_size

    def _split(self) -> _Window | None:
        """Halve the remaining range of the window with the most pages left; the new window, or None."""
        if self._failed is not None or sum(not w.done for w in self.windows) >= MAX_WINDOWS:
            return None  # windows being read at most: a stream's finished windows no longer count
        best, most = None, float(MIN_PAGES_TO_SPLIT)
        for window in self.windows:
            if not window.done:
                pages = self._remaining_pages(window)
                if pages >= most:
                    best, most = window, pages
        if best is None or best.pos is None or not self._outlasts_budget(most):
            return None
        end = best.hi or max(self._now, best.pos)
        start = best.pos.replace(microsecond=0) + timedelta(seconds=1)
        middle = start + timedelta(seconds=math.floor((end - start).total_seconds() / 2))
        if middle <= start or (best.hi is not None and middle >= best.hi):
            return None
        new = self._window(middle, best.hi)
        new.planned = most / 2
        best.hi = middle
        self.windows.insert(self.windows.index(best) + 1, new)
        return new

    def _count_pages_left(self) -> None:
        """Publish this stream's estimate for the other streams (``pages_left_everywhere``)."""
        self.pages_left = sum(self._remaining_pages(w) for w in self.windows)

    def _outlasts_budget(self, pages: float) -> bool:
        """Would ``pages``, one after another, still be read when the budget has sent every page the process has
        left? Only then does a split shorten the sync; else it costs a request for nothing."""
        if not self._budget or not self._pace:
            return True
        return pages * self._paced() > pages_left_everywhere() / self._budget

    def _paced(self) -> float:
        """Seconds a page of one reader takes: its round trip (the stream's fastest page), or, while the readers
        keep the budget busy, its share of the budget (each of ``n`` readers gets a slot every ``n / budget`` s)."""
        assert self._budget
        return max(self._pace, READERS.alive / self._budget)

    def _widen(self) -> None:
        """After a full page, under a budget: split this stream's critical window onto a reader borrowed now. A
        stream whose other readers left (nothing worth splitting then) would otherwise read its last windows
        serially once the rest of the sync had ended."""
        if not self._budget or any(not w.started for w in self.windows) or not self._take_place():
            return
        window = self._split()
        if window is None:
            READERS.leave()
            return
        window.started = True
        self._busy += 1
        self._start(borrowed=True, window=window)

    # -- workers ---------------------------------------------------------------------------------------------
    def _pages(self, window: _Window) -> Iterator[Page]:
        if window.pages is None:
            return self._fetch(window.lo, window.hi)
        return itertools.chain([window.first or []], window.pages)

    def _run(self, window: _Window) -> None:
        pages: Iterator[Page] | None = None
        began = time.monotonic()
        try:
            pages = self._pages(window)
            with open_private(window.path, "wb") as out:
                for page in pages:
                    if self._stop.is_set() or self._after_failure(window):
                        return
                    if window.lo is not None and window.pages is None and page:
                        _require_after(page[0], window.lo)
                    with self._cond:  # hi may have shrunk (a split): keep what is still this window's
                        hi = window.hi
                        kept = page if hi is None else [r for r in page if parse_instant(r["updated_at"]) < hi]
                        if kept and page is not window.first:  # the first page was counted when planning
                            newest = parse_instant(kept[-1]["updated_at"])
                            if window.pos is not None and len(kept) == len(page):  # a full page's own density
                                window.recent = (len(kept), max((newest - window.pos).total_seconds(), 1.0))
                            window.pos = newest
                            window.kept += len(kept)
                        if page is not window.first:
                            arrived = time.monotonic()
                            self._pace = min(self._pace, arrived - began) if self._pace else arrived - began
                            began = arrived
                        self._count_pages_left()
                        if len(kept) == len(page) and page is not window.first:
                            self._widen()
                    if kept:
                        data = b"".join(orjson.dumps(r) + b"\n" for r in kept)
                        out.write(data)
                        out.flush()
                    with self._cond:
                        window.size += len(data) if kept else 0
                        self._ahead += len(data) if kept else 0
                        self._cond.notify_all()
                        while (
                            self._ahead > SPOOL_AHEAD_BYTES and window is not self._emitting
                            and not self._stop.is_set()
                        ):
                            self._cond.wait(0.5)
                    if len(kept) < len(page):
                        return  # the rest belongs to the next window
        except BaseException as exc:  # raised in the emitter, in order
            window.error = exc
            with self._cond:
                if self._failed is None or self.windows.index(window) < self.windows.index(self._failed):
                    self._failed = window
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()
            with self._cond:
                window.done = True
                self._count_pages_left()
                self._cond.notify_all()

    def _after_failure(self, window: _Window) -> bool:
        with self._cond:
            failed = self._failed
            return failed is not None and self.windows.index(window) > self.windows.index(failed)

    def _work(self, borrowed: bool = False, window: _Window | None = None) -> None:
        """Read windows until none is left. A reader that finds nothing to read or split leaves while another of
        the stream's readers is still reading (that one splits, and borrows again, when there is more to split):
        a stream whose windows are all under way frees its places for the streams still wide open. Idle readers
        that stayed kept a sync's large stream from borrowing them until the small streams ended."""
        try:
            while not self._stop.is_set():
                if window is None:  # else: started (and counted busy) for this reader by ``_widen``
                    with self._cond:
                        window = next((w for w in self.windows if not w.started), None)
                        if window is None:
                            window = self._split()
                            if window is not None:
                                self._borrow()  # there is more to split than readers: ask for one more
                        if window is None:
                            if borrowed or self._busy or all(w.done for w in self.windows) or self._failed:
                                return
                            self._cond.wait(0.05)
                            continue
                        window.started = True
                        self._busy += 1
                try:
                    self._run(window)
                finally:
                    with self._cond:
                        self._busy -= 1
                    window = None
        finally:
            with self._cond:
                self._readers -= 1
            READERS.leave()

    def _borrow(self) -> None:
        """One more reader for this stream, if the process has a reader to spare (under the condition's lock)."""
        if self._take_place():
            self._start(borrowed=True)

    def _take_place(self) -> bool:
        """Take a place in ``READERS`` for one more borrowed reader of this stream, if it may have one."""
        return bool(self._readers_cap) and self._readers < MAX_WINDOWS and READERS.try_enter(self._readers_cap)

    def _start(self, *, borrowed: bool, window: _Window | None = None) -> None:
        """A reader thread (under the condition's lock, its place in ``READERS`` taken), ``window`` its first."""
        self._readers += 1
        thread = threading.Thread(
            target=self._work, args=(borrowed, window), name=f"wellsky-window-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    # -- the emitter -----------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._cond:
            for _ in range(self._workers):
                READERS.enter()  # a stream's own readers always run; only borrowed ones wait for room
                self._start(borrowed=False)
            for _ in range(len(self.windows) - self._workers):
                self._borrow()  # planned wider than its own readers: borrow what the process can spare
        index = 0
        try:
            while True:
                with self._cond:
                    if index >= len(self.windows):
                        return
                    window = self.windows[index]
                    self._emitting = window
                    self._cond.notify_all()
                yield from self._emit(window)
                index += 1
        finally:
            self._stop.set()
            with self._cond:
                self._cond.notify_all()
                threads = list(self._threads)
            for thread in threads:
                thread.join(timeout=5)
            shutil.rmtree(self._dir, ignore_errors=True)
            _SPOOLS.discard(self._dir)
            _OPEN.discard(self)

    def _emit(self, window: _Window) -> Iterator[dict[str, Any]]:
        pos = 0
        handle = None
        try:
            while True:
                # size only grows and done only turns true, so an unlocked look that finds data is right
                idle = window.size <= pos and not window.done
                with waits.waiting() if idle else contextlib.nullcontext(), self._cond:
                    while window.size <= pos and not window.done:
                        # a wait that times out while the last reader finishes returns False with the window done:
                        # look again before calling the readers gone (that race failed 1 sync in ~15 under load)
                        if (
                            not self._cond.wait(1.0)
                            and window.size <= pos
                            and not window.done
                            and not any(t.is_alive() for t in self._threads)
                        ):
                            raise RuntimeError("the window readers stopped before the stream was read")
                    size, done = window.size, window.done
                if size > pos:
                    if handle is None:
                        handle = window.path.open("rb")
                    handle.seek(pos)
                    chunk = handle.read(min(size - pos, EMIT_CHUNK_BYTES))
                    if not chunk.endswith(b"\n"):  # whole records only: the rest of the last line (written, flushed)
                        chunk += handle.readline()
                    pos += len(chunk)
                    with self._cond:
                        self._ahead -= len(chunk)
                        self._cond.notify_all()
                    for line in waits.in_memory(chunk.splitlines()):
                        yield orjson.loads(line)
                    continue
                if done:
                    if window.error is not None:
                        raise window.error
                    return
        finally:
            if handle is not None:
                handle.close()
            window.path.unlink(missing_ok=True)


def _require_after(record: dict[str, Any], lo: datetime) -> None:
    """A window's page starts at or after its lower bound: a tenant that ignores the bound sends records that
    earlier windows already read, out of order (the stream's sort check then failed with no word on why)."""
    if parse_instant(record["updated_at"]) < lo:
        raise WellSkyError(
            f"the tenant answered a listing of records updated since {lo:%Y-%m-%dT%H:%M:%SZ} with older records: "
            "it ignores the lower bound of a bounded listing. Set max_windows_per_stream: 1 to read each stream "
            "serially (one window), and report it to WellSky"
        )


def read(fetch: FetchWindow, since: datetime | None, *, page_size: int, workers: int, now: datetime | None = None,
         prefetch: Callable[[Iterator[Page]], Iterator[Page]] | None = None,
         readers_cap: int = 0, budget: float | None = None) -> Iterator[dict[str, Any]]:
    """The records of ``[since, ...)`` in (updated_at, id) order, windowed when the first page is full and
    ``workers`` (``max_windows_per_stream``) is above 1. With ``readers_cap``, a stream whose windows outnumber
    its readers borrows more (up to ``MAX_WINDOWS``) while the process's window readers stay under that cap.

    ``prefetch`` (``base.prefetch``) overlaps the next page with the current one on the serial path.
    """
    pages = fetch(since, None)
    began = time.monotonic()
    first = next(pages, None)
    first_seconds = time.monotonic() - began
    if first is None:
        return
    if len(first) < page_size or workers <= 1:  # small (one page, one request), or windows off
        yield from waits.flatten(itertools.chain([first], prefetch(pages) if prefetch is not None else pages))
        return
    yield from WindowedRead(
        fetch, since, first, pages, page_size, now or datetime.now(UTC), workers, readers_cap, budget, first_seconds
    )


class WindowedChannel:
    """A channel whose listing takes a bounded ``updated_at`` range (``_pages(entity, since, before)``): its
    ``iter_records`` reads a large stream as windows in parallel, still emitted in (updated_at, id) order."""

    config: Any
    client: WellSkyClient

    def _pages(self, entity: str, since: datetime | None, before: datetime | None) -> Iterator[Page]:
        raise NotImplementedError

    def windowed(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        from .base import prefetch

        return read(
            lambda lo, hi: self._pages(entity, lo, hi),
            since,
            page_size=self.config.page_size,
            workers=self.config.max_windows_per_stream,
            prefetch=prefetch,
            readers_cap=readers_cap(self.config),
            budget=self.client.sustained_rate,
        )


def readers_cap(config: Any) -> int:
    """Window readers the process may run at once: what the connection pool was sized for
    (``http/client.py::pool_size``: streams x windows + 4), less one connection per stream for the streams
    read serially meanwhile. A stream left alone at a sync's tail borrows the finished streams' readers."""
    streams = int(getattr(config, "max_parallel_streams", 1) or 1)
    windows = int(getattr(config, "max_windows_per_stream", 1) or 1)
    return max(windows, streams * windows - streams)
