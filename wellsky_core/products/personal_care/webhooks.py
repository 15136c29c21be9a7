"""Home Connect subscriptions (fact sheet §5): manage them, and receive their thin notifications.

WellSky Personal Care pushes ``{"resourceType": "Patient", "id": 123}`` to a subscription's endpoint with the
subscriber's own ``channel.header`` strings; no signature, retry policy or ordering is documented. So:

- :class:`Subscriptions` creates (idempotently: an existing subscription with the same criteria and endpoint
  is kept), lists and deletes the subscriptions for ``webhook_criteria`` and ``webhook_endpoint``;
- :class:`HomeConnectReceiver` refuses a delivery without the configured ``webhook_header`` (constant-time
  compare), commits the notification to a durable queue and answers 200 at once (the vendor's advice), then a
  worker fetches each notified record by id and stores it, normalized, in the :class:`~wellsky_core.webhooks.
  EventStore` the tap's ``webhook_events`` stream reads. A fetch that fails stays queued and is retried; the
  same record content notified twice is stored once.

CLI (``--config`` is the connector's config file; ``WELLSKY_*`` variables work as everywhere)::

    python -m wellsky_core.webhooks subscriptions create|list|delete --config config.json
    python -m wellsky_core.webhooks serve-home-connect --config config.json --port 8787 --store events.sqlite
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from ...config import WellSkyConfig
from ...connection import Connection
from ...errors import ConfigError, RemoteError, WellSkyError
from ...private_files import private_sqlite
from ...webhooks import MAX_BODY_BYTES, EventStore, JsonRequestHandler
from .channel import HomeConnectChannel, record_path
from .normalize import to_canonical
from .write_rules import agency_tag

log = logging.getLogger(__name__)

FETCHABLE = {"Patient": ("patients", "patients"), "Practitioner": ("practitioners", "practitioners"),
             "Encounter": ("encounter", "encounters")}
"""Notified resourceType -> (Home Connect resource, canonical stream) the receiver can fetch by id."""
RETRY_SECONDS = 5.0


def split_header(line: str, field: str = "webhook_header") -> tuple[str, str]:
    """``"Authorization: Bearer abc"`` -> ("authorization", "Bearer abc")."""
    name, sep, value = line.partition(":")
    if not sep or not name.strip() or not value.strip():
        raise ConfigError(field, "must be one header line 'Name: value', e.g. 'Authorization: Bearer <long random>'")
    return name.strip().lower(), value.strip()


class Subscriptions:
    """The tenant's subscriptions for this connector's endpoint and criteria."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.config = connection.config
        self.client = connection.client

    def _require(self) -> tuple[str, str]:
        if not self.config.webhook_endpoint:
            raise ConfigError("webhook_endpoint", "set the public https URL of the receiver")
        if self.config.webhook_header is None:
            raise ConfigError("webhook_header", "set a header line the receiver will check, e.g. "
                              "'Authorization: Bearer <long random>'")
        header = self.config.webhook_header.get_secret_value()
        split_header(header)
        return self.config.webhook_endpoint, header

    def list(self) -> list[dict[str, Any]]:
        """Every subscription of the tenant (``POST /v1/subscriptions/_search/``), header values hidden."""
        channel = HomeConnectChannel(config=self.config, client=self.client, product=self.config.product)
        out = []
        for sub in channel.search("subscriptions", {}, stream="subscriptions"):
            chan = sub.get("channel") if isinstance(sub.get("channel"), dict) else {}
            out.append({"id": str(sub.get("id")), "criteria": sub.get("criteria"), "status": sub.get("status"),
                        "endpoint": chan.get("endpoint")})
        return out

    def create(self) -> list[dict[str, Any]]:
        """Subscribe ``webhook_endpoint`` to each of ``webhook_criteria`` that it is not subscribed to yet."""
        endpoint, header = self._require()
        from .writer import HomeConnectWriter

        agency = HomeConnectWriter(self.connection).agency_id()
        have = {(s["criteria"], s["endpoint"]) for s in self.list() if s["status"] == "active"}
        results = []
        for criteria in self.config.webhook_criteria:
            if (criteria, endpoint) in have:
                results.append({"criteria": criteria, "action": "unchanged"})
                continue
            body = {
                "resourceType": "Subscription",
                "status": "active",
                "criteria": criteria,
                "reason": "tap-wellsky change feed",
                "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                            "header": [header]},
                "meta": {"tag": [agency_tag(agency)]},
            }
            response = self.client.request("POST", "/v1/subscriptions/", json=body, expected=(400, 422))
            if response.status_code >= 400:
                raise RemoteError(response.status_code, "subscription_refused",
                                  f"WellSky refused the {criteria} subscription", url="/v1/subscriptions/")
            results.append({"criteria": criteria, "action": "created", "id": str(response.json().get("id"))})
        return results

    def delete(self) -> list[dict[str, Any]]:
        """Delete this endpoint's subscriptions for the configured criteria (nobody else's)."""
        endpoint, _ = self._require()
        results = []
        for sub in self.list():
            if sub["endpoint"] == endpoint and sub["criteria"] in self.config.webhook_criteria:
                self.client.request("DELETE", f"/v1/subscriptions/{sub['id']}/", expected=(404,))
                results.append({"criteria": sub["criteria"], "action": "deleted", "id": sub["id"]})
        return results


