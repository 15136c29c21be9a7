"""Personal care: WellSky's "Home Connect" partner API as the product's dialect — the host, token path, API
root, rate budget and streams the connector follows, and the modules that read and write it.

Facts from ``docs/facts/wellsky-home-connect.md`` (section numbers in comments). The record mapping lives in
``normalize.py`` (native -> canonical) and ``write_rules.py`` (canonical -> native); the channel in
``channel.py``, the write engine in ``writer.py``, subscriptions and their receiver in ``webhooks.py``.
"""

from __future__ import annotations

from ..base import Dialect

PRODUCTION_URL = "https://connect.clearcareonline.com"
TOKEN_PATH = "/oauth/accesstoken"
API_ROOT = "/v1"
MAX_COUNT = 100
"""``_count`` maximum (§2 paging)."""
RATE_BUDGET = 100.0
"""Requests per second the vendor asks partners to stay under (§6)."""
TOKEN_RENEW_MARGIN_SECONDS = 300.0
"""Production refreshes the one-hour token five minutes early (§1)."""

UNAVAILABLE: dict[str, str] = {
    "care_plans": "Home Connect has no bulk care-plan read: care plans are only reachable per client "
    "(/v1/careplan/activity/{patientId}/) and carry no plan period, goals or outcomes",
    "authorizations": "Home Connect exposes no payer authorizations (no resource in the vendor API)",
    "referrals": "Home Connect exposes referral *sources* (POST-only collection), not referrals",
    "coverage": "Home Connect exposes no insurance coverage resource",
}
"""Canonical streams this API does not have, with the reason reported to the user (never faked)."""

NEVER_SENT: dict[str, frozenset[str]] = {
    "appointments": frozenset({"service_code"}),  # an Appointment (shift) has no service code (fact sheet §3)
}
"""Canonical fields the Home Connect API has no source for: null, and not flagged as missing."""

DIALECT = Dialect(
    product="personal_care",
    streams=frozenset({"patients", "practitioners", "appointments", "encounters", "related_persons", "locations"}),
    writable=frozenset({"patients"}),
    unavailable=UNAVAILABLE,
    never_sent=NEVER_SENT,
    api_channel="wellsky_core.products.personal_care.channel:HomeConnectChannel",
    writer="wellsky_core.products.personal_care.writer:HomeConnectWriter",
    write_streams=(("evv_clock", "wellsky_core.products.personal_care.writer:ClockEvent"),),
    has_tenant_endpoint=False,
    default_base_url=PRODUCTION_URL,
    api_root=API_ROOT,
    token_path=TOKEN_PATH,
    auth_methods=("oauth_client_credentials",),
    token_renew_margin_seconds=TOKEN_RENEW_MARGIN_SECONDS,
    rate_budget=RATE_BUDGET,
)


__all__ = [
    "API_ROOT", "DIALECT", "MAX_COUNT", "NEVER_SENT", "PRODUCTION_URL", "RATE_BUDGET", "TOKEN_PATH", "UNAVAILABLE",
]
