"""Home Connect caregivers read as an agency knows them (issue 28): the credential profile tag becomes
``credentials``, the other profile tags readable ``specialties``; a tag the tenant cannot name keeps its id."""

from __future__ import annotations

from datetime import UTC, datetime

from wellsky_core.config import WellSkyConfig
from wellsky_core.connection import Connection
from wellsky_core.products.personal_care.normalize import to_canonical

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _caregiver(tags: str) -> dict:
    return {
        "resourceType": "Practitioner", "id": "2000001", "active": True,
        "meta": {"tag": [{"code": "isHired", "display": "true"}, {"code": "profileTags", "display": tags}]},
        "name": [{"use": "official", "family": "Abbott", "given": ["Wilma"]}],
    }


def test_profile_tag_names_become_credentials_and_specialties() -> None:
    names = {"12": "CNA", "45": "Dementia Care"}.get
    record = to_canonical("practitioners", _caregiver("12,45,999"), NOW, profile_tag_name=names)
    assert record["credentials"] == "CNA"
    assert record["specialties"] == ["Dementia Care", "profile_tag:999"]
    unnamed = to_canonical("practitioners", _caregiver("45"), NOW)  # e.g. a webhook fetch: no lookup at hand
    assert unnamed["credentials"] is None and unnamed["specialties"] == ["profile_tag:45"]


def test_the_channel_names_tags_once_each_through_the_api(sandbox_factory) -> None:
    tenant = sandbox_factory(product="personal_care", scale=40)
    config = WellSkyConfig.load(
        {"product": "personal_care", "base_url": tenant.base_url, "client_id": tenant.client_id,
         "client_secret": tenant.client_secret, "max_requests_per_second": 0},
        env={},
    )
    connection = Connection(config)
    try:
        caregivers = list(connection.channel("practitioners").iter_records("practitioners", None))
    finally:
        connection.close()
    truth = {str(p["id"]): p for p in tenant.truth("practitioners")}
    assert caregivers and all(c["credentials"] == truth[c["id"]]["credentials"] for c in caregivers)
    assert {c["credentials"] for c in caregivers} <= {"HHA", "CNA", "LPN"}
    assert not any(s.startswith("profile_tag:") for c in caregivers for s in c["specialties"])