class NotificationQueue:
    """Received notifications, committed before the 200 answer and removed once their record is stored."""

    def __init__(self, path: str | Path) -> None:
        # private (0600, -wal/-shm too, never through a symlink): notified ids of patients
        self.db = private_sqlite(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS notifications (n INTEGER PRIMARY KEY AUTOINCREMENT, resource_type TEXT, "
            "rid TEXT, received_at TEXT, attempts INTEGER DEFAULT 0)"
        )
        self.lock = threading.Lock()

    def add(self, resource_type: str, rid: str) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO notifications (resource_type, rid, received_at) VALUES (?, ?, ?)",
                (resource_type, rid, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
            )

    def due(self) -> list[tuple[int, str, str, str]]:
        with self.lock:
            return self.db.execute(
                "SELECT n, resource_type, rid, received_at FROM notifications ORDER BY n LIMIT 100"
            ).fetchall()

    def done(self, n: int) -> None:
        with self.lock:
            self.db.execute("DELETE FROM notifications WHERE n = ?", (n,))

    def failed(self, n: int) -> None:
        with self.lock:
            self.db.execute("UPDATE notifications SET attempts = attempts + 1 WHERE n = ?", (n,))

    def count(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT count(*) FROM notifications").fetchone()[0])


class HomeConnectReceiver:
    """The endpoint subscriptions deliver to; ``start()``/``stop()`` or ``with``."""

    def __init__(
        self, connection: Connection, store: EventStore, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        config = connection.config
        if config.webhook_header is None:
            raise ConfigError("webhook_header", "set the header line deliveries carry; the receiver checks it")
        self._name, self._value = split_header(config.webhook_header.get_secret_value())
        self.connection = connection
        self.store = store
        self.queue = NotificationQueue(Path(str(store.path) + ".queue"))
        self.rejected = 0
        self.fetched = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        receiver = self

        class Handler(JsonRequestHandler):
            def do_POST(self) -> None:
                try:
                    self._receive()
                except (TimeoutError, ConnectionError):
                    self.close_connection = True  # the client stalled or hung up; nothing queued

            def _receive(self) -> None:
                sent = self.headers.get(receiver._name) or ""
                if not hmac.compare_digest(sent.encode(), receiver._value.encode()):
                    receiver.rejected += 1
                    self._answer(401, {"error": "unauthorized", "message": "missing or wrong subscription header"})
                    return
                length = int(self.headers.get("content-length") or 0)
                if length <= 0 or length > MAX_BODY_BYTES:
                    self._answer(400, {"error": "invalid_body", "message": "a JSON body is required"})
                    return
                try:
                    body = orjson.loads(self.rfile.read(length))
                    resource_type, rid = body["resourceType"], body["id"]
                    if not isinstance(resource_type, str) or isinstance(rid, bool) or not isinstance(rid, int | str):
                        raise ValueError
                except (ValueError, KeyError, TypeError):
                    self._answer(400, {"error": "invalid_body", "message": 'expected {"resourceType", "id"}'})
                    return
                receiver.queue.add(resource_type, str(rid))
                receiver._wake.set()
                self._answer(200, {"received": True})

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[0], self._httpd.server_address[1]
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/home-connect"

    def drain(self) -> int:
        """Fetch and store every queued notification once; returns how many are still queued."""
        for n, resource_type, rid, received_at in self.queue.due():
            if resource_type not in FETCHABLE:
                log.warning("a %s notification cannot be fetched by this connector; dropped from the queue "
                            "(subscribe only to %s)", resource_type, ", ".join(FETCHABLE))
                self.queue.done(n)
                continue
            resource, stream = FETCHABLE[resource_type]
            try:
                response = self.connection.client.request("GET", record_path(resource, rid), expected=(404,))
            except WellSkyError as exc:
                log.warning("fetching a notified %s failed (%s); it stays queued", resource_type, type(exc).__name__)
                self.queue.failed(n)
                continue
            if response.status_code == 404:
                log.warning("a notified %s no longer exists; dropped from the queue", resource_type)
                self.queue.done(n)
                continue
            observed = datetime.now(UTC)
            record = to_canonical(stream, response.json(), observed)
            digest = hashlib.sha256(orjson.dumps(record | {"updated_at": None}, option=orjson.OPT_SORT_KEYS))
            event = {
                "id": f"{resource_type}/{rid}/{digest.hexdigest()[:16]}",  # the same content notified twice: once
                "type": f"{resource_type.lower()}.notified",
                "entity": stream,
                "occurred_at": received_at,
                "record": record,
                "canonical": True,
            }
            self.store.add(event, orjson.dumps(event))
            self.fetched += 1
            self.queue.done(n)
        return self.queue.count()

    def _work(self) -> None:
        while not self._stop.is_set():
            remaining = self.drain()
            self._wake.wait(RETRY_SECONDS if remaining else 1.0)
            self._wake.clear()

    def start(self) -> HomeConnectReceiver:
        for target in (self._httpd.serve_forever, self._work):
            thread = threading.Thread(target=target, daemon=True, name="wellsky-hc-receiver")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._threads:
            self._httpd.shutdown()
        self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> HomeConnectReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_config(path: str | None) -> WellSkyConfig:
    mapping = json.loads(Path(path).read_text()) if path else {}
    return WellSkyConfig.load(mapping)


def run_subscriptions(action: str, config_path: str | None) -> int:
    connection = Connection(load_config(config_path))
    try:
        manager = Subscriptions(connection)
        result = {"create": manager.create, "list": manager.list, "delete": manager.delete}[action]()
        for item in result:
            print(json.dumps(item))
        return 0
    finally:
        connection.close()


def serve(config_path: str | None, host: str, port: int, store_path: str) -> int:
    connection = Connection(load_config(config_path))
    receiver = HomeConnectReceiver(connection, EventStore(store_path), host=host, port=port)
    print(json.dumps({"url": receiver.url, "store": str(Path(store_path).resolve())}), flush=True)
    receiver.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        receiver.stop()
        connection.close()
