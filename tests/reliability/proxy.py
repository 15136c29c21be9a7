"""A loopback HTTP proxy between the connector and a sandbox: records what goes on the wire, and can drop a
connection *after* the server committed a write (the case idempotency keys exist for) or hold writes until a
second one arrives (two runs racing on the same record).

It forwards bytes as they are; it never answers for the server, so every response the connector sees is the
tenant's own.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


@dataclass
class Exchange:
    method: str
    path: str
    idempotency_key: str | None
    body: bytes
    status: int | None = None
    replayed: bool = False
    dropped: bool = False


class WireProxy:
    """``drop(exchange) -> bool`` decides, once the server has answered, whether the client gets the answer."""

    def __init__(self, upstream: str, *, drop: Callable[[Exchange], bool] | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.drop = drop or (lambda _: False)
        self.exchanges: list[Exchange] = []
        self.lock = threading.Lock()
        self.hold: tuple[str, int] | None = None
        """(method and path, n): such requests wait until n of them are waiting (then go on one at a time)."""
        self.stall_after: int | None = None
        """Requests after this many wait, unanswered, until the proxy stops (a tenant gone silent mid-sync)."""
        self.stalled = threading.Event()
        self._unstall = threading.Event()
        self._held = threading.Condition()
        self._waiting = 0
        self._release = False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                exchange = Exchange(self.command, self.path, self.headers.get("idempotency-key"), body)
                with proxy.lock:
                    proxy.exchanges.append(exchange)
                    stall = proxy.stall_after is not None and len(proxy.exchanges) > proxy.stall_after
                if stall:
                    proxy.stalled.set()
                    proxy._unstall.wait()  # released when the proxy stops
                    self.close_connection = True
                    return
                if proxy.hold and proxy.hold[0] == f"{self.command} {self.path}":
                    proxy._wait_for_company(proxy.hold[1])
                with proxy.lock:  # one write at a time reaches the server, in arrival order
                    conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                    conn.close()
                exchange.status = response.status
                exchange.replayed = response.getheader("idempotent-replayed") == "true"
                if proxy.drop(exchange):
                    exchange.dropped = True
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # the answer is lost on the way back
                    return
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _wait_for_company(self, n: int, timeout: float = 25.0) -> None:
        with self._held:
            self._waiting += 1
            if self._waiting >= n:
                self._release = True
                self._held.notify_all()
            released = self._held.wait_for(lambda: self._release, timeout=timeout)
        assert released, f"only {self._waiting} of {n} held requests arrived within {timeout} s"

    def writes(self, path_prefix: str = "/") -> list[Exchange]:
        with self.lock:
            return [e for e in self.exchanges if e.method in ("POST", "PUT") and e.path.startswith(path_prefix)]

    @contextmanager
    def running(self) -> Iterator[WireProxy]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._unstall.set()
            self._server.shutdown()
            self._server.server_close()
