"""Webhook change events: sandbox -> signed POST -> durable receiver -> tap stream, replayed incrementally."""

from __future__ import annotations

import socket
import time

import httpx

from wellsky_core.models import ENTITIES
from wellsky_core.webhooks import EventStore, WebhookReceiver

from .helpers import last_state, messages, records_by_stream, run_tap, sandbox_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(store: EventStore, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while store.count() < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.count() >= n, f"only {store.count()} of {n} events arrived"


def test_webhook_events_stream_replays_received_changes(sandbox, tmp_path):
    port = _free_port()
    with httpx.Client(base_url=sandbox.base_url) as client:
        client.post("/sessions", json={"username": sandbox.username, "password": sandbox.password}).raise_for_status()
        sub = client.post(
            "/webhooks", json={"url": f"http://127.0.0.1:{port}/webhooks", "events": ["appointment.*", "encounter.*"]}
        ).json()
    store_path = tmp_path / "events.sqlite"
    store = EventStore(store_path)
    with WebhookReceiver(store, sub["secret"], port=port):
        first = sandbox.advance(count=30, seed=4)
        expected = first["by_entity"].get("appointments", 0) + first["by_entity"].get("encounters", 0)
        _wait_for(store, expected)
        config = sandbox_config(sandbox, webhook_events_path=str(store_path))
        run1 = messages(run_tap(tmp_path, config).stdout)
        events = records_by_stream(run1)["webhook_events"]
        assert len(events) == expected
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        truth = {e: {r["id"]: r for r in sandbox.truth(e)} for e in ("appointments", "encounters")}
        for event in events:
            assert event["record"]["id"] == event["record_id"]
            model = ENTITIES[event["entity"]].model  # the canonical form, defaults of newer fields included
            assert event["record"] == model.model_validate(truth[event["entity"]][event["record_id"]]).model_dump(
                mode="json", by_alias=True
            )
        second = sandbox.advance(count=30, seed=8)
        more = second["by_entity"].get("appointments", 0) + second["by_entity"].get("encounters", 0)
        _wait_for(store, expected + more)
        run2 = records_by_stream(messages(run_tap(tmp_path, config, state=last_state(run1)).stdout))
        assert len(run2["webhook_events"]) == more
        assert min(e["seq"] for e in run2["webhook_events"]) > max(e["seq"] for e in events)
    store.close()
