"""FHIR Bulk Data Access (``$export``, Bulk Data IG v2) and SMART discovery for the tenant's FHIR endpoint.

What a certified FHIR server offers a population-level client:

- ``GET /fhir/.well-known/smart-configuration`` (no auth): token endpoint, ``private_key_jwt`` with RS384/ES384,
  ``client_credentials``, the ``system/*.read`` scope.
- Kick-off ``GET|POST /fhir/$export`` (system), ``/fhir/Patient/$export`` and ``/fhir/Group/{id}/$export``
  with ``Prefer: respond-async``; parameters ``_outputFormat``, ``_type``, ``_since`` (inclusive: records with
  ``updated_at >= _since``), ``_typeFilter`` (``Type?_lastUpdated=ge…&patient=…``, several for one type are
  OR-ed) and, POST only, ``patient``. Unknown parameters or types are a 400 OperationOutcome, unless
  ``Prefer: handling=lenient``, which skips them and reports each in the manifest's ``error`` file.
  → 202 with ``Content-Location`` (the status URL).
- Status ``GET /fhir/bulkstatus/{job}``: 202 with ``Retry-After`` (seconds) and ``X-Progress`` while the job
  runs; 200 with the manifest (``transactionTime``, ``requiresAccessToken: true``, ``output`` one entry per
  NDJSON file with ``count``, ``error`` OperationOutcome NDJSON files); 500 OperationOutcome when the job
  failed; 404 once deleted or expired. ``DELETE`` → 202 and the files are gone.
- Files ``GET /fhir/bulkfiles/{job}/{name}``: ``application/fhir+ndjson``, gzip when the client sends
  ``Accept-Encoding: gzip``; they need the same credentials as the kick-off.

The job's ``transactionTime`` is the store clock at kick-off; the clock then ticks, so every later change has a
later ``updated_at`` and ``_since=<transactionTime>`` on the next run misses nothing. Files hold only records at
or before ``transactionTime``. Groups are the tenant's census lists, resolved at kick-off: ``active``
(pending + active patients), ``discharged``, ``all``. Jobs live on disk under ``<data-dir>/bulk/`` and survive a
restart. Knobs (``POST /_sandbox/bulk``): ``delay_seconds`` a job stays in progress at least,
``retry_after_seconds``, ``file_max_resources`` per NDJSON file, ``expiry_seconds`` after completion,
``max_active_jobs`` (more → 429), ``fail_jobs`` (jobs end in a 500 OperationOutcome), ``error_types``
(resources of these types are reported in the error file instead of exported).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from .app import Api, fhir_resources
from .fhir import TYPES, FhirProblem, by_identifier, outcome, parse_last_updated, practitioner_npis
from .generator import iso
from .security import SUPPORTED_SCOPES, AuthFailure
from .store import epoch
from .tenant import Tenant, public

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}
KICKOFF_PARAMS = {"_outputFormat", "_type", "_since", "_typeFilter", "patient"}
TYPE_FILTER_PARAMS = {"_lastUpdated", "patient"}
BULK_IG = "http://hl7.org/fhir/uv/bulkdata"
GROUPS: dict[str, tuple[str, frozenset[str] | None]] = {
    "active": ("Active census (pending and active patients)", frozenset({"pending", "active"})),
    "discharged": ("Discharged patients", frozenset({"discharged"})),
    "all": ("All patients", None),
}
"""Group id -> (name, patient statuses that are members; None = every patient)."""
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
FILE_NAME = re.compile(r"^[A-Za-z]+-\d+\.ndjson$|^errors-\d+\.ndjson$")


@dataclass
class BulkSettings:
    """Switchable through ``POST /_sandbox/bulk`` (tests make jobs slow, small-filed, failing or short-lived)."""

    delay_seconds: float = 0.5
    retry_after_seconds: int = 1
    file_max_resources: int = 10_000
    expiry_seconds: float = 3600.0
    max_active_jobs: int = 4
    fail_jobs: bool = False
    error_types: list[str] = field(default_factory=list)


@dataclass
class ExportRequest:
    level: str  # "system" | "patient" | "group"
    group: str | None
    types: list[str]
    since: int | None
    type_filters: dict[str, list[dict[str, str]]]
    patients: list[str] | None
    problems: list[str]  # lenient-mode skips, reported in the error file
    url: str


class Jobs:
    """Export jobs of one tenant: state in ``job.json`` next to the job's files, work in a thread per job."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.root = Path(tenant.config.data_dir) / "bulk"
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings = BulkSettings()
        self.lock = threading.Lock()
        self.cancelled: set[str] = set()

    # -- job files ---------------------------------------------------------------------------------------
    def _dir(self, job_id: str) -> Path:
        return self.root / job_id

    def load(self, job_id: str) -> dict[str, Any] | None:
        if not JOB_ID.match(job_id):
            return None
        try:
            return orjson.loads((self._dir(job_id) / "job.json").read_bytes())  # type: ignore[no-any-return]
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None

    def save(self, job: dict[str, Any]) -> None:
        path = self._dir(job["id"]) / "job.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(job))
        tmp.replace(path)

    def active_count(self) -> int:
        count = 0
        for path in self.root.glob("*/job.json"):
            try:
                if orjson.loads(path.read_bytes()).get("status") == "in-progress":
                    count += 1
            except (OSError, orjson.JSONDecodeError):
                continue
        return count

    def delete(self, job_id: str) -> None:
        with self.lock:
            self.cancelled.add(job_id)
        shutil.rmtree(self._dir(job_id), ignore_errors=True)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, owner: str, req: ExportRequest) -> dict[str, Any]:
        store = self.tenant.store
        transaction_time = store.now()
        store.tick()  # every change after this instant gets a later updated_at
        job_id = secrets.token_urlsafe(18)
        self._dir(job_id).mkdir(parents=True)
        job = {
            "id": job_id,
            "owner": owner,
            "status": "in-progress",
            "progress": "queued",
            "request": req.url,
            "transactionTime": transaction_time,
            "created": time.time(),
            "ready_at": time.time() + self.settings.delay_seconds,
            "completed_at": None,
            "output": [],
            "error": [],
            "spec": asdict(req),
        }
        self.save(job)
        threading.Thread(target=self._run, args=(job, req), name=f"bulk-{job_id[:6]}", daemon=True).start()
        return job

    def _run(self, job: dict[str, Any], req: ExportRequest) -> None:
        try:
            self._export(job, req)
            if self.settings.fail_jobs:
                raise RuntimeError("export storage unavailable (sandbox fail_jobs)")
            job["status"] = "complete"
        except _Cancelled:
            return
        except Exception as exc:  # the client sees a 500 OperationOutcome at the status URL
            job["status"] = "error"
            job["failure"] = str(exc)
        job["progress"] = "done"
        job["completed_at"] = max(time.time(), job["ready_at"])
        if job["id"] not in self.cancelled:
            self.save(job)

    def _export(self, job: dict[str, Any], req: ExportRequest) -> None:
        store = self.tenant.store
        until = epoch(job["transactionTime"])
        members = self._members(req, until)
        errors: list[dict[str, Any]] = [_issue("not-supported", p) for p in req.problems]
        failing = set(self.settings.error_types)
        limit = max(1, int(self.settings.file_max_resources))
        # a US Core tenant (fhir_references="identifier") exports what it serves: practitioners named by NPI
        npis = practitioner_npis(store) if self.tenant.config.fhir_references == "identifier" else None
        for n, kind in enumerate(req.types, start=1):
            if job["id"] in self.cancelled:
                raise _Cancelled
            job["progress"] = f"exporting {kind} ({n} of {len(req.types)} types)"
            self.save(job)
            entity, build, by_patient = TYPES[kind]
            filters = req.type_filters.get(kind)
            writer = _FileWriter(self._dir(job["id"]), kind, limit)
            for rec in store.iter_all(entity, req.since):
                stamp = epoch(rec["updated_at"])
                if stamp > until:
                    continue
                pid = rec["id"] if kind == "Patient" else rec.get("patient_id")
                if members is not None and (kind == "Patient" or by_patient) and pid not in members:
                    continue
                if filters and not any(_matches(f, stamp, pid) for f in filters):
                    continue
                for resource in build(public(rec)):
                    if npis is not None:
                        resource = by_identifier(resource, npis)
                    if kind in failing:
                        errors.append(_issue("processing", f"{kind}/{resource['id']} could not be exported"))
                        continue
                    writer.add(resource)
            job["output"].extend({"type": kind, **f} for f in writer.close())
        if errors:
            name = "errors-1.ndjson"
            (self._dir(job["id"]) / name).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in errors))
            job["error"].append({"type": "OperationOutcome", "file": name, "count": len(errors)})

    def _members(self, req: ExportRequest, until: int) -> set[str] | None:
        """Patient ids in scope, or None for every record (system level, Patient level without ``patient``)."""
        if req.patients is not None:
            return set(req.patients)
        if req.level != "group":
            return None
        statuses = GROUPS[req.group or ""][1]
        return {
            rec["id"]
            for rec in self.tenant.store.iter_all("patients")
            if (statuses is None or rec.get("status") in statuses) and epoch(rec["updated_at"]) <= until
        }


