"""The FHIR Bulk Data channel (``source=fhir_bulk``): one ``$export`` job instead of thousands of search pages.

Flow (HL7 Bulk Data Access IG v2, SMART Backend Services):

1. Discovery: ``GET <fhir>/.well-known/smart-configuration`` without credentials. With an OAuth auth method and
   no ``token_url`` configured, its ``token_endpoint`` becomes the token URL; the advertised signing algorithms
   are checked against ``jwt_algorithm``. ``<fhir>/metadata`` tells which resource types the server has.
2. Kick-off: ``GET <fhir>/$export`` (``fhir_bulk_level=system``), ``Patient/$export`` or ``Group/<id>/$export``
   with ``Prefer: respond-async``, ``_type`` (every type the streams routed to this channel need: an
   encounter's Conditions, Procedures and Observations, a practitioner's PractitionerRoles, a care plan's Goals),
   ``_since`` (the stream's bookmark) and ``_typeFilter`` (``fhir_bulk_type_filter``). A 4xx OperationOutcome
   is raised with its code and diagnostics.
3. Polling the ``Content-Location`` status URL: ``Retry-After`` honoured (seconds, an HTTP date, or the epoch
   values some servers send), capped, and ``X-Progress`` logged, until ``fhir_bulk_poll_timeout_seconds``.
4. Download: each NDJSON output file is streamed (gzip either as ``Content-Encoding`` or as a ``.gz`` body)
   line by line into an on-disk SQLite spool, so memory stays flat at any size. A file counts as done only when
   all its lines parsed and their number matches the manifest's ``count``; otherwise it is downloaded again.
   Error files (OperationOutcome NDJSON) are summarised in the log and written to the dead-letter file.
5. The job is DELETEd on the server as soon as every file is spooled; records are then normalized from the
   spool (children joined by reference) through the FHIR normalizer.

Resumability (stated): the status URL, the manifest and the set of finished files are kept in a job
directory under ``fhir_bulk_job_dir``, keyed by server, level, group, types, ``_since`` and filters. A run that
is killed resumes the same job on the next start: finished files are not downloaded again, unfinished ones are.
When the server no longer knows the job (404/410: expired or deleted) before every file was spooled, the export
is started afresh. Once every stream the job serves has been emitted, the spool is removed.

Ordering and bookmark: the channel is *unordered* (NDJSON files come in no order). The bookmark a stream
should resume from is the export's ``transactionTime`` (:meth:`FhirBulkChannel.resume_point`), which the tap
uses instead of the newest ``updated_at``: the server promises every change up to that instant is in the
files, and resources without ``meta.lastUpdated`` (allowed by the IG) cannot move a bookmark anyway.
Records older than ``_since`` are kept: at Group level a server sends a new member's older resources on purpose.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from ..auth import parse_retry_after
from ..errors import ConfigError, NormalizationError, RemoteError, WellSkyTransportError, error_fields
from ..normalize import fhir as fhir_norm
from ..read_loop import PROGRESS_EVERY_SECONDS
from .base import Channel, Progress
from .fhir import INCLUDES, FhirChannel, _parent_ref, fhir_instant, normalize_one

if TYPE_CHECKING:
    from ..transport import WellSkyClient

log = logging.getLogger(__name__)

FHIR_BASE = "/fhir"
PATIENT_LEVEL_EXCLUDED = {"practitioners"}
"""Entities outside the patient compartment: not exported at Patient or Group level."""
MAX_POLL_WAIT_SECONDS = 120.0
"""Longest single wait between status polls, whatever Retry-After says (some servers send absolute epochs)."""
MAX_RESTARTS = 2
UNDATED_FLAG = {
    "field": "updated_at",
    "kind": "missing",
    "reason": "the bulk-exported resource had no meta.lastUpdated; updated_at is the export's transactionTime",
}
BATCH = 1000


retry_after_seconds = parse_retry_after
"""``Retry-After`` in seconds: delta-seconds, an HTTP date, or an absolute epoch in seconds or milliseconds."""


def outcome_summary(body: Any) -> str:
    """``code: diagnostics`` of each issue of an OperationOutcome (server-authored text, no record values)."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "OperationOutcome":
        return "no OperationOutcome"
    parts = []
    for issue in body.get("issue") or []:
        if isinstance(issue, Mapping):
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
            parts.append(f"{issue.get('severity', 'error')} {issue.get('code', '?')}: {text}".strip().rstrip(":"))
    return "; ".join(parts) or "empty OperationOutcome"


