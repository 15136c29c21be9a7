"""Sinks: patients and appointments are written back through the core; other streams are counted and skipped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from singer_sdk.sinks import BatchSink

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

    def _singer_validate_message(self, record: dict) -> None:
        """A missing key property is refused per record in :meth:`process_record` (one line), not a traceback."""

    def process_record(self, record: dict, context: dict) -> None:
        context.setdefault("records", []).append((self.wellsky_target.line_number, record))


class WellSkySink(_QuietSink):
    """Writes a batch with bounded concurrency; records sharing a natural key are written in input order."""

    MAX_SIZE_DEFAULT = 10_000  # large batches: one natural-key scan serves many records (see RecordWriter.prime)

    def process_record(self, record: dict, context: dict) -> None:
        line = self.wellsky_target.line_number
        if not self.wellsky_target.run.missing_key(self.stream_name, line, record, list(self.key_properties or [])):
            context.setdefault("records", []).append((line, record))

    def process_batch(self, context: dict) -> None:
        self.wellsky_target.run.write_batch(self.stream_name, context.get("records", []))


class IgnoredStreamSink(_QuietSink):
    """A stream WellSky cannot accept: counted and reported, never a crash (an error under ``strict``)."""

    def process_batch(self, context: dict) -> None:
        self.wellsky_target.run.ignored[self.stream_name] += len(context.get("records", []))


class RefusedStreamSink(_QuietSink):
    """A stream this tenant refuses as a whole (said once, up front): counted as refused, nothing sent."""

    def process_batch(self, context: dict) -> None:
        run = self.wellsky_target.run
        reason = run.refusal(self.stream_name) or f"{self.stream_name} is refused by this tenant"
        for line, record in context.get("records", []):
            run.refuse_record(self.stream_name, line, record, reason)
