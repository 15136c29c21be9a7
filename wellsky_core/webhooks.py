"""Webhook receiver: accept WellSky's signed change events, store them durably, replay them in order.

WellSky POSTs ``{"id", "type", "occurred_at", "entity", "record"}`` with ``X-WellSky-Signature:
t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>``. The receiver checks the signature over the raw body
with a constant-time compare and refuses timestamps more than ``tolerance_seconds`` away from now (a captured
request cannot be replayed later); a missing, malformed or stale header is refused before the body is read.
The HTTP front (:mod:`wellsky_core.webhook_server`) gives each request a total deadline and handles deliveries
in a bounded pool of threads, so slow or hostile clients cannot exhaust the receiver.
Accepted events are committed to SQLite (``synchronous=FULL``) *before* the
200 answer, so an acknowledged event is never lost; redeliveries of the same event id are acknowledged but
stored once. ``EventStore.iter_events(since_seq)`` replays them in arrival order — the ``webhook_events``
stream's bookmark is the ``seq``.

Run it::

    WELLSKY_WEBHOOK_SECRET=... python -m wellsky_core.webhooks serve --port 8787 --store events.sqlite

(``--secret`` also works, but the environment keeps the secret out of ``ps``.)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .disclosure import public_message
from .errors import SignatureError, WellSkyError
from .private_files import private_sqlite
from .webhook_server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WORKERS,
    Answer,
    ReceiverServer,
    Request,
)

log = logging.getLogger("wellsky_core.webhooks")

SIGNATURE_HEADER = "X-WellSky-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


def parse_signature_header(
    header: str | None, *, tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS, now: float | None = None
) -> tuple[int, list[str]]:
    """The signed timestamp and the ``v1`` candidates of ``header``, or :class:`SignatureError`.

    Everything but the MAC is judged here, from the header alone, so a receiver refuses a forged or replayed
    delivery before it reads the body.
    """
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {SIGNATURE_HEADER}: expected t=<unix>,v1=<hex>")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError(f"{SIGNATURE_HEADER} has no valid t=<unix timestamp>") from None
    if "v1" not in parts:
        raise SignatureError(f"{SIGNATURE_HEADER} has no v1 signature")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise SignatureError(
            f"signature timestamp is {int(current - timestamp)} s away from now (tolerance {tolerance_seconds:g} s); "
            "a replayed request or a clock out of sync"
        )
    return timestamp, parts["v1"]


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> int:
    """Check ``header`` against ``body``; returns the signed timestamp or raises :class:`SignatureError`."""
    timestamp, candidates = parse_signature_header(header, tolerance_seconds=tolerance_seconds, now=now)
    expected = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("signature does not match the body; check the webhook secret")
    return timestamp


def sign_header_for_tests(secret: str, timestamp: int, body: bytes) -> str:
    """The header WellSky would send (for tests and local tools that emulate the sender)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class EventStore:
    """Durable, de-duplicated, ordered event log in SQLite (one writer lock, any number of readers)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # private (0600, -wal/-shm too, never through a symlink): it holds patient records
        self.db = private_sqlite(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,"
            " type TEXT NOT NULL, entity TEXT, occurred_at TEXT, received_at TEXT NOT NULL, body BLOB NOT NULL)"
        )
        self.lock = threading.Lock()

    def add(self, event: dict[str, Any], raw: bytes) -> tuple[int, bool]:
        """Store one event; returns (seq, True) when new, (existing seq, False) for a redelivery."""
        event_id = event["id"]
        with self.lock:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO events (event_id, type, entity, occurred_at, received_at, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    event_id,
                    event["type"],
                    event.get("entity"),
                    event.get("occurred_at"),
                    datetime.now(UTC).isoformat(),
                    raw,
                ),
            )
            if cur.rowcount:
                return int(cur.lastrowid or 0), True
            row = self.db.execute("SELECT seq FROM events WHERE event_id = ?", (event_id,)).fetchone()
            return int(row[0]), False

    def iter_events(self, since_seq: int = 0, *, batch: int = 500) -> Iterator[dict[str, Any]]:
        """Events with ``seq > since_seq`` in arrival order: ``{seq, received_at, **event}``."""
        last = since_seq
        while True:
            with self.lock:
                rows = self.db.execute(
                    "SELECT seq, received_at, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (last, batch)
                ).fetchall()
            if not rows:
                return
            for seq, received_at, body in rows:
                yield {"seq": seq, "received_at": received_at, **json.loads(body)}
                last = seq

    def count(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT count(*) FROM events").fetchone()[0])

    def close(self) -> None:
        with self.lock:
            self.db.close()


def iter_canonical_events(
    store: EventStore, since_seq: int, product: str, skipped: Counter[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Stored events in arrival order with their records normalized (the ``webhook_events`` stream).

    An event that cannot be mapped (stored before the receiver validated on receipt, or by another receiver)
    is skipped and counted in ``skipped`` by reason, with one PHI-free warning: one bad event must not stop
    every later sync before its first STATE.
    """
    from .normalize.native import to_canonical

    for event in store.iter_events(since_seq):
        problem = event_problem(event)
        record: dict[str, Any] = {}
        if problem is None and event.get("entity"):
            if event.get("canonical"):  # Home Connect: the receiver fetched and normalized the record already
                record = event["record"]
            else:
                try:
                    record = to_canonical(product, event["entity"], event.get("record"))
                except WellSkyError as exc:
                    problem = public_message(exc)
        if problem is not None:
            if skipped is not None:
                skipped[problem.split(":")[0]] += 1
            log.warning("webhook event seq %s skipped: %s", event.get("seq"), problem)
            continue
        yield {
            "seq": event["seq"],
            "id": event["id"],
            "type": event["type"],
            "entity": event.get("entity"),
            "occurred_at": event.get("occurred_at"),
            "received_at": event["received_at"],
            "record_id": str(record.get("id", "")),
            "record": record,
        }


