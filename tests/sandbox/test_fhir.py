"""The sandbox's FHIR R4 API over real HTTP: capability per product, paging, validation, filters and errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class

from wellsky_sandbox.testing import SandboxServer

ALL_TYPES = [
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Appointment",
    "Encounter",
    "Condition",
    "Procedure",
    "Observation",
    "CarePlan",
    "Goal",
    "Coverage",
    "ClaimResponse",
    "ServiceRequest",
]
MISSING = {"home_health": set(), "hospice": {"ServiceRequest"}, "personal_care": {"CarePlan", "Goal"}}


@pytest.fixture(scope="module", params=["home_health", "hospice", "personal_care"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with SandboxServer(
        product=request.param, scale=40, data_dir=tmp_path_factory.mktemp(request.param), sftp_port=None
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    token = httpx.post(
        server.base_url + "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": server.client_id, "client_secret": server.client_secret},
    ).json()["access_token"]
    with httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {token}"}) as c:
        yield c


def validate(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def search_all(client: httpx.Client, kind: str, **params: str) -> tuple[list[dict[str, Any]], int]:
    """Every match of a search, following next links; validates each Bundle and resource. Returns (matches, pages)."""
    url: str | None = f"/fhir/{kind}"
    query: dict[str, str] | None = params
    matches, pages = [], 0
    while url:
        response = client.get(url, params=query)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+json")
        bundle = response.json()
        validate(bundle)
        assert bundle["type"] == "searchset"
        for entry in bundle.get("entry", []):
            validate(entry["resource"])
            if entry["search"]["mode"] == "match":
                assert entry["resource"]["resourceType"] == kind
                matches.append(entry["resource"])
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        assert next(link["relation"] for link in bundle["link"]) == "self"
        url, query, pages = (nxt[0] if nxt else None), None, pages + 1
        assert pages < 500
    return matches, pages


def expected_count(server: SandboxServer, kind: str) -> int:
    """How many resources of a type the tenant's logical records imply."""
    if kind in ("Condition", "Procedure", "Observation"):
        key = {"Condition": "diagnoses", "Procedure": "procedures"}.get(kind)
        encounters = server.truth("encounters")
        if key:
            return sum(len(e[key]) for e in encounters)
        return sum(sum(v is not None for v in (e["vitals"] or {}).values()) for e in encounters)
    if kind == "Goal":
        return sum(len(cp["goals"]) for cp in server.truth("care_plans"))
    entity = {
        "Patient": "patients",
        "Practitioner": "practitioners",
        "PractitionerRole": "practitioners",
        "Appointment": "appointments",
        "Encounter": "encounters",
        "CarePlan": "care_plans",
        "Coverage": "coverage",
        "ClaimResponse": "authorizations",
        "ServiceRequest": "referrals",
    }[kind]
    return len(server.truth(entity))


def test_capability_statement_lists_the_products_resources(server: SandboxServer, client: httpx.Client) -> None:
    body = client.get("/fhir/metadata").json()
    validate(body)
    assert body["fhirVersion"] == "4.0.1"
    types = [r["type"] for r in body["rest"][0]["resource"]]
    assert types == [t for t in ALL_TYPES if t not in MISSING[server.product]] + ["Group"]  # Group: bulk export only
    for res in body["rest"][0]["resource"][:-1]:
        names = {p["name"] for p in res["searchParam"]}
        assert {"_lastUpdated", "_count", "_sort"} <= names
    assert httpx.get(server.base_url + "/fhir/metadata").status_code == 401


def test_every_type_pages_through_bundles_and_validates(server: SandboxServer, client: httpx.Client) -> None:
    for kind in ALL_TYPES:
        if kind in MISSING[server.product]:
            response = client.get(f"/fhir/{kind}")
            assert response.status_code == 404
            assert response.json()["resourceType"] == "OperationOutcome"
            continue
        matches, pages = search_all(client, kind, _count="9", _sort="_lastUpdated")
        want = expected_count(server, kind)
        assert len(matches) == want, kind
        assert pages >= -(-want // 9), kind
        ids = [m["id"] for m in matches]
        assert len(set(ids)) == len(ids), f"{kind}: a resource repeated across pages"
        stamps = [m["meta"]["lastUpdated"] for m in matches]
        assert stamps == sorted(stamps), f"{kind} not sorted by _lastUpdated"
        if matches:  # read gives the same resource as search
            one = matches[len(matches) // 2]
            read = client.get(f"/fhir/{kind}/{one['id']}")
            assert read.status_code == 200 and read.json() == one


def test_last_updated_gt_and_ge(server: SandboxServer, client: httpx.Client) -> None:
    truth = server.truth("appointments")
    pivot = truth[len(truth) // 3]["updated_at"]
    ge, _ = search_all(client, "Appointment", _lastUpdated="ge" + pivot, _count="50")
    gt, _ = search_all(client, "Appointment", _lastUpdated="gt" + pivot, _count="50")
    assert [a["id"] for a in ge] == [r["id"] for r in truth if r["updated_at"] >= pivot]
    assert [a["id"] for a in gt] == [r["id"] for r in truth if r["updated_at"] > pivot]
    assert len(ge) > len(gt)
    day = pivot[:10]
    by_day, _ = search_all(client, "Appointment", _lastUpdated="gt" + day, _count="50")
    assert all(a["meta"]["lastUpdated"][:10] > day for a in by_day)
    empty, _ = search_all(client, "Appointment", _lastUpdated="ge2099-01-01T00:00:00Z")
    assert empty == []


def test_patient_filter_and_includes(server: SandboxServer, client: httpx.Client) -> None:
    encounter = server.truth("encounters")[0]
    appts, _ = search_all(client, "Appointment", patient=f"Patient/{encounter['patient_id']}")
    truth = [a["id"] for a in server.truth("appointments") if a["patient_id"] == encounter["patient_id"]]
    assert sorted(a["id"] for a in appts) == sorted(truth) and appts
    bundle = client.get(
        "/fhir/Encounter",
        params=[("_count", "5"), ("_revinclude", "Condition:encounter"), ("_revinclude", "Procedure:encounter")],
    ).json()
    matches = {f"Encounter/{e['resource']['id']}" for e in bundle["entry"] if e["search"]["mode"] == "match"}
    included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert {r["resourceType"] for r in included} == {"Condition", "Procedure"}
    assert {r["encounter"]["reference"] for r in included} <= matches


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"_count": "0"}, "_count"),
        ({"_count": "many"}, "_count"),
        ({"_count": "5000"}, "_count"),
        ({"_sort": "-_lastUpdated"}, "_sort"),
        ({"_lastUpdated": "eq2026-01-01T00:00:00Z"}, "_lastUpdated"),
        ({"_lastUpdated": "lt2026-01-01T00:00:00"}, "_lastUpdated"),
        ({"_lastUpdated": "ge2026-01-01T00:00:00"}, "_lastUpdated"),
        ({"_lastUpdated": "geyesterday"}, "_lastUpdated"),
        ({"_cursor": "not-a-cursor"}, "_cursor"),
        ({"_include": "Patient:organization"}, "_include"),
        ({"given": "Ada"}, "given"),
    ],
)
def test_bad_parameters_are_400_operation_outcomes_naming_the_parameter(
    client: httpx.Client, params: dict[str, str], param: str
) -> None:
    response = client.get("/fhir/Patient", params=params)
    assert response.status_code == 400
    body = response.json()
    validate(body)
    assert body["issue"][0]["expression"] == [param]
    assert param in body["issue"][0]["diagnostics"]