class _Cancelled(Exception):
    pass


class _FileWriter:
    """NDJSON files of one type, ``limit`` resources each (``Patient-1.ndjson``, ``Patient-2.ndjson``…)."""

    def __init__(self, directory: Path, kind: str, limit: int) -> None:
        self.directory, self.kind, self.limit = directory, kind, limit
        self.files: list[dict[str, Any]] = []
        self._handle: Any = None
        self._count = 0

    def add(self, resource: dict[str, Any]) -> None:
        if self._handle is None or self._count >= self.limit:
            self._roll()
        self._handle.write(orjson.dumps(resource) + b"\n")
        self._count += 1
        self.files[-1]["count"] = self._count

    def _roll(self) -> None:
        if self._handle is not None:
            self._handle.close()
        name = f"{self.kind}-{len(self.files) + 1}.ndjson"
        self._handle = (self.directory / name).open("wb")
        self._count = 0
        self.files.append({"file": name, "count": 0})

    def close(self) -> list[dict[str, Any]]:
        if self._handle is not None:
            self._handle.close()
        return self.files


def _issue(code: str, message: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": message}]}


def _matches(criteria: dict[str, str], stamp: int, patient_id: str | None) -> bool:
    for name, value in criteria.items():
        if name == "_lastUpdated" and stamp < parse_last_updated(value):
            return False
        if name == "patient" and value.removeprefix("Patient/") != patient_id:
            return False
    return True


def _parse_instant(value: str) -> int:
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.utcoffset() is None:
            raise ValueError
    except ValueError:
        raise FhirProblem(
            400, "invalid", "_since must be a FHIR instant with a time zone, e.g. 2026-01-31T00:00:00Z", "_since"
        ) from None
    return int(moment.timestamp())  # whole seconds, floor: inclusive comparison never drops a boundary record


class Bulk:
    """Request handlers for ``$export``, its status and files, Group reads and SMART discovery."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.api = Api(tenant)
        self.jobs = Jobs(tenant)
        self.exposed = [t for t in fhir_resources(tenant.product) if t in TYPES]

    async def _guard(self, request: Request, handler: Any) -> Response:
        try:
            principal, rotated = self.api.authenticate(request)
            if principal.kind == "oauth" and not principal.scopes & {"system/*.read", "system/*.write"}:
                raise AuthFailure(403, "forbidden", "bulk export needs the system/*.read scope")
            response = await handler(principal.name)
            return self.api.with_cookie(response, rotated)
        except AuthFailure as exc:
            return outcome(exc.status, "login" if exc.status == 401 else "forbidden", exc.message)
        except FhirProblem as exc:
            return outcome(exc.status, exc.code, exc.message, exc.expression)

    # -- discovery -------------------------------------------------------------------------------------
    async def smart_configuration(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        body = {
            "issuer": base,
            "token_endpoint": f"{base}/oauth/token",
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": list(SUPPORTED_SCOPES),
            "capabilities": ["client-confidential-asymmetric", "client-confidential-symmetric"],
        }
        return Response(orjson.dumps(body), media_type="application/json")

    # -- groups ----------------------------------------------------------------------------------------
    def _group(self, gid: str, base: str) -> dict[str, Any]:
        if gid not in GROUPS:
            raise FhirProblem(404, "not-found", f"Group/{gid} is not known; groups: {', '.join(GROUPS)}")
        name, statuses = GROUPS[gid]
        count = sum(
            1 for r in self.tenant.store.iter_all("patients") if statuses is None or r.get("status") in statuses
        )
        return {
            "resourceType": "Group",
            "id": gid,
            "type": "person",
            "actual": True,
            "name": name,
            "quantity": count,
        }

    async def group_read(self, request: Request) -> Response:
        async def run(_: str) -> Response:
            return _fhir(self._group(request.path_params["gid"], str(request.base_url)))

        return await self._guard(request, run)

    async def group_search(self, request: Request) -> Response:
        async def run(_: str) -> Response:
            base = str(request.base_url).rstrip("/")
            entries = [
                {"fullUrl": f"{base}/fhir/Group/{gid}", "resource": self._group(gid, base), "search": {"mode": "match"}}
                for gid in GROUPS
            ]
            return _fhir({"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries})

        return await self._guard(request, run)

    # -- kick-off --------------------------------------------------------------------------------------
    async def kickoff(self, request: Request) -> Response:
        level = "group" if "gid" in request.path_params else request.scope.get("bulk_level", "system")

        async def run(owner: str) -> Response:
            req = await self._parse(request, level)
            if self.jobs.active_count() >= self.jobs.settings.max_active_jobs:
                retry = str(self.jobs.settings.retry_after_seconds)
                response = outcome(429, "throttled", "too many export jobs in progress; retry later or DELETE one")
                response.headers["Retry-After"] = retry
                return response
            job = self.jobs.start(owner, req)
            base = str(request.base_url).rstrip("/")
            return Response(status_code=202, headers={"Content-Location": f"{base}/fhir/bulkstatus/{job['id']}"})

        return await self._guard(request, run)

    async def _parse(self, request: Request, level: str) -> ExportRequest:
        prefer = {p.strip().lower() for part in request.headers.getlist("prefer") for p in part.split(",")}
        if "respond-async" not in prefer:
            raise FhirProblem(400, "invalid", "a bulk export needs the header Prefer: respond-async")
        lenient = "handling=lenient" in prefer
        accept = request.headers.get("accept", FHIR_JSON)
        if not any(a in accept for a in (FHIR_JSON, "application/json", "*/*")):
            raise FhirProblem(400, "invalid", "Accept must be application/fhir+json for a bulk export kick-off")
        params: list[tuple[str, str]] = list(request.query_params.multi_items())
        patients: list[str] | None = None
        if request.method == "POST":
            params, patients = await self._parameters(request, params)
        problems: list[str] = []

        def problem(message: str, expression: str) -> None:
            if not lenient:
                raise FhirProblem(400, "not-supported", message + " (or send Prefer: handling=lenient)", expression)
            problems.append(message)

        for name, _ in params:
            if name not in KICKOFF_PARAMS:
                problem(f"parameter {name} is not supported by this server", name)
        formats = [v for k, v in params if k == "_outputFormat"]
        if formats and formats[-1] not in OUTPUT_FORMATS:
            raise FhirProblem(400, "not-supported", "_outputFormat must be application/fhir+ndjson", "_outputFormat")
        scope = [t for t in self.exposed if level == "system" or t == "Patient" or TYPES[t][2]]
        wanted: list[str] = []
        for _, value in (p for p in params if p[0] == "_type"):
            for kind in (v.strip() for v in value.split(",")):
                if not kind:
                    continue
                if kind not in scope:
                    where = (
                        "at patient/group level" if kind in self.exposed else f"by this {self.tenant.product} tenant"
                    )
                    problem(f"_type {kind} is not exported {where}; exportable: {', '.join(scope)}", "_type")
                elif kind not in wanted:
                    wanted.append(kind)
        types = wanted or ([] if any(p[0] == "_type" for p in params) else scope)
        since = None
        for _, value in (p for p in params if p[0] == "_since"):
            since = _parse_instant(value)
        filters: dict[str, list[dict[str, str]]] = {}
        for _, value in (p for p in params if p[0] == "_typeFilter"):
            kind, sep, query = value.partition("?")
            criteria = dict(parse_qsl(query, keep_blank_values=True)) if sep else {}
            unsupported = sorted(set(criteria) - TYPE_FILTER_PARAMS)
            if kind not in scope or not criteria or unsupported:
                problem(
                    f"_typeFilter {kind}?… is not supported: use Type?{'|'.join(sorted(TYPE_FILTER_PARAMS))}=… on an "
                    f"exported type",
                    "_typeFilter",
                )
                continue
            if "_lastUpdated" in criteria:
                parse_last_updated(criteria["_lastUpdated"])  # a bad value is a 400 naming _typeFilter's param
            filters.setdefault(kind, []).append(criteria)
        group = request.path_params.get("gid")
        if group is not None and group not in GROUPS:
            raise FhirProblem(404, "not-found", f"Group/{group} is not known; groups: {', '.join(GROUPS)}")
        if patients is not None and level == "system":
            raise FhirProblem(400, "invalid", "patient is a Patient/Group level parameter", "patient")
        return ExportRequest(level, group, types, since, filters, patients, problems, str(request.url))

    async def _parameters(
        self, request: Request, query: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], list[str] | None]:
        raw = await request.body()
        if not raw:
            return query, None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise FhirProblem(400, "invalid", "the POST body must be a FHIR Parameters resource") from None
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise FhirProblem(400, "invalid", "the POST body must be a FHIR Parameters resource")
        params = list(query)
        patients: list[str] | None = None
        for item in body.get("parameter") or []:
            name = item.get("name") if isinstance(item, dict) else None
            if name == "patient":
                ref = (item.get("valueReference") or {}).get("reference", "")
                if not ref.startswith("Patient/"):
                    raise FhirProblem(400, "invalid", "patient needs valueReference Patient/<id>", "patient")
                patients = [*(patients or []), ref.removeprefix("Patient/")]
                continue
            values = [v for k, v in item.items() if k.startswith("value")] if isinstance(item, dict) else []
            if not name or len(values) != 1:
                raise FhirProblem(400, "invalid", "each Parameters.parameter needs a name and one value[x]")
            params.append((str(name), str(values[0])))
        return params, patients

    # -- status ----------------------------------------------------------------------------------------
    def _job(self, job_id: str, owner: str) -> dict[str, Any]:
        job = self.jobs.load(job_id)
        if job is None or job["owner"] != owner:
            raise FhirProblem(404, "not-found", "export job not found: it was deleted, expired or never existed")
        if job.get("completed_at") and self.expires_at(job) < time.time():
            self.jobs.delete(job_id)
            raise FhirProblem(404, "not-found", "export job expired; start a new export")
        return job

    def expires_at(self, job: dict[str, Any]) -> float:
        """Completion time + the current ``expiry_seconds`` (tests shorten it for jobs already done)."""
        return float(job["completed_at"]) + self.jobs.settings.expiry_seconds

    async def status(self, request: Request) -> Response:
        async def run(owner: str) -> Response:
            job = self._job(request.path_params["job"], owner)
            settings = self.jobs.settings
            if job["status"] == "in-progress" or job["ready_at"] > time.time():
                headers = {"Retry-After": str(settings.retry_after_seconds), "X-Progress": job["progress"]}
                return Response(status_code=202, headers=headers)
            if job["status"] == "error":
                return outcome(500, "exception", f"the export failed: {job.get('failure', 'unknown error')}")
            base = str(request.base_url).rstrip("/") + f"/fhir/bulkfiles/{job['id']}/"
            manifest = {
                "transactionTime": job["transactionTime"],
                "request": job["request"],
                "requiresAccessToken": True,
                "output": [{"type": o["type"], "url": base + o["file"], "count": o["count"]} for o in job["output"]],
                "error": [{"type": e["type"], "url": base + e["file"], "count": e["count"]} for e in job["error"]],
            }
            expires = iso_from_epoch(self.expires_at(job))
            return Response(orjson.dumps(manifest), media_type="application/json", headers={"Expires": expires})

        return await self._guard(request, run)

    async def delete(self, request: Request) -> Response:
        async def run(owner: str) -> Response:
            job = self._job(request.path_params["job"], owner)
            self.jobs.delete(job["id"])
            return Response(status_code=202)

        return await self._guard(request, run)

    # -- files -----------------------------------------------------------------------------------------
    async def file(self, request: Request) -> Response:
        async def run(owner: str) -> Response:
            job = self._job(request.path_params["job"], owner)
            name = request.path_params["name"]
            path = self.jobs._dir(job["id"]) / name
            if job["status"] != "complete" or not FILE_NAME.match(name) or not path.is_file():
                raise FhirProblem(404, "not-found", f"file {name} is not part of this export")
            if "gzip" in request.headers.get("accept-encoding", "").lower():
                return StreamingResponse(
                    _gzip(path), media_type=NDJSON, headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
                )
            return FileResponse(path, media_type=NDJSON)

        return await self._guard(request, run)

    # -- control ---------------------------------------------------------------------------------------
    async def control(self, request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        settings = self.jobs.settings
        known = {f.name: f for f in fields(settings)}
        if not isinstance(body, dict) or set(body) - set(known):
            unknown = sorted(set(body) - set(known)) if isinstance(body, dict) else body
            return Response(
                json.dumps({"error": "unknown_setting", "message": f"unknown bulk setting(s) {unknown}"}),
                status_code=400,
                media_type="application/json",
            )
        for key, value in body.items():
            current = getattr(settings, key)
            setattr(settings, key, list(value) if isinstance(current, list) else type(current)(value))
        return Response(orjson.dumps(asdict(settings)), media_type="application/json")


def _gzip(path: Path, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """The file gzip-compressed on the fly (level 1: the wire saving without making the server the bottleneck)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            out = packer.compress(block)
            if out:
                yield out
    yield packer.flush()


def iso_from_epoch(seconds: float) -> str:
    from datetime import UTC, datetime

    return iso(datetime.fromtimestamp(seconds, UTC))


def _fhir(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type=FHIR_JSON)


def advertise(capability: dict[str, Any], product: str) -> dict[str, Any]:
    """Add the bulk operations and the SMART endpoints to the tenant's CapabilityStatement."""
    if not fhir_resources(product):
        return capability
    capability = dict(capability)
    capability["instantiates"] = [f"{BULK_IG}/CapabilityStatement/bulk-data"]
    for rest in capability.get("rest") or []:
        rest["security"] = {
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR",
                        }
                    ]
                }
            ],
            "description": "SMART Backend Services (client_credentials, private_key_jwt RS384/ES384); discovery at "
            ".well-known/smart-configuration",
        }
        rest["operation"] = [{"name": "export", "definition": f"{BULK_IG}/OperationDefinition/export"}]
        for resource in rest.get("resource") or []:
            if resource.get("type") == "Patient":
                resource["operation"] = [
                    {"name": "export", "definition": f"{BULK_IG}/OperationDefinition/patient-export"}
                ]
        rest.setdefault("resource", []).append(
            {
                "type": "Group",
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "operation": [{"name": "export", "definition": f"{BULK_IG}/OperationDefinition/group-export"}],
            }
        )
    return capability


