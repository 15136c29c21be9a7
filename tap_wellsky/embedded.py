"""The embedded sandbox: with no ``base_url`` the tap starts a local emulated tenant, so the demo needs no account."""

from __future__ import annotations

import atexit
import logging
from typing import Any

log = logging.getLogger("tap_wellsky")

_RUNNING: dict[tuple[str, str, int], Any] = {}


def embedded_sandbox_config(config: dict[str, Any]) -> dict[str, Any]:
    """Start (once per process) a sandbox tenant and return the settings that point the tap at it."""
    from wellsky_sandbox.server import SandboxServer

    product = config.get("product") or "home_health"
    scale = str(config.get("sandbox_scale") or "S")
    seed = int(config.get("sandbox_seed") or 42)
    key = (product, scale, seed)
    if key not in _RUNNING:
        server = SandboxServer(scale=scale, product=product, seed=seed, sftp_port=None)
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
    return {
        "base_url": server.base_url,
        "product": product,
        "auth_method": "session",
        "username": server.username,
        "password": server.password,
        "mfa_method": "none",
    }
