"""Home Connect subscriptions (fact sheet §5): manage them, and receive their thin notifications.

WellSky Personal Care pushes ``{"resourceType": "Patient", "id": 123}`` to a subscription's endpoint with the
subscriber's own ``channel.header`` strings; no signature, retry policy or ordering is documented. So:

- :class:`Subscriptions` creates (idempotently: an existing subscription with the same criteria and endpoint
  is kept), lists and deletes the subscriptions for ``webhook_criteria`` and ``webhook_endpoint``;
- :class:`HomeConnectReceiver` refuses a delivery without the configured ``webhook_header`` (constant-time
  compare), commits the notification to a durable queue and answers 200 at once (the vendor's advice), then a
  worker fetches each notified record by id and stores it, normalized, in the :class:`~wellsky_core.webhooks.
  EventStore` the tap's ``webhook_events`` stream reads. A fetch that fails stays queued and is retried (the
  least-tried first, so failing entries never hold up new ones) until ``GIVE_UP_AFTER``; the same record
  content notified twice is stored once. Each notification is processed on its own: one that cannot be
  fetched for good or cannot be normalized is moved to the queue's ``dead_letters`` table with a PHI-free
  reason and counted (``dead_lettered``), and the worker goes on.
- the notified id must match :data:`NOTIFIED_ID` (a FHIR-style id) and is URL-quoted into the fetch path: a
  notification cannot steer the authenticated GET to another path. The HTTP front is
  :class:`~wellsky_core.webhook_server.ReceiverServer`: bounded threads, a total deadline per request, the
  header checked before the body is read.

CLI (``--config`` is the connector's config file; ``WELLSKY_*`` variables work as everywhere)::

    python -m wellsky_core.webhooks subscriptions create|list|delete --config config.json
    python -m wellsky_core.webhooks serve-home-connect --config config.json --port 8787 --store events.sqlite
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from ...config import WellSkyConfig
from ...connection import Connection
from ...errors import ConfigError, NormalizationError, RemoteError, WellSkyError
from ...private_files import private_sqlite
from ...webhook_server import DEFAULT_REQUEST_TIMEOUT, Answer, ReceiverServer, Request
from ...webhooks import EventStore
from .channel import HomeConnectChannel, record_path
from .normalize import to_canonical
from .write_rules import agency_tag

log = logging.getLogger(__name__)

FETCHABLE = {"Patient": ("patients", "patients"), "Practitioner": ("practitioners", "practitioners"),
             "Encounter": ("encounter", "encounters")}
"""Notified resourceType -> (Home Connect resource, canonical stream) the receiver can fetch by id."""
RETRY_SECONDS = 5.0
GIVE_UP_AFTER = timedelta(days=1)
"""A notification whose fetch has failed since this long after its receipt is dead-lettered (an outage of the
tenant is retried through; a record the connector may never read does not stay queued forever)."""
NOTIFIED_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")
"""A notified id the receiver will fetch: FHIR's id alphabet (letters, digits, ``-`` and ``.``), at most 64."""


