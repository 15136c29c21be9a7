"""Webhooks: the tenant POSTs every data change to registered URLs as HMAC-signed JSON events.

- ``POST /webhooks {"url": "http://...", "events": ["appointment.changed", "encounter.*"]}`` -> 201
  ``{"id", "secret", "url", "events"}`` (``events`` omitted or ``["*"]`` = everything; shell-style patterns).
- ``GET /webhooks`` lists subscriptions (secrets omitted); ``DELETE /webhooks/{id}`` removes one.
- ``GET /_sandbox/webhooks/deliveries`` (control API) is the delivery log: one entry per attempt.

Each change (``tenant.listeners``: patient.created/updated, appointment.created/changed, encounter.updated,
authorization.delta) becomes ``{"id", "type", "occurred_at", "entity", "record"}`` (``record`` = the record in
the product's native REST shape, as the real API sends it) and is POSTed from a background worker with
``X-WellSky-Signature: t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>`` and ``X-WellSky-Event-Id``. A
non-2xx answer or a network error is retried with exponential backoff (0.5 s doubling, at most
``MAX_ATTEMPTS`` attempts), signed afresh each time. Subscriptions live in the tenant's SQLite file, so a
restart keeps them; pending retries do not survive a restart (like a vendor's in-memory queue — the receiver
must tolerate gaps and duplicates).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .delivery import DeliveryQueue
from .hl7 import feeds_for

if TYPE_CHECKING:
    from .tenant import Tenant

log = logging.getLogger("wellsky_sandbox.webhooks")

MAX_ATTEMPTS = 6
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id TEXT PRIMARY KEY, url TEXT NOT NULL, events TEXT NOT NULL, secret TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, webhook_id TEXT NOT NULL, event_id TEXT NOT NULL, type TEXT NOT NULL,
    attempt INTEGER NOT NULL, status_code INTEGER, error TEXT, delivered INTEGER NOT NULL, at TEXT NOT NULL
);
"""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-WellSky-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class WebhookHub(DeliveryQueue):
    """Subscriptions, the retry queue and the (on-demand) delivery worker of one tenant."""

    thread_name = "wellsky-webhooks"

    def __init__(self, tenant: Tenant) -> None:
        self.renderer = tenant.renderer
        self.fdb = feeds_for(tenant).fdb
        with self.fdb.lock:
            self.fdb.db.executescript(SCHEMA)
        super().__init__()
        self.client = httpx.Client(timeout=5.0)

    # -- subscriptions --------------------------------------------------------------------------------
    def subscribe(self, url: str, events: list[str]) -> dict[str, Any]:
        sub = {"id": "wh_" + uuid.uuid4().hex[:16], "url": url, "events": events, "secret": secrets.token_hex(24)}
        with self.fdb.lock:
            self.fdb.db.execute(
                "INSERT INTO webhook_subscriptions VALUES (?, ?, ?, ?, ?)",
                (sub["id"], url, orjson.dumps(events).decode(), sub["secret"], _now_iso()),
            )
        return sub

    def subscriptions(self) -> list[dict[str, Any]]:
        with self.fdb.lock:
            rows = self.fdb.db.execute(
                "SELECT id, url, events, secret, created_at FROM webhook_subscriptions ORDER BY created_at, id"
            ).fetchall()
        return [
            {"id": r[0], "url": r[1], "events": orjson.loads(r[2]), "secret": r[3], "created_at": r[4]} for r in rows
        ]

    def unsubscribe(self, sub_id: str) -> bool:
        with self.fdb.lock:
            cur = self.fdb.db.execute("DELETE FROM webhook_subscriptions WHERE id = ?", (sub_id,))
        return cur.rowcount > 0

    def deliveries(self, after: int = 0) -> list[dict[str, Any]]:
        with self.fdb.lock:
            cur = self.fdb.db.execute("SELECT * FROM webhook_deliveries WHERE seq > ? ORDER BY seq", (after,))
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return [{**dict(zip(names, r, strict=True)), "delivered": bool(r[names.index("delivered")])} for r in rows]

    # -- events ---------------------------------------------------------------------------------------
    def on_change(self, event: str, entity: str, record: dict[str, Any]) -> None:
        """``tenant.listeners`` hook: queue one delivery per matching subscription (never blocks the write)."""
        subs = [s for s in self.subscriptions() if any(fnmatch.fnmatchcase(event, p) for p in s["events"])]
        if not subs:
            return
        payload = {
            "id": "evt_" + uuid.uuid4().hex,
            "type": event,
            "occurred_at": _now_iso(),
            "entity": entity,
            "record": self.renderer.render(entity, record),
        }
        body = orjson.dumps(payload)
        for sub in subs:
            self._schedule({"sub": sub, "event_id": payload["id"], "type": event, "body": body, "attempt": 1}, 0.0)

    def _deliver(self, job: dict[str, Any]) -> None:
        sub, body = job["sub"], job["body"]
        status, err = None, None
        try:
            response = self.client.post(
                sub["url"],
                content=body,
                headers={
                    "content-type": "application/json",
                    "x-wellsky-signature": sign(sub["secret"], int(time.time()), body),
                    "x-wellsky-event-id": job["event_id"],
                    "x-wellsky-delivery-attempt": str(job["attempt"]),
                },
            )
            status = response.status_code
            ok = 200 <= status < 300
        except httpx.HTTPError as exc:
            ok, err = False, type(exc).__name__
        try:
            with self.fdb.lock:
                self.fdb.db.execute(
                    "INSERT INTO webhook_deliveries (webhook_id, event_id, type, attempt, status_code, error, "
                    "delivered, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (sub["id"], job["event_id"], job["type"], job["attempt"], status, err, int(ok), _now_iso()),
                )
        except Exception:  # the tenant may be shutting down; the log is best effort
            log.debug("could not record webhook delivery", exc_info=True)
        if not ok and job["attempt"] < MAX_ATTEMPTS:
            delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (job["attempt"] - 1))
            self._schedule({**job, "attempt": job["attempt"] + 1}, delay)



