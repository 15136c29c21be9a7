"""Home Connect subscriptions (fact sheet section 5): criteria, and thin ``{resourceType, id}`` deliveries.

Each delivery is one POST to ``channel.endpoint`` with the body ``{"resourceType": "<Type>", "id": <int>}`` and
every ``channel.header`` string ("Name: value") as a request header. No source documents retries,
signatures or ordering; the sandbox models a small retry (``MAX_ATTEMPTS``, doubling backoff) and keeps a
delivery log at ``GET /_sandbox/homeconnect/deliveries`` so tests can poll for arrivals.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from ..delivery import DeliveryQueue
from .data import Extras

log = logging.getLogger("wellsky_sandbox.homeconnect")

CRITERIA = (
    "admintask.created",
    "admintask.changed",
    "admintask.status.changed",
    "admintask.status.complete",
    "agency_admin.created",
    "agency_admin.deactivated.changed",
    "encounter.clockout.changed",
    "patient.created",
    "patient.name.changed",
    "patient.address.changed",
    "patient.telecom.changed",
    "patient.deactivated.changed",
    "patient.dateofdeath.changed",
    "prospect.status.changed",
    "practitioner.created",
    "practitioner.name.changed",
    "practitioner.address.changed",
    "practitioner.telecom.changed",
    "practitioner.deactivated.changed",
    "applicant.status.changed",
    "referralsources.created",
    "referralsources.changed",
)
RESOURCE_TYPE = {
    "patient": "Patient",
    "prospect": "Patient",
    "practitioner": "Practitioner",
    "applicant": "Practitioner",
    "encounter": "Encounter",
    "admintask": "AdminTask",
    "agency_admin": "Practitioner",
    "referralsources": "ReferralSource",
}
MAX_ATTEMPTS = 3
BACKOFF_SECONDS = 0.5


def parse_headers(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        name, _, rest = value.partition(":")
        out[name.strip()] = rest.strip()
    return out


class SubscriptionHub(DeliveryQueue):
    """Stored subscriptions (``hc_objects`` kind ``subscription``) and the delivery worker."""

    thread_name = "homeconnect-subscriptions"

    def __init__(self, extras: Extras) -> None:
        self.extras = extras
        self.client = httpx.Client(timeout=5.0)
        self.log: list[dict[str, Any]] = []
        super().__init__()

    def active(self) -> list[dict[str, Any]]:
        return [s for s in self.extras.all("subscription") if s.get("status") == "active"]

    def fire(self, criteria: str, rec_id: str) -> None:
        """Queue one thin notification per active subscription on ``criteria`` (never blocks the write)."""
        body = orjson.dumps({"resourceType": RESOURCE_TYPE[criteria.split(".")[0]], "id": int(rec_id)})
        for sub in self.active():
            if sub.get("criteria") == criteria:
                self._schedule({"sub": sub, "criteria": criteria, "body": body, "attempt": 1}, 0.0)

    def _deliver(self, job: dict[str, Any]) -> None:
        sub = job["sub"]
        channel = sub.get("channel") or {}
        headers = {
            "content-type": channel.get("payload") or "application/fhir+json",
            **parse_headers(channel.get("header") or []),
        }
        status, err = None, None
        try:
            response = self.client.post(channel["endpoint"], content=job["body"], headers=headers)
            status = response.status_code
            ok = 200 <= status < 300
        except httpx.HTTPError as exc:
            ok, err = False, type(exc).__name__
        self.log.append(
            {
                "seq": len(self.log) + 1,
                "subscription_id": sub["id"],
                "criteria": job["criteria"],
                "body": orjson.loads(job["body"]),
                "attempt": job["attempt"],
                "status_code": status,
                "error": err,
                "delivered": ok,
                "at": datetime.now(UTC).isoformat(),
            }
        )
        del self.log[:-5000]
        if not ok and job["attempt"] < MAX_ATTEMPTS:
            self._schedule({**job, "attempt": job["attempt"] + 1}, BACKOFF_SECONDS * 2 ** (job["attempt"] - 1))

