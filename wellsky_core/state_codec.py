"""How a channel's memo packs bytes into the stream state: one string, base64 of a zlib stream.

A STATE message repeats every memo, and the SDK compares and copies a state on every write: one string costs one
compare and no deep copy, where many small values cost seconds each time. The Home Connect schedule memo and the
HL7 list of delivered files both keep their bytes this way; reading one back is bounded and names what is wrong
(never the content, which may be derived from patient data).
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any


class MemoError(ValueError):
    """A stored memo that cannot be decoded; the message says what is wrong with it (never its content)."""

    own_text = True
    """Our own sentence: shown as it is wherever an error is shown (``disclosure.public_message``)."""


def pack(payload: bytes) -> str:
    """``payload`` as one state string."""
    return base64.b64encode(zlib.compress(payload, 6)).decode("ascii")


def unpack(text: Any, field: str, limit: int) -> bytes:
    """The bytes :func:`pack` stored under ``field``, at most ``limit`` of them; :class:`MemoError` otherwise."""
    if not isinstance(text, str):
        raise MemoError(f"{field} is a {type(text).__name__}, not the encoded string")
    try:
        packed = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise MemoError(f"{field} is not valid base64 (cut short or edited)") from None
    inflate = zlib.decompressobj()
    try:
        payload = inflate.decompress(packed, limit)
    except zlib.error:
        raise MemoError(f"{field} does not decompress (cut short or edited)") from None
    if inflate.unconsumed_tail:
        raise MemoError(f"{field} decompresses to more than {limit:,} bytes")
    if not inflate.eof:
        raise MemoError(f"{field} does not decompress (cut short or edited)")
    return payload
