"""The WellSky Home Health / Hospice (formerly Kinnser) web portal, as agencies automate it.

Mounted for ``home_health`` and ``hospice`` tenants beside the JSON API. The public record it follows, fact by
fact, and what is modeled instead, is listed in ``docs/sandbox-kinnser-portal.md``. Control (loopback, no auth):
``POST /_sandbox/kinnser`` switches 2-step verification, the idle timeout, forced expiry every N requests,
covering in-app guides, the grid delay and the page layout; ``GET /_sandbox/kinnser/served`` lists the
signed-in pages served (with the session's office at the time); ``GET /_sandbox/kinnser/truth/{entity}`` is
the test oracle for what the portal adds (``offices``, ``episodes``, ``claims``, ``unbilled``, ``past_due``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..tenant import Tenant
from . import data
from .billing import Billing
from .pages import Classic
from .sessions import Sessions

PRODUCTS = ("home_health", "hospice")
TRUTH = ("offices", "episodes", "claims", "unbilled", "past_due")


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


class Control:
    def __init__(self, tenant: Tenant, sessions: Sessions, classic: Classic) -> None:
        self.tenant = tenant
        self.sessions = sessions
        self.classic = classic

    async def settings(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return _json({"error": "invalid_request", "message": "body must be a JSON object"}, 400)
        settings = self.sessions.settings
        allowed = {f.name: f.type for f in dataclasses.fields(settings)}
        for key, value in body.items():
            if key == "expire_sessions":
                if value:
                    self.sessions.expire_all()
                continue
            if key not in allowed:
                return _json(
                    {
                        "error": "unknown_setting",
                        "message": f"{key!r}; use one of {sorted(allowed)} or expire_sessions",
                    },
                    400,
                )
            current = getattr(settings, key)
            if key == "two_step" and value not in ("off", "totp", "email"):
                return _json({"error": "invalid_setting", "message": 'two_step must be "off", "totp" or "email"'}, 400)
            if key == "layout" and value not in ("v1", "v2"):
                return _json({"error": "invalid_setting", "message": 'layout must be "v1" or "v2"'}, 400)
            setattr(settings, key, type(current)(value))
        return _json({**dataclasses.asdict(settings), **self.sessions.stats()})

    async def served(self, request: Request) -> Response:
        """The signed-in pages served so far, in order (path, office then, patient, tab digest, status)."""
        with self.sessions.lock:
            rows = list(self.sessions.served)
        return _json({"data": rows})

    async def truth(self, request: Request) -> Response:
        entity = request.path_params["entity"]
        if entity not in TRUTH:
            return _json({"error": "unknown_entity", "message": f"entity must be one of {', '.join(TRUTH)}"}, 404)
        if entity == "offices":
            rows = [
                {
                    "value": o.value,
                    "name": o.name,
                    "corporate": o.corporate,
                    "patients": len(self.classic.books.get(o).patients),
                }
                for o in data.OFFICES
            ]
            return _json({"data": rows})
        book = self.classic.books.get(None)
        if entity == "episodes":
            rows = sorted((data.episode_truth(e) for e in book.episodes), key=lambda r: r["id"])
        elif entity == "claims":
            rows = sorted((data.claim_truth(c) for c in book.claims), key=lambda r: r["id"])
        elif entity == "unbilled":
            rows = book.unbilled()
        else:
            rows = [
                {
                    "visit_id": r["visit"]["id"],
                    "mrn": r["patient"].get("mrn"),
                    "status": r["status"],
                    "office": data.office_of(r["patient"]["id"]).name,
                }
                for r in book.past_due()
            ]
        return _json({"data": rows, "today": book.today.isoformat()})


def routes(tenant: Tenant) -> list[BaseRoute]:
    """The portal's routes (none for personal care, whose portal is ClearCare's)."""
    if tenant.product not in PRODUCTS:
        return []
    sessions = Sessions(tenant.security)
    classic = Classic(tenant, sessions)
    billing = Billing(tenant, sessions, classic)
    control = Control(tenant, sessions, classic)
    return [
        Route("/", lambda request: RedirectResponse("/login.cfm", status_code=302)),
        Route("/login.cfm", classic.get_login, methods=["GET"]),
        Route("/login.cfm", classic.post_login, methods=["POST"]),
        Route("/logout.cfm", classic.logout),
        Route("/SessionManagement/SessionManager.cfc", classic.new_cache_key),
        Route("/AM/Message/inbox.cfm", classic.inbox),
        Route("/AM/Patient/patientManager.cfm", classic.patient_manager),
        Route("/AM/Patient/episodeManager.cfm", classic.episode_manager),
        Route("/AM/HotBox/hotbox.cfm", classic.hotbox),
        Route("/AM/HotBox/hotboxContent.cfm", classic.hotbox_content),
        Route("/AM/Reports/reports.cfm", classic.reports),
        Route("/AM/Reports/pastDueVisits.cfm", classic.past_due),
        Route("/AM/Reports/scheduleDeviation.cfm", classic.deviation),
        Route("/EHR/", billing.shell),
        Route("/EHR", lambda request: RedirectResponse("/EHR/", status_code=302)),
        Route("/AM/Billing/BillingService.cfc", billing.service),
        Route("/_sandbox/kinnser", control.settings, methods=["POST"]),
        Route("/_sandbox/kinnser/served", control.served),
        Route("/_sandbox/kinnser/truth/{entity}", control.truth),
    ]
