"""The stream base class: every stream reads canonical records from its configured channel."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from singer_sdk import Stream
from singer_sdk.helpers.conform import TypeConformanceLevel

from wellsky_core.channels import channel_class
from wellsky_core.schemas import stream_schema

from .fastio import FastRecordWriter, fast_writer_for
from .selection import Projector, compile_projection

if TYPE_CHECKING:
    from wellsky_core.channels import Channel

    from .tap import TapWellSky



class WellSkyStream(Stream):
    """A canonical WellSky entity. Subclasses only declare ``name`` (the entity) — see ``streams.py``."""

    name: ClassVar[str]
    primary_keys: ClassVar[list[str]] = ["id"]
    replication_key = "updated_at"
    # Records come out of the core already validated by the pydantic models the schema is generated from,
    # so the SDK's per-record type conformance would only repeat that work.
    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE

    def __init__(self, tap: TapWellSky) -> None:
        super().__init__(tap, schema=stream_schema(self.name), name=self.name)
        self.wellsky_tap = tap
        # a STATE after every page's worth of records on an ordered channel (discovery validates settings but opens
        # no connection). An unordered stream's bookmark moves only when it completes, so a STATE in its middle
        # would only repeat the whole state (channel memos included, docs/home-connect-incremental.md): it ends
        # with one, as on the Airbyte face
        self.STATE_MSG_FREQUENCY = tap.settings.page_size if self.is_sorted else sys.maxsize
        self.summary: dict[str, Any] = {"records": 0, "seconds": 0.0}
        self._fast_writer: FastRecordWriter | bool | None = False  # False: not decided yet for this sync

    @property
    def is_sorted(self) -> bool:
        """Ordered channels let the bookmark advance record by record, so a crash resumes mid-stream.

        Decided from the validated settings alone: discovery must not open a connection (or start a sandbox).
        """
        settings = self.wellsky_tap.settings
        return channel_class(settings.source_for(self.name), settings.product).ordered

    @property
    def thread_safe_channel(self) -> bool:
        """Whether this stream's channel may be read from a worker thread (see ``Channel.thread_safe``)."""
        from wellsky_core.connection import reads_in_any_thread

        return reads_in_any_thread(self.wellsky_tap.settings, self.name)

    def _write_record_message(self, record: dict[str, Any]) -> None:
        """RECORD out through the orjson fast path (see ``fastio``) when it is equivalent to the SDK's writer."""
        writer = self._fast_writer
        if writer is False:
            writer = self._fast_writer = fast_writer_for(self)
        if writer is not None and writer.write(record):  # type: ignore[union-attr]
            self.state_manager.is_flushed = False
            return
        super()._write_record_message(record)

    def selected_projection(self) -> Projector | None:
        """What the catalog keeps of each record (None: everything), see ``selection``."""
        return compile_projection(self.schema, self.effective_schema, self.mask)

    def open_channel(self) -> Channel:
        """This stream's channel on the shared connection (opened once per source)."""
        return self.wellsky_tap.connection.channel(self.name)

    def get_records(self, context: dict | None) -> Iterable[dict[str, Any]]:
        """The core's read loop (``wellsky_core.read_loop``, shared with source-wellsky), as Singer records."""
        from wellsky_core.read_loop import StreamRead

        self._fast_writer = False  # decided again per sync: catalog, maps and stream version may differ
        project = self.selected_projection()
        full_table = self.replication_method == "FULL_TABLE"
        read = StreamRead(
            self.wellsky_tap.connection,
            self.name,
            incremental=not full_table,
            state=self.get_context_state(context),
            owns_cursor=False,  # singer-sdk keeps the bookmark, by the same rule
            logger=self.logger,
        )
        self.summary["source"] = read.channel.name
        try:
            # a parallel sync holds the output gate here, open only while the read waits (wellsky_core/waits.py)
            for record in self.wellsky_tap.output_gate.waiting(iter(read.records())):
                if read.count == 1 and self.logger.isEnabledFor(logging.DEBUG):  # redacted like every log line
                    self.logger.debug("%s: first record %s", self.name, record)
                yield record if project is None else project(record)
            if not full_table and read.resume_point is not None:
                self._bookmark_exactly(context, read.resume_point)
        finally:
            self.summary["records"] += read.count
            self.summary["seconds"] += read.seconds

    def _bookmark_exactly(self, context: dict | None, moment: datetime) -> None:
        """Make the final bookmark ``moment`` (a bulk export's transactionTime), whatever updated_at values came.

        singer-sdk finalizes an unsorted stream's bookmark as the largest value seen, capped by the signpost; a
        progress value of ``moment`` plus a signpost of ``moment`` make it exactly ``moment``. Private SDK
        methods: ``_increment_stream_state`` and ``_write_replication_key_signpost``.
        """
        value = moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
        self._increment_stream_state({self.replication_key: value}, context=context)
        self._write_replication_key_signpost(context, value)


logging.getLogger("singer_sdk.metrics").setLevel(logging.WARNING)
