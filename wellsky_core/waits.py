"""When the thread reading a stream waits, and when its next records are already in memory.

A Singer sync with parallel streams (``tap_wellsky/parallel.py``) has one output gate: a stream holds it while its
records pass through the SDK and must let it go while its read waits (the network, a window reader's page), or the
other streams could not write meanwhile. Letting it go around every record, as the gate once did, handed one lock
between the stream threads per record, ~50,000 times in a FHIR sync of scale M (219 now; with the collector's
change, 10 % of that sync's CPU: docs/benchmarks.md, run 11). So the read says when it waits, and the consumer
holds on across what is in memory:

- :func:`waiting` wraps anything that may block (a channel's next page, a window's spool): the consumer registered
  for this thread (:func:`consumer`) lets its gate go for that long;
- :func:`flatten` yields the records of pages one by one, each page awaited in :func:`waiting`, and tells the
  consumer how many of the page's records are left in memory;
- :func:`draw` is how the read loop pulls a channel's records: in :func:`waiting` unless the next one is known to
  be in memory. The read loop's own code (counts, bookmark, its part of the state) so runs inside the gate.

A thread with no consumer (the Airbyte face, a sequential Singer sync, a window reader) makes all of it a no-op.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class _Local(threading.local):
    consumer: tuple[Callable[[], None], Callable[[bool], None]] | None = None
    released = False
    in_memory = 0  # records the current page still holds after the one just yielded


_local = _Local()


@contextmanager
def consumer(release: Callable[[], None], take: Callable[[bool], None]) -> Iterator[None]:
    """Register, for this thread, what to do around a wait: ``release`` (let the gate go) before it, ``take``
    after it (get the gate back; ``take(True)`` after a wait that ended normally may raise to stop the read,
    ``take(False)`` after one that raised must not, so the read's own error goes on)."""
    owner = threading.get_ident()
    _local.consumer, _local.released, _local.in_memory = (release, take), False, 0
    try:
        yield
    finally:
        # not restored, cleared: a stream's read left unclosed (its generator closed later, by another thread,
        # which cannot touch this thread's) must not leave its gate's hooks behind for the next read; the next
        # consumer on this thread replaces them whatever they are
        if threading.get_ident() == owner:
            _local.consumer, _local.released, _local.in_memory = None, False, 0


@contextmanager
def waiting() -> Iterator[None]:
    """Around anything that may block: the consumer's gate is let go for the duration (once, if nested)."""
    hooks = _local.consumer
    if hooks is None or _local.released:
        yield
        return
    release, take = hooks
    release()
    _local.released = True
    try:
        yield
    except BaseException:
        _local.released = False
        take(False)
        raise
    _local.released = False
    take(True)


def flatten(pages: Iterable[Sequence[T]]) -> Iterator[T]:
    """The items of ``pages`` one by one; each page is awaited in :func:`waiting`, and while a page's items are
    yielded the consumer knows how many of them are still in memory."""
    source = iter(pages)
    try:
        while True:
            with waiting():
                page = next(source, None)
            if page is None:
                return
            yield from in_memory(page)
    finally:
        _local.in_memory = 0


def in_memory(items: Sequence[T]) -> Iterator[T]:
    """``items`` one by one, the consumer told before each hand-over how many follow without a wait."""
    left = len(items)
    try:
        for item in items:
            left -= 1
            _local.in_memory = left
            yield item
    finally:
        _local.in_memory = 0


def draw(items: Iterable[T]) -> Iterator[T]:
    """``items`` pulled in :func:`waiting`, except the ones a page already holds in memory."""
    source = iter(items)
    if _local.consumer is None:  # nothing to let go on this thread: a plain pass-through
        yield from source
        return
    while True:
        if _local.in_memory > 0:
            item = next(source, _END)
        else:
            with waiting():
                item = next(source, _END)
        if item is _END:
            return
        yield item  # type: ignore[misc]


_END: object = object()
