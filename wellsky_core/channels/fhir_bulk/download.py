"""Downloading a bulk export's NDJSON files into the spool, ``fhir_bulk_parallel_downloads`` at a time.

Each file is streamed (gzip either as ``Content-Encoding`` or as a ``.gz`` body) line by line into the spool,
so memory stays flat at any size. A file counts as done only when all its lines parsed and their number matches
the manifest's ``count``; otherwise it is downloaded again (whole), as the HTTP policy says for its status, with
the server's ``Retry-After`` or the client's backoff. Error files (OperationOutcome NDJSON) are counted by issue
code and handed to ``on_issue`` (the channel dead-letters them). File URLs that need the token must be trusted.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from ...errors import NormalizationError, RemoteError, WellSkyTransportError
from ...http.bodies import DownloadTooSlow, download_chunks
from ...http.policy import is_retryable, retry_after
from ...http.trust import resolve
from ...normalize import fhir as fhir_norm
from ...read_loop import PROGRESS_EVERY_SECONDS
from ..base import Progress
from ..fhir import INCLUDES, _parent_ref, identifier_parent
from .export import MAX_POLL_WAIT_SECONDS, JobGone
from .spool import ExportJob

if TYPE_CHECKING:
    from ...config import WellSkyConfig
    from ...http.client import WellSkyClient

log = logging.getLogger(__name__)

BATCH = 1000
"""Rows written to the spool per transaction."""


class Truncated(Exception):
    """A file that ended early, has a line that is not JSON, or fewer lines than the manifest says."""


class Stopped(Exception):
    """Another download failed: this one gives up at its next batch (its rows are discarded)."""


class Downloader:
    """Every unfinished file of one job into its spool."""

    def __init__(
        self,
        client: WellSkyClient,
        config: WellSkyConfig,
        *,
        trusted: Callable[..., httpx.URL],
        on_reject: Callable[[str, NormalizationError, dict[str, Any]], None],
        on_issue: Callable[[dict[str, Any]], list[str]],
    ) -> None:
        self.client = client
        self.config = config
        self._trusted = trusted
        self._on_reject = on_reject
        self._on_issue = on_issue

    def download(self, job: ExportJob) -> None:
        """Every unfinished output and error file of the job's manifest."""
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
                self.fetch_file(job, url, kind, count, needs_token, errors=is_error, stop=stop)
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
                if exc is not None and not isinstance(exc, Stopped) and first is None:
                    first = exc
        if first is not None:
            raise first

    def fetch_file(
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
        """One file into the spool, downloaded again (whole) after a transient failure or a short body."""
        target = self._trusted(url, what="a bulk file URL") if needs_token else resolve(url, self.config)
        for attempt in range(1, self.config.max_retries + 2):
            problem: str
            wait: float | None = None
            try:
                with self.client.stream(
                    "GET", target, headers={"Accept": "application/fhir+ndjson"}, authenticate=needs_token
                ) as response:
                    status = response.status_code
                    if status == 200:
                        expected = count if isinstance(count, int) else None
                        lines = self._spool_lines(
                            job, url, response, kind, errors=errors, stop=stop, expected=expected
                        )
                        if isinstance(count, int) and lines != count:
                            raise Truncated(f"{lines} of {count} lines")
                        job.spool.commit_file(url, kind, lines)
                        self.client.metrics.add_page(lines)
                        self.client.metrics.add_bytes(response.num_bytes_downloaded)
                        log.info("bulk file downloaded: %s, %d line(s)", kind, lines)
                        return
                    self.client.read_body(response)
                if status in (404, 410):
                    raise JobGone(f"an output file answered {status}")
                if not is_retryable(status):
                    raise RemoteError.from_response(response, fix="a bulk output file could not be downloaded")
                problem = str(status)
                wait = retry_after(response)
            except LineTooLong:
                job.spool.discard_file(url)
                raise WellSkyTransportError(
                    f"a line of a bulk output file ({kind}) is longer than max_response_bytes "
                    f"({self.config.max_response_bytes:,} bytes), where a line is one resource; raise "
                    "max_response_bytes if the tenant's resources really are that large",
                    url=target,
                    attempts=attempt,
                    reason="too_large",
                ) from None
            except (Truncated, DownloadTooSlow, httpx.HTTPError, zlib.error, EOFError) as exc:
                job.spool.discard_file(url)
                own = isinstance(exc, Truncated | DownloadTooSlow)  # our sentences, never the server's text
                problem = f"{type(exc).__name__}: {exc}" if own else type(exc).__name__
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
        expected: int | None = None,
    ) -> int:
        """Parse NDJSON from the stream line by line into the spool; returns the number of resources. A file
        with more lines than the manifest's count (``expected``) is cut there: an endless one filled the disk."""
        rows: list[tuple[str, str, str | None, bytes]] = []
        count = 0
        issues: dict[str, int] = {}
        lines = ndjson_lines(
            response, max_line=self.config.max_response_bytes, grace=self.config.request_deadline_seconds
        )
        for line in lines:
            try:
                res = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise Truncated("a line is not JSON (truncated file?)") from None
            if not isinstance(res, dict):
                raise Truncated("a line is not a JSON object")
            count += 1
            if expected is not None and count > expected:
                raise Truncated(f"more than the manifest's {expected} lines")
            if errors:
                for code in self._on_issue(res):
                    issues[code] = issues.get(code, 0) + 1
                continue
            rid = res.get("id")
            rtype = res.get("resourceType") or kind
            if not isinstance(rid, str) or not rid:
                entity = entity_of(str(rtype))
                self._on_reject(entity, NormalizationError(entity, "id", "missing in a bulk-exported resource"), res)
                continue
            rows.append((str(rtype), rid, _parent_ref(res) or identifier_parent(res), line))
            if len(rows) >= BATCH:
                if stop is not None and stop.is_set():
                    raise Stopped
                job.spool.put(url, rows)
                rows = []
        if rows:
            job.spool.put(url, rows)
        if issues:
            summary = ", ".join(f"{code} x{n}" for code, n in sorted(issues.items()))
            log.warning("the bulk export reported %d problem(s) in its error file (%s)", sum(issues.values()), summary)
        return count