def notified_id(value: object) -> str | None:
    """``value`` as a fetchable id string, or None (not an int or str, or not an id: ``../x``, ``1?y=2``...)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    text = str(value)
    return text if NOTIFIED_ID.fullmatch(text) and text not in (".", "..") else None


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
                self.client.request("DELETE", record_path("subscriptions", str(sub["id"])), expected=(404,))
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
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS dead_letters (n INTEGER PRIMARY KEY, resource_type TEXT, rid TEXT, "
            "received_at TEXT, attempts INTEGER, reason TEXT NOT NULL, dead_at TEXT NOT NULL)"
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
                "SELECT n, resource_type, rid, received_at FROM notifications ORDER BY attempts, n LIMIT 100"
            ).fetchall()

    def done(self, n: int) -> None:
        with self.lock:
            self.db.execute("DELETE FROM notifications WHERE n = ?", (n,))

    def failed(self, n: int) -> int:
        """Count one failed attempt; returns the attempts so far."""
        with self.lock:
            self.db.execute("UPDATE notifications SET attempts = attempts + 1 WHERE n = ?", (n,))
            row = self.db.execute("SELECT attempts FROM notifications WHERE n = ?", (n,)).fetchone()
            return int(row[0]) if row else 0

    def dead_letter(self, n: int, reason: str) -> None:
        """Move notification ``n`` out of the queue into ``dead_letters`` (``reason``: PHI-free), atomically."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute(
                    "INSERT OR REPLACE INTO dead_letters (n, resource_type, rid, received_at, attempts, reason, "
                    "dead_at) SELECT n, resource_type, rid, received_at, attempts, ?, ? FROM notifications "
                    "WHERE n = ?",
                    (reason, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), n),
                )
                self.db.execute("DELETE FROM notifications WHERE n = ?", (n,))
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def dead_letters(self) -> list[dict[str, Any]]:
        """Dead-lettered notifications, oldest first: ``{n, resource_type, rid, received_at, attempts, reason}``."""
        with self.lock:
            rows = self.db.execute(
                "SELECT n, resource_type, rid, received_at, attempts, reason FROM dead_letters ORDER BY n"
            ).fetchall()
        keys = ("n", "resource_type", "rid", "received_at", "attempts", "reason")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def count(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT count(*) FROM notifications").fetchone()[0])


class HomeConnectReceiver:
    """The endpoint subscriptions deliver to; ``start()``/``stop()`` or ``with``."""

    def __init__(
        self,
        connection: Connection,
        store: EventStore,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
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
        self.dead_lettered = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.server = ReceiverServer(
            self._handle,
            check_head=self._check_head,
            host=host,
            port=port,
            request_timeout=request_timeout,
            name="wellsky-hc-receiver",
        )
        self.host, self.port = self.server.host, self.server.port
        self._worker: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/home-connect"

    def _check_head(self, request: Request) -> Answer | None:
        sent = request.header(self._name) or ""
        if not hmac.compare_digest(sent.encode(), self._value.encode()):
            self.rejected += 1
            return 401, {"error": "unauthorized", "message": "missing or wrong subscription header"}
        return None

    def _handle(self, request: Request) -> Answer:
        try:
            body = orjson.loads(request.body)
            resource_type, rid = body["resourceType"], notified_id(body["id"])
            if not isinstance(resource_type, str) or not resource_type or len(resource_type) > 64:
                raise ValueError
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return 400, {"error": "invalid_body", "message": 'expected {"resourceType", "id"}'}
        if rid is None:
            self.rejected += 1
            return 400, {"error": "invalid_id", "message": "`id` must be letters, digits, '-' or '.' (at most 64)"}
        self.queue.add(resource_type, rid)
        self._wake.set()
        return 200, {"received": True}

    def _dead_letter(self, n: int, resource_type: str, reason: str) -> None:
        self.queue.dead_letter(n, reason)
        self.dead_lettered += 1
        log.warning("a notified %s was dead-lettered (%s); the receiver goes on", resource_type, reason)

    def drain(self) -> int:
        """Fetch and store every queued notification once; returns how many are still queued.

        Each notification is processed in isolation: whatever goes wrong with one (a record that cannot be
        normalized, an id that is not an id) moves it to the dead letters, and the next is processed.
        """
        for n, resource_type, rid, received_at in self.queue.due():
            try:
                self._process(n, resource_type, rid, received_at)
            except Exception as exc:  # the type only: a message may quote the record
                self._dead_letter(n, resource_type, f"unprocessable: {type(exc).__name__}")
        return self.queue.count()

    def _process(self, n: int, resource_type: str, rid: str, received_at: str) -> None:
        if resource_type not in FETCHABLE:
            log.warning("a %s notification cannot be fetched by this connector; dropped from the queue "
                        "(subscribe only to %s)", resource_type[:64], ", ".join(FETCHABLE))
            self.queue.done(n)
            return
        if notified_id(rid) is None:  # queued before ids were checked on receipt
            self._dead_letter(n, resource_type, "invalid_id")
            return
        resource, stream = FETCHABLE[resource_type]
        try:
            response = self.connection.client.request(
                "GET", record_path(resource, quote(rid, safe="")), expected=(404,)
            )
        except WellSkyError as exc:
            attempts = self.queue.failed(n)
            if _received(received_at) < datetime.now(UTC) - GIVE_UP_AFTER:
                self._dead_letter(n, resource_type, f"fetch_failed: {type(exc).__name__} x{attempts}")
            else:
                log.warning("fetching a notified %s failed (%s); it stays queued", resource_type,
                            type(exc).__name__)
            return
        if response.status_code == 404:
            log.warning("a notified %s no longer exists; dropped from the queue", resource_type)
            self.queue.done(n)
            return
        observed = datetime.now(UTC)
        try:
            record = to_canonical(stream, response.json(), observed)
        except NormalizationError as exc:  # names the field, never the value
            self._dead_letter(n, resource_type, f"unmappable_record: {exc.entity}.{exc.field}")
            return
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

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                remaining = self.drain()
            except Exception as exc:  # the queue itself failed (disk full...): say so, wait, try again
                log.error("the Home Connect worker could not drain its queue (%s); retrying", type(exc).__name__)
                remaining = 1
            self._wake.wait(RETRY_SECONDS if remaining else 1.0)
            self._wake.clear()

    def start(self) -> HomeConnectReceiver:
        self.server.start()
        self._worker = threading.Thread(target=self._work, daemon=True, name="wellsky-hc-worker")
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.server.stop()
        if self._worker is not None:
            self._worker.join(timeout=5)

    def __enter__(self) -> HomeConnectReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _received(text: str) -> datetime:
    """A queue entry's receipt time (an unreadable one counts as long ago: it is given up on, not kept forever)."""
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=UTC)


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
