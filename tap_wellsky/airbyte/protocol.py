"""The Airbyte protocol side of ``source-wellsky``: typed messages out, config / catalog / state files in.

Every message is built as an ``airbyte_protocol.models`` model and serialized with only the fields set, so
what the platform reads is valid by construction. One exception, for speed: RECORD lines (the hot path, one
per record) are serialized directly in :meth:`Output.record`; ``tests/airbyte`` validates every line of a
read against ``AirbyteMessage``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import orjson
from airbyte_protocol.models import (
    AirbyteCatalog,
    AirbyteConnectionStatus,
    AirbyteErrorTraceMessage,
    AirbyteLogMessage,
    AirbyteMessage,
    AirbyteStateBlob,
    AirbyteStateMessage,
    AirbyteStateStats,
    AirbyteStateType,
    AirbyteStream,
    AirbyteStreamState,
    AirbyteStreamStatus,
    AirbyteStreamStatusTraceMessage,
    AirbyteTraceMessage,
    ConnectorSpecification,
    FailureType,
    Level,
    Status,
    StreamDescriptor,
    SyncMode,
    TraceType,
    Type,
)

from wellsky_core.config import TapConfig, WellSkyConfig, airbyte_spec_schema, refuse_command_settings
from wellsky_core.discovery import discoverable_streams
from wellsky_core.errors import AuthError, ConfigError, StateError, WellSkyError, WellSkyTransportError
from wellsky_core.models import ENTITIES
from wellsky_core.schemas import stream_schema

from ..embedded import load_tap_config

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

    def emit(self, message: AirbyteMessage, *, flush: bool = False) -> None:
        """One typed message, with only the fields that were set."""
        body = message.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
        self._write(orjson.dumps(body) + b"\n", flush=flush)

    def _write(self, line: bytes, *, flush: bool) -> None:
        with self._lock:
            self._out.write(line)
            if flush:
                self._out.flush()

    def record(self, stream: str, data: dict[str, Any]) -> None:
        """A RECORD line, serialized directly: the shape of ``AirbyteRecordMessage`` without building one per record."""
        line = {"type": "RECORD", "record": {"stream": stream, "data": data, "emitted_at": _now_ms()}}
        self._write(orjson.dumps(line) + b"\n", flush=False)

    def log(self, level: str, message: str) -> None:
        self.emit(AirbyteMessage(type=Type.LOG, log=AirbyteLogMessage(level=Level(level), message=message)), flush=True)

    def state(self, stream: str, stream_state: Mapping[str, Any], records: int) -> None:
        """A per-stream checkpoint: the stream's whole state (the same dict the Singer tap keeps, see
        ``wellsky_core.stream_state``); ``records`` counts the records since the previous one (sourceStats)."""
        state = AirbyteStateMessage(
            type=AirbyteStateType.STREAM,
            stream=AirbyteStreamState(
                stream_descriptor=StreamDescriptor(name=stream), stream_state=AirbyteStateBlob(**stream_state)
            ),
            sourceStats=AirbyteStateStats(recordCount=float(records)),
        )
        self.emit(AirbyteMessage(type=Type.STATE, state=state), flush=True)

    def stream_status(self, stream: str, status: str) -> None:
        trace = AirbyteTraceMessage(
            type=TraceType.STREAM_STATUS,
            emitted_at=float(_now_ms()),
            stream_status=AirbyteStreamStatusTraceMessage(
                stream_descriptor=StreamDescriptor(name=stream), status=AirbyteStreamStatus(status)
            ),
        )
        self.emit(AirbyteMessage(type=Type.TRACE, trace=trace), flush=True)

    def error(self, exc: BaseException, *, stream: str | None = None) -> None:
        """A TRACE error: the user-facing message, failure type and an internal message free of PHI."""
        message, internal, failure_type = describe_error(exc)
        error = AirbyteErrorTraceMessage(
            message=message,
            internal_message=internal,
            failure_type=FailureType(failure_type),
            # Frames only, never the exception text: a third-party message could quote record values.
            stack_trace="".join(traceback.format_tb(exc.__traceback__)),
        )
        if stream:
            error.stream_descriptor = StreamDescriptor(name=stream)
        trace = AirbyteTraceMessage(type=TraceType.ERROR, emitted_at=float(_now_ms()), error=error)
        self.emit(AirbyteMessage(type=Type.TRACE, trace=trace), flush=True)

    def connection_status(self, succeeded: bool, message: str) -> None:
        status = AirbyteConnectionStatus(status=Status.SUCCEEDED if succeeded else Status.FAILED, message=message)
        self.emit(AirbyteMessage(type=Type.CONNECTION_STATUS, connectionStatus=status), flush=True)

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

    Both texts are :func:`wellsky_core.disclosure.public_message`: our own words, the setting and the fix, and
    for errors built from a response only the status, an allow-listed code and the request id (never the
    server's text, which is untrusted patient data). Anything that is not ours is reported by its type only.
    """
    from wellsky_core.disclosure import public_message

    text = public_message(exc)
    if isinstance(exc, ConfigError | AuthError | StateError):
        return text, f"{type(exc).__name__}: {text}", "config_error"
    if isinstance(exc, WellSkyTransportError):
        return text, f"{type(exc).__name__}: {text}", "transient_error"
    if isinstance(exc, WellSkyError):
        return text, f"{type(exc).__name__}: {text}", "system_error"
    return (
        f"source-wellsky failed with an unexpected {type(exc).__name__}; see the stack trace and report it",
        f"{type(exc).__module__}.{type(exc).__name__}",
        "system_error",
    )


