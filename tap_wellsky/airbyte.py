"""source-wellsky: the Airbyte protocol face of the connector, over the same core and stream definitions as the tap.

``source-wellsky spec|check|discover|read --config F [--catalog F] [--state F]`` writes one Airbyte message per
line on stdout (and nothing else: logging becomes LOG messages). Records come from the same
``Connection.channel(stream).iter_records`` the Singer tap reads, schemas from ``stream_schema`` and keys from
``ENTITIES``, so the two faces cannot disagree about what a stream is.

State is per stream (``{"type": "STREAM", "stream": {"stream_descriptor": {"name": ...}, "stream_state":
{"updated_at": ...}}}``). On an ordered channel a checkpoint follows every page's worth of records and only
names an ``updated_at`` already emitted, so a sync killed at any point resumes without losing a record
(``updated_since`` is inclusive: records at the bookmark itself come again — at least once, never lost).
Unordered channels checkpoint once, at the end of the stream.

Exit codes: 0 on success (``check`` exits 0 with a FAILED status, as the protocol expects), 1 when a stream
or the command failed (a TRACE error names why), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from wellsky_core.config import WellSkyConfig, config_json_schema
from wellsky_core.connection import Connection
from wellsky_core.errors import AuthError, ConfigError, WellSkyError, WellSkyTransportError
from wellsky_core.models import ENTITIES
from wellsky_core.redaction import install_redaction
from wellsky_core.schemas import stream_schema

from .embedded import load_tap_config
from .tap import TAP_ONLY_KEYS

log = logging.getLogger("source-wellsky")

DOCUMENTATION_URL = "https://github.com/wellsky-connector/tap-wellsky#readme"
SYNC_MODES = ["full_refresh", "incremental"]
PROGRESS_EVERY_SECONDS = 15.0
_LOG_LEVELS = {
    logging.CRITICAL: "FATAL",
    logging.ERROR: "ERROR",
    logging.WARNING: "WARN",
    logging.INFO: "INFO",
    logging.DEBUG: "DEBUG",
}


class Output:
    """Serializes Airbyte messages to stdout, one per line, safe to call from any thread.

    Records are buffered (a write syscall per record would dominate a large sync); STATE and TRACE messages
    flush, so everything a checkpoint vouches for has left the process before the checkpoint does.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._out = stream
        self._lock = threading.Lock()

    def emit(self, message: dict[str, Any], *, flush: bool = False) -> None:
        line = orjson.dumps(message) + b"\n"
        with self._lock:
            self._out.write(line)
            if flush:
                self._out.flush()

    def record(self, stream: str, data: dict[str, Any]) -> None:
        self.emit({"type": "RECORD", "record": {"stream": stream, "data": data, "emitted_at": _now_ms()}})

    def log(self, level: str, message: str) -> None:
        self.emit({"type": "LOG", "log": {"level": level, "message": message}}, flush=True)

    def state(self, stream: str, cursor: str | None, records: int) -> None:
        """A per-stream checkpoint; ``records`` counts the records since the previous one (sourceStats)."""
        stream_state = {"updated_at": cursor} if cursor is not None else {}
        self.emit(
            {
                "type": "STATE",
                "state": {
                    "type": "STREAM",
                    "stream": {"stream_descriptor": {"name": stream}, "stream_state": stream_state},
                    "sourceStats": {"recordCount": float(records)},
                },
            },
            flush=True,
        )

    def stream_status(self, stream: str, status: str) -> None:
        self.emit(
            {
                "type": "TRACE",
                "trace": {
                    "type": "STREAM_STATUS",
                    "emitted_at": float(_now_ms()),
                    "stream_status": {"stream_descriptor": {"name": stream}, "status": status},
                },
            },
            flush=True,
        )

    def error(self, exc: BaseException, *, stream: str | None = None) -> None:
        """A TRACE error: the user-facing message, failure type and an internal message free of PHI."""
        message, internal, failure_type = describe_error(exc)
        error: dict[str, Any] = {
            "message": message,
            "internal_message": internal,
            "failure_type": failure_type,
            # Frames only, never the exception text: a third-party message could quote record values.
            "stack_trace": "".join(traceback.format_tb(exc.__traceback__)),
        }
        if stream:
            error["stream_descriptor"] = {"name": stream}
        self.emit(
            {"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": float(_now_ms()), "error": error}}, flush=True
        )

    def flush(self) -> None:
        with self._lock:
            self._out.flush()


class AirbyteLogHandler(logging.Handler):
    """Logging → LOG messages on stdout (the Airbyte platform reads only stdout, and only protocol messages)."""

    def __init__(self, output: Output) -> None:
        super().__init__(logging.INFO)
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = _LOG_LEVELS.get(record.levelno, "INFO")
            self.output.log(level, self.format(record))  # redacted by the filter install_redaction() adds
        except Exception:  # a log line must never break a sync
            self.handleError(record)


