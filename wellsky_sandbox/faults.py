"""Switchable faults, injected as ASGI middleware in front of the data endpoints.

What real tenants do to a connector on a bad day: 5xx bursts, 429 with ``Retry-After``, connections dropped
mid-response (after a write was committed — the case idempotency keys exist for), slow responses, a
truncated JSON page, and sessions or tokens that die early. Counters of every injected fault are exposed at
``/_sandbox/stats`` so tests can compare them with the client's own retry log.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

FAULT_PREFIXES = (
    "/patients",
    "/practitioners",
    "/appointments",
    "/encounters",
    "/care-plans",
    "/authorizations",
    "/referrals",
    "/coverage",
    "/v1/",
    "/fhir",
    "/exports",
)
"""Only data endpoints fail; login, control and portal pages stay reliable so tests stay deterministic."""


@dataclass
class FaultPlan:
    error: float = 0.0  # share of requests answered 500/502/503
    rate_limit: float = 0.0  # share answered 429 with Retry-After
    reset: float = 0.0  # share whose connection drops mid-response (after the handler ran)
    slow: float = 0.0  # share delayed by slow_seconds
    malformed: float = 0.0  # share of successful reads (GETs, Home Connect _search POSTs) whose JSON is truncated
    expire_every: int = 0  # every N-th data request kills all sessions and tokens first
    slow_seconds: float = 0.4
    retry_after: int = 1
    seed: int = 7

    ALIASES = {"429": "rate_limit", "errors": "error", "5xx": "error"}

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | None) -> FaultPlan:
        """``"error=0.1,429=0.05,reset=0.02,slow=0.02,malformed=0.01,expire_every=50"`` or a dict."""
        if not spec:
            return cls()
        if isinstance(spec, str):
            items: dict[str, Any] = {}
            for part in spec.split(","):
                if not part.strip():
                    continue
                key, sep, value = part.partition("=")
                if not sep:
                    raise ValueError(f"fault {part!r} needs a value, e.g. error=0.1")
                items[key.strip()] = value.strip()
        else:
            items = dict(spec)
        known = {f.name: f.type for f in fields(cls)}
        plan = cls()
        for key, value in items.items():
            name = cls.ALIASES.get(key, key)
            if name not in known:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(sorted(set(known) | {'429'}))}")
            caster = int if name in ("expire_every", "retry_after", "seed") else float
            try:
                number = caster(value)
            except (TypeError, ValueError):
                raise ValueError(f"fault {key} must be a number, got {value!r}") from None
            if caster is float and name != "slow_seconds" and not 0 <= number <= 1:
                raise ValueError(f"fault {key} is a share of requests between 0 and 1, got {number}")
            setattr(plan, name, number)
        if plan.error + plan.rate_limit + plan.reset + plan.slow + plan.malformed > 1:
            raise ValueError("fault shares add up to more than 1")
        return plan

    def active(self) -> bool:
        return bool(self.error or self.rate_limit or self.reset or self.slow or self.malformed or self.expire_every)


class FaultState:
    """The current plan, its RNG and the counters (shared by the middleware and the control API)."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.set_plan(plan or FaultPlan())

    def set_plan(self, plan: FaultPlan) -> None:
        with self.lock:
            self.plan = plan
            self.rng = random.Random(plan.seed)
            self.data_requests = 0

    def draw(self) -> tuple[str | None, bool]:
        """Pick this request's fault (or None) and whether sessions expire first."""
        with self.lock:
            self.counts["requests"] += 1
            plan = self.plan
            if not plan.active():
                return None, False
            self.data_requests += 1
            expire = bool(plan.expire_every) and self.data_requests % plan.expire_every == 0
            x = self.rng.random()
            for kind, share in (
                ("error", plan.error),
                ("429", plan.rate_limit),
                ("reset", plan.reset),
                ("slow", plan.slow),
                ("malformed", plan.malformed),
            ):
                if x < share:
                    return kind, expire
                x -= share
            return None, expire

    def record(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            faults = {k: v for k, v in self.counts.items() if k != "requests"}
            return {
                "data_requests": self.counts["requests"],
                "faults": faults,
                "faults_total": sum(faults.values()) - faults.get("expire", 0),
            }


class FaultMiddleware:
    def __init__(self, app: ASGIApp, state: FaultState, on_expire: Any) -> None:
        self.app = app
        self.state = state
        self.on_expire = on_expire

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(FAULT_PREFIXES):
            await self.app(scope, receive, send)
            return
        kind, expire = self.state.draw()
        if expire:
            self.on_expire()
            self.state.record("expire")
        if kind is None:
            await self.app(scope, receive, send)
            return
        plan = self.state.plan
        if kind == "error":
            status = self.state.rng.choice((500, 502, 503))
            self.state.record(str(status))
            headers = [(b"retry-after", str(plan.retry_after).encode())] if status == 503 else []
            await _json(send, status, b'{"error":"server_error","message":"injected fault: try again"}', headers)
            return
        if kind == "429":
            self.state.record("429")
            await _json(
                send,
                429,
                b'{"error":"rate_limited","message":"too many requests; honour Retry-After"}',
                [(b"retry-after", str(plan.retry_after).encode())],
            )
            return
        if kind == "slow":
            self.state.record("slow")
            await asyncio.sleep(plan.slow_seconds)
            await self.app(scope, receive, send)
            return
        # reset / malformed: run the handler for real, then damage what goes back on the wire
        start: dict[str, Any] = {}
        body = bytearray()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app(scope, receive, capture)
        status = start.get("status", 500)
        searching = scope["method"] == "GET" or scope["path"].rstrip("/").endswith("/_search")
        if kind == "malformed" and not (searching and status == 200):
            await _replay(send, start, bytes(body))
            return
        self.state.record(kind)
        if kind == "malformed":
            cut = bytes(body[: max(1, len(body) // 2)])
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(cut)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": cut})
            return
        # reset: promise the full body, send part of it, then drop the connection
        await send({"type": "http.response.start", "status": status, "headers": start.get("headers", [])})
        await send({"type": "http.response.body", "body": bytes(body[: len(body) // 3]), "more_body": True})
        raise ConnectionResetError("injected fault: connection dropped mid-response")


async def _replay(send: Send, start: dict[str, Any], body: bytes) -> None:
    await send({"type": "http.response.start", "status": start.get("status", 500), "headers": start.get("headers", [])})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})