def event_problem(event: Any, product: str | None = None) -> str | None:
    """Why ``event`` cannot become a ``webhook_events`` record (None: it can). Names fields, never values.

    With ``product`` the record is also normalized, so the receiver refuses (4xx) exactly what the tap could
    not process, and the sender sees the refusal instead of a sync failing days later.
    """
    from .models import ENTITIES

    if not isinstance(event, dict):
        return "invalid_event: the body must be a JSON object"
    for name, limit in (("id", 200), ("type", 100)):
        value = event.get(name)
        if not isinstance(value, str) or not value or len(value) > limit:
            return f"invalid_event: `{name}` must be a non-empty string of at most {limit} characters"
    if not isinstance(event.get("occurred_at"), str | None):
        return "invalid_event: `occurred_at` must be an ISO 8601 string"
    entity = event.get("entity")
    if entity is None:
        return None
    if not isinstance(entity, str) or entity not in ENTITIES:
        return f"unknown_entity: `entity` must be one of {', '.join(ENTITIES)}"
    if not isinstance(event.get("record"), dict):
        return "invalid_event: `record` must be a JSON object for an event with an entity"
    if product is not None and not event.get("canonical"):  # canonical: normalized already by its receiver
        from .normalize.native import to_canonical

        try:
            to_canonical(product, entity, event["record"])
        except WellSkyError as exc:
            return f"unmappable_record: {public_message(exc)}"
    return None


