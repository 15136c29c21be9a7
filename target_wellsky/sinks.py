"""Sinks: patients and appointments are written back through the core; other streams are counted and skipped."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from singer_sdk.sinks import BatchSink

from wellsky_core.errors import WriteAborted
from wellsky_core.writes import WriteResult, match_key

if TYPE_CHECKING:
    from .target import TargetWellSky


class _QuietSink(BatchSink):
    """Validation is the core's job (pydantic, PHI-free messages), so the SDK's own checks are switched off."""

    MAX_SIZE_DEFAULT = 2000

    def get_validator(self) -> None:  # type: ignore[override]
        return None

    def _parse_timestamps_in_record(self, record: dict, schema: dict, treatment: Any) -> None:
        """Keep timestamps as sent; the core validates them and names the field on error."""

    def __init__(self, target: TargetWellSky, *args: Any, **kwargs: Any) -> None:
        super().__init__(target, *args, **kwargs)
        self.wellsky_target = target

    def process_record(self, record: dict, context: dict) -> None:
        context.setdefault("records", []).append((self.wellsky_target.line_number, record))


class WellSkySink(_QuietSink):
    """Writes a batch with bounded concurrency; records sharing a natural key are written in input order."""

    MAX_SIZE_DEFAULT = 10_000  # large batches: one natural-key scan serves many records (see RecordWriter.prime)

    def _singer_validate_message(self, record: dict) -> None:
        """New records legitimately lack a WellSky id; the core matches them on their natural key instead."""

    def process_batch(self, context: dict) -> None:
        items: list[tuple[int, dict[str, Any]]] = context.get("records", [])
        if not items:
            return
        groups: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        target = self.wellsky_target
        group_key = getattr(target.writer, "group_key", _group_key)
        for line, record in items:
            groups[group_key(self.stream_name, record, line)].append((line, record))
        target.writer.prime(self.stream_name, [record for _, record in items])
        failure: BaseException | None = None
        settled: set[Future[Any]] = set()
        pool = ThreadPoolExecutor(max_workers=target.settings.write_concurrency, thread_name_prefix="wsk-write")
        futures = [pool.submit(self._write_group, group) for group in groups.values()]

        def settle(future: Future[Any]) -> None:
            """Account one finished group exactly once; the first fatal problem stops groups not yet started."""
            nonlocal failure
            if future in settled or future.cancelled() or not future.done():
                return
            settled.add(future)
            outcome, error = future.result()
            for line, record, result in outcome:
                problem = target.account(self.stream_name, line, record, result, raise_on_refusal=False)
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
        self, group: list[tuple[int, dict[str, Any]]]
    ) -> tuple[list[tuple[int, dict[str, Any], WriteResult]], BaseException | None]:
        """Write one natural key's records in input order; stop at the first fatal error, keeping what was done.

        Every outcome (including the ``failed`` write the run stops on, with the key it sent) goes back to the
        sink, so the audit trail holds everything this worker sent even when another worker aborts the run.
        """
        writer = self.wellsky_target.writer
        done: list[tuple[int, dict[str, Any], WriteResult]] = []
        for line, record in group:
            try:
                done.append((line, record, writer.write(self.stream_name, record)))
            except WriteAborted as exc:
                done.append((line, record, exc.result))  # type: ignore[arg-type]
                return done, exc
            except BaseException as exc:
                return done, exc
        return done, None


class IgnoredStreamSink(_QuietSink):
    """A stream WellSky cannot accept: counted and reported, never a crash (an error under ``strict``)."""

    def process_batch(self, context: dict) -> None:
        self.wellsky_target.ignored[self.stream_name] += len(context.get("records", []))


class RefusedStreamSink(_QuietSink):
    """A stream this tenant refuses as a whole (said once, up front): counted as refused, nothing sent."""

    def process_batch(self, context: dict) -> None:
        self.wellsky_target.refused_streams[self.stream_name] += len(context.get("records", []))


def _group_key(stream: str, record: dict[str, Any], line: int) -> str:
    return match_key(stream, record) or f"l:{line}"
