"""Streams synced in parallel with Singer output exactly as correct as a sequential sync.

singer-sdk syncs one stream at a time. Against a tenant 150 ms away that leaves the request budget mostly idle:
each stream waits for one page at a time. Here every selected stream syncs in its own thread, and one lock,
the *output gate*, is held around everything the SDK does: writing SCHEMA/RECORD/STATE, moving bookmarks,
serializing the shared state. A stream releases the gate only while its read waits for the channel's next
records (network, a window reader's page: code of ours that touches neither stdout nor the SDK's state; the read
says when, ``wellsky_core/waits.py``), and holds it across records already in memory. So:

- every message is written whole by one thread at a time (no interleaved bytes);
- a STATE message is serialized under the gate, and a stream's bookmark moves only after its record was
  written, so no STATE ever names a bookmark whose record has not been written before it;
- the SDK's code still runs one stream at a time, as it was written to; only the waiting overlaps.

On a signal the gate is shut for good (:meth:`OutputGate.close_for_good`), the final STATE is written, and then
stdout itself is sealed (:func:`seal_stdout`): whatever any thread still tries to write afterwards (a stream that
held the gate past the deadline, a path that does not pass the gate) goes nowhere, so nothing can follow the
final STATE.

Every stream shares the connection's client, so one request window (``wellsky_core/http/ratelimit.py``) budgets
the requests of all of them.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from wellsky_core import waits
from wellsky_core.stream_workers import run_workers

T = TypeVar("T")


class SyncStopped(BaseException):
    """Raised in a stream's thread when the sync stops (another stream failed, or a signal arrived).

    A BaseException so the SDK's "unhandled error while syncing" log does not blame the stopped stream.
    """


class OutputGate:
    """The one lock around the SDK's output and state; inactive (no locking at all) in a sequential sync."""

    close_timeout = 10.0
    """How long a signal waits for the stream inside the gate to leave it (an orchestrator's grace period before
    SIGKILL is often 30 s: the final STATE must be out well before)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = False
        self.stopping = threading.Event()

    def __enter__(self) -> OutputGate:
        if self.active:
            self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self._lock.release()

    def close_for_good(self, timeout: float | None = None) -> bool:
        """Stop every stream and keep the gate shut (the caller writes a last STATE, seals stdout, exits).

        False: a stream still held the gate after ``timeout`` (default :attr:`close_timeout`) seconds, so the
        shared state may be mid-update; the caller then repeats the last STATE written instead.
        """
        self.stopping.set()
        return not self.active or self._lock.acquire(timeout=self.close_timeout if timeout is None else timeout)

    def waiting(self, items: Iterator[T]) -> Iterator[T]:
        """``items`` read inside the gate (the caller holds it), the gate open while the read waits.

        The read says when it waits (``wellsky_core.waits``: the read loop pulls a channel's records in
        ``waiting`` unless they are in memory already). Opening the gate around every record instead handed
        the lock between the stream threads once per record (docs/benchmarks.md, run 11).
        """
        if not self.active:
            yield from items
            return
        with waits.consumer(self._lock.release, self._take):
            for item in items:
                if self.stopping.is_set():
                    raise SyncStopped("the sync is stopping")
                yield item

    def _take(self, may_stop: bool) -> None:
        """The gate back after a wait; a sync that began stopping meanwhile stops this stream here."""
        self._lock.acquire()
        if may_stop and self.stopping.is_set():
            raise SyncStopped("the sync is stopping")


def seal_stdout() -> None:
    """Flush stdout, then send everything written to it from now on, by any thread and any path, nowhere.

    Called right after the final STATE: fd 1 is pointed at /dev/null (a write already under way lands there)
    and ``sys.stdout`` is replaced (the SDK's writer and the fast record path look it up per message).
    """
    stdout = sys.stdout
    with contextlib.suppress(OSError, ValueError):
        stdout.flush()
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation, AttributeError):
        fd = stdout.fileno()
        sink = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(sink, fd)
        finally:
            os.close(sink)
    _SEALED.append(stdout)  # kept referenced: collecting it would close the stream under a writer
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # lives until exit


_SEALED: list[Any] = []


def run_parallel(gate: OutputGate, jobs: list[tuple[str, Callable[[], None]]], workers: int) -> None:
    """Run ``jobs`` (name, sync callable) on ``workers`` threads (``stream_workers.run_workers``), each job inside
    the gate. The first failure stops the others at their next record and is re-raised here."""
    errors: list[BaseException] = []
    gate.active = True

    def run(job: tuple[str, Callable[[], None]]) -> None:
        try:
            with gate:
                job[1]()
        except SyncStopped:
            return
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
            gate.stopping.set()

    try:
        run_workers(jobs, run, workers=workers, stop=gate.stopping, name="tap-wellsky-stream")
    finally:
        gate.active = gate.stopping.is_set() and not errors  # a signal keeps it shut; else back to sequential
    if errors:
        raise errors[0]
