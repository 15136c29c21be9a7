"""A fast path for RECORD messages: orjson straight into stdout's byte buffer, no flush per record.

Why: profiling a full sync at scale M (py-spy, bench/run.py --profile) put ~26% of the tap's samples in the
SDK's record writing: ``Message.to_dict`` (``dataclasses.asdict``), ``simplejson.dumps`` and a
``sys.stdout.flush()`` — one write syscall — per record. Our records are already JSON-ready canonical dicts,
so they can be serialized once with orjson and left in stdout's buffer.

Ordering stays exact: the SDK's own writer (SCHEMA, STATE, ACTIVATE_VERSION) writes through ``sys.stdout``
and flushes after every message, which pushes the text layer into the same ``sys.stdout.buffer`` these
records were written to, after them. So a STATE line never overtakes the records it covers.

The fast path is only taken when it is byte-for-byte the SDK's semantics: the stock Singer writer, no stream
maps or flattening, and a stdout that has a binary buffer. Catalog selection is applied before either path
(``WellSkyStream.get_records`` projects each record through ``selection``). Anything else (including
a value orjson cannot encode) goes through the SDK unchanged.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from singer_sdk.io_base import SingerWriter
from singer_sdk.mapper import SameRecordTransform


class FastRecordWriter:
    """Serializes RECORD messages for one stream; ``write`` returns False when the caller must use the SDK."""

    __slots__ = ("_extracted", "_extracted_at", "_head", "_version")

    def __init__(self, stream_alias: str, version: int | None) -> None:
        self._head = b'{"type":"RECORD","stream":' + orjson.dumps(stream_alias) + b',"record":'
        self._version = b"" if version is None else b',"version":' + orjson.dumps(version)
        self._extracted = b""
        self._extracted_at = -1.0

    def _time_extracted(self) -> bytes:
        """``time_extracted`` as the SDK writes it, re-rendered once per millisecond (not per record: 3 us each)."""
        now = time.time()
        if now - self._extracted_at >= 0.001:
            self._extracted_at = now
            self._extracted = datetime.fromtimestamp(now, UTC).isoformat(sep="T").encode()
        return self._extracted

    def write(self, record: dict[str, Any]) -> bool:
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:  # e.g. stdout replaced by a StringIO in a test harness
            return False
        try:
            body = orjson.dumps(record)
        except TypeError:  # a value orjson cannot encode: let the SDK's encoder decide
            return False
        extracted = self._time_extracted()
        buffer.write(b"".join((self._head, body, self._version, b',"time_extracted":"', extracted, b'"}\n')))
        return True


def fast_writer_for(stream: Any) -> FastRecordWriter | None:
    """A FastRecordWriter when ``stream`` (a singer-sdk Stream) emits records exactly as the SDK would; else None."""
    if type(stream._tap.message_writer) is not SingerWriter:
        return None
    maps = stream.stream_maps
    if len(maps) != 1 or type(maps[0]) is not SameRecordTransform or maps[0].flattening_enabled:
        return None
    return FastRecordWriter(maps[0].stream_alias, stream._stream_version)
