"""Reading an answer's body within a size limit and a deadline: pages, status documents and login answers alike.

httpx bounds each read (``timeout_seconds``) but not the total: a server sending one byte a second, or an endless
body, would hold a run (and its memory) forever. Every body the connector reads whole goes through here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx

from ..errors import RequestDeadlineExceeded, ResponseTooLarge

SLOWEST_DOWNLOAD_BYTES_PER_SECOND = 16 * 1024
"""What a file download (a bulk output file, a nightly export) must average once its first
``request_deadline_seconds`` are over. Files are too large for one overall deadline, and ``timeout_seconds``
bounds each read only: a host sending a byte a second held the run for as long as it liked. 16 KiB/s is far
below any working link (a 1 GB file at that rate takes 18 hours), so only a stalled or hostile host is cut."""


_now = time.monotonic
"""The clock :func:`download_chunks` reads (a test replaces it, never the process's own ``time.monotonic``)."""


class DownloadTooSlow(Exception):
    """A file body sent slower than :data:`SLOWEST_DOWNLOAD_BYTES_PER_SECOND` on average past its grace."""

    def __init__(self, grace: float) -> None:
        super().__init__(
            f"the file was sent slower than {SLOWEST_DOWNLOAD_BYTES_PER_SECOND // 1024} KiB/s on average after its "
            f"first request_deadline_seconds ({grace:g} s); check the file host, or raise request_deadline_seconds "
            "for a link that slow"
        )


def download_chunks(response: httpx.Response, *, grace: float) -> Iterator[bytes]:
    """The body's chunks (decoded) while the download keeps up: ``grace`` seconds, plus a second for every
    :data:`SLOWEST_DOWNLOAD_BYTES_PER_SECOND` bytes received, or :class:`DownloadTooSlow` is raised. Chunks are
    taken as they arrive: a ``chunk_size`` would gather a trickle into one late chunk, past any check."""
    started = _now()
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if _now() - started > grace + size / SLOWEST_DOWNLOAD_BYTES_PER_SECOND:
            raise DownloadTooSlow(grace)
        yield chunk


def read_within(response: httpx.Response, *, limit: int, deadline: float) -> None:
    """Read the body into ``response`` (as ``response.read()`` would) within ``limit`` bytes, decoded, and before
    ``deadline`` (``time.monotonic()``), or raise :class:`ResponseTooLarge` / :class:`RequestDeadlineExceeded`."""
    parts: list[bytes] = []
    try:
        if time.monotonic() > deadline:
            raise RequestDeadlineExceeded
        try:
            declared = int(response.headers.get("content-length") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            raise ResponseTooLarge(limit)
        size = 0
        for chunk in response.iter_bytes():  # decoded: a small gzip bomb is bounded too
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(limit)
            if time.monotonic() > deadline:
                raise RequestDeadlineExceeded
            parts.append(chunk)
        response._content = b"".join(parts)  # what response.read() would have set
    finally:
        # the raised error's traceback holds this frame until a cyclic collection (rare, see cli.tune_gc):
        # an abandoned body must not ride along with it (8 streams x max_response_bytes of an endless one)
        parts.clear()
        response.close()
        # httpx's stream wrapper refers back to its response, a reference cycle that kept each page's body
        # in memory until the cyclic GC ran (rarely, see cli.tune_gc); the stream is spent and closed
        response.stream = httpx.ByteStream(b"")
