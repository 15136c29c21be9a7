"""Which batch files a stream has delivered: the memo an HL7 stream keeps in its state, so a late file is read.

A file bookmark (mtime) alone cannot tell a file copied in late with its old times kept (``cp -p``, ``put -p``,
an interface engine re-sending after an outage) from one read years ago, and a message older than the
stream's bookmark inside a new file is no newer than what was delivered. Both were skipped without a word. The
memo names every file a stream's last complete read accounted for, by an 8-byte digest of its name, mtime and
size; a file whose digest is not in it was never delivered, whatever its times. It travels in the stream's state
(``content_hashes``), so it is only as new as what the orchestrator committed after the target: a run killed
before that reads the same files again.

Stored as ``{"version": 1, "count": n, "files": base64(zlib(sorted digests))}``: about 11 bytes of state per
file in the inbox. A file that changed (another size or mtime) counts as new and is read again: that costs
duplicates, never a loss.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

from ..state_codec import MemoError, pack, unpack

log = logging.getLogger(__name__)

VERSION = 1
DIGEST_BYTES = 8
MAX_FILES = 5_000_000
"""Most files a memo may name (55 MB of state): far past any inbox; a larger count is a damaged memo."""


def file_digest(name: str, mtime: float | None, size: int | None) -> bytes:
    """One file's identity: its name with the mtime (whole seconds) and size the listing gave."""
    stamp = "" if mtime is None else str(int(mtime))
    length = "" if size is None else str(size)
    return hashlib.blake2b(f"{name}\0{stamp}\0{length}".encode(), digest_size=DIGEST_BYTES).digest()


def encode(digests: Iterable[bytes]) -> dict[str, Any]:
    """The memo of ``digests``; sorted, so two runs that delivered the same files write the same state."""
    unique = sorted(set(digests))
    return {"version": VERSION, "count": len(unique), "files": pack(b"".join(unique))}


def decode(memo: Any) -> set[bytes]:
    """The digests :func:`encode` stored; :class:`MemoError` naming what is wrong when they cannot be read."""
    if not isinstance(memo, dict):
        raise MemoError(f"it is a {type(memo).__name__}, not an object")
    if memo.get("version") != VERSION:
        raise MemoError(f"version {memo.get('version')!r} is not {VERSION}")
    count = memo.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_FILES:
        raise MemoError(f"count is not a number of files from 0 to {MAX_FILES}")
    raw = unpack(memo.get("files"), "files", max(count, 1) * DIGEST_BYTES)
    if len(raw) != count * DIGEST_BYTES:
        raise MemoError(f"files does not hold the {count} digests count says")
    return {raw[i : i + DIGEST_BYTES] for i in range(0, len(raw), DIGEST_BYTES)}


class DeliveredLists:
    """A batch channel's lists, per stream: the files its last complete read delivered (``before``, from the input
    state; None when the stream has no list yet) and the files delivered once this run commits (``after``)."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.before: dict[str, set[bytes] | None] = {}
        self.after: dict[str, set[bytes]] = {}

    def load(self, entity: str, previous: dict[str, Any] | None) -> None:
        """The stream's list from its input state (None: a first run, a full refresh, a state from before lists).
        A damaged list is read as empty: every file is read again and its records sent again, nothing missed."""
        if previous is None:
            self.before[entity] = None
            return
        try:
            self.before[entity] = decode(previous)
        except MemoError as exc:
            log.warning("%s: %s: the state's list of delivered files (bookmarks.%s.content_hashes) is unreadable "
                        "(%s); every file is read again and its records sent again (duplicates, nothing missed), and "
                        "the next state holds a good list", self.channel, entity, entity, str(exc))
            self.before[entity] = set()

    def dump(self, entity: str) -> dict[str, Any] | None:
        delivered = self.after.get(entity)
        return encode(delivered) if delivered is not None else None
