"""The webhook receiver refuses what the tap cannot process, and the tap survives what slipped in (issue 16 #9).

Before: a signed event with an unknown entity was stored (200) and then every ``webhook_events`` sync failed
with a KeyError before its first STATE; a non-integer Content-Length dropped the connection with a traceback;
the store was created 0644 although it holds patient records; a client that never finished its request held a
handler thread forever. Real HTTP on loopback, a real SQLite store, the tap as a subprocess.
"""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import threading
import time

import httpx

from wellsky_core.webhooks import EventStore, WebhookReceiver, sign_header_for_tests

from .conftest import TAP_CMD, child_env, parse_messages, write_json
from .hostile import HostileServer, config

SECRET = "whsec-receipt-test"
PATIENT = {  # a native home-health patient as docs/sandbox-api.md describes it
    "id": "HH-P000777",
    "mrn": "MRN-000777",
    "name": {"first": "Ada", "last": "Lovelace"},
    "birthDate": "1950-12-10",
    "gender": "F",
    "status": "Admitted",
    "lastModified": "2026-03-01T14:00:00Z",
}


def _post(url: str, event: object, *, raw: bytes | None = None, headers: dict | None = None) -> httpx.Response:
    body = raw if raw is not None else json.dumps(event).encode()
    sig = sign_header_for_tests(SECRET, int(time.time()), body)
    return httpx.post(url, content=body, headers={"X-WellSky-Signature": sig, **(headers or {})}, timeout=10)


def test_receiver_validates_on_receipt(tmp_path):
    store = EventStore(tmp_path / "events.sqlite")
    with WebhookReceiver(store, SECRET, product="home_health") as rx:
        good = {"id": "evt-1", "type": "patient.updated", "entity": "patients", "record": PATIENT}
        assert _post(rx.url, good).status_code == 200
        # lenient on read: a bad birth date becomes null + a data-quality flag, so the tap can process it
        flagged = {**good, "id": "evt-5", "record": {**PATIENT, "birthDate": "not a date"}}
        assert _post(rx.url, flagged).status_code == 200
        refused = {
            "unknown entity": ({**good, "id": "evt-2", "entity": "invoices"}, 422, "unknown_entity"),
            "record not mappable": (
                {**good, "id": "evt-3", "record": {**PATIENT, "lastModified": "not a date"}},  # replication key
                422,
                "unmappable_record",
            ),
            "id not a string": ({**good, "id": 42}, 400, "invalid_event"),
            "record is a list": ({**good, "id": "evt-4", "record": [1]}, 400, "invalid_event"),
            "event is a list": ([good], 400, "invalid_event"),
        }
        for case, (event, status, code) in refused.items():
            answer = _post(rx.url, event)
            assert (answer.status_code, answer.json()["error"]) == (status, code), case
        with socket.create_connection((rx.host, rx.port), timeout=10) as sock:  # httpx will not send this
            sock.sendall(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}")
            assert sock.recv(1024).startswith(b"HTTP/1.0 400"), "an answer, not a dropped connection"
    assert [e["id"] for e in store.iter_events()] == ["evt-1", "evt-5"], "nothing refused was stored"
    store.close()


def test_store_is_owner_only(tmp_path):
    path = tmp_path / "events.sqlite"
    store = EventStore(path)
    store.add({"id": "e", "type": "t"}, b"{}")
    for file in tmp_path.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name
    store.close()


def test_a_stalled_client_is_cut_off(tmp_path):
    store = EventStore(tmp_path / "events.sqlite")
    with (
        WebhookReceiver(store, SECRET, request_timeout=0.5) as rx,
        socket.create_connection((rx.host, rx.port), timeout=30) as sock,
    ):
        signature = sign_header_for_tests(SECRET, int(time.time()), b"{}").encode()
        sock.sendall(  # a head that passes the header check, then one byte of the body, then silence
            b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nX-WellSky-Signature: " + signature
            + b"\r\n\r\n{"
        )
        started = time.monotonic()
        assert sock.recv(1024) == b"", "the receiver must hang up on a stalled client"
        assert time.monotonic() - started < 20
    store.close()


