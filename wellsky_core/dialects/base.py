"""``Dialect``: everything one WellSky product line does its own way, as data.

A dialect module (``wellsky_core/dialects/<product>.py``) defines one ``DIALECT``; nothing outside the
dialects asks ``if product == ...``. The interpreters are ``normalize/native.py`` (records both ways), the
REST channel (which streams exist) and the write engine (which streams accept writes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from ..models import ENTITIES, WRITABLE

TIMESTAMP_FIELDS = frozenset({"updated_at", "start", "end"})
DATE_FIELDS = frozenset(
    {"birth_date", "start_date", "end_date", "period_start", "period_end", "target_date", "recorded_on",
     "received_date", "accepted_date"}
)
ID_FIELDS = frozenset({"id", "patient_id", "practitioner_id", "appointment_id"})

ALL_STREAMS = frozenset(ENTITIES)
WRITABLE_STREAMS = frozenset(WRITABLE)
_CODE_TABLES = ("gender", "patient_status", "appointment_status")


@dataclass(frozen=True)
class Dialect:
    """One product's native conventions, as documented by the vendor."""

    product: str
    camel_case: bool
    timestamps: str  # "iso_utc" | "epoch" | "iso_local"
    dates: str  # "iso" | "mdy"
    integer_ids: bool
    renames: dict[str, dict[str, str]]  # entity ("*" = all) -> native snake key -> canonical key
    gender: dict[str, str]
    patient_status: dict[str, str]
    appointment_status: dict[str, str]
    discipline: Callable[[str], str]
    """Native discipline -> canonical code (``SN``, ``PT``...)."""
    discipline_out: Callable[[str], str]
    """Canonical discipline code -> native spelling, for writes."""
    name_style: str  # "nested" | "flat_short" | "flat_long"
    address_style: str  # "nested" | "flat" | "list"
    local_tz: ZoneInfo | None = None
    """The agency's zone, for products whose timestamps carry a local offset (``iso_local``)."""
    streams: frozenset[str] = ALL_STREAMS
    """The streams this product's REST API serves."""
    writable: frozenset[str] = WRITABLE_STREAMS
    """The streams this product accepts writes for (a subset of the ``writable`` entities)."""
    reverse_cache: dict[str, dict[str, str]] = field(default_factory=dict, compare=False)
    reverse_codes: dict[str, dict[str, str]] = field(init=False, compare=False)
    """Canonical code -> native code per code table, for writes (built once, not per record)."""

    def __post_init__(self) -> None:
        if self.timestamps == "iso_local" and self.local_tz is None:
            raise ValueError(f"dialect {self.product}: iso_local timestamps need local_tz")
        if not self.writable <= WRITABLE_STREAMS or not self.streams <= ALL_STREAMS:
            raise ValueError(f"dialect {self.product}: streams and writable must be entities of models.ENTITIES")
        reverse = {t: {canonical: native for native, canonical in getattr(self, t).items()} for t in _CODE_TABLES}
        object.__setattr__(self, "reverse_codes", reverse)

    def renames_for(self, entity: str) -> dict[str, str]:
        return {**self.renames.get("*", {}), **self.renames.get(entity, {})}

    def reverse_renames(self, entity: str) -> dict[str, str]:
        """Canonical key -> native snake key (for writes)."""
        if entity not in self.reverse_cache:
            self.reverse_cache[entity] = {v: k for k, v in self.renames_for(entity).items()}
        return self.reverse_cache[entity]
