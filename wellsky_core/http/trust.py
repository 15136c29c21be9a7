"""Which URLs may receive credentials: the one decision, made by :func:`is_trusted` (and :func:`require_trusted`).

A URL may carry our bearer token, session cookie, client secret or assertion only when it is

- on the same origin (scheme, host, port) as a configured base: ``base_url``, ``fhir_base_url`` (held to
  base_url's origin by the config) or ``token_url`` *as configured*, or an origin listed in ``trusted_origins``;
  and
- https, unless its host is loopback (the local sandbox, a tunnel on this machine).

The client checks it before every authenticated send (``client._guard``), and every URL a server hands us goes
through it by name first, for a clear error: FHIR Bundle next links, bulk status and file URLs (also when read
back from a job file on resume), SMART discovery's advertised ``token_endpoint`` (it never replaces
``token_url`` unless trusted), the portal's links that would carry its ``sessionCacheKey``. Home Connect ids are
validated and quoted before they reach a path (``products/personal_care/channel.record_path``). Redirects
are never followed (``follow_redirects=False`` on the client): a 3xx is an error, so no credential is replayed
to the ``Location`` of another origin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from ..errors import RemoteError

if TYPE_CHECKING:
    from ..config import WellSkyConfig

Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str | httpx.URL) -> Origin:
    """``(scheme, host, port)`` with the scheme's default port filled in."""
    parsed = httpx.URL(str(url))
    scheme = parsed.scheme.lower()
    return scheme, (parsed.host or "").lower(), parsed.port or _DEFAULT_PORTS.get(scheme, 0)


def trusted_origins(config: WellSkyConfig) -> frozenset[Origin]:
    """The origins of ``base_url``, ``fhir_base_url``, the configured ``token_url`` and ``trusted_origins``."""
    configured = [config.base_url, config.fhir_base_url, config.token_url, *config.trusted_origins]
    return frozenset(origin(url) for url in configured if url)


def is_trusted(url: str | httpx.URL, config: WellSkyConfig) -> bool:
    """Whether ``url`` (absolute) may receive credentials (see the module docstring)."""
    from ..config import is_loopback_host

    scheme, host, port = origin(url)
    if scheme != "https" and not (scheme == "http" and is_loopback_host(host)):
        return False
    return (scheme, host, port) in trusted_origins(config)


def resolve(link: str, config: WellSkyConfig) -> httpx.URL:
    """A server-given link made absolute against ``base_url``."""
    url = httpx.URL(link)
    return url if url.is_absolute_url else httpx.URL(str(config.base_url)).join(link)


def describe(url: str | httpx.URL) -> str:
    """``scheme://host:port`` of a URL, for messages (no path or query: they may carry ids)."""
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"


def require_trusted(link: str, config: WellSkyConfig, *, what: str, code: str = "untrusted_url") -> httpx.URL:
    """``link`` resolved against the tenant, or a ``RemoteError`` naming the origin and the fix."""
    url = resolve(link, config)
    if not is_trusted(url, config):
        raise RemoteError(
            200,
            code,
            f"{what} points to another host or port ({describe(url)}) than the tenant's; refusing to send "
            "credentials there (add the origin to trusted_origins if it really belongs to your tenant)",
        )
    return url


__all__ = ["describe", "is_trusted", "origin", "require_trusted", "resolve", "trusted_origins"]