def run_command(stdout: IO[bytes] | None, command: Callable[[Output], int]) -> int:
    """Run one Airbyte command (source or destination): logs become redacted LOG messages on stdout, any failure
    becomes a TRACE error and exit 1, and stdout is flushed whatever happens."""
    from wellsky_core.redaction import install_redaction

    output = Output(stdout or sys.stdout.buffer)
    root = logging.getLogger()
    root.handlers[:] = [AirbyteLogHandler(output)]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "httpcore", "uvicorn", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_redaction()
    try:
        return command(output)
    except Exception as exc:
        output.error(exc)
        return 1
    finally:
        output.flush()


def connection_check(output: Output, settings: Callable[[], WellSkyConfig]) -> int:
    """CONNECTION_STATUS from a real ``GET /tenant`` (the product's own probe): proves URL, TLS and credentials
    in one request. Shared by source-wellsky and destination-wellsky; a bad config is a FAILED status too."""
    from wellsky_core.connection import Connection

    connection: Connection | None = None
    try:
        connection = Connection(settings())
        tenant = connection.tenant()
        product = connection.product
        del tenant  # its name is server text: not quoted (untrusted, like every server string)
        succeeded, message = True, f"connected to the tenant ({product})"
    except WellSkyError as exc:
        succeeded, message = False, describe_error(exc)[0]
    finally:
        if connection is not None:
            connection.close()
    output.connection_status(succeeded, message)
    return 0


# --- the protocol's documents ------------------------------------------------------------------------------


def connection_specification() -> dict[str, Any]:
    """The config JSON schema (generated from TapConfig; secrets carry ``airbyte_secret``; the settings that run
    programs only where the host allows them, see ``COMMAND_SETTINGS``)."""
    return airbyte_spec_schema(TapConfig, "WellSky Source Spec")


def spec_message() -> AirbyteMessage:
    spec = ConnectorSpecification(
        documentationUrl=DOCUMENTATION_URL,
        connectionSpecification=connection_specification(),
        supportsIncremental=True,
    )
    return AirbyteMessage(type=Type.SPEC, spec=spec)


def airbyte_stream(name: str) -> AirbyteStream:
    """One stream of the catalog, straight from the canonical entity definition."""
    spec = ENTITIES[name]
    return AirbyteStream(
        name=name,
        json_schema=stream_schema(name),
        supported_sync_modes=[SyncMode(mode) for mode in SYNC_MODES],
        source_defined_cursor=True,
        default_cursor_field=[spec.replication_key],
        source_defined_primary_key=[[key] for key in spec.primary_key],
        is_resumable=True,
    )