class LineTooLong(Exception):
    """A line (one resource) longer than max_response_bytes: the same file would serve it again."""


INFLATE_PIECE = 1024 * 1024
"""Bytes inflated at a time from a gzip body: a small chunk may inflate to gigabytes (a gzip bomb)."""


def _inflated(inflater: Any, chunk: bytes) -> Iterator[bytes]:
    piece = inflater.decompress(chunk, INFLATE_PIECE)
    yield piece
    while inflater.unconsumed_tail:
        yield inflater.decompress(inflater.unconsumed_tail, INFLATE_PIECE)


def _pieces(response: httpx.Response, grace: float) -> Iterator[bytes]:
    """The body's bytes as they arrive, inflated a piece at a time when it is gzip without Content-Encoding, kept
    to :data:`~wellsky_core.http.bodies.SLOWEST_DOWNLOAD_BYTES_PER_SECOND` after ``grace`` seconds."""
    inflater: Any = None
    for n, chunk in enumerate(download_chunks(response, grace=grace)):
        if n == 0 and chunk[:2] == b"\x1f\x8b":
            inflater = zlib.decompressobj(wbits=31)
        if inflater is None:
            yield chunk
        else:
            yield from _inflated(inflater, chunk)
    if inflater is not None:
        yield inflater.flush()
        if not inflater.eof:
            raise Truncated("the gzip stream ended early")


def ndjson_lines(response: httpx.Response, *, max_line: int, grace: float) -> Iterator[bytes]:
    """Non-empty lines of an NDJSON body read in chunks; a gzip body without Content-Encoding is inflated too.

    A line longer than ``max_line`` raises :class:`LineTooLong` as soon as it is: a line that never ended was
    gathered whole in memory, each chunk copying it again. The unfinished line is kept as a list of pieces."""
    partial: list[bytes] = []
    held = 0
    for piece in _pieces(response, grace):
        if b"\n" not in piece:
            partial.append(piece)
            held += len(piece)
            if held > max_line:
                raise LineTooLong
            continue
        lines = piece.split(b"\n")
        lines[0] = b"".join([*partial, lines[0]])
        for line in lines[:-1]:
            if len(line) > max_line:
                raise LineTooLong
            if line.strip():
                yield line.strip()
        partial, held = [lines[-1]], len(lines[-1])
        if held > max_line:
            raise LineTooLong
    last = b"".join(partial).strip()
    if last:
        yield last


def entity_of(resource_type: str) -> str:
    """The stream a bulk-exported resource type belongs to (a child type: its parent's stream)."""
    for entity, kind in fhir_norm.ENTITY_TYPES.items():
        if kind == resource_type:
            return entity
    for entity, includes in INCLUDES.items():
        if any(child == resource_type for _, _, child in includes):
            return entity
    return resource_type
