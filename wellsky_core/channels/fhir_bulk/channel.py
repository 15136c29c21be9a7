"""The bulk channel itself: which job serves which stream, and records from the spool (see the package
docstring)."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from ...disclosure import public_outcome
from ...errors import NormalizationError, RemoteError
from ...machine_lock import WAIT_FOR_OTHER_RUN_SECONDS, MachineLock
from ...normalize import fhir as fhir_norm
from ..base import Channel
from ..fhir import INCLUDES, FhirChannel, fhir_instant, identifier_parent_keys, normalize_one
from .download import Downloader
from .export import BulkServer, JobGone
from .spool import ByRef, ExportJob, job_root, prune

if TYPE_CHECKING:
    from ...http.client import WellSkyClient

log = logging.getLogger(__name__)

PATIENT_LEVEL_EXCLUDED = {"practitioners"}
"""Entities outside the patient compartment: not exported at Patient or Group level."""
MAX_RESTARTS = 2
IDENTIFIER_CHUNK = 500
"""Resources whose identifier references are looked up together (bounded memory, few lookup requests)."""
UNDATED_FLAG = {
    "field": "updated_at",
    "kind": "missing",
    "reason": "the bulk-exported resource had no meta.lastUpdated; updated_at is the export's transactionTime",
}


JOB_WAIT_SECONDS = WAIT_FOR_OTHER_RUN_SECONDS
"""How long a run waits for another run on this machine using the same bulk job directory."""


class FhirBulkChannel(Channel):
    """Bulk ``$export`` → NDJSON files → spool → canonical records (see the package docstring)."""

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
        self._indexed: set[int] = set()
        self._served_by: dict[str, ExportJob] = {}
        self._failed = False
        self.export_issues = 0
        self._lock = threading.Lock()  # download threads share the counters and the dead-letter file
        self._jobs_lock = threading.RLock()  # streams run in parallel: one of them starts the shared export
        self.undated: dict[str, int] = {}
        self.job_root = job_root(self.config)
        self._hold = MachineLock(self.job_root / "run.lock")
        """One run at a time per job directory: two runs of a tenant at once resumed the same job, shared its spool,
        and the first to finish deleted the job and removed the spool under the other."""
        self.server = BulkServer(self.client, self.config)
        self.downloader = Downloader(
            self.client, self.config, trusted=self.server.trusted, on_reject=self._reject, on_issue=self._report_issue
        )

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

    def snapshot_view(self, entity: str) -> bool:
        return entity in fhir_norm.ENTITY_TYPES

    def full_view_every(self, entity: str) -> int:
        """Days between full (non-``_since``) exports inside incremental syncs (0: never)."""
        return self.config.fhir_bulk_full_export_days

    def _view_limits(self, since: datetime | None) -> str | None:
        """Why this export cannot be a complete view of the tenant, or None."""
        if since is not None:
            return "a _since export holds only what changed"
        if self.config.fhir_bulk_level == "group":
            return "a Group export holds its members only (one leaving the group is not a deletion)"
        if self.config.fhir_bulk_type_filter:
            return "fhir_bulk_type_filter narrows the export"
        return None

    def supports(self, entity: str) -> bool:
        if entity not in fhir_norm.ENTITY_TYPES:
            return False
        if self.config.fhir_bulk_level != "system" and entity in PATIENT_LEVEL_EXCLUDED:
            return False
        return fhir_norm.ENTITY_TYPES[entity] in self._capability()

    # -- discovery ------------------------------------------------------------------------------------------
    def discover(self) -> dict[str, Any] | None:
        """SMART configuration, once (``BulkServer.discover``: a foreign token endpoint is refused)."""
        if self._discovered:
            return None
        self._discovered = True
        return self.server.discover()

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
        view = self.views.get(entity)
        limits = self._view_limits(since)
        if view is not None and limits is not None:
            view.incomplete(limits)
        try:
            job = self._job_for(entity, since)
            self._served_by[entity] = job
            yield from self._records(entity, job)
            if view is not None and job.transaction_time is not None:
                view.complete(f"the full bulk export of {fhir_instant(job.transaction_time)}", job.transaction_time)
        except BaseException:
            self._failed = True
            raise
        job.entities_left.discard(entity)

    def resume_point(self, entity: str) -> datetime | None:
        """The export's ``transactionTime``: where the next incremental run of ``entity`` starts (``_since``)."""
        job = self._served_by.get(entity)
        return job.transaction_time if job is not None else None

    def _index_job(self, job: ExportJob) -> None:
        """Put the export's Practitioners and Organizations in the sync's identifier index (ids only), once per
        job, so a reference by identifier (an NPI, a payer id) resolves to a resource of the same export."""
        with self._jobs_lock:
            if id(job) in self._indexed:
                return
            self._indexed.add(id(job))
            for kind in sorted(fhir_norm.INDEXED_TYPES):
                for res in job.spool.of_type(kind):
                    self._search.index.add(res)

    def _resolved(self, resources: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Resources in chunks whose references by identifier were looked up first: what the export did not
        carry (an incremental ``_since`` export holds only changed practitioners) is searched once per sync,
        batched, as the search channel does, when the server offers ``identifier`` search."""
        chunk: list[dict[str, Any]] = []
        for res in resources:
            chunk.append(res)
            if len(chunk) >= IDENTIFIER_CHUNK:
                self._search.resolve_identifiers([(None, r) for r in chunk])
                yield from chunk
                chunk = []
        if chunk:
            self._search.resolve_identifiers([(None, r) for r in chunk])
            yield from chunk

    def _records(self, entity: str, job: ExportJob) -> Iterator[dict[str, Any]]:
        main = fhir_norm.ENTITY_TYPES[entity]
        by_ref = ByRef(job.spool)
        as_of = job.state["manifest"].get("transactionTime")
        undated = 0
        view = self.views.get(entity)
        rules = fhir_norm.FhirRules(dict(self.config.fhir_identifier_systems), base=self.config.fhir_base)
        self._index_job(job)
        index = self._search.index
        for res in self._resolved(job.spool.of_type(main)):
            parents = (f"{main}/{res.get('id')}", *identifier_parent_keys(res))
            kids = job.spool.children(*parents) if entity in INCLUDES else {}
            stamped = False
            if as_of and not (res.get("meta") or {}).get("lastUpdated"):
                # The IG lets servers omit meta.lastUpdated; the resource is then known as of transactionTime,
                # which is also this stream's bookmark, so it is the honest replication timestamp.
                res = {**res, "meta": {**(res.get("meta") or {}), "lastUpdated": as_of}}
                stamped = True
            try:
                record = normalize_one(entity, res, by_ref, kids, rules, index)
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
            if view is not None:
                view.see(record)
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
        self._hold_jobs()
        prune(self.job_root)
        job = ExportJob(self.job_root / key, kickoff)
        self._jobs[key] = job
        self._complete(job)
        return job

    def _hold_jobs(self) -> None:
        """Wait for another run on this machine using this job directory, or stop in one line; held until close."""
        self._hold.hold(
            JOB_WAIT_SECONDS, holding="is using this tenant's bulk export job directory (fhir_bulk_job_dir)",
            why="two runs would share one export job and its spool", log=log,
        )

    def _complete(self, job: ExportJob) -> None:
        """Kick off (or resume), wait for the manifest, spool every file, delete the server's job."""
        for restart in range(MAX_RESTARTS + 1):
            try:
                if job.state.get("status_url") is None:
                    try:
                        status_url = self.server.kickoff(job.kickoff)
                    except RemoteError:
                        job.dead = True  # nothing on the server to resume
                        raise
                    job.state.update(status_url=status_url, manifest=None, deleted=False)
                    job.spool.clear()
                    job.save()
                if job.state.get("manifest") is None:
                    try:
                        job.state["manifest"] = self.server.poll(job.state["status_url"])
                    except RemoteError:
                        job.dead = True  # the export failed on the server, or its status URL is not trusted
                        raise
                    job.save()
                self.downloader.download(job)
                break
            except JobGone as gone:
                if restart == MAX_RESTARTS:
                    job.dead = True
                    raise RemoteError(
                        404, "export_gone", f"the export job vanished {restart + 1} times ({gone}); try again later"
                    ) from None
                log.warning("the bulk export job is gone on the server (%s); starting the export again", gone)
                job.forget_server_job()
        if not job.state.get("deleted"):
            self.server.delete(job.state["status_url"])
            job.state["deleted"] = True
            job.save()

    def _reject(self, entity: str, error: NormalizationError, resource: dict[str, Any]) -> None:
        with self._lock:  # download threads share the counters and the dead-letter file
            self.reject(entity, error, resource)

    def _report_issue(self, outcome: dict[str, Any]) -> list[str]:
        """One line of an error file: counted by issue code and dead-lettered as codes only (``public_outcome``:
        its text is the server's and may name a patient)."""
        shown = public_outcome(outcome)
        codes = [issue["code"] for issue in shown["issue"]]
        with self._lock:
            self.export_issues += 1
            for view in self.views.values():  # the error file does not say which resource is missing
                view.incomplete("the bulk export reported errors, so it may lack records")
            if self.dead_letter.path is not None:
                self.dead_letter.write(
                    stage="read",
                    stream="fhir_bulk",
                    reason=f"the bulk export reported a problem ({', '.join(codes)}); its text is not kept",
                    payload=shown,
                    context={"channel": self.name},
                )
        return codes

    def close(self) -> None:
        """Remove the spools of jobs whose streams were all emitted, and of dead jobs (nothing to resume); a
        failed run keeps the others for the next run to resume."""
        for key, job in list(self._jobs.items()):
            if self._failed and not job.dead:
                job.spool.close()
            else:
                job.remove()
            del self._jobs[key]
        self._search.close()
        self._hold.release()
        if self._own_dead_letter:
            self.dead_letter.close()