def catalog_message(config: TapConfig) -> AirbyteMessage:
    """The streams this configuration serves (``wellsky_core.discovery``, the same list as the Singer tap's)."""
    names = discoverable_streams(config)
    return AirbyteMessage(type=Type.CATALOG, catalog=AirbyteCatalog(streams=[airbyte_stream(n) for n in names]))


# --- config, catalog and state files -------------------------------------------------------------------------


def read_json(path: str, what: str) -> Any:
    try:
        return orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise ConfigError(what, f"file {path} does not exist; pass an existing JSON file to --{what}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(what, f"file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_config(path: str, *, start_embedded: bool) -> TapConfig:
    """The validated config file (``embedded.load_tap_config``: the embedded sandbox when no base_url)."""
    raw = read_json(path, "config")
    if not isinstance(raw, dict):
        raise ConfigError("config", f"{path} must hold a JSON object of settings")
    refuse_command_settings(raw)
    return load_tap_config(raw, start_embedded=start_embedded)


class ConfiguredStream:
    """The part of a ConfiguredAirbyteStream a read needs."""

    def __init__(self, name: str, sync_mode: str) -> None:
        self.name = name
        self.sync_mode = sync_mode


def load_catalog(path: str) -> list[ConfiguredStream]:
    """The configured streams, in catalog order; unknown names and sync modes are config errors."""
    raw = read_json(path, "catalog")
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


def load_state(path: str | None) -> dict[str, dict[str, Any]]:
    """Per-stream states from any state shape a platform may hand back, in the shared per-stream form.

    Accepted: the per-stream list (``[{"type": "STREAM", "stream": {...}}]``), a single STATE message or its
    ``state`` body, the legacy dict (``{"patients": {"updated_at": ...}}``, optionally wrapped in ``data``)
    and a Singer tap's ``{"bookmarks": ...}`` (memo and stamp included), so a pipeline can switch faces without a
    full resync. Shapes and values are then checked like the Singer tap's input state, stamp included.
    """
    if not path:
        return {}
    raw = read_json(path, "state")
    if isinstance(raw, dict) and raw.get("type") == "STATE" and "state" in raw:
        raw = raw["state"]
    if isinstance(raw, dict) and raw.get("type") in ("STREAM", "LEGACY", "GLOBAL"):
        raw = [raw]
    states: dict[str, dict[str, Any]] = {}
    if isinstance(raw, list):
        for item in raw:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "STREAM":
                body = item.get("stream") or {}
                name = (body.get("stream_descriptor") or {}).get("name")
                value = body.get("stream_state")
                if name and isinstance(value, dict) and value:
                    states[name] = _shared_form(value)
            elif kind == "LEGACY":
                states.update(_legacy_states(item.get("data") or {}))
            else:
                raise ConfigError(
                    "state",
                    f"holds a {kind or 'malformed'} state; this source writes per-stream (STREAM) state — pass "
                    "the state it emitted, or no --state for a full sync",
                )
        return states
    if isinstance(raw, dict):
        return _legacy_states(raw.get("data", raw) if "data" in raw and isinstance(raw["data"], dict) else raw)
    raise ConfigError("state", f"{path} must hold a JSON list of STREAM states or a legacy state object")


def _shared_form(value: Mapping[str, Any]) -> dict[str, Any]:
    """An older ``{"updated_at": ...}`` stream state in the shared form (``replication_key_value``)."""
    state = dict(value)
    if "replication_key_value" not in state and state.get("updated_at") is not None:
        state["replication_key"] = "updated_at"
        state["replication_key_value"] = str(state.pop("updated_at"))
    return state


def _legacy_states(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    if isinstance(data.get("singer_state"), dict):
        data = data["singer_state"]
    if isinstance(data.get("bookmarks"), dict):
        return {name: dict(b) for name, b in data["bookmarks"].items() if isinstance(b, dict)}
    return {name: _shared_form(value) for name, value in data.items() if isinstance(value, dict) and value}


def _now_ms() -> int:
    return int(time.time() * 1000)