class JobGone(Exception):
    """The server no longer knows the export job (expired or deleted): start it again."""


class Spool:
    """The downloaded resources of one job, on disk: ``(type, id) -> body``, children indexed by parent.

    Shared by the download threads (one lock): each row remembers its file, so a file that fails halfway is
    removed row by row and a file counts only once it is listed in ``files``.
    """

    def __init__(self, path: Path) -> None:
        self.lock = threading.Lock()
        self.path = path
        self._readers = threading.local()  # streams read in parallel: one read connection per thread
        self._all_readers: list[sqlite3.Connection] = []
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS res (type TEXT, id TEXT, parent TEXT, file TEXT, body BLOB, "
            "PRIMARY KEY (type, id))"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS res_parent ON res (parent, type)")
        self.db.execute("CREATE INDEX IF NOT EXISTS res_file ON res (file)")
        self.db.execute("CREATE TABLE IF NOT EXISTS files (url TEXT PRIMARY KEY, type TEXT, lines INTEGER)")

    def done_files(self) -> set[str]:
        with self.lock:
            return {row[0] for row in self.db.execute("SELECT url FROM files")}

    def put(self, url: str, rows: list[tuple[str, str, str | None, bytes]]) -> None:
        with self.lock:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO res VALUES (?, ?, ?, ?, ?)", [(t, i, p, url, b) for t, i, p, b in rows]
            )
            self.db.execute("COMMIT")

    def commit_file(self, url: str, kind: str, lines: int) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", (url, kind, lines))

    def discard_file(self, url: str) -> None:
        """Forget the rows of a file that did not download completely."""
        with self.lock:
            self.db.execute("DELETE FROM res WHERE file = ?", (url,))

    def discard_unfinished(self) -> None:
        """After a kill: rows of files that never completed go, finished files stay."""
        with self.lock:
            self.db.execute("DELETE FROM res WHERE file NOT IN (SELECT url FROM files)")

    def clear(self) -> None:
        with self.lock:
            self.db.execute("DELETE FROM res")
            self.db.execute("DELETE FROM files")

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._readers.conn = conn
            with self.lock:
                self._all_readers.append(conn)
        return conn

    def of_type(self, kind: str) -> Iterator[dict[str, Any]]:
        for (body,) in self._reader().execute("SELECT body FROM res WHERE type = ? ORDER BY id", (kind,)):
            yield orjson.loads(body)

    def children(self, parent: str) -> dict[str, list[dict[str, Any]]]:
        kids: dict[str, list[dict[str, Any]]] = {}
        for kind, body in self._reader().execute("SELECT type, body FROM res WHERE parent = ? ORDER BY id", (parent,)):
            kids.setdefault(kind, []).append(orjson.loads(body))
        return kids

    def get(self, ref: str) -> dict[str, Any] | None:
        kind, _, rid = ref.partition("/")
        row = self._reader().execute("SELECT body FROM res WHERE type = ? AND id = ?", (kind, rid)).fetchone()
        return orjson.loads(row[0]) if row else None

    def close(self) -> None:
        with self.lock:
            for conn in self._all_readers:
                conn.close()
            self._all_readers.clear()
        self.db.close()


