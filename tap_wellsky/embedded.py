"""The embedded sandbox: with no ``base_url`` and no credentials (or ``sandbox: true``) the tap starts a local
emulated tenant, so the demo needs no account. :func:`run_banner` is the first line a run logs: sandbox or
production, said up front."""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Mapping
from typing import Any

from wellsky_core.config import ENV_PREFIX, SDK_BUILTIN_KEYS, TapConfig
from wellsky_core.errors import ConfigError
from wellsky_core.products import DIALECTS

log = logging.getLogger("tap_wellsky")

_RUNNING: dict[tuple[str, str, int, bool], Any] = {}

DEFAULT_SANDBOX_PRODUCT = "home_health"

CONNECTION_KEYS = (
    "base_url", "token_url", "auth_method", "username", "password", "mfa_method", "totp_secret", "client_id",
    "client_secret", "private_key", "private_key_path", "private_key_id",
)
"""What points a run at a tenant: replaced by the sandbox's own when the embedded sandbox is used."""


def embedded_sandbox_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Start (once per process) a sandbox tenant and return the settings that point the tap at it."""
    from wellsky_sandbox import server_packages_problem

    problem = server_packages_problem()
    if problem:
        raise ConfigError("base_url", f"not set, so the embedded sandbox would start, but {problem}; or set base_url")
    from wellsky_sandbox.server import SandboxServer

    product = sandbox_product(config)
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
        log.info("embedded sandbox listening at %s (%s, scale %s, seed %d)", server.base_url, product, scale, seed)
    server = _RUNNING[key]
    budget: dict[str, Any] = {}
    if not limited and config.get("max_requests_per_second") in (None, ""):
        budget["max_requests_per_second"] = 0  # no client-side budget either (0 disables the request window)
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


def _setting(raw: Mapping[str, Any], key: str) -> Any:
    value = raw.get(key)
    return value if value not in (None, "") else os.environ.get(f"{ENV_PREFIX}{key.upper()}") or None


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"))


def sandbox_product(raw: Mapping[str, Any]) -> str:
    """The product the embedded sandbox emulates: ``product``, else home health."""
    return str(_setting(raw, "product") or DEFAULT_SANDBOX_PRODUCT)


def has_production_host(raw: Mapping[str, Any]) -> bool:
    """A product with a production host (personal care's Home Connect): credentials alone mean a real tenant."""
    product = DIALECTS.get(_setting(raw, "product") or "")
    return product is not None and product.default_base_url is not None and bool(_setting(raw, "client_id"))


def uses_embedded_sandbox(raw: Mapping[str, Any]) -> bool:
    """``sandbox: true``, or neither a base_url nor a product host with credentials (config or environment)."""
    if _truthy(_setting(raw, "sandbox")):
        return True
    return not _setting(raw, "base_url") and not has_production_host(raw)


def load_tap_config(raw: Mapping[str, Any], *, start_embedded: bool) -> TapConfig:
    """The validated tap config; the embedded sandbox's when :func:`uses_embedded_sandbox`.

    Every key is validated before the sandbox starts (a misspelled product is one line, not a failed start).
    ``start_embedded=False`` (discovery, ``is_sorted``) validates as the embedded sandbox would be configured,
    without starting it: discovery never needs a tenant.
    """
    values = dict(raw)
    if not uses_embedded_sandbox(values):
        return TapConfig.load(values, ignore_keys=SDK_BUILTIN_KEYS)
    product = sandbox_product(values)
    for key in CONNECTION_KEYS:  # the sandbox's own address and login replace any configured ones
        values.pop(key, None)
    env = {k: v for k, v in os.environ.items() if k.removeprefix(ENV_PREFIX).lower() not in CONNECTION_KEYS}
    placeholder = EMBEDDED_PLACEHOLDER if _signs_in_with_session(product) else EMBEDDED_CLIENT_PLACEHOLDER
    checked = TapConfig.load({**values, **placeholder, "product": product}, env=env, ignore_keys=SDK_BUILTIN_KEYS)
    if not start_embedded:
        return checked
    values.update(embedded_sandbox_config(values))
    return TapConfig.load(values, env=env, ignore_keys=SDK_BUILTIN_KEYS)


def run_banner(raw: Mapping[str, Any]) -> str:
    """The first line a run logs: the embedded sandbox (synthetic data, which product) or a production tenant
    (which host). Validates the config on the way (a bad one raises ConfigError before anything starts)."""
    import httpx

    settings = load_tap_config(raw, start_embedded=False)
    if uses_embedded_sandbox(raw):
        forced = _truthy(_setting(raw, "sandbox"))
        why = (
            "sandbox: true; any base_url and credentials configured are not used"
            if forced
            else "no base_url and no credentials configured; set them to sync a real tenant"
        )
        return (
            f"EMBEDDED SANDBOX: synthetic {settings.product} data (scale {settings.sandbox_scale or 'S'}, seed "
            f"{settings.sandbox_seed or 42}; set `product` for another) - {why}"
        )
    from wellsky_core.config import is_loopback_host

    url = httpx.URL(settings.base_url or "")
    product = settings.product or "product detected at sign-in"
    if is_loopback_host(url.host):
        return f"TENANT AT {url.host}:{url.port} ({product}): a loopback host - a sandbox you started, or a tunnel"
    return f"PRODUCTION TENANT: {url.host} ({product}) - real patient data; set sandbox: true to use the sandbox"