def test_unknown_type_id_and_foreign_cursor(client: httpx.Client) -> None:
    for path in ("/fhir/Medication", "/fhir/Patient/no-such-id", "/fhir/Condition/nothing-dx-1"):
        response = client.get(path)
        assert response.status_code == 404, path
        validate(response.json())
    first = client.get("/fhir/Patient", params={"_count": "2"}).json()
    cursor = httpx.URL(next(lk["url"] for lk in first["link"] if lk["relation"] == "next")).params["_cursor"]
    wrong = client.get("/fhir/Coverage", params={"_cursor": cursor})
    assert wrong.status_code == 400 and wrong.json()["issue"][0]["expression"] == ["_cursor"]


def test_child_resources_page_exactly_for_any_page_size(server: SandboxServer, client: httpx.Client) -> None:
    """Pages may end inside an encounter's diagnoses; resuming must neither repeat nor skip one."""
    whole, pages = search_all(client, "Condition", _count="1000")
    assert pages == 1
    for count in (1, 2, 3, 4, 5, 7):
        paged, _ = search_all(client, "Condition", _count=str(count))
        assert [c["id"] for c in paged] == [c["id"] for c in whole], count


def test_identifier_reference_variant_refers_to_practitioners_by_npi(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``fhir_references="identifier"``: US Core/Synthea style references, identifier search, no role _revinclude."""
    npi = "http://hl7.org/fhir/sid/us-npi"
    with SandboxServer(product="home_health", scale=20, data_dir=tmp_path_factory.mktemp("idref"), sftp_port=None,
                       fhir_references="identifier") as srv:
        token = httpx.post(srv.base_url + "/oauth/token", data={
            "grant_type": "client_credentials", "client_id": srv.client_id, "client_secret": srv.client_secret,
        }).json()["access_token"]
        with httpx.Client(base_url=srv.base_url, headers={"authorization": f"Bearer {token}"}) as c:
            meta = c.get("/fhir/metadata").json()
            practitioner = next(r for r in meta["rest"][0]["resource"] if r["type"] == "Practitioner")
            assert "PractitionerRole:practitioner" not in practitioner.get("searchRevInclude", [])
            assert "identifier" in {p["name"] for p in practitioner["searchParam"]}
            bad = c.get("/fhir/Practitioner", params={"_revinclude": "PractitionerRole:practitioner"})
            assert bad.status_code == 400
            roles, _ = search_all(c, "PractitionerRole")
            by_npi = [r for r in roles if "identifier" in r["practitioner"]]
            assert by_npi and all(r["practitioner"]["identifier"]["system"] == npi for r in by_npi)
            encounters, _ = search_all(c, "Encounter", _count="50")
            refs = [p["individual"]["reference"] for e in encounters for p in e.get("participant", [])]
            conditional = [r for r in refs if r.startswith(f"Practitioner?identifier={npi}|")]
            without_npi = {p["id"] for p in search_all(c, "Practitioner")[0] if not p.get("identifier")}
            assert conditional and all(r.removeprefix("Practitioner/") in without_npi
                                       for r in refs if r not in conditional)
            wanted = sorted({r.rpartition("|")[2] for r in conditional})[:3]
            found = c.get("/fhir/Practitioner", params={"identifier": ",".join(f"{npi}|{v}" for v in wanted)}).json()
            assert sorted(e["resource"]["identifier"][0]["value"] for e in found["entry"]) == wanted
            none = c.get("/fhir/Practitioner", params={"identifier": f"{npi}|0000000000"}).json()
            assert not none.get("entry")
