"""Which streams a configuration can serve: the one discovery rule behind both faces' catalogs.

Per product and source: a stream is listed when the channel its ``source`` / ``stream_sources`` names can carry it
for the configured product (``Channel.offers``, static: discovery opens no connection and starts no sandbox).
With no product configured (detected at sync time) every stream some product can serve through that source is
listed. ``discover_all_streams`` lists every canonical stream regardless.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .channels import channel_class
from .models import ENTITIES

if TYPE_CHECKING:
    from .config import WellSkyConfig


def _products(config: WellSkyConfig) -> tuple[str | None, ...]:
    if config.product:
        return (config.product,)
    from .products import PRODUCTS

    return PRODUCTS


def offered(config: WellSkyConfig, stream: str) -> bool:
    """Whether the configured product and the stream's source can serve ``stream``."""
    spec = ENTITIES.get(stream)
    if spec is None:
        return False
    source = config.source_for(stream)
    return any(channel_class(source, product).offers(stream, product) for product in _products(config))


def discoverable_streams(config: WellSkyConfig, *, include_all: bool = False) -> list[str]:
    """The catalog's streams, in ``ENTITIES`` order."""
    if include_all or getattr(config, "discover_all_streams", False):
        return list(ENTITIES)
    return [name for name in ENTITIES if offered(config, name)]


def not_offered_reason(config: WellSkyConfig, stream: str) -> str:
    """One line saying why a selected stream cannot be read, and what to do."""
    listed = ", ".join(discoverable_streams(config))
    return (
        f"stream {stream} is not served by product {config.product or '(detected)'} through source "
        f"{config.source_for(stream)}; this configuration serves: {listed}. Deselect it, or route it with "
        "stream_sources (run discovery again for a fresh catalog)"
    )
