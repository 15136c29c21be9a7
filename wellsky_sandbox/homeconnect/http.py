"""Home Connect responses (Bundles, gateway 403s, Apigee 401s, ``{"error"}`` bodies) and the routes' shared base."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..tenant import Tenant, public
from .data import Extras
from .options import Options
from .shapes import (
    Invalid,
    Shapes,
)
from .subscriptions import SubscriptionHub


class HcResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def fail(status: int, message: str) -> Response:
    return HcResponse({"error": message}, status_code=status)


def aws_forbidden(request: Request) -> Response:
    """What API Gateway answers for a path/method it has no route for (fact sheet section 7, pitfall 1)."""
    header = request.headers.get("authorization")
    if header is None:
        return HcResponse({"message": "Missing Authentication Token"}, status_code=403)
    hashed = base64.b64encode(hashlib.sha256(header.encode()).digest()).decode()
    return HcResponse(
        {
            "message": "Invalid key=value pair (missing equal-sign) in Authorization header (hashed with SHA-256 and "
            f"encoded with Base64): '{hashed}'."
        },
        status_code=403,
    )


def apigee_fault(message: str, code: str) -> Response:
    return HcResponse({"fault": {"faultstring": message, "detail": {"errorcode": code}}}, status_code=401)


class RoutesBase:
    """What every group of Home Connect routes shares: the tenant's stores, paging and the search Bundle."""

    tenant: Tenant
    store: Any
    extras: Extras
    shapes: Shapes
    hub: SubscriptionHub
    options: Options

    # -- paging and bundles -------------------------------------------------------------------------------
    def paging(self, request: Request, resource: str) -> tuple[int, int]:
        """(count, zero-based page index) from ``_count``/``_page`` in the query string."""
        ref = self.options.paging == "ref"
        default = 20
        if ref and resource in ("encounter", "relatedperson"):
            default = 30
        q = request.query_params
        try:
            count = int(q.get("_count", default))
            page = int(q.get("_page", 1 if ref else 0))
        except ValueError:
            raise Invalid(400, "_count and _page must be integers.") from None
        if not 1 <= count <= 100:
            raise Invalid(400, "_count must be between 1 and 100.")
        first = 1 if ref else 0
        if page < first:
            raise Invalid(400, f"_page must be {first} or greater.")
        return count, page - first

    @staticmethod
    def bundle(entries: list[dict[str, Any]], total_records: int, **extra: Any) -> Response:
        return HcResponse(
            {
                "resourceType": "Bundle",
                "id": "searchParams",
                "type": "searchset",
                "totalRecords": total_records,
                **extra,
                "entry": [{"resource": public(e)} for e in entries],
            }
        )

    def search_list(self, request: Request, items: list[dict[str, Any]]) -> Response:
        count, page = self.paging(request, "list")
        return self.bundle(items[page * count : (page + 1) * count], len(items))
