"""A WellSkyClient over httpcore's own transport to a real loopback HTTP server answering ``{}`` (shared helper)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from wellsky_core.config import WellSkyConfig
from wellsky_core.http.client import WellSkyClient


class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


@contextlib.contextmanager
def loopback_client(handler: type[BaseHTTPRequestHandler] = Answer, **settings: object) -> Iterator[WellSkyClient]:
    """A budgeted client (50 requests/s unless ``settings`` say otherwise), no auth, to a loopback server."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = WellSkyConfig.load(
            {
                "base_url": f"http://127.0.0.1:{server.server_address[1]}",
                "username": "u",
                "password": "p",
                "max_requests_per_second": 50,
                **settings,
            },
            env={},
        )
        client = WellSkyClient(cfg, auth=httpx.Auth())
        try:
            yield client
        finally:
            client.close()
    finally:
        server.shutdown()
        server.server_close()
