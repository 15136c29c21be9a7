"""The tenant's HTTP face (Starlette): sessions, OAuth, REST reads and writes, and the control API.

Every error is JSON ``{"error": code, "message": what was wrong and how to fix it}``; no request, however
malformed, crashes the server. FHIR, the portal, exports and webhooks are mounted from their own modules.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from .faults import FaultMiddleware, FaultPlan
from .generator import ENTITIES, truth_record
from .render import NativeError, Renderer
from .security import SESSION_COOKIE, AuthFailure, Principal
from .store import decode_cursor, encode_cursor, epoch
from .tenant import Tenant, WriteRejected, public
from .wan import WanMiddleware

log = logging.getLogger("wellsky_sandbox")

RESOURCE_PATHS = {
    "patients": "patients",
    "practitioners": "practitioners",
    "appointments": "appointments",
    "encounters": "encounters",
    "care-plans": "care_plans",
    "authorizations": "authorizations",
    "referrals": "referrals",
    "coverage": "coverage",
}
FILTERS = {
    "patients": {"mrn": "natural_key"},
    "appointments": {"external_id": "natural_key", "patient_id": "patient_id"},
    **{
        e: {"patient_id": "patient_id"} for e in ("encounters", "care_plans", "authorizations", "referrals", "coverage")
    },
}


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    return ORJSONResponse({"error": code, "message": message, **extra}, status_code=status, headers=headers)


class Api:
    """Request handlers bound to one tenant."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.security = tenant.security
        self.store = tenant.store

    @property
    def renderer(self) -> Renderer:
        return self.tenant.renderer

    # -- auth -----------------------------------------------------------------------------------------
    def authenticate(self, request: Request) -> tuple[Principal, str | None]:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return self.security.principal_for_bearer(header[7:].strip()), None
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return self.security.session_for_cookie(cookie)
        raise AuthFailure(401, "unauthenticated", "log in with POST /sessions or send an OAuth2 bearer token")

    @staticmethod
    def with_cookie(response: Response, token: str | None) -> Response:
        if token:
            response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    async def json_body(self, request: Request) -> Any:
        raw = await request.body()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise WriteRejected(
                400, "invalid_json", f"request body is not valid JSON ({exc.msg} at {exc.pos})"
            ) from None

    async def login(self, request: Request) -> Response:
        body = await self.json_body(request)
        if not isinstance(body, dict):
            raise AuthFailure(400, "invalid_request", 'body must be {"username": str, "password": str}')
        self.security.check_password(body.get("username"), body.get("password"))
        if self.security.settings.mfa:
            cid = self.security.start_challenge(body["username"])
            return ORJSONResponse({"challenge_id": cid, "methods": ["totp", "sms", "email"]}, status_code=202)
        return self._session_response(body["username"])

    def _session_response(self, user: str) -> Response:
        _, token = self.security.new_session(user)
        ttl = self.security.settings.session_ttl_seconds
        return self.with_cookie(ORJSONResponse({"session_expires_in": ttl}, status_code=201), token)

    async def send_code(self, request: Request) -> Response:
        body = await self.json_body(request)
        self.security.send_code(request.path_params["cid"], body.get("method") if isinstance(body, dict) else None)
        return ORJSONResponse({"sent": True}, status_code=202)

    async def mfa(self, request: Request) -> Response:
        body = await self.json_body(request)
        if not isinstance(body, dict):
            raise AuthFailure(400, "invalid_request", 'body must be {"method": ..., "code": ...}')
        user = self.security.complete_challenge(request.path_params["cid"], body.get("method"), body.get("code"))
        return self._session_response(user)

    async def logout(self, request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            self.security.logout(cookie)
        return Response(status_code=204)

    async def token(self, request: Request) -> Response:
        form = await request.form()
        basic = None
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            import base64

            try:
                user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
            except Exception:
                raise AuthFailure(
                    400, "invalid_request", "Authorization: Basic header is not base64 id:secret"
                ) from None
            from urllib.parse import unquote

            basic = (unquote(user), unquote(pw))
        token_url = str(request.url.replace(query=""))
        result = self.security.issue_token({k: str(v) for k, v in form.items()}, basic, token_url)
        return ORJSONResponse(result, headers={"cache-control": "no-store"})

    async def tenant_info(self, request: Request) -> Response:
        _, rotated = self.authenticate(request)
        t = self.tenant
        info = {
            "product": t.product,
            "name": t.config.name,
            "timezone": "America/Chicago",
            "read_only": t.read_only,
            "fhir": {"resources": fhir_resources(t.product)},
            "resources": sorted(RESOURCE_PATHS),
        }
        return self.with_cookie(ORJSONResponse(info), rotated)

    # -- reads ----------------------------------------------------------------------------------------
    def entity_for(self, resource: str) -> str:
        if resource in RESOURCE_PATHS:
            return RESOURCE_PATHS[resource]
        raise WriteRejected(
            404, "unknown_resource", f"/{resource} is not a resource; use one of /{', /'.join(RESOURCE_PATHS)}"
        )

    async def list_records(self, request: Request) -> Response:
        _, rotated = self.authenticate(request)
        entity = self.entity_for(request.path_params["resource"])
        q = request.query_params
        unknown = set(q) - {"updated_since", "updated_before", "limit", "cursor"} - set(FILTERS.get(entity, {}))
        if unknown:
            raise WriteRejected(
                400,
                "unknown_parameter",
                f"unknown query parameter(s) {sorted(unknown)}; use updated_since, updated_before, limit, cursor"
                + (f", {', '.join(FILTERS[entity])}" if entity in FILTERS else ""),
            )
        since, before = (self.instant_param(q, name) for name in ("updated_since", "updated_before"))
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise WriteRejected(400, "invalid_parameter", "limit must be an integer from 1 to 1000")
        cursor = None
        if q.get("cursor"):
            try:
                cursor = decode_cursor(q["cursor"])
            except ValueError as exc:
                raise WriteRejected(400, "invalid_cursor", str(exc)) from None
        filters = {FILTERS[entity][k]: v for k, v in q.items() if k in FILTERS.get(entity, {})}
        records, nxt = self.store.page(entity, since=since, before=before, cursor=cursor, limit=limit, filters=filters)
        render = self.renderer.render
        data = [render(entity, public(r)) for r in records]
        body = {"data": data, "next_cursor": encode_cursor(*nxt) if nxt else None}
        return self.with_cookie(ORJSONResponse(body), rotated)

    @staticmethod
    def instant_param(q: Any, name: str) -> int | None:
        """``updated_since`` (inclusive) or ``updated_before`` (exclusive) as epoch seconds, or None when absent."""
        if not q.get(name):
            return None
        try:
            value = epoch(q[name])
            datetime.fromisoformat(q[name].replace("Z", "+00:00")).utcoffset().total_seconds()
        except (ValueError, AttributeError):
            raise WriteRejected(
                400,
                "invalid_parameter",
                f"{name} must be an ISO 8601 timestamp with offset, e.g. 2026-01-31T00:00:00Z",
            ) from None
        return value

    async def get_record(self, request: Request) -> Response:
        _, rotated = self.authenticate(request)
        entity = self.entity_for(request.path_params["resource"])
        rec = self.store.get(entity, request.path_params["rid"])
        if rec is None:
            raise WriteRejected(404, "not_found", f"no {entity[:-1] if entity.endswith('s') else entity} with that id")
        return self.with_cookie(ORJSONResponse(self.renderer.render(entity, public(rec))), rotated)

    # -- writes ---------------------------------------------------------------------------------------
    async def write(self, request: Request) -> Response:
        principal, rotated = self.authenticate(request)
        resource = request.path_params["resource"]
        entity = self.entity_for(resource)
        rid = request.path_params.get("rid")
        key = request.headers.get("idempotency-key")
        audit = {
            "principal": principal.name,
            "method": request.method,
            "path": request.url.path,
            "entity": entity,
            "record_id": rid,
            "idempotency_key": key,
        }
        try:
            if entity not in ("patients", "appointments") or (rid and entity != "patients"):
                raise WriteRejected(405, "method_not_allowed", f"{request.method} is not supported on /{resource}")
            if self.tenant.read_only:
                raise WriteRejected(
                    403,
                    "read_only_tenant",
                    "this tenant is read-only; writes are disabled by the agency's integration settings",
                )
            if not principal.can_write():
                raise WriteRejected(403, "insufficient_scope", "token lacks system/*.write; request that scope")
            if key is not None and not 8 <= len(key) <= 255:
                raise WriteRejected(400, "invalid_idempotency_key", "Idempotency-Key must be 8-255 characters")
            native = await self.json_body(request)
            request_hash = hashlib.sha256(
                request.method.encode() + request.url.path.encode() + orjson.dumps(native, option=orjson.OPT_SORT_KEYS)
            ).hexdigest()
            if key:
                prior = self.store.idempotent_result(key)
                if prior is not None:
                    if prior[0] != request_hash:
                        raise WriteRejected(
                            409,
                            "idempotency_key_reused",
                            "this Idempotency-Key was used with a "
                            "different request body; use a new key for a different write",
                        )
                    self.store.audit(**audit, at=self.store.now(), action="replayed", status=prior[1])
                    return self.with_cookie(
                        Response(
                            prior[2],
                            status_code=prior[1],
                            media_type="application/json",
                            headers={"idempotent-replayed": "true"},
                        ),
                        rotated,
                    )
            try:
                logical = self.renderer.parse(entity, native)
            except NativeError as exc:
                raise WriteRejected(422, "validation_error", f"{exc.field}: {exc.message}", field=exc.field) from None

            def remember(status: int, rec: dict[str, Any]) -> bytes:
                body = orjson.dumps(self.renderer.render(entity, public(rec)))
                if key:
                    self.store.remember(key, request_hash, status, body)
                self.store.audit(
                    **{**audit, "record_id": rec["id"]},
                    at=self.store.now(),
                    action="created" if status == 201 else "updated",
                    status=status,
                )
                return body

            if entity == "patients":
                status, rec, body = self.tenant.write_patient(logical, rid, remember)
            else:
                status, rec, body = self.tenant.write_appointment(logical, remember)
            if body is None:  # nothing changed
                body = orjson.dumps(self.renderer.render(entity, public(rec)))
                self.store.audit(
                    **{**audit, "record_id": rec["id"]}, at=self.store.now(), action="unchanged", status=status
                )
            return self.with_cookie(Response(body, status_code=status, media_type="application/json"), rotated)
        except WriteRejected as exc:
            self.store.audit(**audit, at=self.store.now(), action="rejected", status=exc.status, detail=exc.code)
            raise

    # -- control (loopback only, no auth) --------------------------------------------------------------
    async def advance(self, request: Request) -> Response:
        body = await self.json_body(request) if await request.body() else {}
        if not isinstance(body, dict):
            raise WriteRejected(400, "invalid_request", 'body must be {"fraction": 0.01} or {"count": 100}')
        fraction, count = body.get("fraction"), body.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise WriteRejected(400, "invalid_request", "count must be a positive integer")
        if fraction is not None and (not isinstance(fraction, int | float) or not 0 < fraction <= 1):
            raise WriteRejected(400, "invalid_request", "fraction must be a number in (0, 1]")
        return ORJSONResponse(self.tenant.advance(fraction=fraction, count=count, seed=int(body.get("seed", 1))))

    async def stats(self, request: Request) -> Response:
        body = {**self.tenant.faults.snapshot(), "counts": self.store.counts()}
        hc = getattr(self.tenant, "homeconnect", None)
        if hc is not None:
            body["homeconnect"] = hc.stats()
        body["rate"] = self.tenant.rate_meter.snapshot()
        plan = self.tenant.config.wan
        body["wan"] = {"latency_seconds": plan.latency_seconds, "jitter_seconds": plan.jitter_seconds}
        return ORJSONResponse(body)

    async def set_faults(self, request: Request) -> Response:
        body = await self.json_body(request)
        spec = body.get("spec") if isinstance(body, dict) and "spec" in body else body
        try:
            plan = FaultPlan.parse(spec)
        except ValueError as exc:
            raise WriteRejected(400, "invalid_faults", str(exc)) from None
        self.tenant.faults.set_plan(plan)
        return ORJSONResponse({"faults": {k: v for k, v in vars(plan).items()}})

    async def outbox(self, request: Request) -> Response:
        return ORJSONResponse({"messages": list(self.security.outbox)})

    async def truth(self, request: Request) -> Response:
        entity = request.path_params["entity"]
        if entity not in ENTITIES:
            raise WriteRejected(404, "unknown_entity", f"entity must be one of {', '.join(ENTITIES)}")
        since = request.query_params.get("updated_since")
        stored = self.store.iter_all(entity, epoch(since) if since else None)
        records = [truth_record(entity, public(r)) for r in stored]
        return ORJSONResponse({"data": records})

    async def audit_log(self, request: Request) -> Response:
        after = int(request.query_params.get("after", "0") or 0)
        return ORJSONResponse({"entries": self.store.audit_log(after)})

    async def register_client(self, request: Request) -> Response:
        body = await self.json_body(request)
        if not isinstance(body, dict):
            raise WriteRejected(400, "invalid_request", "body must be a JSON object")
        self.security.register_client(
            body.get("client_id", ""),
            secret=body.get("client_secret"),
            public_key_pem=body.get("public_key_pem"),
            kid=body.get("kid"),
            scopes=body.get("scopes"),
        )
        return ORJSONResponse({"registered": body.get("client_id")}, status_code=201)

    async def tenant_settings(self, request: Request) -> Response:
        body = await self.json_body(request)
        if not isinstance(body, dict):
            raise WriteRejected(400, "invalid_request", "body must be a JSON object")
        settings = self.security.settings
        for key, value in body.items():
            if key == "read_only":
                self.tenant.read_only = bool(value)
            elif key == "enforce_authorizations":
                self.tenant.enforce_authorizations = bool(value)
            elif key == "expire_sessions" and value:
                self.security.expire_everything()
            elif hasattr(settings, key):
                setattr(settings, key, type(getattr(settings, key))(value))
            else:
                raise WriteRejected(400, "unknown_setting", f"unknown tenant setting {key!r}")
        return ORJSONResponse(
            {
                "read_only": self.tenant.read_only,
                "enforce_authorizations": self.tenant.enforce_authorizations,
                **vars(settings),
            }
        )

    async def health(self, request: Request) -> Response:
        return ORJSONResponse({"status": "ok", "product": self.tenant.product})


def fhir_resources(product: str) -> list[str]:
    """FHIR resource types this product's tenants expose (coverage differs by product, as in real tenants)."""
    base = [
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "Appointment",
        "Encounter",
        "Condition",
        "Procedure",
        "Observation",
        "CarePlan",
        "Goal",
        "Coverage",
        "ClaimResponse",
        "ServiceRequest",
    ]
    if product == "personal_care":
        base = [r for r in base if r not in ("CarePlan", "Goal")]
    if product == "hospice":
        base = [r for r in base if r != "ServiceRequest"]
    return base


def _plugin_routes(tenant: Tenant) -> list[BaseRoute]:
    import importlib

    routes: list[BaseRoute] = []
    # personal_care's change notifications are Home Connect subscriptions, not the modeled /webhooks
    names = ("bulk", "fhir", "portal", "kinnser", "exports")  # bulk before fhir: /fhir/{type}/{id} is a catch-all
    if tenant.product != "personal_care":
        names += ("webhooks",)
    for name in names:
        try:
            module = importlib.import_module(f"wellsky_sandbox.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"wellsky_sandbox.{name}":
                raise
            continue
        routes.extend(module.routes(tenant))
    return routes


class _QuietInjectedResets(logging.Filter):
    """Injected connection drops are the plan, not a server error worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, ConnectionResetError) and "injected fault" in str(exc))


logging.getLogger("uvicorn.error").addFilter(_QuietInjectedResets())


def _modeled_rest(api: Api) -> list[BaseRoute]:
    """The modeled REST dialect of home health and hospice (no public WellSky specification exists)."""
    return [
        Route("/{resource}", api.list_records, methods=["GET"]),
        Route("/{resource}", api.write, methods=["POST"]),
        Route("/{resource}/{rid}", api.get_record, methods=["GET"]),
        Route("/{resource}/{rid}", api.write, methods=["PUT"]),
    ]


def _home_connect(tenant: Tenant) -> list[BaseRoute]:
    """personal_care speaks the documented Home Connect API; every other path is the gateway's 403."""
    from . import homeconnect

    return [*homeconnect.routes(tenant), *homeconnect.forbidden_routes()]


def build_app(tenant: Tenant) -> ASGIApp:
    """The tenant's ASGI app: fault injection wraps everything, in front of Starlette's own error handling."""
    api = Api(tenant)

    async def on_auth_failure(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthFailure)
        return error(exc.status, exc.code, exc.message)

    async def on_rejected(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, WriteRejected)
        return error(exc.status, exc.code, exc.message, **exc.extra)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error(404, "not_found", f"no route {request.method} {request.url.path}")
        if exc.status_code == 405:
            return error(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")
        return error(exc.status_code, "http_error", str(exc.detail))

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("sandbox handler failed on %s %s", request.method, request.url.path)
        return error(500, "internal_error", "the sandbox failed to handle this request (a sandbox bug)")

    routes: list[BaseRoute] = [
        Route("/health", api.health),
        Route("/tenant", api.tenant_info),
        Route("/sessions", api.login, methods=["POST"]),
        Route("/sessions", api.logout, methods=["DELETE"]),
        Route("/sessions/{cid}/send", api.send_code, methods=["POST"]),
        Route("/sessions/{cid}/mfa", api.mfa, methods=["POST"]),
        Route("/oauth/token", api.token, methods=["POST"]),
        Route("/_sandbox/advance", api.advance, methods=["POST"]),
        Route("/_sandbox/stats", api.stats),
        Route("/_sandbox/faults", api.set_faults, methods=["POST"]),
        Route("/_sandbox/outbox", api.outbox),
        Route("/_sandbox/truth/{entity}", api.truth),
        Route("/_sandbox/audit", api.audit_log),
        Route("/_sandbox/clients", api.register_client, methods=["POST"]),
        Route("/_sandbox/tenant", api.tenant_settings, methods=["POST"]),
        *_plugin_routes(tenant),
        *(_home_connect(tenant) if tenant.product == "personal_care" else _modeled_rest(api)),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            AuthFailure: on_auth_failure,
            WriteRejected: on_rejected,
            HTTPException: on_http,
            Exception: on_crash,
        },
    )
    faulty = FaultMiddleware(app, state=tenant.faults, on_expire=tenant.security.expire_everything)
    return WanMiddleware(faulty, tenant.config.wan, tenant.rate_meter)
