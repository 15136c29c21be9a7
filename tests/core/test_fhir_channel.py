"""FhirChannel against real sandbox tenants: FHIR-read canonical records equal the tenant's logical truth."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from wellsky_core.channels import open_channel
from wellsky_core.channels.fhir import FhirChannel, fhir_instant
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import NormalizationError, RemoteError
from wellsky_core.http.client import WellSkyClient
from wellsky_core.models import MODELED_ENTITIES as ENTITIES
from wellsky_core.normalize import fhir as fhir_norm
from wellsky_sandbox.testing import SandboxServer

from ..fhir_only import FHIR_ONLY, comparable


def json_fields(model: type) -> list[str]:
    """A canonical model's fields as records spell them (by alias: ``_sdc_deleted_at``)."""
    return [info.alias or name for name, info in model.model_fields.items()]

UNSUPPORTED = {"personal_care": {"care_plans"}, "hospice": {"referrals"}, "home_health": set()}


def canonical(entity: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    model = ENTITIES[entity].model
    return [comparable(entity, model.model_validate(r).model_dump(mode="json", by_alias=True)) for r in records]


def fhir_records(channel: FhirChannel, entity: str, since: datetime | None = None) -> list[dict[str, Any]]:
    return [comparable(entity, r) for r in channel.iter_records(entity, since)]


def make_channel(server: SandboxServer, page_size: int = 37) -> tuple[FhirChannel, WellSkyClient]:
    config = WellSkyConfig.load(
        {
            "base_url": server.base_url,
            "auth_method": "oauth_client_credentials",
            "client_id": server.client_id,
            "client_secret": server.client_secret,
            "page_size": page_size,
            "max_requests_per_second": 0,
        },
        env={},
    )
    client = WellSkyClient(config)
    channel = open_channel("fhir", config, client, server.product)
    assert isinstance(channel, FhirChannel)
    return channel, client


@pytest.fixture
def tenant(request: pytest.FixtureRequest, sandbox_factory: Callable[..., SandboxServer]) -> SandboxServer:
    return sandbox_factory(product=request.param, scale=60)


@pytest.fixture
def channel(tenant: SandboxServer) -> Iterator[FhirChannel]:
    chan, client = make_channel(tenant)
    yield chan
    chan.close()
    client.close()


@pytest.mark.parametrize("tenant", ["home_health", "hospice", "personal_care"], indirect=True)
def test_every_entity_equals_truth_field_by_field(tenant: SandboxServer, channel: FhirChannel) -> None:
    for entity in ENTITIES:
        if entity in UNSUPPORTED[tenant.product]:
            assert not channel.supports(entity)
            with pytest.raises(RemoteError, match="source=api"):
                list(channel.iter_records(entity, None))
            continue
        assert channel.supports(entity), entity
        got = fhir_records(channel, entity)
        _field_by_field(tenant, entity, got)
        keys = [(r["updated_at"], r["id"]) for r in got]
        assert keys == sorted(keys), f"{entity} not in (updated_at, id) order"


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_children_are_present_and_not_fetched_per_record(tenant: SandboxServer, channel: FhirChannel) -> None:
    before = tenant.stats()
    encounters = list(channel.iter_records("encounters", None))
    after = tenant.stats()
    assert any(e["diagnoses"] and e["procedures"] and e["vitals"] for e in encounters)
    requests = _requests(after) - _requests(before)
    pages = -(-len(encounters) // 37)
    assert requests <= pages + 2, f"{requests} requests for {len(encounters)} encounters: N+1 fetching"
    care_plans = list(channel.iter_records("care_plans", None))
    assert any(cp["goals"] for cp in care_plans)
    practitioners = list(channel.iter_records("practitioners", None))
    assert all(p["disciplines"] for p in practitioners)


def _requests(stats: dict[str, Any]) -> int:
    return int(stats["data_requests"])


@pytest.mark.parametrize("tenant", ["hospice"], indirect=True)
def test_since_filters_inclusively_and_sees_changes(tenant: SandboxServer, channel: FhirChannel) -> None:
    truth = tenant.truth("appointments")
    pivot = truth[len(truth) // 2]["updated_at"]
    since = datetime.fromisoformat(pivot.replace("Z", "+00:00"))
    got = fhir_records(channel, "appointments", since)
    assert got == canonical("appointments", tenant.truth("appointments", updated_since=pivot))
    assert got[0]["updated_at"] == pivot.replace("+00:00", "Z")
    # a sub-second `since` just after the pivot excludes it
    later = list(channel.iter_records("appointments", since + timedelta(milliseconds=500)))
    assert all(r["updated_at"] > pivot for r in later)

    result = tenant.advance(count=40, seed=7)
    changed_since = datetime.fromisoformat(result["updated_at"].replace("Z", "+00:00"))
    for entity in ("patients", "appointments", "encounters", "authorizations"):
        fresh = fhir_records(channel, entity, changed_since)
        assert fresh == canonical(entity, tenant.truth(entity, updated_since=result["updated_at"]))
    exposed = [e for e in ENTITIES if channel.supports(e)]
    seen = sum(len(list(channel.iter_records(e, changed_since))) for e in exposed)
    assert seen == sum(len(tenant.truth(e, updated_since=result["updated_at"])) for e in exposed) > 0


def test_fhir_instant_keeps_subseconds() -> None:
    assert fhir_instant(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"
    assert fhir_instant(datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)) == "2026-01-02T03:04:05.250000Z"


def test_normalizer_names_the_field_never_the_value() -> None:
    bad = {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
        "name": [{"family": "Secretname", "given": ["Hidden"]}],
        "gender": "female",
        "birthDate": "1931-13-45",
        "extension": [{"url": "https://tenant.example/fhir/StructureDefinition/patient-status", "valueCode": "active"}],
    }
    record = fhir_norm.patient(bad)
    assert record["birth_date"] is None and record["last_name"] == "Secretname"
    assert [f["field"] for f in record["data_quality"]] == ["birth_date"]
    assert "1931" not in str(record["data_quality"]) and "Secretname" not in str(record["data_quality"])
    with pytest.raises(NormalizationError) as info:
        fhir_norm.patient({**bad, "meta": {}})
    assert info.value.field == "updated_at" and "Secretname" not in str(info.value)
    enc = {
        "resourceType": "Encounter",
        "id": "e1",
        "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
        "status": "finished",
        "subject": {"reference": "Patient/p1"},
        "diagnosis": [{"condition": {"reference": "Condition/missing"}, "rank": 1}],
    }
    record = fhir_norm.encounter(enc, {})
    assert record["diagnoses"] == []
    assert {"field": "diagnoses.0", "kind": "unresolved_reference"} in [
        {k: f[k] for k in ("field", "kind")} for f in record["data_quality"]
    ]


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_session_auth_with_totp_reads_fhir(tenant: SandboxServer) -> None:
    tenant.set_tenant(mfa=True)
    config = WellSkyConfig.load(
        {
            "base_url": tenant.base_url,
            "username": tenant.username,
            "password": tenant.password,
            "mfa_method": "totp",
            "totp_secret": tenant.totp_secret,
        },
        env={},
    )
    with WellSkyClient(config) as client:
        chan = FhirChannel(config=config, client=client, product=tenant.product)
        assert fhir_records(chan, "coverage") == canonical("coverage", tenant.truth("coverage"))
    assert httpx.get(tenant.base_url + "/fhir/metadata").status_code == 401


# personal_care's api source is Home Connect, not the modeled REST the FHIR facade mirrors (test_home_connect_sync.py)
@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_api_and_fhir_sources_yield_the_same_records(tenant: SandboxServer, channel: FhirChannel) -> None:
    """The tap's ``source: api`` and ``source: fhir`` must be interchangeable, field for field."""
    rest = open_channel("api", channel.config, channel.client, tenant.product)
    for entity in ENTITIES:
        if not channel.supports(entity):
            continue
        via_api = [comparable(entity, r) for r in rest.iter_records(entity, None)]
        via_fhir = fhir_records(channel, entity)
        assert via_api == via_fhir, entity


@pytest.mark.parametrize("tenant", ["hospice"], indirect=True)
def test_faulty_tenant_still_yields_exact_records(tenant: SandboxServer) -> None:
    """5xx, 429 and truncated Bundles are retried by the transport; the records stay exactly the truth."""
    chan, client = make_channel(tenant, page_size=25)
    client.config.backoff_base_seconds = 0.01
    client.config.backoff_max_seconds = 0.05
    tenant.set_faults("error=0.15,429=0.02,malformed=0.05")
    try:
        for entity in ("encounters", "care_plans"):
            assert fhir_records(chan, entity) == canonical(entity, tenant.truth(entity))
    finally:
        tenant.set_faults(None)
        client.close()
    assert tenant.stats()["faults_total"] > 0


@pytest.mark.parametrize("tenant", ["home_health"], indirect=True)
def test_standard_elements_of_the_sandbox_fill_the_widened_fields(tenant: SandboxServer, channel: FhirChannel) -> None:
    """Encounter.class, preAuthRef, addItem and CarePlan.activity land in the widened canonical fields."""
    for enc in channel.iter_records("encounters", None):
        assert enc["encounter_class"] == "HH"
    truth = {r["id"]: r for r in tenant.truth("authorizations")}
    for auth in channel.iter_records("authorizations", None):
        assert auth["authorization_number"] == auth["id"]
        assert [i["service_code"] for i in auth["items"]] == truth[auth["id"]]["service_codes"]
        assert all(i["units_authorized"] == truth[auth["id"]]["units_authorized"] for i in auth["items"])
    plans = {r["id"]: r for r in tenant.truth("care_plans")}
    for plan in channel.iter_records("care_plans", None):
        assert len(plan["activities"]) == len(plans[plan["id"]]["interventions"])
        assert {a["status"] for a in plan["activities"]} <= {"in_progress"}


# -- identifier references across streams (issue 26) ----------------------------------------------------------
@pytest.fixture
def us_core_tenant(sandbox_factory: Callable[..., SandboxServer]) -> SandboxServer:
    """Practitioners referred to by NPI (PractitionerRole, Encounter, Appointment) and no role _revinclude."""
    return sandbox_factory(product="home_health", scale=60, fhir_references="identifier")


def _field_by_field(tenant: SandboxServer, entity: str, got: list[dict[str, Any]]) -> None:
    want = canonical(entity, tenant.truth(entity))
    assert len(got) == len(want) > 0, entity
    for mine, theirs in zip(got, want, strict=True):
        for field in json_fields(ENTITIES[entity].model):
            if field not in FHIR_ONLY.get(entity, ()):
                assert mine[field] == theirs[field], (entity, mine["id"], field)
        assert mine["data_quality"] == [], (entity, mine["id"], mine["data_quality"])


def test_identifier_references_resolve_across_streams_in_either_order(us_core_tenant: SandboxServer) -> None:
    channel, client = make_channel(us_core_tenant)
    try:
        assert "PractitionerRole:practitioner" not in (
            channel.capability()["Practitioner"].get("searchRevInclude") or []
        ), "the variant under test: no role _revinclude"
        # encounters first: nothing indexed yet, so the NPIs are looked up (batched, once per sync)
        before = us_core_tenant.stats()
        encounters = fhir_records(channel, "encounters")
        lookups = _requests(us_core_tenant.stats()) - _requests(before)
        assert any(e["practitioner_id"] for e in encounters)
        _field_by_field(us_core_tenant, "encounters", encounters)
        practitioners = len(us_core_tenant.truth("practitioners"))
        pages = -(-len(encounters) // 37)
        assert lookups <= 2 * pages + 1, f"{lookups} requests: identifiers looked up per record, not per page"
        assert len(channel.index) > 0, "encounter pages carry no Practitioner: only the lookups can fill the index"
        assert practitioners > 0
        _field_by_field(us_core_tenant, "appointments", fhir_records(channel, "appointments"))
        # roles name their practitioner by NPI only: read by search and joined by identifier
        got = fhir_records(channel, "practitioners")
        assert any(p["roles"] for p in got)
        _field_by_field(us_core_tenant, "practitioners", got)
    finally:
        channel.close()
        client.close()


def test_an_identifier_no_server_resource_carries_is_null_and_flagged(us_core_tenant: SandboxServer) -> None:
    channel, client = make_channel(us_core_tenant)
    try:
        encounter = {
            "resourceType": "Encounter", "id": "e-x", "meta": {"lastUpdated": "2026-01-02T00:00:00Z"},
            "status": "finished", "subject": {"reference": "Patient/p1"},
            "participant": [{"individual": {"reference": f"Practitioner?identifier={fhir_norm.SID_NPI}|0000000000"}}],
        }
        resources: list[tuple[str | None, dict[str, Any]]] = [("match", encounter)]
        channel.resolve_identifiers(resources)
        assert channel.index.known_absent(("Practitioner", fhir_norm.SID_NPI, "0000000000"))
        before = _requests(us_core_tenant.stats())
        channel.resolve_identifiers(resources)
        assert _requests(us_core_tenant.stats()) == before, "a miss is asked once per sync"
        from wellsky_core.channels.fhir import normalize_page

        [record] = normalize_page("encounters", "Encounter", resources, channel.rules, channel.reject,
                                  channel.skipped, index=channel.index)
        assert record["practitioner_id"] is None
        assert {"field": "practitioner_id", "kind": "unresolved_reference"}.items() <= next(
            f for f in record["data_quality"] if f["field"] == "practitioner_id").items()
    finally:
        channel.close()
        client.close()
