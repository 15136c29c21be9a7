"""The Airbyte message side shared by source-wellsky and destination-wellsky: typed messages out, one line each.

Every message is built as an ``airbyte_protocol.models`` model and serialized with only the fields set, so
what the platform reads is valid by construction. One exception, for speed: RECORD lines (the hot path, one
per record) are serialized directly in :meth:`Output.record`; ``tests/airbyte`` validates every line of a
read against ``AirbyteMessage``. Errors become TRACE messages through :func:`describe_error` (their public
message only: never server text). The faces (``tap_wellsky/airbyte``, ``target_wellsky/destination.py``) add
their own documents (spec, catalog, state) on top.
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
    AirbyteConnectionStatus,
    AirbyteErrorTraceMessage,
    AirbyteLogMessage,
    AirbyteMessage,
    AirbyteStateBlob,
    AirbyteStateMessage,
    AirbyteStateStats,
    AirbyteStateType,
    AirbyteStreamState,
    AirbyteStreamStatus,
    AirbyteStreamStatusTraceMessage,
    AirbyteTraceMessage,
    FailureType,
    Level,
    Status,
    StreamDescriptor,
    TraceType,
    Type,
)

from .config import WellSkyConfig
from .errors import AuthError, ConfigError, LocalWriteFailed, StateError, WellSkyError, WellSkyTransportError

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

    exc = LocalWriteFailed.from_os_error(exc) or exc  # a full volume: one line, as the Singer face says it
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


def exit_code(status: str, ended_by: BaseException | None) -> int:
    """An Airbyte command's exit code for a run's verdict (the data-quality report's ``status``): 0 for a finished
    run, refusals included (counted in the report and the dead letters), 1 for any other outcome, like
    :func:`run_command`; an interrupt the command does not catch (Ctrl-C, ``SystemExit``) keeps its own code."""
    from .cli import exit_code_for

    if ended_by is not None and not isinstance(ended_by, Exception):
        return exit_code_for(ended_by)
    return 0 if status in ("ok", "completed_with_refusals") else 1


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


def read_json(path: str, what: str) -> Any:
    try:
        return orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise ConfigError(what, f"file {path} does not exist; pass an existing JSON file to --{what}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(what, f"file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _now_ms() -> int:
    return int(time.time() * 1000)
