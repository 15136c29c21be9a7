"""The request deadline at the socket (``wellsky_core/http/wire_deadline.py``), against a real loopback socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import WellSkyTransportError
from wellsky_core.http.client import WellSkyClient
from wellsky_core.http.wire_deadline import WireClock, current, exchange_deadline, hold_deadlines, on_the_wire, passed

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@contextmanager
def trickling_server(delay: float) -> Iterator[str]:
    """Answers every connection's request with ``HEAD`` one byte every ``delay`` seconds."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                for byte in HEAD:
                    if stop.wait(delay):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def test_every_pool_of_a_client_is_held_once() -> None:
    """The client's own pool and a proxy mount's; a second call wraps nothing again; a mock is left alone."""
    client = httpx.Client(mounts={"http://proxied.test": httpx.HTTPTransport(proxy="http://127.0.0.1:9")})
    assert hold_deadlines(client) == 2
    assert hold_deadlines(client) == 0
    assert hold_deadlines(httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))) == 0


def test_a_trickled_head_ends_at_the_deadline_not_at_the_read_timeout() -> None:
    with trickling_server(0.2) as url:
        client = httpx.Client(timeout=5)
        hold_deadlines(client)
        started = time.monotonic()
        with exchange_deadline(WireClock(1.0)), pytest.raises(httpx.ReadTimeout):
            client.get(url)
        assert passed() is False, "the deadline outlived its block"
        took = time.monotonic() - started
    assert 0.9 < took < 2.0, took  # a byte each 0.2 s (5 s read timeout): ~15 s for the head without the deadline


def test_the_clock_starts_again_when_a_request_reaches_the_wire() -> None:
    clock = WireClock(1.0)
    clock.deadline = time.monotonic() - 1  # a long wait for the budget before the headers went out
    with exchange_deadline(clock):
        assert passed()
        on_the_wire()
        assert not passed() and current() == clock.deadline
    assert current() is None and not passed()
    on_the_wire()  # outside an attempt: nothing to start


def test_the_client_retries_a_trickled_head_as_a_deadline_and_says_so() -> None:
    with trickling_server(0.2) as url:
        cfg = WellSkyConfig.load(
            {"base_url": url, "username": "u", "password": "p", "max_retries": 1, "backoff_base_seconds": 0,
             "backoff_max_seconds": 0, "max_requests_per_second": 0, "timeout_seconds": 5,
             "request_deadline_seconds": 1},
            env={},
        )
        client = WellSkyClient(cfg, auth=httpx.Auth(), sleep=lambda s: None)
        started = time.monotonic()
        with pytest.raises(WellSkyTransportError) as caught:
            client.get_json("/patients")
        took = time.monotonic() - started
    assert caught.value.reason == "deadline" and caught.value.attempts == 2, str(caught.value)
    assert "request_deadline_seconds (1 s)" in str(caught.value)
    assert took < 4, took


def test_a_wait_for_the_request_budget_is_not_counted_against_the_deadline(tmp_path: Path) -> None:
    """request_deadline_seconds bounds the server, not our own pacing: an attempt's clock started before the
    request window granted its slot, so a small budget shared by many readers failed fast answers as "the
    tenant is trickling its answers" (5 requests/s, a 3 s deadline and a sandbox answering in 150 ms: exit 2).
    The clock now starts when the request reaches the wire."""
    from concurrent.futures import ThreadPoolExecutor

    from .loopback import loopback_client

    with loopback_client(
        max_retries=0, max_requests_per_second=2, request_deadline_seconds=1, state_dir=str(tmp_path)
    ) as client:
        started = time.monotonic()
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda n: client.get_json(f"/x{n}"), range(6)))
        took = time.monotonic() - started
    assert answers == [{}] * 6
    assert took > 1.5, f"{took:.1f} s: the budget did not make anyone wait longer than the deadline"
