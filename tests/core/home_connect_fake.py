"""A Home Connect tenant as an ``httpx.MockTransport`` handler, written from the fact sheet
(docs/facts/wellsky-home-connect.md), not from the sandbox: fast unit tests of the connector's side.

Only what the sheet states is modeled: the Apigee token body (§1), exact resource names with the mandatory
trailing slash and the locations exception, 403 with the AWS-style body on unknown routes (§7.1), Bundles with
``totalRecords`` and zero-based ``_page`` (§2), ``updated`` honoured only on three resources, appointment searches
refused without a client/caregiver and a window, the documented writes and their validation (§4).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx

from wellsky_core.channels import open_channel
from wellsky_core.config import WellSkyConfig
from wellsky_core.http.client import WellSkyClient
from wellsky_core.products.personal_care.channel import HomeConnectChannel

AWS_403 = {
    "message": "Invalid key=value pair (missing equal-sign) in Authorization header (hashed with SHA-256 and "
    "encoded with Base64): 'abc+def='"
}
HONOURS_UPDATED = {"patients", "practitioners", "relatedperson"}


def tag_list(**tags: Any) -> dict[str, Any]:
    return {"tag": [{"code": k, "display": str(v).lower() if isinstance(v, bool) else str(v)} for k, v in tags.items()]}


def patient(pid: int, *, status: int = 80, is_client: bool = True, updated: str = "2026-07-01T10:00:00", **extra: Any):
    record = {
        "resourceType": "Patient",
        "id": pid,
        "active": status not in (90, 100),
        "name": [{"use": "official", "family": f"Family{pid}", "given": [f"Given{pid}"]}],
        "telecom": [
            {"system": "phone", "value": "3035550100", "use": "home"},
            {"system": "phone", "value": "7205550199", "use": "mobile"},
            {"system": "email", "value": f"p{pid}@example.org", "use": "home"},
        ],
        "address": [{"use": "home", "line": ["1 Main St", "Apt 2"], "city": "Denver", "state": "CO",
                     "postalCode": "80202"}],
        "gender": "female",
        "birthDate": "1941-02-03",
        "meta": tag_list(agencyId=4505, isClient=is_client, status=status, locationId=7),
        "_updated": updated,  # the fake's own change time; not part of the published shape
    }
    record.update(extra)
    return record


def practitioner(pid: int, *, hired: bool = True, status: int = 100, updated: str = "2026-07-01T10:00:00"):
    return {
        "resourceType": "Practitioner",
        "id": pid,
        "active": True,
        "name": [{"use": "official", "family": f"Care{pid}", "given": [f"Giver{pid}"]}],
        "telecom": [{"system": "phone", "value": "3035550111", "use": "mobile"}],
        "gender": "male",
        "meta": tag_list(agencyId=4505, isHired=hired, status=status, profileTags="45,67", locationId=7),
        "_updated": updated,
    }


def shift(sid: int, client: int, caregiver: int, start: str, end: str, status: str = "SCHEDULED"):
    return {
        "resourceType": "Appointment",
        "id": str(sid),
        "client": {"id": client},
        "caregiver": {"id": caregiver},
        "start": start,
        "end": end,
        "status": status,
        "position": {"latitude": 39.74, "longitude": -104.99},
        "scheduledItems": [{"id": 1, "name": "Companionship"}],
        "tasks": [{"id": 11, "description": "Meal prep", "status": "NOT_COMPLETE"}],
    }


def care_log(eid: int, client: int, caregiver: int, shift_id: int, start: str, end: str | None):
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "COMPLETE" if end else "IN_PROGRESS",
        "subject": {"reference": f"Patient/{client}", "display": "Client"},
        "participant": {"Individual": [{"reference": f"Practitioner/{caregiver}", "display": "Carer"}]},
        "appointment": {"reference": f"Appointment/{shift_id}"},
        "period": {"start": start, "end": end},
        "rates": {
            "payRate": [{"id": 3, "amount": 18.5, "method": "Hourly"}],
            "billRate": [{"id": 4, "amount": 32.0, "method": "Hourly"}],
        },
    }


class FakeHomeConnect:
    """State plus a request handler; ``log`` records (method, path, query, body) of every API call."""

    def __init__(self) -> None:
        self.client_id, self.client_secret = "cid-123", "secret-xyz"
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.expires_in = "3599"
        self.data: dict[str, list[dict[str, Any]]] = {
            "patients": [], "practitioners": [], "appointment": [], "encounter": [], "relatedperson": [],
            "locations": [], "subscriptions": [],
        }
        self.tasklogs: dict[str, list[dict[str, Any]]] = {}
        self.log: list[tuple[str, str, dict[str, list[str]], Any]] = []
        self.ignore_page = False
        self.next_id = 9000
        self.clock_ins: dict[str, dict[str, Any]] = {}
        self.calls = Counter()
        self.headers: list[dict[str, str]] = []

    # -- helpers ---------------------------------------------------------------------------------------
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def api_calls(self, path_prefix: str = "/v1/") -> list[tuple[str, str, dict[str, list[str]], Any]]:
        return [c for c in self.log if c[1].startswith(path_prefix)]

    @staticmethod
    def _json(status: int, body: Any) -> httpx.Response:
        return httpx.Response(status, content=json.dumps(body).encode(), headers={"content-type": "application/json"})

    # -- the handler -------------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.headers.append(dict(request.headers))
        query = parse_qs(request.url.query.decode())
        body: Any = None
        if request.content:
            try:
                body = json.loads(request.content)
            except ValueError:
                body = parse_qs(request.content.decode())
        self.log.append((request.method, path, query, body))
        if path == "/oauth/accesstoken" and request.method == "POST":
            return self._token(body)
        auth = request.headers.get("authorization", "")
        if not path.startswith("/v1/"):
            return self._json(403, AWS_403)
        if not auth.startswith("Bearer ") or auth.removeprefix("Bearer ") not in self.tokens:
            return self._json(401, {"error": "invalid_token", "message": "Invalid access token"})
        return self._route(request.method, path, query, body)

    def _token(self, body: Any) -> httpx.Response:
        self.token_requests += 1
        form = {k: (v[0] if isinstance(v, list) else v) for k, v in (body or {}).items()}
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return self._json(401, {"ErrorCode": "invalid_client", "Error": "ClientId is Invalid"})
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return self._json(200, {
            "refresh_token_expires_in": "0", "api_product_list": "[HomeConnect]", "organization_name": "wellsky",
            "token_type": "BearerToken", "issued_at": int(time.time() * 1000) // 1000, "client_id": self.client_id,
            "access_token": token, "application_name": "app", "scope": "", "expires_in": self.expires_in,
            "refresh_count": "0", "status": "approved",
        })

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> httpx.Response:
        m = re.fullmatch(r"/v1/(\w+)/_search/?", path)
        if m and method == "POST":
            resource = m.group(1)
            if resource not in self.data:
                return self._json(403, AWS_403)
            slash = path.endswith("/")
            if (resource == "locations") == slash:  # locations: no slash; everything else: slash required
                return self._json(403, AWS_403)
            return self._search(resource, query, body or {})
        m = re.fullmatch(r"/v1/encounter/(\w+)/tasklog/", path)
        if m and method == "GET":
            entries = self.tasklogs.get(m.group(1), [])
            return self._json(200, {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                                    "entry": entries})
        m = re.fullmatch(r"/v1/encounter/(\w+)/clockin/", path)
        if m and method == "POST":
            return self._clock_in(m.group(1), body or {})
        m = re.fullmatch(r"/v1/encounter/(\w+)/clockout/", path)
        if m and method == "PUT":
            return self._clock_out(m.group(1), body or {})
        if path == "/v1/subscriptions/" and method == "POST":
            self.next_id += 1
            self.data["subscriptions"].append({**(body or {}), "id": self.next_id})
            return self._json(201, {"resourceType": "Subscription", "id": self.next_id})
        m = re.fullmatch(r"/v1/subscriptions/(\w+)/", path)
        if m and method == "DELETE":
            self.data["subscriptions"] = [s for s in self.data["subscriptions"] if str(s["id"]) != m.group(1)]
            return self._json(200, {"success": True})
        m = re.fullmatch(r"/v1/encounter/(\w+)/", path)
        if m and method == "GET":
            found = self._find("encounter", m.group(1))
            return self._json(200, found) if found else self._json(404, {"error": "Not found"})
        m = re.fullmatch(r"/v1/(patients|practitioners)/(\w+)/", path)
        if m:
            return self._by_id(method, m.group(1), m.group(2), body)
        if re.fullmatch(r"/v1/(patients|practitioners)/", path) and method == "POST":
            return self._create(path.split("/")[2], body or {})
        return self._json(403, AWS_403)

    def _search(self, resource: str, query: dict[str, list[str]], body: dict[str, Any]) -> httpx.Response:
        count = int(query.get("_count", ["20"])[0])
        page = int(query.get("_page", ["0"])[0])
        if not 1 <= count <= 100:
            return self._json(400, {"error": "_count must be between 1 and 100"})
        rows = list(self.data[resource])
        if resource == "appointment":
            who = body.get("clientId") or body.get("caregiverId")
            window = body.get("monthNo") or body.get("startDate") or body.get("weekNo")
            if not who or not window:
                return self._json(400, {"error": "clientId or caregiverId and a startDate, weekNo or monthNo are "
                                                 "required"})
            rows = [r for r in rows if str(r["client"]["id"]) == str(body.get("clientId", r["client"]["id"]))]
            if body.get("caregiverId"):
                rows = [r for r in rows if r.get("caregiver") and str(r["caregiver"]["id"]) == body["caregiverId"]]
            if body.get("monthNo"):
                rows = [r for r in rows if r["start"][:7].replace("-", "") == body["monthNo"]]
        if resource == "encounter":
            if not (body.get("clientId") or body.get("caregiverId")):
                return self._json(400, {"error": "clientId or caregiverId is required"})
            rows = [r for r in rows if r["subject"]["reference"] == f"Patient/{body.get('clientId')}"]
            if body.get("startDate"):
                lo, hi = body["startDate"], body.get("endDate", "99999999")
                rows = [r for r in rows if lo <= r["period"]["start"][:10].replace("-", "") <= hi]
        if resource in HONOURS_UPDATED and isinstance(body.get("updated"), str) and body["updated"].startswith("ge"):
            floor = body["updated"][2:]
            rows = [r for r in rows if r.get("_updated", "") >= floor]
        if resource in ("patients", "practitioners") and body.get("last_name"):
            rows = [r for r in rows if r["name"][0]["family"] == body["last_name"]]
        if resource in ("patients", "practitioners") and body.get("first_name"):
            rows = [r for r in rows if body["first_name"] in r["name"][0]["given"]]
        if self.ignore_page:
            page = 0
        chunk = rows[page * count : (page + 1) * count]
        public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in chunk]
        return self._json(200, {"resourceType": "Bundle", "id": "searchParams", "type": "searchset",
                                "totalRecords": len(rows), "entry": [{"resource": r} for r in public]})

    def _find(self, resource: str, rid: str) -> dict[str, Any] | None:
        return next((r for r in self.data[resource] if str(r["id"]) == rid), None)

    def _by_id(self, method: str, resource: str, rid: str, body: Any) -> httpx.Response:
        record = self._find(resource, rid)
        if record is None:
            return self._json(404, {"error": "Not found"})
        if method == "GET":
            return self._json(200, {k: v for k, v in record.items() if not k.startswith("_")})
        if method == "PUT":
            problem = self._invalid(body or {})
            if problem:
                return self._json(422, {"error": problem})
            for key, value in (body or {}).items():
                if key == "meta":
                    merged = {t["code"]: t["display"] for t in record["meta"]["tag"]}
                    merged.update({t["code"]: t["display"] for t in value.get("tag", [])})
                    record["meta"] = {"tag": [{"code": k, "display": v} for k, v in merged.items()]}
                elif key != "resourceType":
                    record[key] = value
            self.calls["put"] += 1
            return self._json(200, {"resourceType": record["resourceType"], "id": record["id"]})
        return self._json(403, AWS_403)

    def _invalid(self, body: dict[str, Any]) -> str | None:
        for item in body.get("telecom") or []:
            if item.get("system") == "phone" and not re.fullmatch(r"[2-9]\d{9}", str(item.get("value"))):
                return "phone must be 10 digits"
        if "birthDate" in body and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(body["birthDate"])):
            return "birthDate must be YYYY-MM-DD"
        if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", json.dumps(body, ensure_ascii=False).replace("\\n", "")):
            return "control characters are not allowed"
        return None

    def _create(self, resource: str, body: dict[str, Any]) -> httpx.Response:
        if not any(t.get("code") == "agencyId" for t in (body.get("meta") or {}).get("tag", [])):
            return self._json(422, {"error": "'agencyId' is required."})
        problem = self._invalid(body)
        if problem:
            return self._json(422, {"error": problem})
        self.next_id += 1
        record = {**body, "id": self.next_id, "_updated": "2026-08-01T00:00:00"}
        self.data[resource].append(record)
        self.calls["create"] += 1
        return self._json(201, {"resourceType": body.get("resourceType", "Patient"), "id": self.next_id})

    def _clock_in(self, appointment_id: str, body: dict[str, Any]) -> httpx.Response:
        if appointment_id not in self.clock_ins:
            self.next_id += 1
            self.clock_ins[appointment_id] = {"id": self.next_id, "start": body["period"]["start"], "end": None}
            self.calls["clockin"] += 1
        entry = self.clock_ins[appointment_id]
        return self._json(200, {"clockedOut": entry["end"] is not None, "id": entry["id"],
                                "period": {"start": entry["start"], "end": entry["end"]},
                                "resourceType": "Encounter", "status": "IN_PROGRESS", "success": True})

    def _clock_out(self, carelog_id: str, body: dict[str, Any]) -> httpx.Response:
        entry = next((e for e in self.clock_ins.values() if str(e["id"]) == carelog_id), None)
        if entry is None:
            return self._json(404, {"error": "Not found"})
        if entry["end"] is None:
            entry["end"] = body["period"]["end"]
            self.calls["clockout"] += 1
        return self._json(200, {"success": True})


NOW = datetime(2026, 8, 15, 12, 0, tzinfo=UTC)
"""The channel's clock in the in-process Home Connect tests."""


def config(**extra: Any) -> WellSkyConfig:
    """A personal_care tenant with Home Connect credentials and no client-side rate limit."""
    return WellSkyConfig.load(
        {"product": "personal_care", "client_id": "cid-123", "client_secret": "secret-xyz",
         "max_requests_per_second": 0, **extra},
        env={},
    )


def channel_for(fake: FakeHomeConnect, **extra: Any) -> HomeConnectChannel:
    """The real channel over ``fake``'s transport, its clock fixed at :data:`NOW`."""
    cfg = config(**extra)
    client = WellSkyClient(cfg, transport=fake.transport(), sleep=lambda s: None)
    channel = open_channel("api", cfg, client, "personal_care")
    assert isinstance(channel, HomeConnectChannel)
    channel._clock = lambda: NOW
    return channel

