"""One write-back run: what it writes with, how a batch is written, and the accounting of every decision.

target-wellsky (Singer) and destination-wellsky (Airbyte) read records from their own protocol and hand batches
here, so grouping by natural key, bounded concurrency, the audit trail, dead letters, the exit status and the
summary have one home whichever face a team uses.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import cached_property
from typing import Any

import orjson

from .audit import AuditLog, key_hash_secret, tenant_secret
from .config import TargetConfig
from .connection import Connection
from .deadletter import DeadLetter
from .errors import LineOverBounds, SingerInputError, WriteAborted, WriteRefused
from .models import WRITABLE
from .writes import WriteResult, match_key

Item = tuple[int, dict[str, Any]]
"""(input line, record)."""


def parse_input_line(line: str, number: int, *, max_bytes: int, max_depth: int, protocol: str) -> dict[str, Any]:
    """One input line as a JSON object, within the configured bounds (shared by the Singer and Airbyte faces).

    Raises LineOverBounds for a line too large or too deeply nested (the caller dead-letters it) and
    SingerInputError, naming the line but never echoing it (it may hold patient data), for anything unreadable.
    """
    if len(line) > max_bytes:
        raise LineOverBounds(f"the line is longer than max_record_bytes ({max_bytes:,} characters)")
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        too_deep = "recursion" in exc.msg.lower() or "depth" in exc.msg.lower()  # past orjson's 1,024 levels
        if too_deep and line.lstrip().startswith("{"):  # a message too deep to read: kept, not fatal
            raise LineOverBounds(f"nested deeper than max_record_depth ({max_depth} levels)") from None
        raise SingerInputError(
            f"input line {number} is not valid JSON ({exc.msg}); every line must be one {protocol} message"
        ) from None
    if not isinstance(message, dict):
        article = "an" if protocol[:1] in ("A", "E", "I", "O", "U") else "a"
        raise SingerInputError(f"input line {number} is JSON but not an object; expected {article} {protocol} message")
    if line.count("{") + line.count("[") > max_depth and _deeper_than(message, max_depth):
        raise LineOverBounds(f"nested deeper than max_record_depth ({max_depth} levels)")
    return message


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` containers deep (iterative: no recursion limit to hit)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class WriteRun:
    """The objects of one run (connection, writer, audit, dead letters) and its counters."""

    def __init__(self, settings: TargetConfig, logger: logging.Logger) -> None:
        settings.usable_state_dir()  # the ledger, audit and dead letters go there: refused before any input
        self.settings = settings
        self.logger = logger
        self.results: Counter[str] = Counter()
        self.rejected_by_code: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.refused_streams: Counter[str] = Counter()
        self.started = time.monotonic()

    # -- the objects a run writes with ---------------------------------------------------------------------
    @cached_property
    def connection(self) -> Connection:
        return Connection(self.settings)

    @cached_property
    def writer(self) -> Any:
        """The product's writer (the dialect may name its own, e.g. Home Connect), else the generic one."""
        from .products import DIALECTS
        from .write_hashes import WriteHashLedger

        # one per-tenant secret keys the audit's key_hash and the ledger's hashes (issue 24: no unkeyed hashes)
        secret = key_hash_secret(self.settings.audit_hash_secret, self.settings.audit_log_path) or tenant_secret(
            self.settings
        )
        path = self.settings.write_ledger_path
        ledger = WriteHashLedger(path, secret) if path and not self.settings.dry_run else None
        product = DIALECTS.get(self.settings.product or "")
        path = product.writer if product is not None and product.writer else "wellsky_core.writes:RecordWriter"
        module, _, name = path.partition(":")
        writer_class = getattr(importlib.import_module(module), name)
        return writer_class(
            self.connection,
            authorization_policy=self.settings.authorization_policy,
            dry_run=self.settings.dry_run,
            write_hashes=ledger,
            key_hash_secret=secret,
        )

    @cached_property
    def dead_letter(self) -> DeadLetter:
        return DeadLetter(self.settings.dead_letter_path)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.settings.audit_log_path)

    @property
    def writable(self) -> tuple[str, ...]:
        """The streams this tenant accepts (Home Connect: patients and EVV clock events)."""
        return getattr(self.writer, "writable", WRITABLE)

    def refusal(self, stream: str) -> str | None:
        """Why this tenant refuses a whole stream (said once, up front), or None."""
        return getattr(self.writer, "refusal", lambda _: None)(stream)  # type: ignore[no-any-return]

    # -- writing a batch ------------------------------------------------------------------------------------
    def write_batch(self, stream: str, items: list[Item]) -> None:
        """Write a batch with bounded concurrency; records sharing a natural key are written in input order.

        Every finished group is accounted exactly once and in input order, even when another worker aborts the
        run or a signal arrives; the first fatal problem stops groups not yet started and is raised at the end.
        """
        if not items:
            return
        groups: dict[str, list[Item]] = defaultdict(list)
        group_key = getattr(self.writer, "group_key", _group_key)
        for line, record in items:
            groups[group_key(stream, record, line)].append((line, record))
        self.writer.prime(stream, [record for _, record in items])
        failure: BaseException | None = None
        settled: set[Future[Any]] = set()
        pool = ThreadPoolExecutor(max_workers=self.settings.write_concurrency, thread_name_prefix="wsk-write")
        futures = [pool.submit(self._write_group, stream, group) for group in groups.values()]

        def settle(future: Future[Any]) -> None:
            nonlocal failure
            if future in settled or future.cancelled() or not future.done():
                return
            settled.add(future)
            outcome, error = future.result()
            for line, record, result in outcome:
                problem = self.account(stream, line, record, result, raise_on_refusal=False)
                failure = failure or problem
            failure = failure or error
            if failure is not None:
                for pending in futures:  # those already sending finish and are accounted too
                    pending.cancel()

        try:
            for future in futures:  # in input order (dead letters and audit follow the input), each exactly once
                if not future.cancelled():
                    wait([future])
                    settle(future)
        except BaseException as exc:  # a signal: still log what the other workers sent
            failure = failure or exc
            for pending in futures:
                pending.cancel()
            pool.shutdown(wait=True)
            for future in futures:
                settle(future)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if failure is not None:
            raise failure

    def _write_group(
        self, stream: str, group: list[Item]
    ) -> tuple[list[tuple[int, dict[str, Any], WriteResult]], BaseException | None]:
        """Write one natural key's records in input order; stop at the first fatal error, keeping what was done.

        Every outcome (including the ``failed`` write the run stops on, with the key it sent) is returned, so
        the audit trail holds everything this worker sent even when another worker aborts the run.
        """
        done: list[tuple[int, dict[str, Any], WriteResult]] = []
        for line, record in group:
            try:
                done.append((line, record, self.writer.write(stream, record)))
            except WriteAborted as exc:
                done.append((line, record, exc.result))  # type: ignore[arg-type]
                return done, exc
            except BaseException as exc:
                return done, exc
        return done, None

    # -- accounting -----------------------------------------------------------------------------------------
    def account(
        self, stream: str, line: int, record: dict[str, Any], result: WriteResult, *, raise_on_refusal: bool = True
    ) -> WriteRefused | None:
        """Count, audit and (when refused) dead-letter one write decision.

        A refusal without a dead-letter file is fatal: raised, or returned when ``raise_on_refusal`` is False
        (the batch first accounts everything its other workers sent, then raises it).
        """
        self.results[f"{stream}:{result.action}"] += 1
        self.audit.record(
            stream=stream,
            action=result.action,
            wellsky_id=result.wellsky_id,
            idempotency_key=result.idempotency_key,
            key_hash=result.key_hash,
            code=result.code,
            line=line,
        )
        if result.action == "rejected":
            self.rejected_by_code[result.code or "error"] += 1
            self.dead_letter.write(
                stage="write",
                stream=stream,
                reason=result.reason or "rejected",
                payload=record,
                context={"input_line": line, "code": result.code},
            )
            if self.dead_letter.path is None:
                fatal = WriteRefused(
                    result.code or "rejected",
                    f"input line {line}: {result.reason} (set dead_letter_path "
                    "to keep going and collect refused records)",
                )
                if raise_on_refusal:
                    raise fatal
                return fatal
            self.logger.warning("input line %d: %s record refused: %s", line, stream, result.reason)
        return None

    def refuse_record(self, stream: str, line: int, record: Any, reason: str) -> None:
        """One record of a stream this tenant refuses as a whole: counted, audited as ``refused`` and
        dead-lettered with the reason (the stream's one line was already said), never sent, never fatal."""
        self.refused_streams[stream] += 1
        rid = record.get("id") if isinstance(record, dict) else None
        self.audit.record(
            stream=stream, action="refused", wellsky_id=str(rid) if rid not in (None, "") else None,
            idempotency_key=None, key_hash=None, code="stream_refused", line=line,
        )
        self.dead_letter.write(
            stage="write", stream=stream, reason=reason, payload=record,
            context={"input_line": line, "code": "stream_refused"},
        )

    def missing_key(self, stream: str, line: int, record: dict[str, Any], key_properties: list[str]) -> bool:
        """A record lacking a field its stream's ``key_properties`` names is refused in one line (rejected,
        dead-lettered), never a traceback. ``id`` is exempt: new records have none and are matched on their
        natural key. True when the record was refused."""
        missing = [k for k in key_properties if k != "id" and record.get(k) in (None, "")]
        if not missing:
            return False
        reason = (
            f"key property {', '.join(missing)} is missing or empty; the stream's SCHEMA names it in "
            "key_properties: send it, or drop it from key_properties"
        )
        self.account(stream, line, record, WriteResult(stream, "rejected", reason=reason, code="missing_key"))
        return True

    def refuse_input(self, line: int, reason: str, raw: str) -> None:
        """An input line past the bounds: dead-lettered exactly as received (never parsed further), or fatal."""
        if self.dead_letter.path is None:
            raise SingerInputError(
                f"input line {line} refused: {reason}; set dead_letter_path to keep going and collect refused lines"
            )
        self.results["input:rejected"] += 1
        self.rejected_by_code["input_bounds"] += 1
        self.dead_letter.write(
            stage="input", stream=None, reason=reason, payload=raw, context={"input_line": line, "code": "input_bounds"}
        )
        self.logger.warning("input line %d refused: %s (kept in the dead letters)", line, reason)

    @property
    def rejected(self) -> int:
        return sum(v for k, v in self.results.items() if k.endswith(":rejected")) + sum(self.refused_streams.values())

    def summary(self, title: str, input_lines: int) -> str:
        seconds = time.monotonic() - self.started
        mode = " (dry run: nothing written)" if self.settings.dry_run else ""
        lines = [f"{title} summary{mode} ({input_lines} input lines, {seconds:.1f}s):"]
        streams = self.writable if "writer" in self.__dict__ else WRITABLE
        for stream in streams:
            parts = [f"{a.split(':')[1]} {n}" for a, n in sorted(self.results.items()) if a.startswith(stream + ":")]
            if parts:
                lines.append(f"  {stream:<14}" + ", ".join(parts))
        for stream, n in sorted(self.ignored.items()):
            lines.append(f"  {stream:<14}skipped {n} (not writable)")
        for stream, n in sorted(self.refused_streams.items()):
            lines.append(f"  {stream:<14}refused {n} (stream not writable for this tenant, see the error above)")
        if self.rejected:
            where = self.settings.dead_letter_path
            lines.append(
                f"  rejected {self.rejected} ({dict(self.rejected_by_code)})"
                + (f" -> dead letters in {where}" if where else "")
            )
        return "\n".join(lines)

    def close(self) -> None:
        self.audit.close()
        self.dead_letter.close()
        if "writer" in self.__dict__ and self.writer.write_hashes is not None:
            self.writer.write_hashes.close()
        if "connection" in self.__dict__:
            self.connection.close()


def _group_key(stream: str, record: dict[str, Any], line: int) -> str:
    return match_key(stream, record) or f"l:{line}"
