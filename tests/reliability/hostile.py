"""A small hostile WellSky look-alike on loopback: echoes requests in errors, trickles or floods bodies.

Each test passes a ``route(handler, method, path, body) -> bool`` callable; it answers through the helpers on
:class:`Reply` and returns True, or returns False to fall through to a minimal healthy tenant (session login,
``/tenant``, empty pages). Real HTTP over a real socket: what the connector's transport actually sees.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SESSION_VALUE = "sess-Zq7Xk29LmPw41Rt"
Route = Callable[["Reply", str, str, bytes], bool]


class Reply(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    route: Route = staticmethod(lambda *_: False)  # type: ignore[assignment]
    stopping: threading.Event

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def send_raw(self, status: int, body: bytes, ctype: str = "application/json", length: int | None = None) -> None:
        """Any body; ``length`` larger than the body: the connection closes before the body is complete."""
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(length if length is not None else len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if length is not None and length != len(body):
            self.close_connection = True

    def trickle(
        self, chunks: Callable[[], Any], delay: float, length: int | None = None, chunked: bool = False
    ) -> None:
        """A 200 whose body arrives chunk by chunk, ``delay`` seconds apart, until the client hangs up; its
        size declared (``length``, else a terabyte) or, ``chunked``, never said (transfer-encoding: chunked)."""
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if chunked:
            self.send_header("transfer-encoding", "chunked")
        else:
            self.send_header("content-length", str(length if length is not None else 10**12))
        self.end_headers()
        try:
            for chunk in chunks():
                if self.stopping.is_set():
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                self.wfile.flush()
                if delay:
                    time.sleep(delay)
        except OSError:
            return

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        if type(self).route(self, method, path, body):
            return
        if method == "POST" and path == "/sessions":
            self.send_json(201, {"session_expires_in": 3600}, {"set-cookie": f"wsk_session={SESSION_VALUE}; Path=/"})
        elif path == "/tenant":
            self.send_json(200, {"product": "home_health", "name": "Hostile", "timezone": "UTC", "read_only": False})
        else:
            self.send_json(200, {"data": [], "next_cursor": None})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")


class HostileServer:
    """``with HostileServer(route) as srv: srv.base_url``"""

    def __init__(self, route: Route) -> None:
        stopping = threading.Event()
        handler = type("Handler", (Reply,), {"route": staticmethod(route), "stopping": stopping})
        self._stopping = stopping
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def config(base_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": base_url,
        "username": "ops@agency.example",
        "password": "Pw-hostile-9f3KqZ",
        "product": "home_health",
        "max_requests_per_second": 0,
        "max_retries": 0,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.02,
        **extra,
    }
