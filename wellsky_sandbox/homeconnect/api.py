"""The Home Connect HTTP surface: ``POST /oauth/accesstoken`` and everything under ``/v1/``.

Routing is a table of (method, exact path pattern) because the real API is unforgiving about spelling: the
trailing slash is mandatory (except ``POST /v1/locations/_search``), names are plural or singular per
resource, and anything that does not match answers 403 with the AWS API Gateway body that production sends.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..generator import iso, parse_iso
from ..security import SUPPORTED_SCOPES, AuthFailure, Principal
from ..tenant import Tenant, public
from .data import APPLICANT_STATUS, CLIENT_STATUS, Extras, canonical_client_status
from .shapes import (
    ENCOUNTER_STATUS,
    Invalid,
    Shapes,
    check_datetime,
    check_phone,
    parse_person,
    phone_in,
    refuse_control_chars,
    tags_of,
)
from .subscriptions import CRITERIA, SubscriptionHub

COMPARATORS = ("ge", "gt", "le", "lt", "eq")
FILTERABLE = ("patients", "practitioners", "relatedperson")
RATE_METHODS = ("Hourly", "notBillable", "notPayable", "perVisit", "liveIn")
RATE_LIMIT_PER_SECOND = 100
AUDIT_ENTITY = {
    "patients": "patients",
    "practitioners": "practitioners",
    "appointment": "appointments",
    "encounter": "encounters",
}
_writing = contextvars.ContextVar("homeconnect_writing", default=False)


@dataclass
class Options:
    """Sandbox switches; defaults follow the better-sourced side of every conflict in the fact sheet (section 7)."""

    appointment_writes: bool = False  # POST/PUT/DELETE /v1/appointment/: unconfirmed by any source (REF L only)
    paging: str = "conn"  # "conn": _page 0-based, _count 20 everywhere; "ref": 1-based, REF's per-resource defaults
    ref_paths: bool = False  # also accept REF's POST /v1/locations/_search/ and POST /v1/organizations/_search/
    comparators_everywhere: bool = False  # REF: created/updated honoured on every search (CONN: three resources)
    active_only_quirk: bool = True  # production pitfall 3: {"active": ...} as the only filter returns nothing
    tasklog_id_string: bool = False  # MATRIX: taskLogId as a string (REF: integer)
    communication: str = "sync"  # practitioners: "sync" language.coding[] + preferred (SYNC, H); "ref": coding[]
    appointment_total: bool = False  # SVC reads `total` on appointment searches: add it next to totalRecords

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | None) -> Options:
        if not spec:
            return cls()
        items = dict(p.split("=", 1) for p in spec.split(",") if p.strip()) if isinstance(spec, str) else dict(spec)
        known = {f.name: f.type for f in fields(cls)}
        opts = cls()
        for key, value in items.items():
            key = key.strip()
            if key not in known:
                raise ValueError(f"unknown Home Connect option {key!r}; known: {', '.join(sorted(known))}")
            if key in ("paging", "communication"):
                allowed = ("conn", "ref") if key == "paging" else ("sync", "ref")
                if value not in allowed:
                    raise ValueError(f"Home Connect option {key} must be one of {', '.join(allowed)}")
                setattr(opts, key, value)
            else:
                opts.__setattr__(
                    key, value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
                )
        return opts


class HcResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def fail(status: int, message: str) -> Response:
    return HcResponse({"error": message}, status_code=status)


def aws_forbidden(request: Request) -> Response:
    """What API Gateway answers for a path/method it has no route for (fact sheet section 7, pitfall 1)."""
    header = request.headers.get("authorization")
    if header is None:
        return HcResponse({"message": "Missing Authentication Token"}, status_code=403)
    hashed = base64.b64encode(hashlib.sha256(header.encode()).digest()).decode()
    return HcResponse(
        {
            "message": "Invalid key=value pair (missing equal-sign) in Authorization header (hashed with SHA-256 and "
            f"encoded with Base64): '{hashed}'."
        },
        status_code=403,
    )


def apigee_fault(message: str, code: str) -> Response:
    return HcResponse({"fault": {"faultstring": message, "detail": {"errorcode": code}}}, status_code=401)


Handler = Callable[[Request, dict[str, str], Any], Awaitable[Response]]


class HomeConnect:
    """One tenant's Home Connect emulation."""

    def __init__(self, tenant: Tenant, options: Options | None = None) -> None:
        self.tenant = tenant
        self.store = tenant.store
        self.extras = Extras(tenant.store, tenant.config.seed)
        self.shapes = Shapes(self.extras, tenant.store)
        self.options = options or Options()
        self.hub = SubscriptionHub(self.extras)
        self._issued: dict[str, float] = {}  # token -> expiry, to tell "expired" from "unknown"
        self._rate_lock = threading.Lock()
        self._second = 0
        self._in_second = 0
        self.rate = {"requests": 0, "overruns": 0, "peak_per_second": 0}
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
        self._meter()
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

    def _meter(self) -> None:
        """The vendor asks for at most 100 req/s and does not throttle: answer, but count overruns."""
        now = int(time.monotonic())
        with self._rate_lock:
            self.rate["requests"] += 1
            if now != self._second:
                self._second, self._in_second = now, 0
            self._in_second += 1
            self.rate["peak_per_second"] = max(self.rate["peak_per_second"], self._in_second)
            if self._in_second > RATE_LIMIT_PER_SECOND:
                self.rate["overruns"] += 1

    def stats(self) -> dict[str, Any]:
        with self._rate_lock:
            return {
                **self.rate,
                "limit_per_second": RATE_LIMIT_PER_SECOND,
                "deliveries": len(self.hub.log),
                "deliveries_pending": self.hub.pending(),
            }

    # -- paging and bundles -------------------------------------------------------------------------------
    def paging(self, request: Request, resource: str) -> tuple[int, int]:
        """(count, zero-based page index) from ``_count``/``_page`` in the query string."""
        ref = self.options.paging == "ref"
        default = 20
        if ref and resource in ("encounter", "relatedperson"):
            default = 30
        q = request.query_params
        try:
            count = int(q.get("_count", default))
            page = int(q.get("_page", 1 if ref else 0))
        except ValueError:
            raise Invalid(400, "_count and _page must be integers.") from None
        if not 1 <= count <= 100:
            raise Invalid(400, "_count must be between 1 and 100.")
        first = 1 if ref else 0
        if page < first:
            raise Invalid(400, f"_page must be {first} or greater.")
        return count, page - first

    @staticmethod
    def bundle(entries: list[dict[str, Any]], total_records: int, **extra: Any) -> Response:
        return HcResponse(
            {
                "resourceType": "Bundle",
                "id": "searchParams",
                "type": "searchset",
                "totalRecords": total_records,
                **extra,
                "entry": [{"resource": public(e)} for e in entries],
            }
        )

    def search_list(self, request: Request, items: list[dict[str, Any]]) -> Response:
        count, page = self.paging(request, "list")
        return self.bundle(items[page * count : (page + 1) * count], len(items))

    # -- people -------------------------------------------------------------------------------------------
    def render_person(self, kind: str, rec: dict[str, Any]) -> dict[str, Any]:
        return self.shapes.patient(rec) if kind == "patients" else self.shapes.practitioner(rec)

    def search_people(self, kind: str, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The search body must be a JSON object.")
        count, page = self.paging(request, kind)
        filters = {k: v for k, v in body.items() if not k.startswith("_")}
        refuse_control_chars(filters)
        if self.options.active_only_quirk and set(filters) == {"active"}:
            return self.bundle([], 0)  # production pitfall 3: active alone matches nothing
        updated = comparator(filters.pop("updated", None), "updated")
        created = comparator(filters.pop("created", None), "created")
        tests = [people_filter(kind, k, v, self) for k, v in filters.items()]
        tests = [t for t in tests if t is not None]
        if not tests and created is None:
            return self._sql_page(kind, updated, count, page)
        hits = []
        for rec in self._scan(kind, updated):
            if created and not created(parse_iso(self.extras.created(kind[:-1], rec))):
                continue
            if all(t(rec) for t in tests):
                hits.append(rec)
        chunk = hits[page * count : (page + 1) * count]
        return self.bundle([self.render_person(kind, r) for r in chunk], len(hits))

    def _updated_sql(self, updated: Comparator | None) -> tuple[str, list[Any]]:
        if updated is None:
            return "", []
        return f" AND updated_at {updated.sql} ?", [int(updated.when.timestamp())]

    def _sql_page(self, kind: str, updated: Comparator | None, count: int, page: int) -> Response:
        where, args = self._updated_sql(updated)
        with self.store.lock:
            total = self.store.db.execute(
                f"SELECT count(*) FROM records WHERE entity = ?{where}", [kind, *args]
            ).fetchone()[0]
            rows = self.store.db.execute(
                f"SELECT body FROM records WHERE entity = ?{where} ORDER BY id LIMIT ? OFFSET ?",
                [kind, *args, count, page * count],
            ).fetchall()
        return self.bundle([self.render_person(kind, orjson.loads(r[0])) for r in rows], total)

    def _scan(self, kind: str, updated: Comparator | None) -> list[dict[str, Any]]:
        where, args = self._updated_sql(updated)
        with self.store.lock:
            rows = self.store.db.execute(
                f"SELECT body FROM records WHERE entity = ?{where} ORDER BY id", [kind, *args]
            ).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def get_person(self, kind: str, rec_id: str) -> Response:
        rec = self.store.get(kind, rec_id)
        if rec is None:
            raise Invalid(404, f"{'Patient' if kind == 'patients' else 'Practitioner'} {rec_id} not found.")
        return HcResponse(self.render_person(kind, rec))

    def _agency_tag(self, fields_: dict[str, Any], required: bool) -> None:
        tags = fields_.get("tags") or {}
        if "agencyId" not in tags:
            if required:
                raise Invalid(422, "'agencyId' is required.")
            return
        if tags["agencyId"] != self.extras.agency_id:
            raise Invalid(422, f"'agencyId' {tags['agencyId']} is not the agency of this token.")

    def create_person(self, kind: str, body: Any) -> Response:
        parsed = parse_person(body, creating=True)
        self._agency_tag(parsed, required=True)
        now = self.store.now()
        if kind == "patients":
            rec: dict[str, Any] = {
                "mrn": None,
                "medicare_mbi": None,
                "medicaid_id": None,
                "birth_date": None,
                "gender": "unknown",
                "phone": None,
                "address": None,
                "status": "pending",
                "coverage": [],
                "_created": now,
            }
            self._apply_patient(rec, parsed)
        else:
            if isinstance(body, dict) and body.get("ssn") is not None and not re.fullmatch(r"\d{9}", str(body["ssn"])):
                raise Invalid(422, "'ssn' must be 9 digits.")
            rec = {
                "npi": None,
                "credentials": None,
                "roles": ["aide"],
                "disciplines": ["HHA"],
                "specialties": [],
                "active": True,
                "_created": now,
                "_hc_status": 100,
            }
            self._apply_practitioner(rec, parsed)
        with self.store.transaction():
            rec["id"] = self.store.mint_id(kind)
            rec["updated_at"] = now
            self.store.put(kind, rec)
        self.tenant.notify("patient.created" if kind == "patients" else "practitioner.created", kind, rec)
        self.hub.fire("patient.created" if kind == "patients" else "practitioner.created", rec["id"])
        return HcResponse(
            {"resourceType": "Patient" if kind == "patients" else "Practitioner", "id": rec["id"]}, status_code=201
        )

    def _apply_patient(self, rec: dict[str, Any], parsed: dict[str, Any]) -> None:
        for key in ("first_name", "last_name", "birth_date", "gender", "address"):
            if key in parsed:
                rec[key] = parsed[key]
        if "phones" in parsed:
            phones = parsed["phones"]
            rec["phone"] = phone_in(phones[0][1]) if phones else None  # canonical keeps one phone
            rec["_hc_phone_use"] = phones[0][0] if phones else None
            rec["_hc_telecom"] = [{"system": "phone", "value": v, "use": u} for u, v in phones[1:]] + parsed["emails"]
        tags = parsed.get("tags") or {}
        code, _, active = self.extras.client_code(rec) if rec.get("id") else (None, None, True)
        if "status" in tags:
            try:
                code = int(tags["status"])
            except ValueError:
                code = -1
            if code not in CLIENT_STATUS:
                raise Invalid(422, f"'status' tag must be one of {', '.join(map(str, CLIENT_STATUS))}.")
        elif code is None:
            code = 80 if tags.get("isClient") == "true" else 1
        if "isClient" in tags and tags["isClient"] not in ("true", "false"):
            raise Invalid(422, '\'isClient\' tag must be "true" or "false".')
        if "active" in parsed:
            active = parsed["active"]
        rec["_hc_status"] = code
        rec["status"] = canonical_client_status(code, bool(active))
        if "locationId" in tags:
            self._location(tags["locationId"])
            rec["_hc_location"] = tags["locationId"]

    def _location(self, loc: str) -> None:
        if loc not in {x["id"] for x in self.extras.locations}:
            raise Invalid(422, f"'locationId' {loc} is not a location of this agency.")

    def _apply_practitioner(self, rec: dict[str, Any], parsed: dict[str, Any]) -> None:
        for key in ("first_name", "last_name"):
            if key in parsed:
                rec[key] = parsed[key]
        person = dict(rec.get("_hc_person") or {})
        for key in ("birth_date", "gender"):
            if key in parsed:
                person["birthDate" if key == "birth_date" else key] = parsed[key]
        if "phones" in parsed:
            phones = parsed["phones"]
            person["phone"] = phones[0][1] if phones else None
            person["phone_use"] = phones[0][0] if phones else None
            person["telecom"] = [{"system": "phone", "value": v, "use": u} for u, v in phones[1:]] + parsed["emails"]
        if "address" in parsed:
            a = parsed["address"]
            person["address"] = (
                None
                if a is None
                else {
                    "use": "home",
                    "line": [x for x in (a["line1"], a["line2"]) if x],
                    "city": a["city"],
                    "state": a["state"],
                    "postalCode": a["postal_code"],
                }
            )
        rec["_hc_person"] = person
        tags = parsed.get("tags") or {}
        if "status" in tags:
            try:
                code = int(tags["status"])
            except ValueError:
                code = -1
            if code not in APPLICANT_STATUS:
                raise Invalid(422, f"'status' tag must be one of {', '.join(map(str, APPLICANT_STATUS))}.")
            rec["_hc_status"] = code
        elif tags.get("isHired") == "false":
            rec["_hc_status"] = 10
        elif tags.get("isHired") == "true":
            rec["_hc_status"] = 100
        if "profileTags" in tags:
            ids = [t for t in tags["profileTags"].split(",") if t]
            unknown = [t for t in ids if not t.isdigit() or self.extras.profile_tag(t) is None]
            if unknown:
                raise Invalid(422, f"'profileTags' has unknown tag id(s) {','.join(unknown)}.")
            rec["_hc_profile_tags"] = ",".join(ids)
        if "locationId" in tags:
            self._location(tags["locationId"])
            rec["_hc_location"] = tags["locationId"]
        if "active" in parsed:
            rec["active"] = parsed["active"]

    def update_person(self, kind: str, rec_id: str, body: Any, deleting: bool = False) -> Response:
        existing = self.store.get(kind, rec_id)
        if existing is None:
            raise Invalid(404, f"{'Patient' if kind == 'patients' else 'Practitioner'} {rec_id} not found.")
        parsed = parse_person(body, creating=False)
        self._agency_tag(parsed, required=False)
        rec = dict(existing)
        if kind == "patients":
            self._apply_patient(rec, parsed)
        else:
            self._apply_practitioner(rec, parsed)
        rtype = "Patient" if kind == "patients" else "Practitioner"
        if rec != existing:
            changed = public(rec) != public(existing) or any(
                rec.get(k) != existing.get(k) for k in rec if k.startswith("_hc")
            )
            if changed:
                rec["updated_at"] = self.store.now()
                with self.store.transaction():
                    self.store.put(kind, rec)
                self.tenant.notify("patient.updated" if kind == "patients" else "practitioner.updated", kind, rec)
                self._fire_changes(kind, existing, rec)
        if deleting:
            return HcResponse({"success": True})
        return HcResponse({"resourceType": rtype, "id": rec_id})

    def _fire_changes(self, kind: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        prefix = "patient" if kind == "patients" else "practitioner"
        if (old["first_name"], old["last_name"]) != (new["first_name"], new["last_name"]):
            self.hub.fire(f"{prefix}.name.changed", new["id"])
        old_r, new_r = self.render_person(kind, old), self.render_person(kind, new)
        if old_r["address"] != new_r["address"]:
            self.hub.fire(f"{prefix}.address.changed", new["id"])
        if old_r["telecom"] != new_r["telecom"]:
            self.hub.fire(f"{prefix}.telecom.changed", new["id"])
        if old_r["active"] != new_r["active"]:
            self.hub.fire(f"{prefix}.deactivated.changed", new["id"])
        old_s = next(t["display"] for t in old_r["meta"]["tag"] if t["code"] == "status")
        new_s = next(t["display"] for t in new_r["meta"]["tag"] if t["code"] == "status")
        if old_s != new_s:
            self.hub.fire("prospect.status.changed" if kind == "patients" else "applicant.status.changed", new["id"])

    # -- appointments -------------------------------------------------------------------------------------
    def _by_person(self, entity: str, client: str | None, caregiver: str | None) -> list[dict[str, Any]]:
        if client is not None:
            recs = self.store.find(entity, patient_id=client)
            return [r for r in recs if caregiver is None or r.get("practitioner_id") == caregiver]
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT body FROM records INDEXED BY hc_records_by_caregiver WHERE entity = ? AND "
                "json_extract(CAST(body AS TEXT), '$.practitioner_id') = ?",
                (entity, caregiver),
            ).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def search_appointments(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The search body must be a JSON object.")
        count, page = self.paging(request, "appointment")
        client, caregiver = person_ids(body)
        lo, hi = appointment_window(body)
        updated = comparator(body.get("updated"), "updated") if self.options.comparators_everywhere else None
        hits = [
            r
            for r in self._by_person("appointments", client, caregiver)
            if lo <= parse_iso(r["start"]).date() <= hi and (updated is None or updated(parse_iso(r["updated_at"])))
        ]
        hits.sort(key=lambda r: (r["start"], r["id"]))
        chunk = hits[page * count : (page + 1) * count]
        extra = {"total": len(hits)} if self.options.appointment_total else {}
        return self.bundle([self.shapes.appointment(r) for r in chunk], len(hits), **extra)

    def occurrences(self, appt_id: str) -> list[dict[str, Any]]:
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT body FROM records INDEXED BY hc_records_by_series WHERE entity = 'appointments' AND "
                "json_extract(CAST(body AS TEXT), '$._series') = ?",
                (appt_id,),
            ).fetchall()
        recs = [orjson.loads(r[0]) for r in rows]
        own = self.store.get("appointments", appt_id)
        if own is not None and not own.get("_series"):
            recs.append(own)
        return recs

    def nearest(self, appt_id: str, when: datetime | None = None) -> dict[str, Any] | None:
        """A recurring shift's id names the series; the occurrence nearest to ``when`` (default now) answers."""
        recs = self.occurrences(appt_id)
        if not recs:
            return None
        when = when or datetime.now(UTC)
        return min(recs, key=lambda r: (abs((parse_iso(r["start"]) - when).total_seconds()), r["id"]))

    def get_appointment(self, appt_id: str) -> Response:
        rec = self.nearest(appt_id)
        if rec is None:
            raise Invalid(404, f"Appointment {appt_id} not found.")
        return HcResponse(self.shapes.appointment(rec))

    def write_appointment(self, appt_id: str | None, body: Any) -> Response:
        """Only behind ``appointment_writes`` (no source confirms these routes); models REF's 2026-02-04 text."""
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        existing = None
        if appt_id is not None:
            existing = self.nearest(appt_id)
            if existing is None:
                raise Invalid(404, f"Appointment {appt_id} not found.")
        rec = (
            dict(existing)
            if existing
            else {
                "external_id": None,
                "payer_id": None,
                "status": "scheduled",
                "discipline": "HHA",
                "service_code": "T1019",
                "location": None,
                "practitioner_id": None,
            }
        )
        if "client" in body or existing is None:
            client = (body.get("client") or {}).get("id") if isinstance(body.get("client"), dict) else None
            if client is None or self.store.get("patients", str(client)) is None:
                raise Invalid(422, "'client.id' must name an existing client.")
            rec["patient_id"] = str(client)
        if "caregiver" in body:
            cg = (body.get("caregiver") or {}).get("id") if isinstance(body.get("caregiver"), dict) else None
            if cg is not None and self.store.get("practitioners", str(cg)) is None:
                raise Invalid(422, "'caregiver.id' must name an existing caregiver.")
            rec["practitioner_id"] = None if cg is None else str(cg)
        for key in ("start", "end"):
            if key in body or existing is None:
                rec[key] = check_datetime(body.get(key), key)
        if parse_iso(rec["end"]) <= parse_iso(rec["start"]):
            raise Invalid(422, "'end' must be after 'start'.")
        if "status" in body:
            status = {"SCHEDULED": "scheduled", "COMPLETED": "completed", "CANCELLED": "cancelled"}.get(body["status"])
            if status is None:
                raise Invalid(422, "'status' must be SCHEDULED, COMPLETED or CANCELLED.")
            rec["status"] = status
        if existing is not None and rec == existing:
            return HcResponse({"resourceType": "Appointment", "id": appt_id})
        with self.store.transaction():
            if existing is None:
                rec["id"] = self.store.mint_id("appointments")
            rec["updated_at"] = self.store.now()
            self.store.put("appointments", rec)
        self.tenant.notify("appointment.created" if existing is None else "appointment.changed", "appointments", rec)
        return HcResponse(
            {"resourceType": "Appointment", "id": self.shapes.appointment_id(rec)},
            status_code=201 if existing is None else 200,
        )

    # -- encounters (care logs) ---------------------------------------------------------------------------
    def search_encounters(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The search body must be a JSON object.")
        count, page = self.paging(request, "encounter")
        client, caregiver = person_ids(body)
        lo = yyyymmdd(body["startDate"], "startDate") if body.get("startDate") not in (None, "") else date.min
        hi = yyyymmdd(body["endDate"], "endDate") if body.get("endDate") not in (None, "") else date.max
        if lo > hi:
            raise Invalid(422, "'endDate' must not be before 'startDate'.")
        updated = comparator(body.get("updated"), "updated") if self.options.comparators_everywhere else None
        hits = [
            r
            for r in self._by_person("encounters", client, caregiver)
            if lo <= parse_iso(r["start"]).date() <= hi and (updated is None or updated(parse_iso(r["updated_at"])))
        ]
        key = request.query_params.get("_sort", "startDate")
        hits.sort(
            key=lambda r: (r["end"] or "" if key.lstrip("-") == "endDate" else r["start"], r["id"]),
            reverse=key.startswith("-"),
        )
        chunk = hits[page * count : (page + 1) * count]
        return self.bundle([self.shapes.encounter(r) for r in chunk], len(hits))

    def get_encounter(self, enc_id: str) -> Response:
        rec = self.store.get("encounters", enc_id)
        if rec is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")
        return HcResponse(self.shapes.encounter(rec))

    def create_encounter(self, body: Any) -> Response:
        """The flat, non-FHIR care-log create body (fact sheet section 3, "Encounter create")."""
        fields_ = self._flat_encounter(body, creating=True)
        rec = self._new_encounter(*fields_[:5])
        rec["_hc_rates"] = fields_[5]
        with self.store.transaction():
            rec["id"] = self.store.mint_id("encounters")
            self.store.put("encounters", rec)
        self.tenant.notify("encounter.updated", "encounters", rec)
        return HcResponse({"resourceType": "Encounter", "id": rec["id"]}, status_code=201)

    def update_encounter(self, enc_id: str, body: Any) -> Response:
        """``PUT /v1/encounter/{id}/``: the create body's fields, each optional (a partial update)."""
        existing = self.store.get("encounters", enc_id)
        if existing is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        current = {
            "agencyId": self.extras.agency_id,
            "patientId": existing["patient_id"],
            "practitionerId": existing["practitioner_id"],
            "startDateTime": existing["start"],
            "endDateTime": existing.get("end"),
            "status": ENCOUNTER_STATUS.get(existing["status"], "COMPLETE"),
        }
        patient, caregiver, _, start, end, status, rates = self._flat_encounter({**current, **body}, creating=False)
        rec = {**existing, "patient_id": patient, "practitioner_id": caregiver, "start": start, "end": end}
        rec.update(status=status, finalized=status == "completed")
        if any(k.endswith(("RateMethod", "RateId")) for k in body):
            rec["_hc_rates"] = rates
        if rec != existing:
            rec["updated_at"] = self.store.now()
            with self.store.transaction():
                self.store.put("encounters", rec)
            self.tenant.notify("encounter.updated", "encounters", rec)
        return HcResponse({"resourceType": "Encounter", "id": enc_id})

    def _flat_encounter(self, body: Any, *, creating: bool) -> tuple[Any, ...]:
        """Validate a flat care-log body: (patient, caregiver, appointment, start, end, status, rates)."""
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        status = {"COMPLETE": "completed", "IN_PROGRESS": "in_progress"}.get(body.get("status") or "COMPLETE")
        if status is None:
            raise Invalid(422, "'status' must be COMPLETE or IN_PROGRESS.")
        required = ["agencyId", "patientId", "practitionerId", "startDateTime"]
        if status == "completed":
            required.append("endDateTime")
        for key in required:
            if body.get(key) in (None, ""):
                raise Invalid(422, f"'{key}' is required.")
        if str(body["agencyId"]) != self.extras.agency_id:
            raise Invalid(422, f"'agencyId' {body['agencyId']} is not the agency of this token.")
        patient = self.store.get("patients", str(body["patientId"]))
        if patient is None:
            raise Invalid(422, f"'patientId' {body['patientId']} is not a client of this agency.")
        if self.store.get("practitioners", str(body["practitionerId"])) is None:
            raise Invalid(422, f"'practitionerId' {body['practitionerId']} is not a caregiver of this agency.")
        start = check_datetime(body["startDateTime"], "startDateTime")
        end = check_datetime(body["endDateTime"], "endDateTime") if body.get("endDateTime") else None
        if end is not None and parse_iso(end) <= parse_iso(start):
            raise Invalid(422, "'endDateTime' must be after 'startDateTime'.")
        rates: dict[str, Any] = {"payRate": [], "billRate": []}
        for side in ("bill", "pay"):
            method = body.get(f"{side}RateMethod")
            if method is None:
                continue
            if method not in RATE_METHODS:
                raise Invalid(422, f"'{side}RateMethod' must be one of {', '.join(RATE_METHODS)}.")
            rate_id = body.get(f"{side}RateId")
            if method not in ("notBillable", "notPayable") and not isinstance(rate_id, int | str):
                raise Invalid(422, f"'{side}RateId' is required with {side}RateMethod {method}.")
            rates[f"{side}Rate"] = [{"id": rate_id, "amount": None, "method": method}]
        return patient["id"], str(body["practitionerId"]), None, start, end, status, rates

    def _new_encounter(
        self, patient_id: str, caregiver: str | None, appt_id: str | None, start: str, end: str | None, status: str
    ) -> dict[str, Any]:
        return {
            "patient_id": patient_id,
            "practitioner_id": caregiver,
            "appointment_id": appt_id,
            "start": start,
            "end": end,
            "discipline": "HHA",
            "status": status,
            "diagnoses": [],
            "procedures": [{"code": "T1019", "system": "HCPCS", "description": None}],
            "vitals": None,
            "note_summary": None,
            "finalized": status == "completed",
            "updated_at": self.store.now(),
        }

    def _encounter_for(self, appt: dict[str, Any]) -> dict[str, Any] | None:
        return next(
            (
                e
                for e in self.store.find("encounters", patient_id=appt["patient_id"])
                if e.get("appointment_id") == appt["id"]
            ),
            None,
        )

    def clock_in(self, appt_id: str, body: Any) -> Response:
        """Idempotent: a repeat clock-in on the same shift returns the care log it already opened."""
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        period = body.get("period") or {}
        start = (
            check_datetime(period["start"], "period.start")
            if isinstance(period, dict) and period.get("start")
            else None
        )
        position = body.get("position")
        if position is not None and not (
            isinstance(position, dict)
            and all(isinstance(position.get(k), int | float) for k in ("latitude", "longitude"))
        ):
            raise Invalid(422, "'position' must be {latitude, longitude} numbers.")
        appt = self.nearest(appt_id, parse_iso(start) if start else None)
        if appt is None:
            raise Invalid(404, f"Appointment {appt_id} not found.")
        if appt["status"] == "cancelled":
            raise Invalid(422, f"Appointment {appt_id} is cancelled.")
        enc = self._encounter_for(appt)
        if enc is None:
            enc = self._new_encounter(
                appt["patient_id"],
                appt.get("practitioner_id"),
                appt["id"],
                start or iso(datetime.now(UTC)),
                None,
                "in_progress",
            )
            with self.store.transaction():
                enc["id"] = self.store.mint_id("encounters")
                self.store.put("encounters", enc)
            self.tenant.notify("encounter.updated", "encounters", enc)
        return HcResponse(clock_reply(enc))

    def clock_out(self, enc_id: str, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        enc = self.store.get("encounters", enc_id)
        if enc is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")  # e.g. an appointment id was sent
        if enc["status"] == "completed" and enc.get("end"):
            return HcResponse({"success": True})  # idempotent: already out, nothing changes
        period = body.get("period") or {}
        end = (
            check_datetime(period["end"], "period.end")
            if isinstance(period, dict) and period.get("end")
            else iso(datetime.now(UTC))
        )
        if parse_iso(end) < parse_iso(enc["start"]):
            raise Invalid(422, "'period.end' must not be before the clock-in time.")
        mileage = body.get("mileage")
        if mileage is not None and (isinstance(mileage, bool) or not isinstance(mileage, int | float) or mileage < 0):
            raise Invalid(422, "'mileage' must be a non-negative number.")
        enc.update(end=end, status="completed", finalized=True, updated_at=self.store.now())
        if body.get("generalComment"):
            enc["note_summary"] = str(body["generalComment"])
        with self.store.transaction():
            self.store.put("encounters", enc)
            appt = self.store.get("appointments", enc["appointment_id"]) if enc.get("appointment_id") else None
            if appt is not None and appt["status"] == "scheduled":
                appt.update(status="completed", updated_at=enc["updated_at"])
                self.store.put("appointments", appt)
        self.tenant.notify("encounter.updated", "encounters", enc)
        self.hub.fire("encounter.clockout.changed", enc["id"])
        return HcResponse({"success": True})

    # -- tasks of a shift, profile tags ---------------------------------------------------------------------
    def update_task(self, enc_id: str, task_id: str, body: Any) -> Response:
        """``PUT /v1/encounter/{encId}/task/{taskId}/``: NOT_COMPLETE needs a comment (fact sheet section 4)."""
        enc = self.store.get("encounters", enc_id)
        if enc is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")
        appt = self.store.get("appointments", enc["appointment_id"]) if enc.get("appointment_id") else None
        tasks = {str(t["id"]): t for t in (self.shapes.appointment(appt)["tasks"] if appt else [])}
        if task_id not in tasks:
            raise Invalid(404, f"Task {task_id} is not a task of encounter {enc_id}.")
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        if body.get("status") not in ("COMPLETE", "NOT_COMPLETE"):
            raise Invalid(422, "'status' must be COMPLETE or NOT_COMPLETE.")
        if body["status"] == "NOT_COMPLETE" and not (isinstance(body.get("comment"), str) and body["comment"].strip()):
            raise Invalid(422, "'comment' is required when status is NOT_COMPLETE.")
        override = {"status": body["status"], "comment": body.get("comment")}
        assert appt is not None  # a task was found, so the care log has its shift
        self.extras.put("task", f"{appt['id']}:{task_id}", appt["id"], override)
        return HcResponse({"success": True})

    def get_profile_tag(self, tag_id: str) -> Response:
        tag = self.extras.profile_tag(tag_id)
        if tag is None:
            raise Invalid(404, f"ProfileTag {tag_id} not found.")
        return HcResponse(tag)

    def write_profile_tag(self, tag_id: str | None, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        existing = self.extras.profile_tag(tag_id) if tag_id else None
        if tag_id and existing is None:
            raise Invalid(404, f"ProfileTag {tag_id} not found.")
        name = body.get("name", (existing or {}).get("name"))
        if not isinstance(name, str) or not name.strip():
            raise Invalid(422, "'name' is required.")
        new_id = tag_id or str(self.extras.next_id("profiletag") + 1000)
        self.extras.put("profiletag", new_id, None, {"resourceType": "ProfileTag", "id": new_id, "name": name})
        return HcResponse({"resourceType": "ProfileTag", "id": new_id}, status_code=200 if existing else 201)

    # -- task logs ----------------------------------------------------------------------------------------
    def task_logs(self, enc_id: str) -> Response:
        if self.store.get("encounters", enc_id) is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")
        logs = self.extras.children("tasklog", enc_id)
        return HcResponse({"resourceType": "Bundle", "type": "searchset", "total": len(logs), "entry": logs})

    def write_task_log(self, enc_id: str, log_id: str | None, body: Any) -> Response:
        if self.store.get("encounters", enc_id) is None:
            raise Invalid(404, f"Encounter {enc_id} not found.")
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        existing = None
        if log_id is not None:
            existing = self.extras.get("tasklog", log_id)
            if existing is None or log_id not in {str(x["id"]) for x in self.extras.children("tasklog", enc_id)}:
                raise Invalid(404, f"TaskLog {log_id} not found on encounter {enc_id}.")
        if existing is None and body.get("resourceType") != "TaskLog":
            raise Invalid(422, "'resourceType' must be TaskLog.")
        log = dict(existing or {"comment": None, "description": None, "status": "COMPLETE"})
        for key in ("title", "description", "comment"):
            if key in body:
                if body[key] is not None and not isinstance(body[key], str):
                    raise Invalid(422, f"'{key}' must be a string.")
                log[key] = body[key]
        if not log.get("title"):
            raise Invalid(422, "'title' is required.")
        if "status" in body:
            if body["status"] not in ("COMPLETE", "NOT_COMPLETE"):
                raise Invalid(422, "'status' must be COMPLETE or NOT_COMPLETE.")
            log["status"] = body["status"]
        if log["status"] == "NOT_COMPLETE" and not log.get("comment"):
            raise Invalid(422, "'comment' is required when status is NOT_COMPLETE.")
        for key in ("show_in_family_room", "message_for_next_caregiver"):
            if key in body:
                if not isinstance(body[key], bool):
                    raise Invalid(422, f"'{key}' must be true or false.")
                log[key] = body[key]
        log["recorded"] = (
            check_datetime(body["recorded"], "recorded").replace("Z", "+00:00")
            if body.get("recorded")
            else log.get("recorded") or iso(datetime.now(UTC)).replace("Z", "+00:00")
        )
        log["id"] = existing["id"] if existing else self.extras.next_id("tasklog")
        self.extras.put("tasklog", str(log["id"]), enc_id, log)
        if existing:
            return HcResponse({"success": True})
        out_id: int | str = str(log["id"]) if self.options.tasklog_id_string else log["id"]
        return HcResponse({"success": True, "taskLogId": out_id}, status_code=201)

    # -- related persons ----------------------------------------------------------------------------------
    def contacts_of(self, request: Request, patient_id: str) -> Response:
        if self.store.get("patients", patient_id) is None:
            raise Invalid(404, f"Patient {patient_id} not found.")
        contacts = self.extras.children("relatedperson", patient_id)
        return self.bundle(contacts, len(contacts))

    def search_contacts(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The search body must be a JSON object.")
        count, page = self.paging(request, "relatedperson")
        refuse_control_chars(body)
        updated = comparator(body.get("updated"), "updated")
        created = comparator(body.get("created"), "created")
        patient = body.get("patient")
        if not (created or body.get("name") or body.get("phone")):
            contacts, total = self.extras.page(
                "relatedperson",
                parent=None if patient in (None, "") else str(patient),
                updated=None if updated is None else (updated.sql, int(updated.when.timestamp())),
                limit=count,
                offset=page * count,
            )
            return self.bundle(contacts, total)
        source = (
            self.extras.children("relatedperson", str(patient))
            if patient not in (None, "")
            else list(self.extras.all("relatedperson"))
        )
        name = str(body.get("name") or "").lower()
        phone = re.sub(r"\D", "", str(body.get("phone") or ""))
        hits = []
        for c in source:
            if updated and not updated(parse_iso(c["meta"]["lastUpdated"])):
                continue
            if created and not created(parse_iso(c["_created"])):
                continue
            if name and name not in " ".join([*c["name"][0].get("given", []), c["name"][0].get("family", "")]).lower():
                continue
            if phone and phone not in {t.get("value") for t in c.get("telecom", [])}:
                continue
            hits.append(c)
        return self.bundle(hits[page * count : (page + 1) * count], len(hits))

    def write_contact(self, contact_id: str | None, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        existing = self.extras.get("relatedperson", contact_id) if contact_id else None
        if contact_id and existing is None:
            raise Invalid(404, f"RelatedPerson {contact_id} not found.")
        contact = dict(
            existing
            or {
                "resourceType": "RelatedPerson",
                "telecom": [],
                "address": [],
                "emergencyContact": False,
                "primaryContact": False,
                "payer": False,
                "poa": False,
            }
        )
        if existing is None or "patient" in body:
            ref = (body.get("patient") or {}).get("reference") if isinstance(body.get("patient"), dict) else None
            pid = ref.split("/", 1)[1] if isinstance(ref, str) and ref.startswith("Patient/") else None
            if pid is None or self.store.get("patients", pid) is None:
                raise Invalid(422, "'patient.reference' must be Patient/{id} of an existing client.")
            contact["patient"] = {"reference": ref}
        if existing is None or "name" in body:
            names = body.get("name")
            if not (
                isinstance(names, list)
                and names
                and isinstance(names[0], dict)
                and isinstance(names[0].get("family"), str)
                and names[0]["family"].strip()
            ):
                raise Invalid(422, "'family' in 'name' is required.")
            contact["name"] = [
                {"given": [g for g in names[0].get("given") or [] if isinstance(g, str)], "family": names[0]["family"]}
            ]
        if "relationship" in body:
            rel = body["relationship"]
            coding = rel.get("coding") if isinstance(rel, dict) else None
            if not (isinstance(coding, list) and coding and isinstance(coding[0], dict) and coding[0].get("code")):
                raise Invalid(422, "'relationship' must be {coding: [{code, display}]} (an object, not a list).")
            contact["relationship"] = {"coding": [{"code": coding[0]["code"], "display": coding[0].get("display")}]}
        if "telecom" in body:
            if not isinstance(body["telecom"], list):
                raise Invalid(422, "'telecom' must be a list of {system, value, use} objects.")
            for i, t in enumerate(body["telecom"]):
                if isinstance(t, dict) and t.get("system") == "phone":
                    check_phone(t.get("value"), f"telecom[{i}].value", t.get("use"))
            contact["telecom"] = body["telecom"]
        for key in ("emergencyContact", "primaryContact", "payer", "poa"):
            if key in body:
                if not isinstance(body[key], bool):
                    raise Invalid(422, f"'{key}' must be true or false.")
                contact[key] = body[key]
        if "address" in body:
            contact["address"] = body["address"] if isinstance(body["address"], list) else [body["address"]]
        now = self.store.now().replace("Z", "+00:00")
        contact["id"] = contact_id or str(self.extras.next_id("relatedperson"))
        contact["meta"] = {"lastUpdated": now}
        contact["_created"] = (existing or {}).get("_created", now)
        pid = contact["patient"]["reference"].split("/", 1)[1]
        self.extras.put("relatedperson", contact["id"], pid, contact, int(parse_iso(now).timestamp()))
        return HcResponse({"resourceType": "RelatedPerson", "id": contact["id"]}, status_code=200 if existing else 201)

    def delete_contact(self, patient_id: str, contact_id: str) -> Response:
        ids = {c["id"] for c in self.extras.children("relatedperson", patient_id)}
        if contact_id not in ids:
            raise Invalid(404, f"RelatedPerson {contact_id} is not a contact of patient {patient_id}.")
        self.extras.delete("relatedperson", contact_id)
        return HcResponse({"success": True})

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

    # -- subscriptions ------------------------------------------------------------------------------------
    def write_subscription(self, sub_id: str | None, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        existing = self.extras.get("subscription", sub_id) if sub_id else None
        if sub_id and existing is None:
            raise Invalid(404, f"Subscription {sub_id} not found.")
        sub = {**(existing or {"resourceType": "Subscription", "status": "active"}), **body}
        if sub.get("criteria") not in CRITERIA:
            raise Invalid(422, f"'criteria' must be one of {', '.join(CRITERIA)}.")
        if sub.get("status") not in ("active", "off", "requested", "error"):
            raise Invalid(422, "'status' must be active, requested, error or off.")
        channel = sub.get("channel")
        if not isinstance(channel, dict) or channel.get("type") != "rest-hook":
            raise Invalid(422, "'channel' must be {type: \"rest-hook\", endpoint, payload, header[]}.")
        try:
            url = httpx.URL(channel.get("endpoint") or "")
        except Exception:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise Invalid(422, "'endpoint' in 'channel' must be an absolute http(s) URL.")
        header = channel.get("header", [])
        if not isinstance(header, list) or not all(isinstance(h, str) and ":" in h for h in header):
            raise Invalid(422, "'header' in 'channel' must be a list of \"Name: value\" strings.")
        tags = {t.get("code"): t.get("display") for t in (sub.get("meta") or {}).get("tag", []) if isinstance(t, dict)}
        if existing is None and tags.get("agencyId") != self.extras.agency_id:
            raise Invalid(422, "'agencyId' is required.")
        sub["id"] = existing["id"] if existing else self.extras.next_id("subscription")
        self.extras.put("subscription", str(sub["id"]), None, sub)
        if existing:
            return HcResponse({"resourceType": "Subscription", "id": sub["id"]})
        return HcResponse({"resourceType": "Subscription", "id": sub["id"]}, status_code=201)

    def search_subscriptions(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The search body must be a JSON object.")
        count, page = self.paging(request, "subscriptions")
        subs = [
            s
            for s in self.extras.all("subscription")
            if all(body.get(k) in (None, s.get(k)) for k in ("status", "criteria"))
            and body.get("contact_email") in (None, s.get("contact_email"))
        ]
        return self.bundle(subs[page * count : (page + 1) * count], len(subs))

    def get_subscription(self, sub_id: str) -> Response:
        sub = self.extras.get("subscription", sub_id)
        if sub is None:
            raise Invalid(404, f"Subscription {sub_id} not found.")
        return HcResponse(public(sub))

    def delete_subscription(self, sub_id: str) -> Response:
        if not self.extras.delete("subscription", sub_id):
            raise Invalid(404, f"Subscription {sub_id} not found.")
        return HcResponse({"success": True})

    def _on_advance(self, batch: list[tuple[str, dict[str, Any] | None, dict[str, Any]]]) -> None:
        """A simulated day of changes notifies subscribers with the criteria each change matches."""
        for entity, old, new in batch:
            if entity not in ("patients", "practitioners"):
                continue  # care logs reach subscribers through tenant.listeners (encounter.updated)
            if old is None:
                self.hub.fire("patient.created" if entity == "patients" else "practitioner.created", new["id"])
            else:
                self._fire_changes(entity, old, new)

    def _on_change(self, event: str, entity: str, rec: dict[str, Any]) -> None:
        """Changes made outside /v1 (FHIR writes, /_sandbox/advance) still reach subscribers."""
        if _writing.get():
            return
        if event == "patient.created":
            self.hub.fire("patient.created", rec["id"])
        elif event == "encounter.updated" and rec.get("status") == "completed" and rec.get("end"):
            self.hub.fire("encounter.clockout.changed", rec["id"])


# -- search helpers -----------------------------------------------------------------------------------------
class Comparator:
    """``ge2026-07-01T00:00:00``: one comparator per field (no ranges), naive times are UTC."""

    SQL = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "eq": "="}

    def __init__(self, op: str, when: datetime) -> None:
        self.op, self.when, self.sql = op, when, self.SQL[op]

    def __call__(self, value: datetime) -> bool:
        a, b = int(value.timestamp()), int(self.when.timestamp())
        return {"ge": a >= b, "gt": a > b, "le": a <= b, "lt": a < b, "eq": a == b}[self.op]


def comparator(value: Any, field: str) -> Comparator | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise Invalid(400, f"'{field}' takes one value such as \"ge2026-07-01T00:00:00\" (no lists or ranges).")
    op, rest = (value[:2], value[2:]) if value[:2] in COMPARATORS else ("eq", value)
    try:
        when = datetime.fromisoformat(rest.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(
            400,
            f"'{field}' must be a comparator (ge, gt, le, lt, eq) and a datetime "
            'YYYY-MM-DDTHH:MM:SS, e.g. "ge2026-07-01T00:00:00".',
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return Comparator(op, when)


def _truthy(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise Invalid(400, f'\'{field}\' must be "true" or "false".')


def people_filter(kind: str, key: str, value: Any, hc: HomeConnect) -> Callable[[dict[str, Any]], bool] | None:
    """A predicate for one documented patient/practitioner filter; unknown fields are ignored (as production)."""
    field, _, modifier = key.partition(":")
    text = str(value).lower()

    def match(candidate: str | None) -> bool:
        c = (candidate or "").lower()
        return text in c if modifier == "contains" else c == text

    if field in ("first_name", "given"):
        return lambda r: match(r["first_name"])
    if field in ("last_name", "family"):
        return lambda r: match(r["last_name"])
    if field == "active":
        want = _truthy(value, "active")
        return lambda r: hc.render_person(kind, r)["active"] == want
    if field == "gender":
        return lambda r: match(hc.render_person(kind, r).get("gender"))
    if field in ("city", "state"):
        return lambda r: any(match(a.get(field)) for a in hc.render_person(kind, r)["address"])
    if field in ("home_phone", "mobile_phone", "work_phone"):
        digits = re.sub(r"\D", "", text)
        return lambda r: any(t.get("value") == digits for t in hc.render_person(kind, r)["telecom"])
    if field == "is_hired" and kind == "practitioners":
        want = _truthy(value, "is_hired")
        return lambda r: hc.extras.caregiver_code(r)[1] == want
    if field == "tags" and kind == "practitioners":
        wanted = {t for t in text.split(",") if t}
        return lambda r: wanted <= set(tags_of(hc.render_person(kind, r)).get("profileTags", "").split(","))
    if field == "agency_id":
        return lambda r: text == hc.extras.agency_id
    return None


def person_ids(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """``clientId``/``caregiverId`` (strings or integers); at least one is required (fact sheet section 2)."""
    out = []
    for key in ("clientId", "caregiverId"):
        value = body.get(key)
        if value in (None, ""):
            out.append(None)
        elif isinstance(value, bool) or not re.fullmatch(r"\d+", str(value)):
            raise Invalid(422, f"'{key}' must be a numeric id.")
        else:
            out.append(str(value))
    if out == [None, None]:
        raise Invalid(400, "clientId or caregiverId is required.")
    return out[0], out[1]


def yyyymmdd(value: Any, field: str) -> date:
    text = str(value)
    if isinstance(value, bool) or not re.fullmatch(r"\d{8}", text):
        raise Invalid(422, f"'{field}' must be a date as YYYYMMDD.")
    try:
        return datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise Invalid(422, f"'{field}' is not a valid date.") from None


def appointment_window(body: dict[str, Any]) -> tuple[date, date]:
    """startDate (+additionalDays 1-6), weekNo (YYYYWW, ISO week) or monthNo (YYYYMM): exactly one is required."""
    given = [k for k in ("startDate", "weekNo", "monthNo") if body.get(k) not in (None, "")]
    if not given:
        raise Invalid(400, "One of startDate (YYYYMMDD), weekNo (YYYYWW) or monthNo (YYYYMM) is required.")
    if len(given) > 1:
        raise Invalid(400, f"Send only one of startDate, weekNo and monthNo (got {', '.join(given)}).")
    kind = given[0]
    text = str(body[kind])
    if kind == "startDate":
        start = yyyymmdd(body[kind], "startDate")
        extra = body.get("additionalDays")
        days = 0
        if extra not in (None, ""):
            if isinstance(extra, bool) or not re.fullmatch(r"\d+", str(extra)) or not 1 <= int(extra) <= 6:
                raise Invalid(422, "'additionalDays' must be from 1 to 6.")
            days = int(extra)
        return start, start + timedelta(days=days)
    if kind == "weekNo":
        if not re.fullmatch(r"\d{6}", text):
            raise Invalid(422, "'weekNo' must be YYYYWW.")
        try:
            monday = date.fromisocalendar(int(text[:4]), int(text[4:]), 1)
        except ValueError:
            raise Invalid(422, "'weekNo' is not a valid ISO week.") from None
        return monday, monday + timedelta(days=6)
    if not re.fullmatch(r"\d{6}", text) or not 1 <= int(text[4:]) <= 12:
        raise Invalid(422, "'monthNo' must be YYYYMM.")
    first = date(int(text[:4]), int(text[4:]), 1)
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, nxt - timedelta(days=1)


def clock_reply(enc: dict[str, Any]) -> dict[str, Any]:
    """The clock-in answer shape (fact sheet section 4)."""
    done = enc["status"] == "completed" and bool(enc.get("end"))
    return {
        "clockedOut": done,
        "id": int(enc["id"]),
        "period": {
            "start": enc["start"].replace("Z", "+00:00"),
            "end": enc["end"].replace("Z", "+00:00") if enc.get("end") else None,
        },
        "resourceType": "Encounter",
        "status": ENCOUNTER_STATUS.get(enc["status"], "COMPLETE"),
        "success": True,
    }
