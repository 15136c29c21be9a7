"""Reading an answer's body within a size limit and a deadline: pages, status documents and login answers alike.

httpx bounds each read (``timeout_seconds``) but not the total: a server sending one byte a second, or an endless
body, would hold a run (and its memory) forever. Every body the connector reads whole goes through here.
"""

from __future__ import annotations

import time

import httpx

from ..errors import RequestDeadlineExceeded, ResponseTooLarge


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