def routes(tenant: Tenant) -> list[BaseRoute]:
    from .app import Api, ORJSONResponse, error

    api = Api(tenant)
    hub = WebhookHub(tenant)
    tenant.listeners.append(hub.on_change)
    tenant.webhooks = hub  # type: ignore[attr-defined]  # reachable for tests and the control API

    async def create(request: Request) -> Response:
        _, rotated = api.authenticate(request)
        body = await api.json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            return error(400, "invalid_request", 'body must be {"url": "https://...", "events": ["*"]}')
        try:
            url = httpx.URL(body["url"])
        except Exception:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            return error(400, "invalid_url", "url must be an absolute http(s) URL the tenant can reach")
        events = body.get("events") or ["*"]
        if not isinstance(events, list) or not all(isinstance(e, str) and e for e in events):
            return error(400, "invalid_events", 'events must be a list of event names or patterns, e.g. ["*"]')
        sub = hub.subscribe(str(url), events)
        return api.with_cookie(ORJSONResponse(sub, status_code=201), rotated)

    async def listing(request: Request) -> Response:
        _, rotated = api.authenticate(request)
        subs = [{k: v for k, v in s.items() if k != "secret"} for s in hub.subscriptions()]
        return api.with_cookie(ORJSONResponse({"data": subs}), rotated)

    async def delete(request: Request) -> Response:
        _, rotated = api.authenticate(request)
        if not hub.unsubscribe(request.path_params["wid"]):
            return error(404, "not_found", "no webhook with that id; list them with GET /webhooks")
        return api.with_cookie(Response(status_code=204), rotated)

    async def deliveries(request: Request) -> Response:
        try:
            after = int(request.query_params.get("after", "0") or 0)
        except ValueError:
            return error(400, "invalid_parameter", "after must be an integer delivery sequence number")
        return ORJSONResponse({"deliveries": hub.deliveries(after), "pending": hub.pending()})

    return [
        Route("/webhooks", create, methods=["POST"]),
        Route("/webhooks", listing, methods=["GET"]),
        Route("/webhooks/{wid}", delete, methods=["DELETE"]),
        Route("/_sandbox/webhooks/deliveries", deliveries, methods=["GET"]),
    ]
