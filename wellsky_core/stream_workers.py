"""Streams read on worker threads: one pool for both faces, and one way to stop it.

Both faces read ``max_parallel_streams`` streams at once on one connection (one request budget). The Singer face
wraps each stream in its output gate; the Airbyte face writes each stream's messages whole from its own thread.
What they share is here: jobs taken in order by daemon threads until the jobs run out or ``stop`` is set, and a
calling thread that waits in short joins so a signal reaches it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

Job = TypeVar("Job")


def run_workers(
    jobs: Sequence[Job],
    work: Callable[[Job], None],
    *,
    workers: int,
    stop: threading.Event,
    name: str,
    grace_seconds: float = 0.0,
) -> None:
    """Call ``work(job)`` for every job, in order, on up to ``workers`` daemon threads (at least one), until the
    jobs run out or ``stop`` is set. ``work`` deals with its job's failure itself (and sets ``stop`` when the
    others should not go on).

    Daemon threads, so a signal's exit is not held up by a stream waiting on the network. When the calling thread
    is interrupted (a signal's exception), ``stop`` is set, the threads get ``grace_seconds`` in all to finish what
    they are doing (the Singer face gives none: its streams wait at a gate the signal shut), and the exception goes
    on. The waits are on events each thread sets when it ends, not ``Thread.join``: with joins, the grace after an
    interrupt sometimes waited for neither thread of a test's two (1 run in 3, CPython 3.11.7).
    """
    pending = list(jobs)
    take = threading.Lock()
    count = max(1, min(workers, len(jobs)))
    done = [threading.Event() for _ in range(count)]

    def loop(finished: threading.Event) -> None:
        try:
            while not stop.is_set():
                with take:
                    if not pending:
                        return
                    job = pending.pop(0)
                work(job)
        finally:
            finished.set()

    threads = [
        threading.Thread(target=loop, args=(done[i],), name=f"{name}-{i}", daemon=True) for i in range(count)
    ]
    try:
        for thread in threads:
            thread.start()
        for finished in done:
            while not finished.wait(0.2):  # short waits: an interrupt reaches this thread between them
                pass
    except BaseException:
        stop.set()  # the others stop at their next job (or record); one mid-request finishes it first
        deadline = time.monotonic() + grace_seconds
        for thread, finished in zip(threads, done, strict=True):
            if thread.ident is not None:  # started before the interrupt
                finished.wait(max(0.0, deadline - time.monotonic()))
        raise