class _ByRef(Mapping[str, Any]):
    """``"Goal/<id>" -> resource`` looked up in the spool on demand (what the normalizer's ``_include`` map gives)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def __getitem__(self, ref: str) -> Any:
        found = self.spool.get(ref)
        if found is None:
            raise KeyError(ref)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class ExportJob:
    """One ``$export`` and its local state directory (``job.json`` + ``spool.sqlite``)."""

    def __init__(self, directory: Path, kickoff: dict[str, Any]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kickoff = kickoff
        self.state: dict[str, Any] = {"kickoff": kickoff}
        path = self.dir / "job.json"
        if path.exists():
            try:
                saved = orjson.loads(path.read_bytes())
                if saved.get("kickoff") == kickoff:
                    self.state = saved
            except orjson.JSONDecodeError:
                log.warning("ignoring an unreadable bulk job file in %s", self.dir)
        self.spool = Spool(self.dir / "spool-v2.sqlite")
        self.entities_left: set[str] = set(kickoff["entities"])

    def save(self) -> None:
        tmp = self.dir / "job.json.tmp"
        tmp.write_bytes(orjson.dumps(self.state))
        tmp.replace(self.dir / "job.json")

    @property
    def transaction_time(self) -> datetime | None:
        value = (self.state.get("manifest") or {}).get("transactionTime")
        if not isinstance(value, str):
            return None
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def remove(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class FhirBulkChannel(Channel):
    """Bulk ``$export`` → NDJSON files → spool → canonical records (see the module docstring)."""

    name = "fhir_bulk"
    ordered = False
    client_use = "required"
    client: WellSkyClient

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._search = FhirChannel(
            config=self.config, client=self.client, product=self.product, dead_letter=self.dead_letter
        )
        self._discovered = False
        self._jobs: dict[str, ExportJob] = {}
        self._served_by: dict[str, ExportJob] = {}
        self._failed = False
        self.export_issues = 0
        self._lock = threading.Lock()  # download threads share the counters and the dead-letter file
        self._jobs_lock = threading.RLock()  # streams run in parallel: one of them starts the shared export
        self.undated: dict[str, int] = {}
        root = self.config.fhir_bulk_job_dir or str(Path(tempfile.gettempdir()) / "wellsky-fhir-bulk")
        self.job_root = Path(root)

    # -- capability -----------------------------------------------------------------------------------------
    def _capability(self) -> dict[str, dict[str, Any]]:
        """The server's resource types; discovery first, so the token request already goes to the right place."""
        with self._jobs_lock:
            self.discover()
            return self._search.capability()

    def _types_of(self, entity: str) -> list[str]:
        """The resource types one entity needs, limited to those the server has."""
        main = fhir_norm.ENTITY_TYPES[entity]
        capability = self._capability()
        return [main] + [child for _, _, child in INCLUDES.get(entity, []) if child in capability]

    @classmethod
    def offers(cls, entity: str, product: str | None) -> bool:
        return entity in fhir_norm.ENTITY_TYPES

    def supports(self, entity: str) -> bool:
        if entity not in fhir_norm.ENTITY_TYPES:
            return False
        if self.config.fhir_bulk_level != "system" and entity in PATIENT_LEVEL_EXCLUDED:
            return False
        return fhir_norm.ENTITY_TYPES[entity] in self._capability()

    # -- discovery ------------------------------------------------------------------------------------------
    def discover(self) -> dict[str, Any] | None:
        """SMART configuration (no credentials); points the OAuth flow at the advertised token endpoint."""
        if self._discovered:
            return None
        self._discovered = True
        url = f"{FHIR_BASE}/.well-known/smart-configuration"
        with self.client.stream("GET", url, authenticate=False) as response:
            response.read()
        if response.status_code != 200:
            log.info("no SMART configuration at %s (%s); using the configured token_url", url, response.status_code)
            return None
        try:
            smart = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            log.warning("the SMART configuration at %s is not JSON; using the configured token_url", url)
            return None
        auth = self.client.auth
        if self.config.auth_method == "oauth_private_key_jwt":
            algs = smart.get("token_endpoint_auth_signing_alg_values_supported")
            if isinstance(algs, list) and algs and self.config.jwt_algorithm not in algs:
                raise ConfigError(
                    "jwt_algorithm",
                    f"the server accepts {', '.join(map(str, algs))} for client assertions; set jwt_algorithm to one "
                    "of them (and register a matching key)",
                )
        endpoint = smart.get("token_endpoint")
        if isinstance(endpoint, str) and endpoint and not self.config.token_url and hasattr(auth, "token_url"):
            auth.token_url = endpoint
        return dict(smart)

    # -- records --------------------------------------------------------------------------------------------
    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        if not self.supports(entity):
            level = self.config.fhir_bulk_level
            raise RemoteError(
                404,
                "not_supported",
                f"{fhir_norm.ENTITY_TYPES.get(entity, entity)} cannot be bulk-exported from this {self.product} "
                f"tenant at {level} level (see /fhir/metadata); read {entity} with source=api or fhir",
            )
        try:
            job = self._job_for(entity, since)
            self._served_by[entity] = job
            yield from self._records(entity, job)
        except BaseException:
            self._failed = True
            raise
        job.entities_left.discard(entity)

    def resume_point(self, entity: str) -> datetime | None:
        """The export's ``transactionTime``: where the next incremental run of ``entity`` starts (``_since``)."""
        job = self._served_by.get(entity)
        return job.transaction_time if job is not None else None

    def _records(self, entity: str, job: ExportJob) -> Iterator[dict[str, Any]]:
        main = fhir_norm.ENTITY_TYPES[entity]
        by_ref = _ByRef(job.spool)
        as_of = job.state["manifest"].get("transactionTime")
        undated = 0
        rules = fhir_norm.FhirRules(dict(self.config.fhir_identifier_systems))
        for res in job.spool.of_type(main):
            kids = job.spool.children(f"{main}/{res.get('id')}") if entity in INCLUDES else {}
            stamped = False
            if as_of and not (res.get("meta") or {}).get("lastUpdated"):
                # The IG lets servers omit meta.lastUpdated; the resource is then known as of transactionTime,
                # which is also this stream's bookmark, so it is the honest replication timestamp.
                res = {**res, "meta": {**(res.get("meta") or {}), "lastUpdated": as_of}}
                stamped = True
            try:
                record = normalize_one(entity, res, by_ref, kids, rules)
            except fhir_norm.NotThisEntity as exc:  # e.g. a ClaimResponse for a claim: counted, not an error
                self.skipped[f"{main} ({exc.reason})"] += 1
                continue
            except NormalizationError as exc:
                self.reject(entity, exc, res)
                continue
            if stamped:
                undated += 1
                if isinstance(record.get("data_quality"), list):
                    record["data_quality"].append(UNDATED_FLAG)
            yield record
        if undated:
            self.undated[entity] = undated
            log.warning(
                "%s: %d resource(s) had no meta.lastUpdated; their updated_at is the export's transactionTime",
                entity,
                undated,
            )

    # -- the job --------------------------------------------------------------------------------------------
    def _bulk_entities(self) -> list[str]:
        """Every entity this sync routes to fhir_bulk (one export serves them all)."""
        return [e for e in fhir_norm.ENTITY_TYPES if self.config.source_for(e) == self.name and self.supports(e)]

    def _job_for(self, entity: str, since: datetime | None) -> ExportJob:
        """The export serving ``entity`` from ``since``: shared with every stream routed here (started once)."""
        with self._jobs_lock:
            return self._job_for_locked(entity, since)

    def _job_for_locked(self, entity: str, since: datetime | None) -> ExportJob:
        since_text = fhir_instant(since) if since is not None else None
        for job in self._jobs.values():
            if entity in job.entities_left and job.kickoff["since"] == since_text:
                return job
        self.discover()
        # Streams already served, or waiting in another job (a different bookmark), do not ride along again.
        pending = {e for job in self._jobs.values() for e in job.entities_left} | set(self._served_by)
        entities = sorted({entity, *(e for e in self._bulk_entities() if e not in pending)})
        types: list[str] = []
        for name in entities:
            types += [t for t in self._types_of(name) if t not in types]
        kickoff = {
            "server": str(self.client.config.base_url),
            "level": self.config.fhir_bulk_level,
            "group": self.config.fhir_bulk_group_id,
            "types": types,
            "since": since_text,
            "type_filter": list(self.config.fhir_bulk_type_filter),
            "entities": entities,
        }
        key = hashlib.sha256(orjson.dumps(kickoff, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]
        self._prune()
        job = ExportJob(self.job_root / key, kickoff)
        self._jobs[key] = job
        self._complete(job)
        return job

    def _prune(self) -> None:
        """Drop job directories nobody resumed within a day (their server jobs expired long ago)."""
        if not self.job_root.is_dir():
            return
        cutoff = time.time() - 86_400
        for path in self.job_root.iterdir():
            try:
                if path.is_dir() and path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                continue

    def _complete(self, job: ExportJob) -> None:
        """Kick off (or resume), wait for the manifest, spool every file, delete the server's job."""
        for restart in range(MAX_RESTARTS + 1):
            try:
                if job.state.get("status_url") is None:
                    job.state.update(status_url=self._kickoff(job.kickoff), manifest=None, deleted=False)
                    job.spool.clear()
                    job.save()
                if job.state.get("manifest") is None:
                    job.state["manifest"] = self._poll(job.state["status_url"])
                    job.save()
                self._download(job)
                break
            except JobGone as gone:
                if restart == MAX_RESTARTS:
                    raise RemoteError(
                        404, "export_gone", f"the export job vanished {restart + 1} times ({gone}); try again later"
                    ) from None
                log.warning("the bulk export job is gone on the server (%s); starting the export again", gone)
                job.state.update(status_url=None, manifest=None)
                job.spool.clear()
                job.save()
        if not job.state.get("deleted"):
            self._delete(job.state["status_url"])
            job.state["deleted"] = True
            job.save()

    def _kickoff(self, kickoff: dict[str, Any]) -> str:
        level = kickoff["level"]
        if level == "group":
            path = f"{FHIR_BASE}/Group/{kickoff['group']}/$export"
        elif level == "patient":
            path = f"{FHIR_BASE}/Patient/$export"
        else:
            path = f"{FHIR_BASE}/$export"
        params: list[tuple[str, str]] = [
            ("_outputFormat", "application/fhir+ndjson"),
            ("_type", ",".join(kickoff["types"])),
        ]
        if kickoff["since"]:
            params.append(("_since", kickoff["since"]))
        params += [("_typeFilter", f) for f in kickoff["type_filter"]]
        headers = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
        response = self.client.request("GET", path, params=httpx.QueryParams(params), headers=headers, expected=(202,))
        location = response.headers.get("content-location")
        if not location:
            raise RemoteError(
                202,
                "no_content_location",
                f"the {level} $export kick-off answered 202 without Content-Location",
                url=path,
            )
        log.info(
            "bulk export started at %s level for %s (since %s)", level, ",".join(kickoff["types"]), kickoff["since"]
        )
        return str(self._trusted(location, needs_token=True))

    def _trusted(self, link: str, *, needs_token: bool) -> httpx.URL:
        """Resolve a server-given URL; credentials are only ever sent to the tenant's own origin."""
        base = httpx.URL(str(self.config.base_url))
        url = httpx.URL(link) if httpx.URL(link).is_absolute_url else base.join(link)
        if needs_token and (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise RemoteError(
                200,
                "foreign_bulk_url",
                "the bulk export names a status or file URL on another host while requiring the access token; "
                "refusing to send credentials there",
                url=url.copy_with(query=None),
            )
        return url

    def _poll(self, status_url: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.config.fhir_bulk_poll_timeout_seconds
        attempt = 0
        last_progress = None
        transient = 0
        while True:
            with self.client.stream("GET", status_url, headers={"Accept": "application/json"}) as response:
                response.read()
            status = response.status_code
            wait: float | None = None
            if status == 200:
                try:
                    manifest = orjson.loads(response.content)
                except orjson.JSONDecodeError:
                    manifest = None
                if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), list):
                    raise RemoteError(200, "unexpected_shape", "the bulk status URL answered 200 without a manifest")
                log.info(
                    "bulk export ready: %d file(s), %d error file(s), transactionTime %s",
                    len(manifest["output"]),
                    len(manifest.get("error") or []),
                    manifest.get("transactionTime"),
                )
                return manifest
            if status == 202:
                progress = response.headers.get("x-progress")
                if progress and progress != last_progress:
                    log.info("bulk export in progress: %s", progress[:200])
                    last_progress = progress
                wait = retry_after_seconds(response.headers.get("retry-after"))
                transient = 0
            elif status in (404, 410):
                raise JobGone(f"status URL answered {status}")
            elif status == 401:
                raise RemoteError(401, "unauthorized", "the bulk status URL refused the credentials")
            elif status in (408, 429) or (status >= 500 and not self._job_failed(response)):
                transient += 1
                if transient > self.config.max_retries:
                    raise WellSkyTransportError(
                        "the bulk status URL kept failing; raise max_retries or check the server",
                        url=status_url,
                        status=status,
                        attempts=transient,
                    )
                wait = retry_after_seconds(response.headers.get("retry-after"))
                self.client.metrics.add_retry(str(status))
            else:
                code, message = error_fields(response)
                raise RemoteError(
                    status,
                    code or "export_failed",
                    f"the bulk export failed: {message or outcome_summary(_json_or_none(response))}",
                    url=status_url,
                )
            attempt += 1
            if wait is None:
                wait = min(30.0, 2.0 ** min(attempt, 5) / 2)
            wait = min(wait, MAX_POLL_WAIT_SECONDS)
            left = deadline - time.monotonic()
            if left <= 0:
                raise WellSkyTransportError(
                    f"the bulk export was not ready within fhir_bulk_poll_timeout_seconds="
                    f"{self.config.fhir_bulk_poll_timeout_seconds:g}; raise it (the job is kept and resumed next run)",
                    url=status_url,
                    status=status,
                    attempts=attempt,
                    reason="poll_timeout",
                )
            self.client.sleep(min(wait, left))

    @staticmethod
    def _job_failed(response: httpx.Response) -> bool:
        """A 5xx with an OperationOutcome that is not ``transient`` means the job itself failed."""
        body = _json_or_none(response)
        if not isinstance(body, Mapping) or body.get("resourceType") != "OperationOutcome":
            return False
        codes = {i.get("code") for i in body.get("issue") or [] if isinstance(i, Mapping)}
        return "transient" not in codes

    def _download(self, job: ExportJob) -> None:
        """Every unfinished output and error file, ``fhir_bulk_parallel_downloads`` at a time."""
        manifest = job.state["manifest"]
        needs_token = bool(manifest.get("requiresAccessToken", True))
        job.spool.discard_unfinished()
        done = job.spool.done_files()
        wanted = set(job.kickoff["types"])
        outputs = [o for o in manifest["output"] if isinstance(o, Mapping) and isinstance(o.get("url"), str)]
        errors = [e for e in manifest.get("error") or [] if isinstance(e, Mapping) and isinstance(e.get("url"), str)]
        todo: list[tuple[str, str, Any, bool]] = []
        for item in outputs:
            kind = str(item.get("type") or "")
            if kind not in wanted:
                log.info("skipping a %s file the export was not asked for", kind or "untyped")
            elif item["url"] not in done:
                todo.append((item["url"], kind, item.get("count"), False))
        todo += [(e["url"], "OperationOutcome", e.get("count"), True) for e in errors if e["url"] not in done]
        if done:
            log.info("resuming bulk job: %d file(s) already downloaded, %d to go", len(done), len(todo))
        stop = threading.Event()
        plan = Progress(len(todo), "files")  # the manifest is the plan: a total and an ETA while downloading
        started = last_line = time.monotonic()

        def fetch(url: str, kind: str, count: Any, is_error: bool) -> None:
            nonlocal last_line
            if stop.is_set():
                return
            try:
                self._fetch_file(job, url, kind, count, needs_token, errors=is_error, stop=stop)
            except BaseException:
                stop.set()
                raise
            plan.advance()
            now = time.monotonic()
            if now - last_line >= PROGRESS_EVERY_SECONDS or plan.done == plan.planned:
                last_line = now
                log.info("bulk export: downloading%s", plan.note(now - started))

        workers = max(1, min(self.config.fhir_bulk_parallel_downloads, len(todo)))
        if workers == 1:
            for item in todo:
                fetch(*item)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wellsky-bulk") as pool:
            futures = [pool.submit(fetch, *item) for item in todo]
            first: BaseException | None = None
            for future in futures:
                exc = future.exception()
                if exc is not None and not isinstance(exc, _Stopped) and first is None:
                    first = exc
        if first is not None:
            raise first

    def _fetch_file(
        self,
        job: ExportJob,
        url: str,
        kind: str,
        count: Any,
        needs_token: bool,
        *,
        errors: bool = False,
        stop: threading.Event | None = None,
    ) -> None:
        target = self._trusted(url, needs_token=needs_token)
        for attempt in range(1, self.config.max_retries + 2):
            problem: str
            wait: float | None = None
            try:
                with self.client.stream(
                    "GET", target, headers={"Accept": "application/fhir+ndjson"}, authenticate=needs_token
                ) as response:
                    status = response.status_code
                    if status == 200:
                        lines = self._spool_lines(job, url, response, kind, errors=errors, stop=stop)
                        if isinstance(count, int) and lines != count:
                            raise _Truncated(f"{lines} of {count} lines")
                        job.spool.commit_file(url, kind, lines)
                        self.client.metrics.add_page(lines)
                        self.client.metrics.add_bytes(response.num_bytes_downloaded)
                        log.info("bulk file downloaded: %s, %d line(s)", kind, lines)
                        return
                    response.read()
                if status in (404, 410):
                    raise JobGone(f"an output file answered {status}")
                if status in (408, 429) or status >= 500:
                    problem = str(status)
                    wait = retry_after_seconds(response.headers.get("retry-after"))
                else:
                    code, message = error_fields(response)
                    raise RemoteError(status, code, message or "a bulk output file could not be downloaded", url=target)
            except (_Truncated, httpx.HTTPError, zlib.error, EOFError) as exc:
                job.spool.discard_file(url)
                problem = f"{type(exc).__name__}: {exc}" if isinstance(exc, _Truncated) else type(exc).__name__
            except WellSkyTransportError as exc:
                job.spool.discard_file(url)
                problem = exc.reason or "connection"
            except BaseException:
                job.spool.discard_file(url)
                raise
            if attempt > self.config.max_retries:
                raise WellSkyTransportError(
                    f"a bulk output file could not be downloaded completely ({problem}); raise max_retries or rerun "
                    "(finished files are kept)",
                    url=target,
                    attempts=attempt,
                    reason="download",
                )
            self.client.metrics.add_retry("download")
            delay = min(wait if wait is not None else self.client.backoff(attempt), MAX_POLL_WAIT_SECONDS)
            log.warning(
                "downloading a %s file again after %s (attempt %d), waiting %.2f s", kind, problem, attempt + 1, delay
            )
            self.client.sleep(delay)

    def _spool_lines(
        self,
        job: ExportJob,
        url: str,
        response: httpx.Response,
        kind: str,
        *,
        errors: bool,
        stop: threading.Event | None = None,
    ) -> int:
        """Parse NDJSON from the stream line by line into the spool; returns the number of resources."""
        rows: list[tuple[str, str, str | None, bytes]] = []
        count = 0
        issues: dict[str, int] = {}
        for line in _ndjson_lines(response):
            try:
                res = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise _Truncated("a line is not JSON (truncated file?)") from None
            if not isinstance(res, dict):
                raise _Truncated("a line is not a JSON object")
            count += 1
            if errors:
                self._report_issue(res, issues)
                continue
            rid = res.get("id")
            rtype = res.get("resourceType") or kind
            if not isinstance(rid, str) or not rid:
                with self._lock:
                    self.reject(
                        _entity_of(rtype),
                        NormalizationError(_entity_of(rtype), "id", "missing in a bulk-exported resource"),
                        res,
                    )
                continue
            rows.append((str(rtype), rid, _parent_ref(res), line))
            if len(rows) >= BATCH:
                if stop is not None and stop.is_set():
                    raise _Stopped
                job.spool.put(url, rows)
                rows = []
        if rows:
            job.spool.put(url, rows)
        if issues:
            summary = ", ".join(f"{code} x{n}" for code, n in sorted(issues.items()))
            log.warning(
                "the bulk export reported %d problem(s) in its error file (%s)%s",
                sum(issues.values()),
                summary,
                "; details in the dead-letter file" if self.dead_letter.path else "; set dead_letter_path for details",
            )
        return count

    def _report_issue(self, res: dict[str, Any], issues: dict[str, int]) -> None:
        with self._lock:
            self._report_issue_locked(res, issues)

    def _report_issue_locked(self, res: dict[str, Any], issues: dict[str, int]) -> None:
        self.export_issues += 1
        for issue in res.get("issue") or [{}]:
            code = str(issue.get("code") or "unknown") if isinstance(issue, Mapping) else "unknown"
            issues[code] = issues.get(code, 0) + 1
        if self.dead_letter.path is not None:
            self.dead_letter.write(
                stage="read",
                stream="fhir_bulk",
                reason=f"the server reported: {outcome_summary(res)}",
                payload=res,
                context={"channel": self.name},
            )

    def _delete(self, status_url: str) -> None:
        """DELETE the job so the server frees its files (failure to do so is logged, never fatal)."""
        try:
            with self.client.stream("DELETE", status_url) as response:
                response.read()
            if response.status_code not in (200, 202, 204, 404, 410):
                log.warning("the bulk job could not be deleted on the server (%s)", response.status_code)
        except WellSkyTransportError as exc:
            log.warning("the bulk job could not be deleted on the server: %s", exc)

    def close(self) -> None:
        """Remove the spools of jobs whose streams were all emitted; a failed run keeps them for resuming."""
        for key, job in list(self._jobs.items()):
            if self._failed:
                job.spool.close()
            else:
                job.remove()
            del self._jobs[key]
        self._search.close()
        if self._own_dead_letter:
            self.dead_letter.close()


class _Truncated(Exception):
    pass


class _Stopped(Exception):
    """Another download failed: this one gives up at its next batch (its rows are discarded)."""


def _entity_of(resource_type: str) -> str:
    for entity, kind in fhir_norm.ENTITY_TYPES.items():
        if kind == resource_type:
            return entity
    for entity, includes in INCLUDES.items():
        if any(child == resource_type for _, _, child in includes):
            return entity
    return resource_type


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except (orjson.JSONDecodeError, httpx.ResponseNotRead):
        return None


def _ndjson_lines(response: httpx.Response) -> Iterator[bytes]:
    """Non-empty lines of an NDJSON body read in chunks; a gzip body without Content-Encoding is inflated too."""
    inflater: Any = None
    pending = b""
    first = True
    for chunk in response.iter_bytes():
        if first:
            first = False
            if chunk[:2] == b"\x1f\x8b":
                inflater = zlib.decompressobj(wbits=31)
        if inflater is not None:
            chunk = inflater.decompress(chunk)
        pending += chunk
        if b"\n" not in chunk:
            continue
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line.strip()
    if inflater is not None:
        pending += inflater.flush()
        if not inflater.eof:
            raise _Truncated("the gzip stream ended early")
    for line in pending.split(b"\n"):
        if line.strip():
            yield line.strip()
