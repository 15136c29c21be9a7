"""The embedded sandbox: with no ``base_url`` the tap starts a local emulated tenant, so the demo needs no account."""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Mapping
from typing import Any

from wellsky_core.config import SDK_BUILTIN_KEYS, TapConfig
from wellsky_core.products import DIALECTS

log = logging.getLogger("tap_wellsky")

_RUNNING: dict[tuple[str, str, int, bool], Any] = {}


def embedded_sandbox_config(config: dict[str, Any]) -> dict[str, Any]:
    """Start (once per process) a sandbox tenant and return the settings that point the tap at it."""
    from wellsky_sandbox.server import SandboxServer

    product = config.get("product") or "home_health"
    scale = str(config.get("sandbox_scale") or "S")
    seed = int(config.get("sandbox_seed") or 42)
    limited = bool(config.get("sandbox_rate_limit"))
    key = (product, scale, seed, limited)
    if key not in _RUNNING:
        # a try-out runs at loopback speed unless the vendor's limit is asked for (`wellsky-sandbox serve` keeps it)
        server = SandboxServer(
            scale=scale, product=product, seed=seed, sftp_port=None, rate_limit=None if limited else 0
        )
        server.start()
        atexit.register(server.cleanup)
        _RUNNING[key] = server
        log.warning(
            "no base_url configured: started the embedded WellSky sandbox at %s (%s, scale %s, synthetic data). "
            "Set base_url and credentials to sync a real tenant.",
            server.base_url,
            product,
            scale,
        )
    server = _RUNNING[key]
    budget: dict[str, Any] = {}
    if not limited and config.get("max_requests_per_second") in (None, ""):
        budget["max_requests_per_second"] = 0  # no client-side budget either (0 disables the token bucket)
    if not _signs_in_with_session(product):  # e.g. Home Connect: client credentials only
        return {
            "base_url": server.base_url,
            "product": product,
            "auth_method": "oauth_client_credentials",
            "client_id": server.client_id,
            "client_secret": server.client_secret,
            **budget,
        }
    return {
        "base_url": server.base_url,
        "product": product,
        "auth_method": "session",
        "username": server.username,
        "password": server.password,
        "mfa_method": "none",
        **budget,
    }


EMBEDDED_PLACEHOLDER = {"auth_method": "session", "username": "embedded", "password": "embedded", "mfa_method": "none"}
"""What the embedded sandbox's login will be, for validating a config without starting it."""
EMBEDDED_CLIENT_PLACEHOLDER = {"auth_method": "oauth_client_credentials", "client_id": "embedded",
                               "client_secret": "embedded"}
"""The same for a product that signs in with client credentials only."""


def _signs_in_with_session(product: str) -> bool:
    methods = DIALECTS[product].auth_methods if product in DIALECTS else None
    return not methods or "session" in methods


def has_production_host(raw: Mapping[str, Any]) -> bool:
    """A product with a production host (personal care's Home Connect): credentials alone mean a real tenant."""
    product = DIALECTS.get(raw.get("product") or os.environ.get("WELLSKY_PRODUCT") or "")
    has_credentials = bool(raw.get("client_id") or os.environ.get("WELLSKY_CLIENT_ID"))
    return product is not None and product.default_base_url is not None and has_credentials


def load_tap_config(raw: Mapping[str, Any], *, start_embedded: bool) -> TapConfig:
    """The validated tap config; with no base_url (config or WELLSKY_BASE_URL) the embedded sandbox is used.

    ``start_embedded=False`` (discovery, ``is_sorted``) validates every other key as the embedded sandbox would
    be configured, without starting it: discovery never needs a tenant.
    """
    values = dict(raw)
    if not values.get("base_url") and not os.environ.get("WELLSKY_BASE_URL") and not has_production_host(values):
        if start_embedded:
            values.update(embedded_sandbox_config(values))
        else:
            product = values.get("product") or "home_health"
            values.update(EMBEDDED_PLACEHOLDER if _signs_in_with_session(product) else EMBEDDED_CLIENT_PLACEHOLDER)
            values["product"] = product  # as the embedded sandbox will be: discovery and the state stamp need it
    return TapConfig.load(values, ignore_keys=SDK_BUILTIN_KEYS)