def routes(tenant: Tenant) -> list[BaseRoute]:
    """Mounted by ``app.build_app`` ahead of the FHIR search routes (``/fhir/{type}/{id}`` would swallow them)."""
    if not fhir_resources(tenant.product):
        return []
    bulk = Bulk(tenant)

    async def patient_kickoff(request: Request) -> Response:
        request.scope["bulk_level"] = "patient"
        return await bulk.kickoff(request)

    return [
        Route("/fhir/.well-known/smart-configuration", bulk.smart_configuration, methods=["GET"]),
        Route("/fhir/$export", bulk.kickoff, methods=["GET", "POST"]),
        Route("/fhir/Patient/$export", patient_kickoff, methods=["GET", "POST"]),
        Route("/fhir/Group/{gid}/$export", bulk.kickoff, methods=["GET", "POST"]),
        Route("/fhir/Group", bulk.group_search, methods=["GET"]),
        Route("/fhir/Group/{gid}", bulk.group_read, methods=["GET"]),
        Route("/fhir/bulkstatus/{job}", bulk.status, methods=["GET"]),
        Route("/fhir/bulkstatus/{job}", bulk.delete, methods=["DELETE"]),
        Route("/fhir/bulkfiles/{job}/{name}", bulk.file, methods=["GET"]),
        Route("/_sandbox/bulk", bulk.control, methods=["POST"]),
    ]


__all__ = ["GROUPS", "BulkSettings", "advertise", "routes"]
