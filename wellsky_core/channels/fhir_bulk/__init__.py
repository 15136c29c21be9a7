"""The FHIR Bulk Data channel (``source=fhir_bulk``): one ``$export`` job instead of thousands of search pages.

Flow (HL7 Bulk Data Access IG v2, SMART Backend Services):

1. Discovery: ``GET <fhir>/.well-known/smart-configuration`` without credentials. With an OAuth auth method and
   no ``token_url`` configured, its ``token_endpoint`` becomes the token URL if it is trusted (``http/trust.py``:
   the tenant's origin or ``trusted_origins``; another is refused in one line); the advertised signing algorithms
   are checked against ``jwt_algorithm``. ``<fhir>/metadata`` tells which resource types the server has.
2. Kick-off: ``GET <fhir>/$export`` (``fhir_bulk_level=system``), ``Patient/$export`` or ``Group/<id>/$export``
   with ``Prefer: respond-async``, ``_type`` (every type the streams routed to this channel need: an
   encounter's Conditions, Procedures and Observations, a practitioner's PractitionerRoles, a care plan's Goals),
   ``_since`` (the stream's bookmark) and ``_typeFilter`` (``fhir_bulk_type_filter``). A 4xx OperationOutcome
   is raised with its allow-listed issue code (never its diagnostics text: ``RemoteError.from_response``).
3. Polling the ``Content-Location`` status URL: ``Retry-After`` honoured (seconds, an HTTP date, or the epoch
   values some servers send), capped, and the percentage of ``X-Progress`` logged (never its text), until
   ``fhir_bulk_poll_timeout_seconds``.
4. Download: each NDJSON output file is streamed (gzip either as ``Content-Encoding`` or as a ``.gz`` body)
   line by line into an on-disk SQLite spool, so memory stays flat at any size. A file counts as done only when
   all its lines parsed and their number matches the manifest's ``count``; otherwise it is downloaded again.
   Error files (OperationOutcome NDJSON) are counted by issue code in the log and written to the dead-letter file.
5. The job is DELETEd on the server as soon as every file is spooled; records are then normalized from the
   spool (children joined by reference) through the FHIR normalizer.

Resumability (stated): the status URL, the manifest and the set of finished files are kept in a private job
directory (``fhir_bulk_job_dir``, default ``<private_state_dir>/fhir-bulk``; 0700, files 0600), keyed by server,
level, group, types, ``_since`` and filters. A run that is killed resumes the same job on the next start:
finished files are not downloaded again, unfinished ones are; the saved status URL must still be a trusted URL
before it gets the token. When the server no longer knows the job (404/410: expired or deleted) before every
file was spooled, the export is started afresh. Once every stream the job serves has been emitted the spool is
removed, and so is the spool of a failed run that cannot be resumed (the kick-off or the export failed, or the
job vanished for good). One run at a time uses a job directory (a machine-wide lock, ``run.lock``): a second
waits for the first, then stops in one line, instead of sharing its job and spool.

Ordering and bookmark: the channel is *unordered* (NDJSON files come in no order). The bookmark a stream
should resume from is the export's ``transactionTime`` (:meth:`FhirBulkChannel.resume_point`), which the tap
uses instead of the newest ``updated_at``: the server promises every change up to that instant is in the
files, and resources without ``meta.lastUpdated`` (allowed by the IG) cannot move a bookmark anyway.
Records older than ``_since`` are kept: at Group level a server sends a new member's older resources on purpose.

Units: ``export.py`` (discovery, kick-off, polling, DELETE), ``download.py`` (files into the spool),
``spool.py`` (the private job directory, ``job.json`` and the SQLite spool), ``channel.py`` (the channel).
"""

from .channel import FhirBulkChannel

__all__ = ["FhirBulkChannel"]
