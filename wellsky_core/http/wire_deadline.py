"""The request deadline held at the socket, for the status line and headers as for the body.

``timeout_seconds`` bounds each read, and :func:`~wellsky_core.http.bodies.read_within` checks
``request_deadline_seconds`` between the body's chunks; nothing bounded the head. A server (or a look-alike)
sending its status line and headers a byte at a time, each byte within the read timeout, held an attempt as long
as it liked: a 450-byte head at a byte per 0.5 s, about four minutes. httpcore reads every byte through its
network backend, so the backend is where the deadline is kept: every read and write of a connection is given at
most the time left before the current exchange's deadline, then fails as a read (or write) timeout.

The deadline belongs to the thread sending (httpx's sync client sends and reads on the caller's thread), set by
:func:`exchange_deadline` around one attempt and started again by :func:`on_the_wire` as each exchange's headers
go out; connections used outside an attempt keep their own timeouts only.
"""

from __future__ import annotations

import threading
import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager

import httpcore
import httpx

_local = threading.local()


class WireClock:
    """One attempt's deadline: ``span`` seconds from when its latest exchange (the request, or a sign-in it
    needed) reached the wire. Waiting for the request budget comes before that: the deadline bounds the server,
    not our own pacing (a small budget shared by many readers once failed fast answers as trickled ones)."""

    def __init__(self, span: float) -> None:
        self.span = span
        self.deadline = time.monotonic() + span

    def restart(self) -> None:
        self.deadline = time.monotonic() + self.span

    def passed(self) -> bool:
        return time.monotonic() >= self.deadline


@contextmanager
def exchange_deadline(attempt: WireClock) -> Iterator[WireClock]:
    """Reads and writes on this thread's connections end by ``attempt.deadline``, inside the block."""
    outer = clock()
    _local.clock = attempt
    try:
        yield attempt
    finally:
        _local.clock = outer


def on_the_wire() -> None:
    """This thread's request is about to be written (its budget slot granted): its clock starts now."""
    running = clock()
    if running is not None:
        running.restart()


def clock() -> WireClock | None:
    """This thread's clock, if an attempt is under way."""
    return getattr(_local, "clock", None)


def current() -> float | None:
    """This thread's deadline (``time.monotonic()``), if an attempt is under way."""
    running = clock()
    return None if running is None else running.deadline


def passed() -> bool:
    """Whether this thread's exchange deadline has passed (a read timeout then means the deadline, not a stall)."""
    running = clock()
    return running is not None and running.passed()


def _left(timeout: float | None, fails: type[Exception]) -> float | None:
    """``timeout`` shortened to what is left of this thread's deadline; raise ``fails`` once it has passed."""
    deadline = current()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise fails("request_deadline_seconds passed")
    return left if timeout is None else min(timeout, left)


class _BoundedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: typing.Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout))
        return _BoundedStream(stream)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _BoundedBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _BoundedStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: typing.Iterable[typing.Any] | None = None
    ) -> httpcore.NetworkStream:
        return _BoundedStream(
            self._inner.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout), socket_options)
        )

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def hold_deadlines(client: httpx.Client) -> int:
    """Put every connection pool of ``client`` (its transport and any proxy mounts) behind the deadline; returns
    how many pools it found. A transport that is not httpx's own (a test's ``MockTransport``) is left alone."""
    transports = [client._transport, *client._mounts.values()]  # httpx keeps no public handle on its pools
    held = 0
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        if isinstance(pool, httpcore.ConnectionPool) and not isinstance(pool._network_backend, _BoundedBackend):
            pool._network_backend = _BoundedBackend(pool._network_backend)
            held += 1
    return held
