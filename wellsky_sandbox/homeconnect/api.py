"""The Home Connect HTTP surface: ``POST /oauth/accesstoken`` and everything under ``/v1/``.

Routing is a table of (method, exact path pattern) because the real API is unforgiving about spelling: the
trailing slash is mandatory (except ``POST /v1/locations/_search``), names are plural or singular per
resource, and anything that does not match answers 403 with the AWS API Gateway body that production sends.
"""

from __future__ import annotations

import contextvars
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..security import SUPPORTED_SCOPES, AuthFailure, Principal
from ..tenant import Tenant
from .contacts import ContactRoutes
from .data import Extras, rng_for
from .http import HcResponse, apigee_fault, aws_forbidden, fail
from .options import Options
from .people import PeopleRoutes
from .schedule import ScheduleRoutes
from .shapes import (
    Invalid,
    Shapes,
)
from .subscription_routes import SubscriptionRoutes
from .subscriptions import SubscriptionHub

AUDIT_ENTITY = {
    "patients": "patients",
    "practitioners": "practitioners",
    "appointment": "appointments",
    "encounter": "encounters",
}
Handler = Callable[[Request, dict[str, str], Any], Awaitable[Response]]
_writing = contextvars.ContextVar("homeconnect_writing", default=False)


class HomeConnect(PeopleRoutes, ScheduleRoutes, ContactRoutes, SubscriptionRoutes):
    """One tenant's Home Connect emulation."""

    def __init__(self, tenant: Tenant, options: Options | None = None) -> None:
        self.tenant = tenant
        self.store = tenant.store
        self.extras = Extras(tenant.store, tenant.config.seed)
        self.shapes = Shapes(self.extras, tenant.store)
        self.options = options or Options()
        self.hub = SubscriptionHub(self.extras)
        self._issued: dict[str, float] = {}  # token -> expiry, to tell "expired" from "unknown"
        tenant.listeners.append(self._on_change)
        tenant.advance_hooks.append(self._on_advance)
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        add = self._add
        for res, kind in (("patients", "patients"), ("practitioners", "practitioners")):
            add("POST", rf"{res}/_search/", lambda r, p, b, k=kind: self.search_people(k, r, b))
            add("GET", rf"{res}/", lambda r, p, b, k=kind: self.search_people(k, r, dict(r.query_params)))
            add("POST", rf"{res}/", lambda r, p, b, k=kind: self.create_person(k, b))
            add("GET", rf"{res}/(?P<id>\d+)/", lambda r, p, b, k=kind: self.get_person(k, p["id"]))
            add("PUT", rf"{res}/(?P<id>\d+)/", lambda r, p, b, k=kind: self.update_person(k, p["id"], b))
            add(
                "DELETE",
                rf"{res}/(?P<id>\d+)/",
                lambda r, p, b, k=kind: self.update_person(k, p["id"], {"active": False}, deleting=True),
            )
        add("POST", r"appointment/_search/", lambda r, p, b: self.search_appointments(r, b))
        add("GET", r"appointment/", lambda r, p, b: self.search_appointments(r, dict(r.query_params)))
        add("GET", r"appointment/(?P<id>\d+)/", lambda r, p, b: self.get_appointment(p["id"]))
        add("POST", r"appointment/", lambda r, p, b: self.write_appointment(None, b), gated=True)
        add("PUT", r"appointment/(?P<id>\d+)/", lambda r, p, b: self.write_appointment(p["id"], b), gated=True)
        add(
            "DELETE",
            r"appointment/(?P<id>\d+)/",
            lambda r, p, b: self.write_appointment(p["id"], {"status": "CANCELLED"}),
            gated=True,
        )
        add("POST", r"encounter/_search/", lambda r, p, b: self.search_encounters(r, b))
        add("GET", r"encounter/(?P<id>\d+)/", lambda r, p, b: self.get_encounter(p["id"]))
        add("POST", r"encounter/", lambda r, p, b: self.create_encounter(b))
        add("PUT", r"encounter/(?P<id>\d+)/", lambda r, p, b: self.update_encounter(p["id"], b))
        add("DELETE", r"encounter/(?P<id>\d+)/", lambda r, p, b: self.delete_encounter(p["id"]))
        add(
            "PUT",
            r"encounter/(?P<id>\d+)/task/(?P<tid>\d+)/",
            lambda r, p, b: self.update_task(p["id"], p["tid"], b),
        )
        add("GET", r"profileTags/(?P<id>\d+)/", lambda r, p, b: self.get_profile_tag(p["id"]))
        add("POST", r"profileTags/", lambda r, p, b: self.write_profile_tag(None, b))
        add("PUT", r"profileTags/(?P<id>\d+)/", lambda r, p, b: self.write_profile_tag(p["id"], b))
        add("GET", r"profileTags/", lambda r, p, b: fail(405, "Method GET is not allowed on profileTags; POST it."))
        add("POST", r"encounter/(?P<id>\d+)/clockin/", lambda r, p, b: self.clock_in(p["id"], b))
        add("PUT", r"encounter/(?P<id>\d+)/clockout/", lambda r, p, b: self.clock_out(p["id"], b))
        add("GET", r"encounter/(?P<id>\d+)/tasklog/", lambda r, p, b: self.task_logs(p["id"]))
        add("POST", r"encounter/(?P<id>\d+)/tasklog/", lambda r, p, b: self.write_task_log(p["id"], None, b))
        add(
            "PUT",
            r"encounter/(?P<id>\d+)/tasklog/(?P<tid>\d+)/",
            lambda r, p, b: self.write_task_log(p["id"], p["tid"], b),
        )
        add("GET", r"relatedperson/(?P<id>\d+)/", lambda r, p, b: self.contacts_of(r, p["id"]))
        add("POST", r"relatedperson/", lambda r, p, b: self.write_contact(None, b))
        add("POST", r"relatedperson/_search/", lambda r, p, b: self.search_contacts(r, b))
        add("PUT", r"relatedperson/(?P<id>\d+)/", lambda r, p, b: self.write_contact(p["id"], b))
        add(
            "DELETE",
            r"relatedperson/(?P<pid>\d+)/contacts/(?P<id>\d+)/",
            lambda r, p, b: self.delete_contact(p["pid"], p["id"]),
        )
        add("POST", r"locations/_search", lambda r, p, b: self.search_list(r, self.extras.locations))
        add("POST", r"locations/_search/", lambda r, p, b: self.search_list(r, self.extras.locations), ref=True)
        add("GET", r"organizations/", lambda r, p, b: self.organizations())
        add("POST", r"organizations/_search/", lambda r, p, b: self.organizations(), ref=True)
        for empty in ("chargeitem", "medication", "admins"):
            add("POST", rf"{empty}/_search/", lambda r, p, b: self.search_list(r, []))
        add("POST", r"subscriptions/", lambda r, p, b: self.write_subscription(None, b))
        add("GET", r"subscriptions/", lambda r, p, b: self.search_subscriptions(r, dict(r.query_params)))
        add("POST", r"subscriptions/_search/", lambda r, p, b: self.search_subscriptions(r, b))
        add("GET", r"subscriptions/(?P<id>\d+)/", lambda r, p, b: self.get_subscription(p["id"]))
        add("PUT", r"subscriptions/(?P<id>\d+)/", lambda r, p, b: self.write_subscription(p["id"], b))
        add("DELETE", r"subscriptions/(?P<id>\d+)/", lambda r, p, b: self.delete_subscription(p["id"]))

    @property
    def options(self) -> Options:
        return self._options

    @options.setter
    def options(self, value: Options) -> None:
        self._options = value
        self.shapes.communication_ref = value.communication == "ref"

    def _add(self, method: str, pattern: str, handler: Any, *, gated: bool = False, ref: bool = False) -> None:
        async def run(request: Request, params: dict[str, str], body: Any) -> Response:
            if (gated and not self.options.appointment_writes) or (ref and not self.options.ref_paths):
                return aws_forbidden(request)  # a route the real API does not (reliably) have
            return handler(request, params, body)

        self.routes.append((method, re.compile(pattern), run))

    # -- HTTP entry points ------------------------------------------------------------------------------
    async def token(self, request: Request) -> Response:
        """Apigee-style client-credentials token (fact sheet section 1, observed response)."""
        raw = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                form = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                form = None
            if not isinstance(form, dict):
                return HcResponse({"ErrorCode": "invalid_request", "Error": "Invalid JSON body"}, status_code=400)
        else:
            form = dict(parse_qsl(raw.decode("utf-8", "replace")))
        grant = form.get("grant_type")
        if grant not in (None, "client_credentials"):
            return HcResponse(
                {"ErrorCode": "invalid_request", "Error": "Unsupported grant type : " + str(grant)}, status_code=400
            )
        client_id, secret = str(form.get("client_id") or ""), str(form.get("client_secret") or "")
        security = self.tenant.security
        client = security.clients.get(client_id)
        if not client or not client["secret"] or not hmac.compare_digest(client["secret"], secret):
            return HcResponse({"ErrorCode": "invalid_client", "Error": "ClientId is Invalid"}, status_code=401)
        token = secrets.token_hex(16)
        ttl = security.settings.token_ttl_seconds
        expires = time.monotonic() + ttl
        with security.lock:
            security.tokens[token] = (Principal(client_id, frozenset(SUPPORTED_SCOPES), "oauth"), expires)
            now = time.monotonic()
            self._issued = {t: e for t, e in self._issued.items() if e > now - 86_400}
            self._issued[token] = expires
        return HcResponse(
            {
                "refresh_token_expires_in": "0",
                "api_product_list": "[Home Connect]",
                "organization_name": "clearcare",
                "token_type": "BearerToken",
                "issued_at": int(time.time()),
                "client_id": client_id,
                "access_token": token,
                "application_name": client_id,
                "scope": "",
                "expires_in": str(max(0, int(ttl) - 1)),
                "refresh_count": "0",
                "status": "approved",
            },
            headers={"cache-control": "no-store"},
        )

    async def dispatch(self, request: Request) -> Response:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return apigee_fault("Invalid access token", "oauth.v2.InvalidAccessToken")
        try:
            principal = self.tenant.security.principal_for_bearer(header[7:].strip())
        except AuthFailure as exc:
            if exc.code == "token_expired" or self._issued.get(header[7:].strip(), float("inf")) <= time.monotonic():
                return apigee_fault("Access Token expired", "keymanagement.service.access_token_expired")
            return apigee_fault("Invalid Access Token", "keymanagement.service.invalid_access_token")
        path = request.url.path[len("/v1/") :] if request.url.path.startswith("/v1/") else None
        if path is None:
            return aws_forbidden(request)
        found = self._route(request.method, path)
        if found is None:
            return aws_forbidden(request)
        run, params = found
        body: Any = {}
        if request.method in ("POST", "PUT"):
            raw = await request.body()
            if raw.strip():
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    return fail(400, f"Request body is not valid JSON ({exc.msg}).")
        writing = request.method != "GET" and not path.rstrip("/").endswith("_search")
        token = _writing.set(writing)
        try:
            response = await run(request, params, body)
        except Invalid as exc:
            response = fail(exc.status, exc.message)
        finally:
            _writing.reset(token)
        if writing:
            self._audit(principal.name, request, path, params, response)
        return response

    def _audit(self, who: str, request: Request, path: str, params: dict[str, str], response: Response) -> None:
        """Every /v1 write lands in ``/_sandbox/audit`` like the modeled REST writes do."""
        status = response.status_code
        reply = orjson.loads(response.body) if response.body else {}
        if status >= 400:
            action = "rejected"
        elif isinstance(reply, dict) and reply.get("clockedOut") is not None:
            action = "clocked_in"
        else:
            action = {"POST": "created", "PUT": "updated", "DELETE": "deleted"}.get(request.method, "updated")
        record_id = params.get("id") or (str(reply.get("id")) if isinstance(reply, dict) and reply.get("id") else None)
        self.store.audit(
            at=self.store.now(),
            principal=who,
            method=request.method,
            path=request.url.path,
            entity=AUDIT_ENTITY.get(path.split("/", 1)[0], path.split("/", 1)[0]),
            record_id=record_id,
            action=action,
            status=status,
            detail=reply.get("error") if isinstance(reply, dict) and status >= 400 else None,
        )

    def _route(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        for route_method, pattern, run in self.routes:
            match = pattern.fullmatch(path) if route_method == method else None
            if match:
                return run, match.groupdict()
        return None

    def stats(self) -> dict[str, Any]:
        """The tenant's soft-limit meter (every request, counted by ``wan.WanMiddleware``) plus deliveries."""
        return {
            **self.tenant.rate_meter.snapshot(),
            "deliveries": len(self.hub.log),
            "deliveries_pending": self.hub.pending(),
        }

    # -- organizations ------------------------------------------------------------------------------------
    def organizations(self) -> Response:
        """One unpaged answer (no _page/_count; fact sheet section 2)."""
        org = {
            "resourceType": "Organization",
            "id": self.extras.agency_id,
            "name": self.tenant.config.name,
            "active": True,
            "partOf": None,
            "location": [{"reference": f"Location/{loc['id']}"} for loc in self.extras.locations],
        }
        return self.bundle([org], 1)

    def _on_advance(self, batch: list[tuple[str, dict[str, Any] | None, dict[str, Any]]]) -> None:
        """A simulated day of changes notifies subscribers with the criteria each change matches; now and then
        (a quarter of the days, deterministic per tenant and day) the agency closes an office, while two remain."""
        day = int(self.store.meta("homeconnect_advances") or 0) + 1
        self.store.set_meta("homeconnect_advances", str(day))
        open_offices = self.extras.locations
        if len(open_offices) > 2 and rng_for(self.extras.seed, "office-closure", str(day)).random() < 0.25:
            self.extras.close_location(open_offices[-1]["id"])
        for entity, old, new in batch:
            if entity == "encounters" and old is not None and new.get("note_summary") != old.get("note_summary"):
                self._addendum(new)
            if entity not in ("patients", "practitioners"):
                continue  # care logs reach subscribers through tenant.listeners (encounter.updated)
            if old is None:
                self.hub.fire("patient.created" if entity == "patients" else "practitioner.created", new["id"])
            else:
                self._fire_changes(entity, old, new)

    def _addendum(self, enc: dict[str, Any]) -> None:
        """A late addendum to a care log shows on Home Connect as one more shift note (task log) on it."""
        log_id = self.extras.next_id("tasklog")
        body = {
            "id": log_id, "title": "Addendum", "description": enc.get("note_summary"), "status": "COMPLETE",
            "comment": None, "recorded": enc["updated_at"].replace("Z", "+00:00"),
        }
        self.extras.put("tasklog", str(log_id), enc["id"], body)

    def _on_change(self, event: str, entity: str, rec: dict[str, Any]) -> None:
        """Changes made outside /v1 (FHIR writes, /_sandbox/advance) still reach subscribers."""
        if _writing.get():
            return
        if event == "patient.created":
            self.hub.fire("patient.created", rec["id"])
        elif event == "encounter.updated" and rec.get("status") == "completed" and rec.get("end"):
            self.hub.fire("encounter.clockout.changed", rec["id"])