def test_the_signature_is_checked_before_the_body_is_read(tmp_path):
    """Before: the receiver read the whole declared body (up to 5 MiB) before looking at the signature."""
    store = EventStore(tmp_path / "events.sqlite")
    stale = sign_header_for_tests(SECRET, int(time.time()) - 3600, b"{}")
    with WebhookReceiver(store, SECRET) as rx:
        for header in (b"", f"X-WellSky-Signature: {stale}\r\n".encode(), b"X-WellSky-Signature: garbage\r\n"):
            with socket.create_connection((rx.host, rx.port), timeout=10) as sock:
                sock.sendall(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n" + header + b"\r\n")
                sock.sendall(b"x" * 8192)  # a small prefix of the 5 MB the head announces; the rest never comes
                answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.0 401"), (header, answer[:80])
        assert rx.rejected == 3
    assert store.count() == 0
    store.close()


class Tricklers:
    """``n`` loopback clients that each send one byte of a never-ending request per ``interval`` seconds."""

    def __init__(self, host: str, port: int, n: int, interval: float = 0.2) -> None:
        self.socks = [socket.create_connection((host, port), timeout=10) for _ in range(n)]
        self.interval = interval
        self.cut_off: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.head = b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nX-Trickle: 1\r\n"

    def _run(self) -> None:
        position = 0
        while not self._stop.wait(self.interval):
            byte = self.head[position : position + 1] or b"x"
            position += 1
            for i, sock in enumerate(self.socks):
                if i in self.cut_off:
                    continue
                try:
                    sock.sendall(byte)
                except OSError:
                    self.cut_off.add(i)

    def __enter__(self) -> Tricklers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.socks:
            sock.close()


def test_trickling_clients_hold_no_threads_and_a_good_delivery_is_answered(tmp_path):
    """Before: a thread per connection, each held as long as the client kept sending one byte per read
    (150 tricklers: 150 threads, for as long as they liked). Now the connections cost no thread, the pool of
    handler threads is bounded, and a signed delivery is answered while 150 tricklers are connected."""
    store = EventStore(tmp_path / "events.sqlite")
    baseline = threading.active_count()
    with WebhookReceiver(store, SECRET, workers=4, request_timeout=60) as rx, Tricklers(rx.host, rx.port, 150) as t:
        time.sleep(1.0)  # every trickler connected and sending
        event = {"id": "evt-during-trickle", "type": "patient.updated"}
        started = time.monotonic()
        answer = _post(rx.url, event)  # httpx timeout 10 s: a starved receiver fails here
        elapsed = time.monotonic() - started
        assert answer.status_code == 200 and answer.json()["duplicate"] is False
        assert not t.cut_off, "the tricklers are still connected (the answer did not wait for them to be cut off)"
        threads = threading.active_count() - baseline
        assert threads <= 1 + 4 + 1, f"{threads} threads for 150 connections"  # loop + pool + the trickler
    print(f"good delivery answered in {elapsed * 1000:.0f} ms beside 150 tricklers; {threads} receiver threads")
    assert store.count() == 1
    store.close()


def test_a_trickling_client_is_cut_off_by_the_total_deadline(tmp_path):
    """One byte every 0.1 s never trips a per-read timeout; the total deadline per request cuts it off."""
    store = EventStore(tmp_path / "events.sqlite")
    with WebhookReceiver(store, SECRET, request_timeout=1.0) as rx, Tricklers(rx.host, rx.port, 5, 0.1) as t:
        socks = t.socks
        for sock in socks:
            assert sock.recv(1024) == b"", "hung up without an answer"  # socket timeout 10 s: fails if never cut
        assert rx.server.timed_out == 5
    store.close()


def test_tap_skips_and_counts_events_it_cannot_map(tmp_path):
    """Events an older receiver stored without checks: the sync goes on, emits the good ones and a STATE."""
    path = tmp_path / "events.sqlite"
    store = EventStore(path)
    for event in (
        {"id": "evt-a", "type": "patient.updated", "entity": "invoices", "record": {"x": 1}},
        {"id": "evt-b", "type": "patient.updated", "entity": "patients", "record": PATIENT},
        {"id": "evt-c", "type": "patient.updated", "entity": "patients", "record": "not an object"},
    ):
        store.add(event, json.dumps(event).encode())
    store.close()
    with HostileServer(lambda *_: False) as srv:
        cfg = write_json(tmp_path / "c.json", config(srv.base_url, webhook_events_path=str(path)))
        catalog = json.loads(
            subprocess.run(
                [*TAP_CMD, "--config", str(cfg), "--discover"], capture_output=True, text=True, env=child_env()
            ).stdout
        )
        for entry in catalog["streams"]:
            for md in entry["metadata"]:
                if md["breadcrumb"] == []:
                    md["metadata"]["selected"] = entry["tap_stream_id"] == "webhook_events"
        proc = subprocess.run(
            [*TAP_CMD, "--config", str(cfg), "--catalog", str(write_json(tmp_path / "cat.json", catalog))],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    messages = parse_messages(proc.stdout)
    assert [m["record"]["id"] for m in messages if m["type"] == "RECORD"] == ["evt-b"]
    assert messages[-1]["type"] == "STATE"
    assert "2 stored event(s) skipped" in proc.stderr