def describe_error(exc: BaseException) -> tuple[str, str, str]:
    """(message, internal_message, failure_type) for a TRACE error, never echoing data of unknown origin.

    Core errors carry messages written to be shown (they name the setting and the fix, never PHI or secrets,
    so they are passed on verbatim). Anything else is reported by its type only.
    """
    if isinstance(exc, ConfigError | AuthError):
        text = str(exc)
        return text, f"{type(exc).__name__}: {text}", "config_error"
    if isinstance(exc, WellSkyTransportError):
        text = str(exc)
        return text, f"{type(exc).__name__}: {text}", "transient_error"
    if isinstance(exc, WellSkyError):
        text = str(exc)
        return text, f"{type(exc).__name__}: {text}", "system_error"
    return (
        f"source-wellsky failed with an unexpected {type(exc).__name__}; see the stack trace and report it",
        f"{type(exc).__module__}.{type(exc).__name__}",
        "system_error",
    )


# --- the protocol's documents ------------------------------------------------------------------------------


def connection_specification() -> dict[str, Any]:
    """The config JSON schema (generated from WellSkyConfig; secrets carry ``airbyte_secret``)."""
    schema = config_json_schema(WellSkyConfig)
    schema["title"] = "WellSky Source Spec"
    schema["properties"].update(TAP_ONLY_KEYS)
    schema["required"] = []
    schema["additionalProperties"] = True  # the platform may add its own keys; load() still rejects typos
    return schema


def spec_message() -> dict[str, Any]:
    return {
        "type": "SPEC",
        "spec": {
            "documentationUrl": DOCUMENTATION_URL,
            "connectionSpecification": connection_specification(),
            "supportsIncremental": True,
        },
    }


def airbyte_stream(name: str) -> dict[str, Any]:
    """One stream of the catalog, straight from the canonical entity definition."""
    spec = ENTITIES[name]
    return {
        "name": name,
        "json_schema": stream_schema(name),
        "supported_sync_modes": SYNC_MODES,
        "source_defined_cursor": True,
        "default_cursor_field": [spec.replication_key],
        "source_defined_primary_key": [[key] for key in spec.primary_key],
        "is_resumable": True,
    }


def catalog_message() -> dict[str, Any]:
    return {"type": "CATALOG", "catalog": {"streams": [airbyte_stream(name) for name in ENTITIES]}}


# --- config, catalog and state files -------------------------------------------------------------------------


