"""Sinks: patients and appointments are written back through the core; other streams are counted and skipped."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from singer_sdk.sinks import BatchSink

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
        with ThreadPoolExecutor(max_workers=target.settings.write_concurrency, thread_name_prefix="wsk-write") as pool:
            for outcome in pool.map(self._write_group, groups.values()):
                for line, record, result in outcome:
                    target.account(self.stream_name, line, record, result)

    def _write_group(self, group: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any], WriteResult]]:
        writer = self.wellsky_target.writer
        return [(line, record, writer.write(self.stream_name, record)) for line, record in group]


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
