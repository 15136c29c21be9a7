"""Reading one stream: the one loop behind both faces (tap-wellsky and source-wellsky).

Everything a sync decides about a stream is decided here, once: whether the product and channel can serve it,
where the read starts (bookmark, ``start_date``, full refresh), the channel's memo (content hashes of the last
window, kept in the stream state), the data-quality count, progress lines, when a checkpoint is safe, and
which bookmark the stream ends on. The faces only translate: the Singer tap turns records into RECORD
messages through singer-sdk; the Airbyte source into RECORD and per-stream STATE messages. The per-stream
state dict is the same on both faces (:mod:`wellsky_core.stream_state`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import waits
from .channels import CHANNELS, channel_class
from .snapshot_deletions import SnapshotDeletions, can_carry_deletions
from .stream_state import CURSOR_KEY, MEMO_KEY, STAMP_KEY, VALUE_KEY, cursor_value, parse_cursor, state_stamp

if TYPE_CHECKING:
    from .channels import Channel
    from .connection import Connection

log = logging.getLogger("wellsky_core.read")

PROGRESS_EVERY_SECONDS = 15.0


def format_cursor(moment: datetime) -> str:
    """A bookmark as written to state: ISO 8601 in UTC with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class StreamRead:
    """One stream's read over the shared connection; iterate :meth:`records`, then read :attr:`state`.

    ``state`` is the stream's state dict from the last run (mutated in place: the Singer face passes the SDK's
    own context-state dict, the Airbyte face the ``stream_state`` it loaded). ``incremental=False`` reads from
    ``start_date`` and ignores the bookmark. ``owns_cursor``: this loop writes the bookmark into ``state`` (the
    Airbyte face); singer-sdk keeps its own, by the same rule (ordered: the last record; else the newest).
    """

    def __init__(
        self,
        connection: Connection,
        stream: str,
        *,
        incremental: bool,
        state: MutableMapping[str, Any] | None = None,
        owns_cursor: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        self.connection = connection
        self.stream = stream
        self.incremental = incremental
        self.state: MutableMapping[str, Any] = state if state is not None else {}
        self.log = logger or log
        self.count = 0
        self.seconds = 0.0
        self.channel: Channel = connection.channel(stream)
        self.owns_cursor = owns_cursor
        self._bookmark: str | None = cursor_value(self.state) if incremental else None
        self._best: datetime | None = parse_cursor(stream, self._bookmark) if self._bookmark else None
        self._since_checkpoint = 0

    # -- what the read will do -------------------------------------------------------------------------------
    def skip_reason(self) -> str | None:
        """Why nothing will be read for this stream (told to the user once), or None.

        A stream the product's API lacks, or that this tenant's server does not offer through the configured
        source (its capabilities), is reported with the fix and skipped; the other streams go on.
        """
        reason = self.channel.unavailable_reason(self.stream)
        if reason is not None:
            return f"{self.stream} is not available for this product ({self.connection.product}): {reason}"
        if not self.channel.supports(self.stream):
            product = self.connection.product
            others = [name for name in CHANNELS if channel_class(name, product).offers(self.stream, product)]
            if not others:
                return f"{self.stream} is not available for this product ({product}): no source serves it"
            return (
                f"{self.stream} is not available through source '{self.channel.name}' on this tenant ({product}); "
                f'read it through another source with stream_sources, e.g. {{"{self.stream}": "{others[0]}"}}'
            )
        return None

    def start(self) -> datetime | None:
        """Where the read starts: the bookmark (incremental) or ``start_date``, whichever is later."""
        start_date = self.connection.config.start_date
        since = parse_cursor(self.stream, self._bookmark) if self.incremental and self._bookmark else None
        if start_date is not None and (since is None or start_date > since):
            since = start_date
        return since

    # -- the loop ----------------------------------------------------------------------------------------------
    def records(self) -> Iterator[dict[str, Any]]:
        """Canonical records of the stream, counted for data quality; the state follows what was yielded."""
        with waits.waiting():  # a channel may ask the tenant what it serves
            reason = self.skip_reason()
        self.state[STAMP_KEY] = state_stamp(self.connection.config, self.stream)
        if reason is not None:
            self.log.warning("%s; nothing synced for it", reason)
            self.connection.quality.add_not_read(self.stream, reason)  # both faces' reports say so
            return
        channel = self.channel
        memo = self.stream in channel.memo_streams
        if memo:  # a full refresh re-reads everything: no memo may hide an unchanged record from it
            channel.load_memo(self.stream, self.state.get(MEMO_KEY) if self.incremental else None)
        observe = self.connection.quality.observe
        deletions = self._snapshot_deletions()
        since = self.start()
        every = channel.full_view_every(self.stream) if self.connection.config.start_date is None else 0
        if deletions is not None:
            deletions.every_days = every
        if deletions is not None and since is not None and deletions.full_view_due():
            self.log.info("%s: a complete view is due (every %d days): reading it whole, not from the bookmark",
                          self.stream, every)
            since = None
        started = last_report = time.monotonic()
        try:
            # the channel's code runs in waits.waiting (a parallel Singer sync's gate open) unless its next records
            # are in memory already; this loop's own code, the state included, runs where its consumer holds it
            for record in waits.draw(channel.iter_records(self.stream, since)):
                self.count += 1
                self._since_checkpoint += 1
                observe(self.stream, record)
                if self.incremental:
                    self._advance(record.get(CURSOR_KEY))
                yield record
                now = time.monotonic()
                if now - last_report >= PROGRESS_EVERY_SECONDS:
                    last_report = now
                    self.log.info(
                        "%s: %d records so far (%.0f/s)%s", self.stream, self.count, self.count / (now - started),
                        channel.progress_note(self.stream, now - started),
                    )
            if deletions is not None:  # only after a read that ended normally: an interrupted one knows nothing
                for record in deletions.finish(channel.views.pop(self.stream)):
                    self.count += 1
                    observe(self.stream, record)
                    if self.incremental:  # as singer-sdk does with every record: the faces keep one bookmark
                        self._advance(record.get(CURSOR_KEY))
                    yield record
            else:
                self._no_deletions()
            resume = channel.resume_point(self.stream)
            if resume is not None and self.incremental:
                self._bookmark = format_cursor(resume)
            if memo:  # only a complete read may replace the memo
                self.state[MEMO_KEY] = channel.dump_memo(self.stream)
            self._write_cursor()
        finally:
            self.seconds += time.monotonic() - started

    def _snapshot_deletions(self) -> SnapshotDeletions | None:
        """The stream's deletion check, when its channel can read it as a complete view and its schema carries
        ``_sdc_deleted_at`` (:mod:`wellsky_core.snapshot_deletions`); the view is handed to the channel to fill."""
        if not self.channel.snapshot_view(self.stream) or not can_carry_deletions(self.stream):
            return None
        deletions = SnapshotDeletions(self.connection.config, self.stream, self.state)
        self.channel.views[self.stream] = deletions.view()
        return deletions

    def _no_deletions(self) -> None:
        """The run-end line of a stream whose read cannot know deletions: why."""
        if self.channel.snapshot_view(self.stream):
            reason: str | None = ("cannot be emitted: the stream's schema requires fields a deletion (key and "
                                  "client only) cannot fill")
        else:
            reason = self.channel.deletions_note(self.stream)
        if reason is not None:
            self.log.info("%s: deletions: %s", self.stream, reason)

    def _advance(self, value: Any) -> None:
        """The bookmark never passes what was emitted: ordered channels advance record by record, unordered
        ones to the largest ``updated_at`` seen (written at the end only)."""
        if value is None:
            return
        if self.channel.ordered:
            self._bookmark = value
            return
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if self._best is None or parsed > self._best:
            self._best, self._bookmark = parsed, value

    # -- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint_due(self, every: int) -> bool:
        """A mid-stream checkpoint is safe only on an ordered channel (its bookmark covers all emitted records)."""
        return self.incremental and self.channel.ordered and self._since_checkpoint >= every

    def checkpoint(self) -> tuple[dict[str, Any], int]:
        """The state to checkpoint now (the bookmark of what was emitted) and the records since the last one."""
        self._write_cursor()
        emitted, self._since_checkpoint = self._since_checkpoint, 0
        return dict(self.state), emitted

    def _write_cursor(self) -> None:
        if self.owns_cursor and self.incremental and self._bookmark is not None:
            self.state["replication_key"] = CURSOR_KEY
            self.state[VALUE_KEY] = self._bookmark

    @property
    def final_bookmark(self) -> str | None:
        """The bookmark the stream ends on, by the one rule (valid once :meth:`records` is exhausted)."""
        return self._bookmark

    @property
    def resume_point(self) -> datetime | None:
        """A bookmark the channel chose over the newest ``updated_at`` (a bulk export's transactionTime)."""
        return self.channel.resume_point(self.stream)
