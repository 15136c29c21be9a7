"""The HTTP front of every webhook receiver: slow clients cost no thread, each request has a total deadline,
and a delivery's head (its signature or subscription header) is judged before its body is read.

A thread per connection (``ThreadingHTTPServer``) let 150 clients trickling one byte per read hold 150 threads
indefinitely, and the 5 MiB body was read before the header was checked. Here one asyncio loop reads every
connection (an idle socket costs a few KiB, not a thread), under a cap on open connections; a request that is
not complete within ``request_timeout`` seconds is cut off whatever its pace; ``check_head`` answers from the
head alone (the body is then never read past what the kernel already buffered: at most ``2 * HEAD_LIMIT``);
and only complete, authorized requests reach ``handle``, which runs in a bounded pool of threads because it does
blocking SQLite work. One request per connection, answered ``HTTP/1.0`` with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

log = logging.getLogger("wellsky_core.webhooks")

HEAD_LIMIT = 16 * 1024
"""Longest request line plus headers; the reader also stops buffering the body at twice this."""
MAX_BODY_BYTES = 5 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 15.0
DEFAULT_WORKERS = 8
DEFAULT_MAX_CONNECTIONS = 512
LINGER_SECONDS = 1.0
"""After an early refusal, how long unread body bytes are drained so the client reads the answer, not a reset."""

Answer = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class Request:
    """One request as the receivers see it: header names in lower case, the body once it is authorized."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def _refuse(status: int, code: str, message: str) -> Answer:
    return status, {"error": code, "message": message}


def parse_head(head: bytes) -> Request | Answer:
    """The request line and headers (``head`` ends with the blank line); an answer when they are malformed."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _refuse(400, "invalid_request", "expected 'METHOD /path HTTP/1.1'")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip() or line[0] in " \t":
            return _refuse(400, "invalid_request", "malformed header line")
        key = name.lower()
        headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
    return Request(method=parts[0], path=parts[1], headers=headers)


def body_length(request: Request, max_body: int) -> int | Answer:
    """The declared body length, or the answer refusing it (chunked, missing, not a number, too long)."""
    if request.header("transfer-encoding") is not None:
        return _refuse(411, "invalid_body", "chunked bodies are not accepted; send Content-Length")
    try:
        length = int(request.header("content-length") or 0)
    except ValueError:
        length = -1
    if length <= 0 or length > max_body:
        return _refuse(400, "invalid_body", f"a JSON body up to {max_body // (1024 * 1024)} MiB is required")
    return length


def encode_answer(answer: Answer) -> bytes:
    status, body = answer
    data = json.dumps(body).encode()
    reason = HTTPStatus(status).phrase
    head = (
        f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + data


class ReceiverServer:
    """Serve ``handle`` on ``host:port``; ``start()``/``stop()`` in a background thread or ``serve_forever()``.

    ``check_head(request)`` (no body yet) returns an answer to refuse the request before its body is read, or
    None to go on; it runs on the event loop, so it must be quick and must not block.
    """

    def __init__(
        self,
        handle: Callable[[Request], Answer],
        *,
        check_head: Callable[[Request], Answer | None] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        workers: int = DEFAULT_WORKERS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_body: int = MAX_BODY_BYTES,
        name: str = "wellsky-webhooks",
    ) -> None:
        self._handle = handle
        self._check_head = check_head
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.max_body = max_body
        self.name = name
        self._sock = socket.create_server((host, port), backlog=128)
        self.host, self.port = self._sock.getsockname()[:2]
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-worker")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.timed_out = 0
        """Requests cut off by the total deadline."""
        self.turned_away = 0
        """Connections closed at once because ``max_connections`` were open."""

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        asyncio.run(self._main())

    def start(self) -> ReceiverServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name=f"{self.name}-loop")
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self._sock, limit=HEAD_LIMIT)
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one connection -------------------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= self.max_connections:
            self.turned_away += 1
            writer.transport.abort()
            return
        self._tasks.add(task)
        try:
            async with asyncio.timeout(self.request_timeout):
                answer, body_read = await self._one(reader)
                if answer is not None:
                    writer.write(encode_answer(answer))
                    await writer.drain()
                    if not body_read:
                        await self._linger(reader, writer)
        except TimeoutError:
            self.timed_out += 1  # cut off: no answer, the sender retries
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up; nothing stored
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close and drain briefly, so a refused client reads the answer rather than a connection reset."""
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            writer.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                drained = 0
                while drained < 4 * HEAD_LIMIT and (chunk := await reader.read(HEAD_LIMIT)):
                    drained += len(chunk)

    async def _one(self, reader: asyncio.StreamReader) -> tuple[Answer | None, bool]:
        """The answer (None: say nothing, the client left) and whether the whole body was read."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return _refuse(431, "invalid_request", f"request head over {HEAD_LIMIT // 1024} KiB"), False
        except asyncio.IncompleteReadError:
            return None, True
        request = parse_head(head)
        if not isinstance(request, Request):
            return request, False
        if request.method != "POST":
            return _refuse(405, "method_not_allowed", "deliveries are POST requests"), False
        length = body_length(request, self.max_body)
        if not isinstance(length, int):
            return length, False
        if self._check_head is not None and (refusal := self._check_head(request)) is not None:
            return refusal, False
        body = await reader.readexactly(length)
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self._pool, self._safe_handle, replace(request, body=body))
        return answer, True

    def _safe_handle(self, request: Request) -> Answer:
        try:
            return self._handle(request)
        except Exception as exc:  # an answer, never a dropped connection; the type only (no PHI in the log)
            log.error("webhook receiver failed on a delivery (%s); answered 500", type(exc).__name__)
            return _refuse(500, "internal", "the receiver failed; retry later")
