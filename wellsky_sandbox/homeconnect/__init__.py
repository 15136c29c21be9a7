"""WellSky Personal Care "Home Connect" API emulation (``--product personal_care``).

Follows ``docs/facts/wellsky-home-connect.md`` (the fact sheet; sections cited in docstrings): the token
endpoint at the host root, ``/v1/`` resources with their exact spellings, Bundles, search rules, shapes,
documented writes, subscriptions and the 100 req/s soft limit. ``docs/sandbox-api.md`` says which parts are
sourced and which are modeled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .api import HomeConnect
from .http import HcResponse, aws_forbidden
from .options import Options

if TYPE_CHECKING:
    from ..tenant import Tenant

__all__ = ["SERVED", "HomeConnect", "Options", "forbidden_routes", "routes", "served_counts"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


SERVED = ("patients", "practitioners", "appointments", "encounters")
"""Canonical entities of the tenant the Home Connect API renders (as clients, caregivers, shifts, care logs);
coverage, authorizations, referrals and care plans exist in the generated agency but no Home Connect resource
serves them."""


def served_counts(tenant: Tenant) -> dict[str, int]:
    """What a Home Connect client can read from this tenant, per canonical stream (the start-up counts)."""
    hc: HomeConnect = tenant.homeconnect  # type: ignore[attr-defined]
    counts = {entity: tenant.counts.get(entity, 0) for entity in SERVED}
    counts["related_persons"] = sum(1 for _ in hc.extras.all("relatedperson"))
    counts["locations"] = len(hc.extras.locations)
    return counts


def routes(tenant: Tenant) -> list[BaseRoute]:
    """The Home Connect routes plus its control endpoints; ``tenant.homeconnect`` is the emulation."""
    hc = HomeConnect(tenant, Options.parse(tenant.config.homeconnect))
    tenant.homeconnect = hc  # type: ignore[attr-defined]  # stats and control API reach it here

    async def deliveries(request: Request) -> Response:
        try:
            after = int(request.query_params.get("after", "0") or 0)
        except ValueError:
            return HcResponse({"error": "after must be an integer delivery sequence number"}, status_code=400)
        return HcResponse({"deliveries": [d for d in hc.hub.log if d["seq"] > after], "pending": hc.hub.pending()})

    async def options(request: Request) -> Response:
        if request.method == "POST":
            import orjson

            try:
                body = orjson.loads(await request.body() or b"{}")
                merged = {**vars(hc.options), **body} if isinstance(body, dict) else None
                if merged is None:
                    raise ValueError("body must be a JSON object of options")
                hc.options = Options.parse(merged)
            except (ValueError, orjson.JSONDecodeError) as exc:
                return HcResponse({"error": "invalid_option", "message": str(exc)}, status_code=400)
        return HcResponse(vars(hc.options))

    async def offices(request: Request) -> Response:
        """The truth of the location list: the open offices' ids and the closed ones' (deleted)."""
        open_ids = [loc["id"] for loc in hc.extras.locations]
        return HcResponse({"open": open_ids,
                           "closed": [loc["id"] for loc in hc.extras.all_locations if loc["id"] not in open_ids]})

    return [
        Route("/oauth/accesstoken", hc.token, methods=["POST"]),
        Route("/_sandbox/homeconnect/locations", offices, methods=["GET"]),
        Route("/v1/{path:path}", hc.dispatch, methods=METHODS),
        Route("/_sandbox/homeconnect/deliveries", deliveries, methods=["GET"]),
        Route("/_sandbox/homeconnect/options", options, methods=["GET", "POST"]),
    ]


def forbidden_routes() -> list[BaseRoute]:
    """Everything else on the host answers like production: 403 from the gateway, never 404."""

    async def forbidden(request: Request) -> Response:
        return aws_forbidden(request)

    return [Route("/{path:path}", forbidden, methods=METHODS)]
