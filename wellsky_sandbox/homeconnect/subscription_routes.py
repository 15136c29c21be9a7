"""``/v1/subscriptions/``: create (criteria list, rest-hook channel, agencyId tag), list, search, read, PUT, DELETE."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response

from ..tenant import public
from .http import HcResponse, RoutesBase
from .shapes import (
    Invalid,
    refuse_control_chars,
)
from .subscriptions import CRITERIA


class SubscriptionRoutes(RoutesBase):
    # -- subscriptions ------------------------------------------------------------------------------------
    def write_subscription(self, sub_id: str | None, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The request body must be a JSON object.")
        refuse_control_chars(body)
        existing = self.extras.get("subscription", sub_id) if sub_id else None
        if sub_id and existing is None:
            raise Invalid(404, f"Subscription {sub_id} not found.")
        sub = {**(existing or {"resourceType": "Subscription", "status": "active"}), **body}
        if sub.get("criteria") not in CRITERIA:
            raise Invalid(422, f"'criteria' must be one of {', '.join(CRITERIA)}.")
        if sub.get("status") not in ("active", "off", "requested", "error"):
            raise Invalid(422, "'status' must be active, requested, error or off.")
        channel = sub.get("channel")
        if not isinstance(channel, dict) or channel.get("type") != "rest-hook":
            raise Invalid(422, "'channel' must be {type: \"rest-hook\", endpoint, payload, header[]}.")
        try:
            url = httpx.URL(channel.get("endpoint") or "")
        except Exception:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise Invalid(422, "'endpoint' in 'channel' must be an absolute http(s) URL.")
        header = channel.get("header", [])
        if not isinstance(header, list) or not all(isinstance(h, str) and ":" in h for h in header):
            raise Invalid(422, "'header' in 'channel' must be a list of \"Name: value\" strings.")
        tags = {t.get("code"): t.get("display") for t in (sub.get("meta") or {}).get("tag", []) if isinstance(t, dict)}
        if existing is None and tags.get("agencyId") != self.extras.agency_id:
            raise Invalid(422, "'agencyId' is required.")
        sub["id"] = existing["id"] if existing else self.extras.next_id("subscription")
        self.extras.put("subscription", str(sub["id"]), None, sub)
        if existing:
            return HcResponse({"resourceType": "Subscription", "id": sub["id"]})
        return HcResponse({"resourceType": "Subscription", "id": sub["id"]}, status_code=201)

    def search_subscriptions(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            raise Invalid(400, "The search body must be a JSON object.")
        count, page = self.paging(request, "subscriptions")
        subs = [
            s
            for s in self.extras.all("subscription")
            if all(body.get(k) in (None, s.get(k)) for k in ("status", "criteria"))
            and body.get("contact_email") in (None, s.get("contact_email"))
        ]
        return self.bundle(subs[page * count : (page + 1) * count], len(subs))

    def get_subscription(self, sub_id: str) -> Response:
        sub = self.extras.get("subscription", sub_id)
        if sub is None:
            raise Invalid(404, f"Subscription {sub_id} not found.")
        return HcResponse(public(sub))

    def delete_subscription(self, sub_id: str) -> Response:
        if not self.extras.delete("subscription", sub_id):
            raise Invalid(404, f"Subscription {sub_id} not found.")
        return HcResponse({"success": True})
