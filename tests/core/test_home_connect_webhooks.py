"""Home Connect subscriptions and the notification receiver (real loopback HTTP in, fact-sheet fake behind)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.core.home_connect_fake import FakeHomeConnect, care_log, patient
from wellsky_core.config import WellSkyConfig
from wellsky_core.connection import Connection
from wellsky_core.http.client import WellSkyClient
from wellsky_core.products.personal_care.webhooks import HomeConnectReceiver, Subscriptions
from wellsky_core.webhooks import EventStore, iter_canonical_events

HEADER = "X-Partner-Token: 7f3c0a9b1e2d4c5f8a6b"


def connection_for(fake: FakeHomeConnect, **extra) -> Connection:
    cfg = WellSkyConfig.load(
        {"product": "personal_care", "client_id": "cid-123", "client_secret": "secret-xyz",
         "max_requests_per_second": 0, "webhook_endpoint": "https://hooks.agency.example/home-connect",
         "webhook_header": HEADER, "webhook_criteria": "patient.created,encounter.clockout.changed", **extra},
        env={},
    )
    connection = Connection(cfg)
    connection._client = WellSkyClient(cfg, transport=fake.transport(), sleep=lambda s: None)
    return connection


@pytest.fixture
def fake():
    f = FakeHomeConnect()
    f.data["patients"] = [patient(1)]
    f.data["encounter"] = [care_log(900, 1, 77, 500, "2026-08-03T14:02:00+00:00", "2026-08-03T18:01:00+00:00")]
    return f


def test_create_is_idempotent_and_delete_removes_only_ours(fake):
    subs = Subscriptions(connection_for(fake))
    created = subs.create()
    assert [r["action"] for r in created] == ["created", "created"]
    body = fake.data["subscriptions"][0]
    assert body["channel"] == {"type": "rest-hook", "endpoint": "https://hooks.agency.example/home-connect",
                               "payload": "application/fhir+json", "header": [HEADER]}
    assert {"code": "agencyId", "display": "4505"} in body["meta"]["tag"]
    assert [r["action"] for r in subs.create()] == ["unchanged", "unchanged"]
    assert len(fake.data["subscriptions"]) == 2
    fake.data["subscriptions"].append({"id": 1, "criteria": "patient.created", "status": "active",
                                       "channel": {"endpoint": "https://someone.else.example/"}})
    assert {s["criteria"] for s in subs.list()} == {"patient.created", "encounter.clockout.changed"}
    assert len(subs.delete()) == 2
    assert [s["id"] for s in fake.data["subscriptions"]] == [1], "another subscriber's subscription is kept"


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_receiver_checks_the_header_fetches_by_id_and_stores_once(fake, tmp_path):
    store = EventStore(tmp_path / "events.sqlite")
    with HomeConnectReceiver(connection_for(fake), store) as receiver:
        name, value = HEADER.split(": ")
        denied = httpx.post(receiver.url, json={"resourceType": "Patient", "id": 1}, headers={name: "wrong"})
        assert denied.status_code == 401 and receiver.rejected == 1
        for body in ({"resourceType": "Patient", "id": 1}, {"resourceType": "Patient", "id": 1},
                     {"resourceType": "Encounter", "id": 900}):
            answer = httpx.post(receiver.url, json=body, headers={name: value})
            assert answer.status_code == 200
        assert wait_for(lambda: receiver.fetched == 3 and receiver.queue.count() == 0)
    events = list(iter_canonical_events(store, 0, "personal_care"))
    assert [(e["entity"], e["record_id"]) for e in events] == [("patients", "1"), ("encounters", "900")], (
        "the same content notified twice is stored once"
    )
    assert events[0]["record"]["status"] == "active" and events[1]["record"]["end"] == "2026-08-03T18:01:00Z"
    fetched = [c[1] for c in fake.log if c[0] == "GET"]
    assert fetched == ["/v1/patients/1/", "/v1/patients/1/", "/v1/encounter/900/"]
    store.close()


def test_record_paths_take_only_home_connect_ids() -> None:
    from wellsky_core.errors import NormalizationError
    from wellsky_core.products.personal_care.channel import record_path

    assert record_path("patients", "1234") == "/v1/patients/1234/"
    assert record_path("patients", "a1b2-c3_d4.e") == "/v1/patients/a1b2-c3_d4.e/"
    for bad in ("..", "../subscriptions", "1/../2", "1?x=2", "1#f", "", "a b", "%2e%2e", "\uff11\uff12"):
        with pytest.raises(NormalizationError):
            record_path("patients", bad)


def test_a_bad_notification_is_dead_lettered_and_the_worker_goes_on(fake, tmp_path):
    """Before: a record that could not be normalized killed the worker; later deliveries got 200, never fetched."""
    fake.data["encounter"].append({**care_log(901, 1, 77, 500, "2026-08-03T14:02:00+00:00",
                                              "2026-08-03T18:01:00+00:00"), "period": 5})  # no clock-in: unusable
    store = EventStore(tmp_path / "events.sqlite")
    name, value = HEADER.split(": ")
    with HomeConnectReceiver(connection_for(fake), store) as receiver:
        for body in ({"resourceType": "Encounter", "id": 901}, {"resourceType": "Patient", "id": 1},
                     {"resourceType": "Encounter", "id": 900}):
            assert httpx.post(receiver.url, json=body, headers={name: value}).status_code == 200
        assert wait_for(lambda: receiver.fetched == 2 and receiver.queue.count() == 0)
        assert receiver.dead_lettered == 1
        later = httpx.post(receiver.url, json={"resourceType": "Patient", "id": 1}, headers={name: value})
        assert later.status_code == 200 and wait_for(lambda: receiver.fetched == 3), "the worker is still alive"
    (dead,) = receiver.queue.dead_letters()
    assert (dead["resource_type"], dead["rid"], dead["reason"]) == (
        "Encounter", "901", "unmappable_record: encounters.period.start"
    )
    events = list(iter_canonical_events(store, 0, "personal_care"))
    assert [(e["entity"], e["record_id"]) for e in events] == [("patients", "1"), ("encounters", "900")]


def test_the_notified_id_is_validated_and_never_steers_the_fetch(fake, tmp_path):
    """An id is an id: ``../subscriptions``, query strings and the like are refused on receipt (and, when
    queued by an older receiver, dead-lettered unfetched); a good id is URL-quoted into the path."""
    seen: list[str] = []
    transport = fake.transport()

    def spy(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return transport.handle_request(request)

    connection = connection_for(fake)
    connection._client = WellSkyClient(connection.config, transport=httpx.MockTransport(spy), sleep=lambda s: None)
    store = EventStore(tmp_path / "events.sqlite")
    name, value = HEADER.split(": ")
    receiver = HomeConnectReceiver(connection, store)
    receiver.queue.add("Patient", "../subscriptions")  # as an older receiver would have queued it
    with receiver:
        for bad in ("../subscriptions", "1?x=2", "1/../../v1/subscriptions", "", "a" * 65, True, 1.5, None,
                    "1%2F..", "é"):
            answer = httpx.post(receiver.url, json={"resourceType": "Patient", "id": bad}, headers={name: value})
            assert answer.status_code == 400, bad
        assert httpx.post(receiver.url, json={"resourceType": "Patient", "id": 1},
                          headers={name: value}).status_code == 200
        assert wait_for(lambda: receiver.fetched == 1 and receiver.queue.count() == 0)
    assert [d["reason"] for d in receiver.queue.dead_letters()] == ["invalid_id"]
    fetches = [path for path in seen if "/patients/" in path or "subscriptions" in path]
    assert fetches == ["/v1/patients/1/"], fetches


def test_the_subscription_header_is_checked_before_the_body_is_read(fake, tmp_path):
    """Before: the receiver read up to 5 MiB of body before looking at the header."""
    with HomeConnectReceiver(connection_for(fake), EventStore(tmp_path / "events.sqlite")) as receiver:
        for header in (b"", b"X-Partner-Token: wrong\r\n"):
            with socket.create_connection((receiver.host, receiver.port), timeout=10) as sock:
                head = b"POST /home-connect HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n" + header
                sock.sendall(head + b"\r\n")
                sock.sendall(b"x" * 8192)  # a small prefix of the announced body; the rest never comes
                assert sock.recv(4096).startswith(b"HTTP/1.0 401")
        assert receiver.rejected == 2 and receiver.queue.count() == 0


def test_fetches_that_keep_failing_hold_up_nothing_and_are_given_up_after_a_day(fake, tmp_path):
    """Failing entries are retried least-tried first, so they never keep a new notification out of a round
    (a round takes 100); after a day of failures they move to the dead letters instead of staying forever."""
    transport = fake.transport()

    def patient_2_fails(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/patients/2/":
            return httpx.Response(500, json={"error": "down"})
        return transport.handle_request(request)

    connection = connection_for(fake, max_retries=0)
    connection._client = WellSkyClient(connection.config, transport=httpx.MockTransport(patient_2_fails),
                                       sleep=lambda s: None)
    receiver = HomeConnectReceiver(connection, EventStore(tmp_path / "events.sqlite"))
    try:
        for _ in range(150):
            receiver.queue.add("Patient", "2")
        receiver.queue.add("Patient", "1")
        receiver.drain()
        receiver.drain()
        assert receiver.fetched == 1, "the good notification behind 150 failing ones was fetched"
        assert receiver.queue.count() == 150 and receiver.dead_lettered == 0, "an outage is retried through"
        with receiver.queue.lock:
            receiver.queue.db.execute("UPDATE notifications SET received_at = '2026-01-01T00:00:00Z'")
        assert receiver.drain() == 50 and receiver.drain() == 0
        assert all(d["reason"].startswith("fetch_failed: ") for d in receiver.queue.dead_letters())
        assert receiver.dead_lettered == 150
    finally:
        receiver.stop()