def _read_json(path: str, what: str) -> Any:
    try:
        return orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise ConfigError(what, f"file {path} does not exist; pass an existing JSON file to --{what}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(what, f"file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_config(path: str, *, start_embedded: bool) -> WellSkyConfig:
    """The validated config file (``embedded.load_tap_config``: the embedded sandbox when no base_url)."""
    raw = _read_json(path, "config")
    if not isinstance(raw, dict):
        raise ConfigError("config", f"{path} must hold a JSON object of settings")
    return load_tap_config(raw, start_embedded=start_embedded)


class ConfiguredStream:
    """The part of a ConfiguredAirbyteStream a read needs."""

    def __init__(self, name: str, sync_mode: str) -> None:
        self.name = name
        self.sync_mode = sync_mode


def load_catalog(path: str) -> list[ConfiguredStream]:
    """The configured streams, in catalog order; unknown names and sync modes are config errors."""
    raw = _read_json(path, "catalog")
    entries = raw.get("streams") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise ConfigError("catalog", f"{path} must be a ConfiguredAirbyteCatalog: an object with a `streams` list")
    streams: list[ConfiguredStream] = []
    unknown: list[str] = []
    for i, entry in enumerate(entries):
        stream = entry.get("stream") if isinstance(entry, dict) else None
        name = stream.get("name") if isinstance(stream, dict) else None
        if not isinstance(name, str):
            raise ConfigError("catalog", f"streams[{i}] has no stream.name; regenerate the catalog with discover")
        if name not in ENTITIES:
            unknown.append(name)
            continue
        mode = entry.get("sync_mode", "incremental")
        if mode not in SYNC_MODES:
            raise ConfigError("catalog", f"stream {name}: sync_mode must be one of {', '.join(SYNC_MODES)}")
        streams.append(ConfiguredStream(name, mode))
    if unknown:
        raise ConfigError(
            "catalog",
            f"names unknown stream(s) {', '.join(sorted(unknown))}; valid streams are {', '.join(ENTITIES)} "
            "(run discover for a fresh catalog)",
        )
    return streams


def load_state(path: str | None) -> dict[str, str]:
    """Per-stream cursors from any state shape a platform may hand back.

    Accepted: the per-stream list (``[{"type": "STREAM", "stream": {...}}]``), a single STATE message or its
    ``state`` body, the legacy dict (``{"patients": {"updated_at": ...}}``, optionally wrapped in ``data``)
    and a Singer tap's ``{"bookmarks": ...}`` so a pipeline can switch faces without a full resync.
    """
    if not path:
        return {}
    raw = _read_json(path, "state")
    if isinstance(raw, dict) and raw.get("type") == "STATE" and "state" in raw:
        raw = raw["state"]
    if isinstance(raw, dict) and raw.get("type") in ("STREAM", "LEGACY", "GLOBAL"):
        raw = [raw]
    cursors: dict[str, str] = {}
    if isinstance(raw, list):
        for item in raw:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "STREAM":
                body = item.get("stream") or {}
                name = (body.get("stream_descriptor") or {}).get("name")
                value = (body.get("stream_state") or {}).get("updated_at")
                if name and value:
                    cursors[name] = str(value)
            elif kind == "LEGACY":
                cursors.update(_legacy_cursors(item.get("data") or {}))
            else:
                raise ConfigError(
                    "state",
                    f"holds a {kind or 'malformed'} state; this source writes per-stream (STREAM) state — pass "
                    "the state it emitted, or no --state for a full sync",
                )
        return cursors
    if isinstance(raw, dict):
        return _legacy_cursors(raw.get("data", raw) if "data" in raw and isinstance(raw["data"], dict) else raw)
    raise ConfigError("state", f"{path} must hold a JSON list of STREAM states or a legacy state object")


def _legacy_cursors(data: Mapping[str, Any]) -> dict[str, str]:
    if isinstance(data.get("bookmarks"), dict):
        data = {
            name: {"updated_at": b.get("replication_key_value")}
            for name, b in data["bookmarks"].items()
            if isinstance(b, dict)
        }
    return {
        name: str(value["updated_at"])
        for name, value in data.items()
        if isinstance(value, dict) and value.get("updated_at")
    }


def _parse_cursor(stream: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError("state", f"stream {stream}: updated_at is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise ConfigError("state", f"stream {stream}: updated_at must carry a UTC offset (e.g. ...Z)")
    return parsed


# --- commands -----------------------------------------------------------------------------------------------


def check(output: Output, config_path: str) -> int:
    """CONNECTION_STATUS from a real ``GET /tenant``: proves URL, TLS and credentials in one request."""
    connection: Connection | None = None
    try:
        connection = Connection(load_config(config_path, start_embedded=True))
        tenant = connection.tenant()
        product = connection.product
        status = {"status": "SUCCEEDED", "message": f"connected to {tenant.get('name', 'the tenant')} ({product})"}
    except WellSkyError as exc:
        status = {"status": "FAILED", "message": describe_error(exc)[0]}
    finally:
        if connection is not None:
            connection.close()
    output.emit({"type": "CONNECTION_STATUS", "connectionStatus": status}, flush=True)
    return 0


def discover(output: Output, config_path: str) -> int:
    """The catalog is the canonical model set: no request needed (schemas do not vary per tenant)."""
    load_config(config_path, start_embedded=False)
    output.emit(catalog_message(), flush=True)
    return 0


def read(output: Output, config_path: str, catalog_path: str, state_path: str | None) -> int:
    """RECORD and STATE messages for every configured stream; one failing stream does not stop the others."""
    config = load_config(config_path, start_embedded=True)
    streams = load_catalog(catalog_path)
    raw_cursors = load_state(state_path)
    cursors = {name: _parse_cursor(name, value) for name, value in raw_cursors.items()}
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
        connection.close()
        log.info(
            "sync finished in %.1fs: %d pages, %d requests, %d retries, %d re-logins",
            time.monotonic() - started,
            metrics["pages"],
            metrics["requests"],
            metrics["retries"],
            metrics["reauths"],
        )
    if failed:
        log.error("streams that did not finish: %s (rerun with the last state to resume)", ", ".join(failed))
        return 1
    return 0


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
    records: Iterator[dict[str, Any]] = channel.iter_records(stream.name, since)
    for record in records:
        if not running:
            output.stream_status(stream.name, "RUNNING")
            running = True
        output.record(stream.name, record)
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


def _now_ms() -> int:
    return int(time.time() * 1000)


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
    output = Output(stdout or sys.stdout.buffer)
    handler = AirbyteLogHandler(output)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "httpcore", "uvicorn", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_redaction()
    try:
        if args.command == "spec":
            output.emit(spec_message(), flush=True)
            return 0
        if args.command == "check":
            return check(output, args.config)
        if args.command == "discover":
            return discover(output, args.config)
        return read(output, args.config, args.catalog, args.state)
    except Exception as exc:
        output.error(exc)
        return 1
    finally:
        output.flush()


def main() -> None:
    """Console entry point (``source-wellsky``)."""
    sys.exit(run())


if __name__ == "__main__":
    main()
