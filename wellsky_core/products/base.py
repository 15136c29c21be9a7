"""``Dialect``: everything one WellSky product line does its own way, as data.

Each product package (``wellsky_core/products/<product>/``) defines one ``DIALECT`` in its ``dialect.py``;
nothing outside ``products/`` asks ``if product == ...``. The interpreters are ``normalize/native.py`` (records
both ways), ``channels.channel_class`` (which channel serves ``source: api`` and ``source: portal``), the REST
channel (which streams exist) and the write engine (which streams accept writes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from ..models import ENTITIES, MODELED_ENTITIES, WRITABLE

TIMESTAMP_FIELDS = frozenset({"updated_at", "start", "end"})
DATE_FIELDS = frozenset(
    {"birth_date", "start_date", "end_date", "period_start", "period_end", "target_date", "recorded_on",
     "received_date", "accepted_date"}
)
ID_FIELDS = frozenset({"id", "patient_id", "practitioner_id", "appointment_id"})

ALL_STREAMS = frozenset(name for name, spec in ENTITIES.items() if spec.sources is None)
"""Entities a product's API can serve (portal-only ones such as claims are left out)."""
MODELED_STREAMS = frozenset(name for name in MODELED_ENTITIES if name in ALL_STREAMS)
WRITABLE_STREAMS = frozenset(WRITABLE)
_CODE_TABLES = ("gender", "patient_status", "appointment_status")


def _identity(value: str) -> str:
    return value


@dataclass(frozen=True)
class Dialect:
    """One product's native conventions, as documented by the vendor.

    The first group describes a *modeled* REST dialect (read by ``normalize/native.py``); a product whose API is a
    different surface (personal care's Home Connect) leaves them at their defaults and names its own channel
    and writer instead (``api_channel``, ``writer``).
    """

    product: str
    camel_case: bool = False
    timestamps: str = "iso_utc"  # "iso_utc" | "epoch" | "iso_local"
    dates: str = "iso"  # "iso" | "mdy"
    integer_ids: bool = False
    renames: dict[str, dict[str, str]] = field(default_factory=dict)  # entity ("*" = all) -> native -> canonical
    gender: dict[str, str] = field(default_factory=dict)
    patient_status: dict[str, str] = field(default_factory=dict)
    appointment_status: dict[str, str] = field(default_factory=dict)
    discipline: Callable[[str], str] = _identity
    """Native discipline -> canonical code (``SN``, ``PT``...)."""
    discipline_out: Callable[[str], str] = _identity
    """Canonical discipline code -> native spelling, for writes."""
    name_style: str = "nested"  # "nested" | "flat_short" | "flat_long"
    address_style: str = "nested"  # "nested" | "flat" | "list"
    local_tz: ZoneInfo | None = None
    """The agency's zone, for products whose timestamps carry a local offset (``iso_local``)."""
    streams: frozenset[str] = MODELED_STREAMS
    """The streams this product's API serves."""
    writable: frozenset[str] = WRITABLE_STREAMS
    """The streams this product accepts writes for."""
    unavailable: dict[str, str] = field(default_factory=dict)
    """Streams this product's API lacks, with the reason the tap reports (never faked)."""
    never_sent: dict[str, frozenset[str]] = field(default_factory=dict)
    """Stream -> canonical fields this product's API has no source for: left null, not flagged as missing
    (every record would be flagged, and ``max_flagged_fraction`` could not be used)."""
    api_channel: str | None = None
    """``module:Class`` of the channel behind ``source: api`` when it is not the modeled REST channel."""
    portal_channel: str | None = None
    """``module:Class`` of the channel behind ``source: portal`` when it is not the generic ``channels.portal``
    one (home health and hospice: the shared Kinnser portal)."""
    writer: str | None = None
    """``module:Class`` of the write engine when it is not ``writes.RecordWriter``."""
    write_streams: tuple[tuple[str, str], ...] = ()
    """Streams only this product writes, as (stream, ``module:Model``): their write schema is published in
    ``schemas/write/`` next to the canonical ones."""
    has_tenant_endpoint: bool = True
    """``GET /tenant`` exists (product detection and the connection check); False: the api channel's ``probe``."""
    default_base_url: str | None = None
    """The production host, when the product has one (then credentials alone configure a real tenant)."""
    api_root: str | None = None
    """A path the connector adds itself (``/v1``): a ``base_url`` ending in it is refused."""
    token_path: str | None = None
    """OAuth token endpoint at the host root; None: ``{base_url}/oauth/token``."""
    auth_methods: tuple[str, ...] | None = None
    """The auth methods the product offers (the first is the default); None: every method, default session."""
    token_renew_margin_seconds: float = 60.0
    """How long before a token's expiry it is renewed."""
    rate_budget: float | None = None
    """Requests per second the vendor asks for: the default ``max_requests_per_second``."""
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
