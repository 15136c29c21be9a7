"""The one pool both faces read streams on (``wellsky_core/stream_workers.py``)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from wellsky_core.stream_workers import run_workers


def test_jobs_are_taken_in_order_by_no_more_threads_than_jobs_or_workers() -> None:
    taken: list[int] = []
    threads: set[str] = set()
    lock = threading.Lock()

    def work(job: int) -> None:
        with lock:
            taken.append(job)
            threads.add(threading.current_thread().name)
        time.sleep(0.01)

    run_workers(list(range(10)), work, workers=3, stop=threading.Event(), name="pool")
    assert sorted(taken) == list(range(10)) and taken[:3] == sorted(taken[:3])
    assert threads <= {"pool-0", "pool-1", "pool-2"}
    threads.clear()
    run_workers([1], work, workers=8, stop=threading.Event(), name="pool")
    assert threads == {"pool-0"}


def test_a_stop_leaves_the_jobs_not_yet_taken() -> None:
    stop = threading.Event()
    taken: list[int] = []

    def work(job: int) -> None:
        taken.append(job)
        if job == 2:
            stop.set()

    run_workers(list(range(10)), work, workers=1, stop=stop, name="pool")
    assert taken == [0, 1, 2]


class _Interrupted(Exception):
    pass


def test_an_interrupt_of_the_calling_thread_stops_the_workers_within_their_grace() -> None:
    """A signal's exception in the calling thread sets ``stop``, waits up to the grace for the threads to finish
    their job, and goes on; the jobs not taken are never started."""
    stop = threading.Event()
    finished: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    both_busy = threading.Barrier(2)

    def work(job: int) -> None:
        if job < 2:
            both_busy.wait(5)
        if job == 0:
            os.kill(os.getpid(), signal.SIGUSR1)  # delivered to the calling (main) thread
        stop.wait(5)  # a request in flight: it ends when the pool says stop
        finished.append(job)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        started = time.monotonic()
        with pytest.raises(_Interrupted):
            run_workers(list(range(6)), work, workers=2, stop=stop, name="pool", grace_seconds=3)
        assert stop.is_set()
        assert time.monotonic() - started < 3
        assert sorted(finished) == [0, 1], "the two jobs in flight finished within the grace; none started after"
    finally:
        signal.signal(signal.SIGUSR1, previous)
