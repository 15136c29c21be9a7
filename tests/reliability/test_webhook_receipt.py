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
        WebhookReceiver(store, SECRET, socket_timeout=0.5) as rx,
        socket.create_connection((rx.host, rx.port), timeout=30) as sock,
    ):
        sock.sendall(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # then silence
        started = time.monotonic()
        assert sock.recv(1024) == b"", "the receiver must hang up on a stalled client"
        assert time.monotonic() - started < 20
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
