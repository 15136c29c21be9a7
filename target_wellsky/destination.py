"""destination-wellsky: the Airbyte face of the write-back (spec / check / write).

Airbyte and PyAirbyte users sync patients and appointments into WellSky through the same write run as
target-wellsky (``wellsky_core.write_run``: validation, natural-key matching, idempotency keys, authorization
checks, audit, dead letters). The protocol plumbing (typed messages, TRACE errors, the connection check) is the
shared Airbyte message side in ``wellsky_core.airbyte``.

Checkpoints: records are written in batches; every STATE message is echoed only after every record before it
was written (or dead-lettered), so the platform never commits a state ahead of WellSky.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from typing import IO, Any

from airbyte_protocol.models import (
    AirbyteMessage,
    ConfiguredAirbyteCatalog,
    ConnectorSpecification,
    DestinationSyncMode,
    Type,
)
from pydantic import ValidationError

from wellsky_core.airbyte import Output, connection_check, read_json, run_command
from wellsky_core.cli import tune_gc
from wellsky_core.config import TargetConfig, airbyte_spec_schema, refuse_command_settings
from wellsky_core.errors import ConfigError, LineOverBounds, SingerInputError, WriteRunRefusals
from wellsky_core.write_run import WriteRun, parse_input_line

log = logging.getLogger("destination-wellsky")

DOCUMENTATION_URL = "https://docs.airbyte.com/integrations/destinations"
BATCH_SIZE = 1000
SYNC_MODES = (DestinationSyncMode.append, DestinationSyncMode.append_dedup)
"""Writes are upserts (matched on id or natural key), so both keep one WellSky record per patient/visit."""


def spec_message() -> AirbyteMessage:
    schema = airbyte_spec_schema(TargetConfig, "WellSky Destination Spec")
    spec = ConnectorSpecification(
        documentationUrl=DOCUMENTATION_URL,
        connectionSpecification=schema,
        supportsIncremental=True,
        supported_destination_sync_modes=list(SYNC_MODES),
    )
    return AirbyteMessage(type=Type.SPEC, spec=spec)


def load_settings(path: str) -> TargetConfig:
    raw = read_json(path, "config")
    if not isinstance(raw, dict):
        raise ConfigError("config", f"{path} must hold a JSON object of settings")
    refuse_command_settings(raw)
    return TargetConfig.load(raw)


def load_streams(path: str) -> dict[str, DestinationSyncMode]:
    """The configured streams and their sync modes; ``overwrite`` is refused (it would mean deleting records)."""
    raw = read_json(path, "catalog")
    try:
        catalog = ConfiguredAirbyteCatalog.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError("catalog", f"{path} is not a ConfiguredAirbyteCatalog ({where}: {first['msg']})") from None
    streams: dict[str, DestinationSyncMode] = {}
    for configured in catalog.streams:
        mode = configured.destination_sync_mode
        if mode not in SYNC_MODES:
            raise ConfigError(
                "catalog",
                f"stream {configured.stream.name!r}: destination_sync_mode {mode.value!r} is not supported; WellSky "
                "records are never deleted, so use append or append_dedup (both update in place)",
            )
        streams[configured.stream.name] = mode
    return streams


class Writer:
    """Buffers RECORD messages per stream and writes them through the run at each STATE and at the end."""

    def __init__(self, output: Output, run: WriteRun, streams: dict[str, DestinationSyncMode]) -> None:
        self.output = output
        self.run = run
        self.streams = streams
        self.pending: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        self.skipped: set[str] = set()

    def message(self, number: int, message: dict[str, Any]) -> None:
        try:
            parsed = AirbyteMessage.model_validate(message)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SingerInputError(
                f"input line {number} is not a valid Airbyte message ({where}: {first['msg']})"
            ) from None
        if parsed.type == Type.RECORD and parsed.record is not None:
            self.record(number, parsed.record.stream, message["record"]["data"])
        elif parsed.type == Type.STATE:
            self.flush()
            self.output.emit(parsed, flush=True)  # every record before it is in WellSky (or dead-lettered)
        # LOG / TRACE from the source are not ours to act on

    def record(self, number: int, stream: str, data: dict[str, Any]) -> None:
        if stream not in self.streams:
            raise SingerInputError(f"input line {number}: stream {stream!r} is not in the configured catalog")
        refusal = self.run.refusal(stream)
        if refusal is not None:  # every record is dead-lettered and audited; the reason is said once
            if stream not in self.skipped:
                self.skipped.add(stream)
                log.error(refusal)
            self.run.refuse_record(stream, number, data, refusal)
            return
        if stream in self.skipped:
            return
        if stream not in self.run.writable:
            self.skipped.add(stream)
            log.warning(
                "stream %r cannot be written to WellSky (only %s); skipped", stream, ", ".join(self.run.writable)
            )
            self.run.ignored[stream] += 1
            return
        self.pending[stream].append((number, data))
        if len(self.pending[stream]) >= BATCH_SIZE:
            self.run.write_batch(stream, self.pending.pop(stream))

    def flush(self) -> None:
        for stream in list(self.pending):
            self.run.write_batch(stream, self.pending.pop(stream))


def write(output: Output, config_path: str, catalog_path: str, stdin: IO[str]) -> int:
    settings = load_settings(config_path)
    streams = load_streams(catalog_path)
    run = WriteRun(settings, log)
    writer = Writer(output, run, streams)
    number = 0
    try:
        for line in stdin:
            number += 1
            if not line.strip():
                continue
            try:
                message = parse_input_line(
                    line,
                    number,
                    max_bytes=settings.max_record_bytes,
                    max_depth=settings.max_record_depth,
                    protocol="Airbyte",
                )
            except LineOverBounds as refused:
                run.refuse_input(number, refused.reason, line)
                continue
            writer.message(number, message)
        writer.flush()
    finally:
        log.info(run.summary("destination-wellsky", number))
        run.close()
    if run.rejected:
        where = f"; see {settings.dead_letter_path}" if settings.dead_letter_path else ""
        raise WriteRunRefusals(f"{run.rejected} record(s) could not be written to WellSky{where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="destination-wellsky", description="Airbyte destination for WellSky.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("spec", help="print the connector specification")
    sub = commands.add_parser("check", help="test the connection")
    sub.add_argument("--config", required=True, help="JSON config file")
    sub = commands.add_parser("write", help="write the records read from stdin")
    sub.add_argument("--config", required=True, help="JSON config file")
    sub.add_argument("--catalog", required=True, help="ConfiguredAirbyteCatalog JSON file")
    return parser


def run(argv: list[str] | None = None, stdout: IO[bytes] | None = None, stdin: IO[str] | None = None) -> int:
    """Run one command; every outcome, including failures, is reported as Airbyte messages on stdout."""
    args = build_parser().parse_args(argv)

    def command(output: Output) -> int:
        if args.command == "spec":
            output.emit(spec_message(), flush=True)
            return 0
        if args.command == "check":
            return connection_check(output, lambda: load_settings(args.config))
        return write(output, args.config, args.catalog, stdin or sys.stdin)

    return run_command(stdout, command)


def main() -> None:
    """Console entry point (``destination-wellsky``)."""
    tune_gc()
    sys.exit(run())


if __name__ == "__main__":
    main()
