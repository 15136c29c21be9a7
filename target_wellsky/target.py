"""target-wellsky: idempotent, authorization-aware write-back of patients and appointments to WellSky."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any, ClassVar

from singer_sdk import Target
from singer_sdk.exceptions import ConfigValidationError, RecordsWithoutSchemaException
from singer_sdk.io_base import SingerReader

from wellsky_core.cli import fail, run_singer_cli, tune_gc
from wellsky_core.config import SDK_BUILTIN_KEYS, TargetConfig, config_json_schema
from wellsky_core.errors import ConfigError, LineOverBounds, SingerInputError
from wellsky_core.redaction import install_redaction
from wellsky_core.write_run import WriteRun, parse_input_line

from .sinks import IgnoredStreamSink, RefusedStreamSink, WellSkySink


class RecordBeforeSchema(SingerInputError, RecordsWithoutSchemaException):
    """A RECORD arrived for a stream whose SCHEMA was never sent."""


class LineNumberingReader(SingerReader):
    """Counts input lines so every error can name one, and never echoes a line (it may hold patient data)."""

    def __init__(self) -> None:
        super().__init__()
        self.line_number = 0
        self.max_bytes = TargetConfig.model_fields["max_record_bytes"].default
        self.max_depth = TargetConfig.model_fields["max_record_depth"].default
        self.on_refused: Callable[[int, str, str], None] | None = None

    def deserialize_json(self, line: str) -> dict:
        self.line_number += 1
        try:
            return parse_input_line(
                line, self.line_number, max_bytes=self.max_bytes, max_depth=self.max_depth, protocol="Singer"
            )
        except LineOverBounds as refused:
            return self._refuse(line, refused.reason)

    def _refuse(self, line: str, reason: str) -> dict:
        """Refuse a line past the input bounds (it is kept as received in the dead letters, or the run stops)."""
        if self.on_refused is None:
            raise SingerInputError(f"input line {self.line_number} refused: {reason}")
        self.on_refused(self.line_number, reason, line)
        return {"type": REFUSED_LINE}

    def assert_line_requires(self, line_dict: dict, requires: set[str]) -> None:  # type: ignore[override]
        if requires == {"properties"}:  # singer-sdk asks this of a SCHEMA message's schema, not of the line
            if not isinstance(line_dict, dict) or not isinstance(line_dict.get("properties"), dict):
                raise SingerInputError(
                    f"input line {self.line_number}: the SCHEMA message's schema has no properties object; the tap "
                    "must send a JSON schema of an object, with its properties"
                )
            return
        missing = sorted(requires - set(line_dict))
        if missing:
            kind = str(line_dict.get("type", "untyped"))[:30]
            raise SingerInputError(
                f"input line {self.line_number} ({kind} message) lacks required key(s) {', '.join(missing)}"
            )

    def _process_unknown_message(self, message_dict: dict) -> None:
        if message_dict.get("type") == REFUSED_LINE:
            return  # already dead-lettered by _refuse
        raise SingerInputError(
            f"input line {self.line_number}: unknown Singer message type "
            f"{str(message_dict.get('type'))[:30]!r}; expected SCHEMA, RECORD, STATE, BATCH or "
            "ACTIVATE_VERSION"
        )


REFUSED_LINE = "_wellsky_refused_line"


class TargetWellSky(Target):
    """Writes ``patients`` and ``appointments`` streams to a WellSky tenant."""

    name = "target-wellsky"
    package_name = "tap-wellsky"  # the distribution that ships tap, target and core: the SDK reads its version
    config_jsonschema = config_json_schema(TargetConfig)
    default_sink_class = WellSkySink
    message_reader_class = LineNumberingReader
    last_run: ClassVar[TargetWellSky | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        install_redaction()
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._started = time.monotonic()
        super().__init__(*args, **kwargs)
        TargetWellSky.last_run = self
        reader = self.message_reader
        if isinstance(reader, LineNumberingReader):
            reader.max_bytes = self.settings.max_record_bytes
            reader.max_depth = self.settings.max_record_depth
            reader.on_refused = self.refuse_input_line
        self.settings  # noqa: B018 - a bad config fails at startup, even when no record ever arrives
        self.run  # noqa: B018 - its state directory (ledger, audit, dead letters) is checked before any input

    # -- configuration and shared objects ----------------------------------------------------------------
    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """Our validation first: one line per bad key with its fix (a did-you-mean for choices), never the value;
        the SDK's JSON-schema check, which echoes values, only sees a config that already passed."""
        if raise_errors:
            self.settings  # noqa: B018 - raises ConfigError
        return super()._validate_config(raise_errors=raise_errors)

    @cached_property
    def settings(self) -> TargetConfig:
        return TargetConfig.load(dict(self.config), ignore_keys=SDK_BUILTIN_KEYS)

    @cached_property
    def run(self) -> WriteRun:
        """The run's connection, writer, audit, dead letters and counters (shared with destination-wellsky)."""
        return WriteRun(self.settings, self.logger)

    def get_sink_class(self, stream_name: str) -> type[Any]:
        refusal = self.run.refusal(stream_name)
        if refusal is not None:
            self.logger.error(refusal)  # one line for the stream, not one per record
            return RefusedStreamSink
        if stream_name in self.run.writable:
            self.settings  # noqa: B018 - fail fast on bad config before the first record is read
            return WellSkySink
        if self.settings.strict:
            raise ConfigError(
                "strict",
                f"stream {stream_name!r} (line {self.line_number}) cannot be written to "
                f"WellSky; only {', '.join(self.run.writable)} can. Remove it or set strict=false to skip it",
            )
        self.logger.warning(
            "stream %r cannot be written to WellSky (only %s); its records are counted and skipped",
            stream_name,
            ", ".join(self.run.writable),
        )
        return IgnoredStreamSink

    # -- Singer input: line numbers and PHI-free errors ----------------------------------------------------
    @property
    def line_number(self) -> int:
        return self.message_reader.line_number  # type: ignore[attr-defined,no-any-return]

    def _assert_line_requires(self, line_dict: dict, requires: set[str]) -> None:
        self.message_reader.assert_line_requires(line_dict, requires)

    def _assert_sink_exists(self, stream_name: str) -> None:
        if not self.sink_exists(stream_name):
            raise RecordBeforeSchema(
                f"input line {self.line_number}: RECORD for stream {stream_name!r} arrived before "
                "its SCHEMA message; the tap must send SCHEMA first"
            )

    def _process_unknown_message(self, message_dict: dict) -> None:
        raise SingerInputError(
            f"input line {self.line_number}: unknown Singer message type "
            f"{str(message_dict.get('type'))[:30]!r}; expected SCHEMA, RECORD, STATE or "
            "ACTIVATE_VERSION"
        )

    def _assert_stream_name(self, message_dict: dict) -> None:
        if not isinstance(message_dict["stream"], str) or not message_dict["stream"]:
            raise SingerInputError(f"input line {self.line_number}: `stream` must be a non-empty string")

    def _process_record_message(self, message_dict: dict) -> None:
        self._assert_line_requires(message_dict, {"stream", "record"})
        self._assert_stream_name(message_dict)
        if not isinstance(message_dict["record"], dict):  # the SDK would fail with a TypeError traceback
            raise SingerInputError(f"input line {self.line_number}: a RECORD's record must be a JSON object")
        super()._process_record_message(message_dict)

    def _process_schema_message(self, message_dict: dict) -> None:
        self._assert_line_requires(message_dict, {"stream", "schema"})
        self._assert_stream_name(message_dict)
        if not isinstance(message_dict["schema"], dict):
            raise SingerInputError(f"input line {self.line_number}: a SCHEMA's schema must be a JSON object")
        super()._process_schema_message(message_dict)

    def _process_activate_version_message(self, message_dict: dict) -> None:
        self._assert_line_requires(message_dict, {"stream", "version"})  # the SDK would raise a bare KeyError
        self._assert_stream_name(message_dict)
        self._assert_sink_exists(message_dict["stream"])
        super()._process_activate_version_message(message_dict)

    def _process_batch_message(self, message_dict: dict) -> None:
        self._assert_line_requires(message_dict, {"stream", "encoding", "manifest"})
        self._assert_stream_name(message_dict)
        self._assert_sink_exists(message_dict["stream"])
        if not isinstance(message_dict["encoding"], dict) or not isinstance(message_dict["manifest"], list):
            raise SingerInputError(
                f"input line {self.line_number}: BATCH needs an encoding object and a manifest list of file URLs"
            )
        super()._process_batch_message(message_dict)

    # -- results --------------------------------------------------------------------------------------------
    def refuse_input_line(self, line: int, reason: str, raw: str) -> None:
        self.run.refuse_input(line, reason, raw)

    def _handle_termination(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT: exit 128+signal, never 0; the sink accounts what its workers sent on the way out."""
        self.logger.warning("%s received: stopping; re-run on the same input to finish", signal.Signals(signum).name)
        sys.exit(128 + signum)

    @property
    def rejected(self) -> int:
        return self.run.rejected if "run" in self.__dict__ else 0

    def process_endofpipe(self) -> None:
        try:
            super().process_endofpipe()
        finally:
            self.print_summary()
            if "run" in self.__dict__:
                self.run.close()

    def print_summary(self) -> None:
        if "run" in self.__dict__:
            text = self.run.summary("target-wellsky", self.line_number)
        else:
            text = f"target-wellsky summary ({self.line_number} input lines, {time.monotonic() - self._started:.1f}s)"
        print(text, file=sys.stderr, flush=True)


def main() -> None:
    """Console entry point: exit 0 when every record landed, 3 when some were refused (see the dead-letter file),
    2 on a fatal input or configuration error."""
    tune_gc()
    code = run_singer_cli(
        "target-wellsky", lambda: TargetWellSky.cli(standalone_mode=False), config_errors=(ConfigValidationError,)
    )
    if isinstance(code, int) and code:  # the SDK's own config check returns 1 instead of raising here
        fail("target-wellsky", "invalid configuration; fix the settings named above")
    run = TargetWellSky.last_run
    sys.exit(3 if run is not None and run.rejected else 0)


if __name__ == "__main__":
    main()