class WebhookReceiver:
    """The signed-event receiver (a :class:`ReceiverServer`) in front of an :class:`EventStore`; use
    ``start()``/``stop()`` or ``with``. The signature header is judged before the body is read."""

    def __init__(
        self,
        store: EventStore,
        secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
        product: str | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        workers: int = DEFAULT_WORKERS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if not secret:
            raise WellSkyError("webhook secret is empty; pass the secret returned by POST /webhooks")
        self.store = store
        self._secret = secret
        self.tolerance_seconds = tolerance_seconds
        self.rejected = 0
        self.product = product
        self.server = ReceiverServer(
            self._handle,
            check_head=self._check_head,
            host=host,
            port=port,
            request_timeout=request_timeout,
            workers=workers,
            max_connections=max_connections,
            name="wellsky-webhooks-rx",
        )
        self.host, self.port = self.server.host, self.server.port

    def _refused(self, status: int, code: str, message: str) -> Answer:
        self.rejected += 1
        return status, {"error": code, "message": message}

    def _check_head(self, request: Request) -> Answer | None:
        try:
            parse_signature_header(request.header(SIGNATURE_HEADER), tolerance_seconds=self.tolerance_seconds)
        except SignatureError as exc:
            return self._refused(401, "invalid_signature", str(exc))
        return None

    def _handle(self, request: Request) -> Answer:
        raw = request.body
        try:
            verify_signature(
                self._secret, request.header(SIGNATURE_HEADER), raw, tolerance_seconds=self.tolerance_seconds
            )
        except SignatureError as exc:
            return self._refused(401, "invalid_signature", str(exc))
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        problem = event_problem(event, self.product) if event is not None else "invalid_event: not JSON"
        if problem is not None:
            code, _, message = problem.partition(": ")
            return self._refused(422 if code != "invalid_event" else 400, code, message)
        seq, new = self.store.add(event, raw)
        return 200, {"seq": seq, "duplicate": not new}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/webhooks"

    def start(self) -> WebhookReceiver:
        self.server.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wellsky_core.webhooks", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="receive and store signed webhook events")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8787)
    serve.add_argument("--secret", default=None, help="webhook secret (default: $WELLSKY_WEBHOOK_SECRET)")
    serve.add_argument("--store", default="webhook-events.sqlite", help="SQLite file the events are kept in")
    serve.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_SECONDS, help="max clock skew, s")
    serve.add_argument("--product", default=None, help="tenant product: refuse (422) records the tap cannot map")
    serve.add_argument(
        "--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT, help="total seconds one request may take"
    )
    replay = sub.add_parser("replay", help="print stored events after a sequence number as JSON lines")
    replay.add_argument("--store", default="webhook-events.sqlite")
    replay.add_argument("--since", type=int, default=0)
    subs = sub.add_parser(
        "subscriptions", help="Home Connect (personal_care): create, list or delete this connector's subscriptions"
    )
    subs.add_argument("action", choices=("create", "list", "delete"))
    subs.add_argument("--config", default=None, help="connector config JSON (WELLSKY_* variables also apply)")
    hc_serve = sub.add_parser(
        "serve-home-connect",
        help="Home Connect (personal_care): receive subscription notifications, fetch each record, store it",
    )
    hc_serve.add_argument("--config", default=None, help="connector config JSON (WELLSKY_* variables also apply)")
    hc_serve.add_argument("--host", default="127.0.0.1")
    hc_serve.add_argument("--port", type=int, default=8787)
    hc_serve.add_argument("--store", default="webhook-events.sqlite", help="SQLite file the events are kept in")
    args = parser.parse_args(argv)
    if args.command in ("subscriptions", "serve-home-connect"):
        from .products.personal_care.webhooks import run_subscriptions, serve

        try:
            if args.command == "subscriptions":
                return run_subscriptions(args.action, args.config)
            return serve(args.config, args.host, args.port, args.store)
        except WellSkyError as exc:
            print(f"wellsky-webhooks: {public_message(exc)}", file=sys.stderr)
            return 2
    if args.command == "replay":
        store = EventStore(args.store)
        for event in store.iter_events(args.since):
            sys.stdout.write(json.dumps(event) + "\n")
        return 0
    secret = args.secret or os.environ.get("WELLSKY_WEBHOOK_SECRET", "")
    if not secret:
        parser.error("the webhook secret is required: set WELLSKY_WEBHOOK_SECRET or pass --secret")
    receiver = WebhookReceiver(
        EventStore(args.store),
        secret,
        host=args.host,
        port=args.port,
        tolerance_seconds=args.tolerance,
        product=args.product,
        request_timeout=args.request_timeout,
    )
    sys.stdout.write(json.dumps({"url": receiver.url, "store": str(Path(args.store).resolve())}) + "\n")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        receiver.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
