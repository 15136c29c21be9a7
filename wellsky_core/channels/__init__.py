"""Source channels: every way of reaching a tenant's data, behind one interface (``base.Channel``).

``open_channel(name, config, client, product)`` builds one by its ``source`` name. Imports are lazy so that
a REST-only sync never loads Playwright, paramiko or hl7apy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import Channel

if TYPE_CHECKING:
    from ..config import WellSkyConfig
    from ..http.client import WellSkyClient

CHANNELS = {
    "api": "wellsky_core.channels.rest:RestChannel",
    "fhir": "wellsky_core.channels.fhir:FhirChannel",
    "fhir_bulk": "wellsky_core.channels.fhir_bulk:FhirBulkChannel",
    "hl7_sftp": "wellsky_core.channels.hl7_sftp:Hl7SftpChannel",
    "export": "wellsky_core.channels.export:ExportChannel",
    "portal": "wellsky_core.channels.portal:PortalChannel",
}



def channel_class(name: str, product: str | None = None) -> type[Channel]:
    """The channel class for a ``source`` value (imported on first use). The product's dialect may name its own
    channel for a source: ``api_channel`` when its API is not the modeled REST (personal care: Home Connect),
    ``portal_channel`` when its portal is not the generic one (home health and hospice: Kinnser)."""
    if name not in CHANNELS:
        raise ValueError(f"unknown source {name!r}; use one of {', '.join(CHANNELS)}")
    path = CHANNELS[name]
    if product:
        from ..products import DIALECTS

        d = DIALECTS.get(product)
        own = {"api": d.api_channel, "portal": d.portal_channel}.get(name) if d is not None else None
        path = own or path
    module_name, _, cls_name = path.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)  # type: ignore[no-any-return]


def open_channel(
    name: str, config: WellSkyConfig, client: WellSkyClient | None, product: str, **kwargs: Any
) -> Channel:
    """The channel called ``name`` (a ``source`` value) for one tenant of ``product``."""
    return channel_class(name, product)(config=config, client=client, product=product, **kwargs)


__all__ = ["CHANNELS", "Channel", "channel_class", "open_channel"]
