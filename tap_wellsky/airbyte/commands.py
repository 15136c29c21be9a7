"""The ``source-wellsky`` commands: spec, check, discover and read, over the protocol side in ``protocol.py``."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import IO, Any

from wellsky_core.airbyte import exit_code
from wellsky_core.cli import tune_gc
from wellsky_core.config import WellSkyConfig
from wellsky_core.connection import Connection, reads_in_any_thread
from wellsky_core.discovery import not_offered_reason, offered
from wellsky_core.errors import AuthError, ConfigError
from wellsky_core.models import ENTITIES
from wellsky_core.quality import save_report
from wellsky_core.read_loop import StreamRead
from wellsky_core.stream_state import check_ownership, checked_state
from wellsky_core.stream_workers import run_workers

from .protocol import (
    ConfiguredStream,
    Output,
    catalog_message,
    connection_check,
    load_catalog,
    load_config,
    load_state,
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
    """RECORD and STATE messages for every configured stream; one failing stream does not stop the others.

    Config, catalog and state are all checked before the first request (a foreign state, a stream this
    configuration cannot serve: one TRACE error, nothing read).
    """
    settings = load_config(config_path, start_embedded=False)
    streams = load_catalog(catalog_path)
    for stream in streams:
        if not offered(settings, stream.name):
            raise ConfigError("catalog", not_offered_reason(settings, stream.name))
    keys = {name: spec.replication_key for name, spec in ENTITIES.items()}
    states = checked_state({"bookmarks": load_state(state_path)}, keys)["bookmarks"]
    incremental = {s.name for s in streams if s.sync_mode == "incremental"}  # a full refresh reads no state
    check_ownership(
        {k: v for k, v in states.items() if k in incremental}, settings, accept_foreign=settings.accept_foreign_state
    )
    config = load_config(config_path, start_embedded=True)
    connection = Connection(config)
    # a refused login: one TRACE, no stream started, the tenant's report says aborted
    connection.sign_in(
        (stream.name for stream in streams), max_flagged_fraction=config.max_flagged_fraction, exit_code=exit_code
    )
    failed: list[str] = []
    ended_by: BaseException | None = None
    started = time.monotonic()
    try:
        failed, ended_by = _read_streams(output, connection, streams, states, config.max_parallel_streams)
    except BaseException as exc:  # the report's status must say what the exit code will say
        ended_by = exc
        raise
    finally:
        metrics = connection.metrics.snapshot()
        report = connection.quality_report(
            config.max_flagged_fraction, ended_by=ended_by, incomplete=failed, exit_code=exit_code
        )
        connection.close()
        log.info(
            "sync finished in %.1fs: %d pages, %d requests, %d retries, %d re-logins",
            time.monotonic() - started,
            metrics["pages"],
            metrics["requests"],
            metrics["retries"],
            metrics["reauths"],
        )
        _log_quality(report, config)
    if failed:
        log.error("streams that did not finish: %s (rerun with the last state to resume)", ", ".join(failed))
    elif ended_by is None and report["streams_over_threshold"]:
        output.error(
            ConfigError(
                "max_flagged_fraction",
                f"share of records with data-quality flags above {report['max_flagged_fraction']} in "
                f"{', '.join(report['streams_over_threshold'])}; see the data-quality report, or raise the threshold",
            )
        )
    return int(report["exit_code"])  # the report and the process say the same


def _log_quality(report: dict[str, Any], config: WellSkyConfig) -> None:
    """The data-quality counts as a LOG line and the JSON report file (same report, same place as the Singer
    tap's: ``data_quality_report_path``, else the tenant's private state directory)."""
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
    save_report(report, config, log)


class _Stopped(Exception):
    """Another stream's config or login error (or an interrupt) stopped the read: this stream is INCOMPLETE."""


def _read_streams(
    output: Output,
    connection: Connection,
    streams: list[ConfiguredStream],
    states: dict[str, Any],
    workers: int,
) -> tuple[list[str], BaseException | None]:
    """Every configured stream, ``workers`` at a time (``max_parallel_streams``: the Singer face's setting, the
    same default), all on the connection's one request budget. Airbyte takes interleaved streams: each stream's
    STATE follows its own records (one thread writes both, every message a whole line), and no stream shares
    state with another. A config or login error stops the others (each would fail the same way); any other
    failure leaves its stream INCOMPLETE and the others go on. Returns the failed streams (catalog order) and
    the error that stopped the read, if one did. A stream whose channel belongs to one thread (the portals'
    browser: ``connection.reads_in_any_thread``) is read afterwards in this thread, as the Singer face does."""
    stop = threading.Event()
    failed: set[str] = set()
    stopped_by: list[BaseException] = []
    pending = [stream for stream in streams if reads_in_any_thread(connection.config, stream.name)]
    serial = [stream for stream in streams if stream not in pending]
    lock = threading.Lock()

    def one(stream: ConfiguredStream) -> None:
        output.stream_status(stream.name, "STARTED")
        try:
            count = _read_stream(output, connection, stream, states.get(stream.name), stop)
        except _Stopped:
            output.stream_status(stream.name, "INCOMPLETE")
            return
        except (ConfigError, AuthError) as exc:
            output.error(exc, stream=stream.name)
            output.stream_status(stream.name, "INCOMPLETE")
            with lock:
                stopped_by.append(exc)
            stop.set()
            return
        except Exception as exc:
            output.error(exc, stream=stream.name)
            output.stream_status(stream.name, "INCOMPLETE")
            with lock:
                failed.add(stream.name)
            return
        output.stream_status(stream.name, "COMPLETE")
        log.info("%s: %d records", stream.name, count)

    if workers <= 1 or len(pending) <= 1:  # one stream at a time (or one stream): all of them in this thread
        pending, serial = [], list(streams)
    if pending:  # an interrupt sets ``stop`` and gives each stream 10 s to finish its request
        run_workers(pending, one, workers=workers, stop=stop, name="source-wellsky-stream", grace_seconds=10)
    for stream in serial:
        if stop.is_set():
            break
        one(stream)
    order = [stream.name for stream in streams]
    return sorted(failed, key=order.index), (stopped_by[0] if stopped_by else None)


def _read_stream(
    output: Output,
    connection: Connection,
    stream: ConfiguredStream,
    state: dict[str, Any] | None,
    stop: threading.Event | None = None,
) -> int:
    """The core's read loop (``wellsky_core.read_loop``, shared with the Singer tap), as Airbyte messages."""
    incremental = stream.sync_mode == "incremental"
    read = StreamRead(connection, stream.name, incremental=incremental, state=dict(state or {}), logger=log)
    every = connection.config.page_size
    running = False
    for record in read.records():
        if stop is not None and stop.is_set():
            raise _Stopped(stream.name)
        if not running:
            output.stream_status(stream.name, "RUNNING")
            running = True
        output.record(stream.name, record)
        if read.checkpoint_due(every):
            output.state(stream.name, *read.checkpoint())
    if incremental:
        output.state(stream.name, *read.checkpoint())
    output.flush()
    return read.count


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
    tune_gc()
    sys.exit(run())

