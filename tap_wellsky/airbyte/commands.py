"""The ``source-wellsky`` commands: spec, check, discover and read, over the protocol side in ``protocol.py``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

from wellsky_core.connection import Connection
from wellsky_core.errors import AuthError, ConfigError
from wellsky_core.quality import default_report_path, write_report

from .protocol import (
    PROGRESS_EVERY_SECONDS,
    ConfiguredStream,
    Output,
    catalog_message,
    connection_check,
    load_catalog,
    load_config,
    load_state,
    parse_cursor,
    run_command,
    spec_message,
)

log = logging.getLogger("source-wellsky")


def check(output: Output, config_path: str) -> int:
    """CONNECTION_STATUS from a real request to the tenant (see ``protocol.connection_check``)."""
    return connection_check(output, lambda: load_config(config_path, start_embedded=True))


def discover(output: Output, config_path: str) -> int:
    """The catalog is the canonical model set: no request needed (schemas do not vary per tenant)."""
    config = load_config(config_path, start_embedded=False)
    output.emit(catalog_message(config), flush=True)
    return 0


def read(output: Output, config_path: str, catalog_path: str, state_path: str | None) -> int:
    """RECORD and STATE messages for every configured stream; one failing stream does not stop the others."""
    config = load_config(config_path, start_embedded=True)
    streams = load_catalog(catalog_path)
    raw_cursors = load_state(state_path)
    cursors = {name: parse_cursor(name, value) for name, value in raw_cursors.items()}
    connection = Connection(config)
    failed: list[str] = []
    started = time.monotonic()
    try:
        for stream in streams:
            output.stream_status(stream.name, "STARTED")
            try:
                count = _read_stream(output, connection, stream, cursors.get(stream.name), raw_cursors.get(stream.name))
            except (ConfigError, AuthError) as exc:
                # Every other stream would fail the same way: stop here with one clear error.
                output.error(exc, stream=stream.name)
                output.stream_status(stream.name, "INCOMPLETE")
                return 1
            except Exception as exc:
                output.error(exc, stream=stream.name)
                output.stream_status(stream.name, "INCOMPLETE")
                failed.append(stream.name)
                continue
            output.stream_status(stream.name, "COMPLETE")
            log.info("%s: %d records", stream.name, count)
    finally:
        metrics = connection.metrics.snapshot()
        report = connection.quality_report(config.max_flagged_fraction)
        connection.close()
        log.info(
            "sync finished in %.1fs: %d pages, %d requests, %d retries, %d re-logins",
            time.monotonic() - started,
            metrics["pages"],
            metrics["requests"],
            metrics["retries"],
            metrics["reauths"],
        )
        _log_quality(report, config.data_quality_report_path)
    if failed:
        log.error("streams that did not finish: %s (rerun with the last state to resume)", ", ".join(failed))
        return 1
    if report["streams_over_threshold"]:
        output.error(
            ConfigError(
                "max_flagged_fraction",
                f"share of records with data-quality flags above {report['max_flagged_fraction']} in "
                f"{', '.join(report['streams_over_threshold'])}; see the data-quality report, or raise the threshold",
            )
        )
        return 1
    return 0


def _log_quality(report: dict[str, Any], path: str | None) -> None:
    """The data-quality counts as a LOG line and the JSON report file (same report as the Singer tap's)."""
    totals = report["totals"]
    level = logging.WARNING if report["status"] != "ok" else logging.INFO
    per_stream = ", ".join(
        f"{name} {s['flagged']}/{s['records']} flagged, {s['dead_lettered']} dead-lettered"
        for name, s in report["streams"].items()
    )
    log.log(
        level,
        "data quality %s: %d flagged, %d dead-lettered, %d skipped (%s)",
        report["status"].upper(),
        totals["flagged"],
        totals["dead_lettered"],
        totals["skipped"],
        per_stream or "no records",
    )
    try:
        write_report(report, path or default_report_path())
    except OSError as exc:
        log.warning("could not write the data-quality report (%s)", exc.strerror or exc)


def _read_stream(
    output: Output,
    connection: Connection,
    stream: ConfiguredStream,
    cursor: datetime | None,
    cursor_text: str | None,
) -> int:
    config = connection.config
    incremental = stream.sync_mode == "incremental"
    since = cursor if incremental else None
    if config.start_date is not None and (since is None or config.start_date > since):
        since = config.start_date
    channel = connection.channel(stream.name)
    reason = channel.unavailable_reason(stream.name)
    if reason is not None:
        log.warning("%s is not available for this product: %s; nothing synced for it", stream.name, reason)
        return 0
    if not channel.supports(stream.name):
        raise ConfigError(
            "stream_sources",
            f"source {channel.name} cannot deliver {stream.name} for this tenant; set stream_sources."
            f"{stream.name} to another source (e.g. api)",
        )
    every = config.page_size
    count = checkpointed = 0
    # The bookmark never moves past what was emitted: ordered channels advance record by record, unordered
    # ones only at the end, to the largest updated_at seen.
    bookmark_text = cursor_text if incremental else None
    best: datetime | None = cursor if incremental else None
    running = False
    started = last_report = time.monotonic()
    observe = connection.quality.observe
    records: Iterator[dict[str, Any]] = channel.iter_records(stream.name, since)
    for record in records:
        if not running:
            output.stream_status(stream.name, "RUNNING")
            running = True
        output.record(stream.name, record)
        observe(stream.name, record)
        count += 1
        if incremental:
            value = record.get("updated_at")
            if channel.ordered:
                bookmark_text = value
            elif value is not None:
                parsed = datetime.fromisoformat(value)
                if best is None or parsed > best:
                    best, bookmark_text = parsed, value
            if channel.ordered and count % every == 0:
                output.state(stream.name, bookmark_text, count - checkpointed)
                checkpointed = count
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY_SECONDS:
            last_report = now
            log.info("%s: %d records so far (%.0f/s)", stream.name, count, count / (now - started))
    resume = channel.resume_point(stream.name)
    if incremental and resume is not None:  # e.g. a bulk export's transactionTime, not the newest updated_at
        bookmark_text = resume.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if incremental:
        output.state(stream.name, bookmark_text, count - checkpointed)
    output.flush()
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="source-wellsky", description="Airbyte source for the WellSky EHR.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("spec", help="print the connector specification")
    for name, text in (("check", "test the connection"), ("discover", "print the catalog")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", required=True, help="JSON config file")
    sub = commands.add_parser("read", help="sync the configured streams")
    sub.add_argument("--config", required=True, help="JSON config file")
    sub.add_argument("--catalog", required=True, help="ConfiguredAirbyteCatalog JSON file")
    sub.add_argument("--state", help="state JSON file (per-stream list or legacy object)")
    return parser


def run(argv: list[str] | None = None, stdout: IO[bytes] | None = None) -> int:
    """Run one command; every outcome, including failures, is reported as Airbyte messages."""
    args = build_parser().parse_args(argv)

    def command(output: Output) -> int:
        if args.command == "spec":
            output.emit(spec_message(), flush=True)
            return 0
        if args.command == "check":
            return check(output, args.config)
        if args.command == "discover":
            return discover(output, args.config)
        return read(output, args.config, args.catalog, args.state)

    return run_command(stdout, command)


def main() -> None:
    """Console entry point (``source-wellsky``)."""
    sys.exit(run())

