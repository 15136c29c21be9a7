"""The personal_care tenant speaks WellSky Home Connect: each test checks one fact of the fact sheet over HTTP.

Expected values come from ``docs/facts/wellsky-home-connect.md`` (section numbers in the test names'
docstrings) and from the canonical truth (``/_sandbox/truth``), never from the emulation's own code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from wellsky_sandbox.generator import Generator
from wellsky_sandbox.testing import SandboxServer


def token_for(sb: SandboxServer) -> str:
    response = httpx.post(
        sb.base_url + "/oauth/accesstoken",
        data={"grant_type": "client_credentials", "client_id": sb.client_id, "client_secret": sb.client_secret},
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def api(sb: SandboxServer) -> httpx.Client:
    return httpx.Client(base_url=sb.base_url, headers={"Authorization": f"Bearer {token_for(sb)}"}, timeout=30)


@pytest.fixture(scope="module")
def tenant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    """One read-mostly personal_care tenant shared by the read tests (writes use their own)."""
    server = SandboxServer(
        product="personal_care", scale=120, data_dir=tmp_path_factory.mktemp("hc"), sftp_port=None
    ).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def client(tenant: SandboxServer) -> Iterator[httpx.Client]:
    with api(tenant) as c:
        yield c


@pytest.fixture
def writable(sandbox_factory: Any) -> SandboxServer:
    return sandbox_factory(product="personal_care", scale=30, sftp_port=None)


def search_all(client: httpx.Client, path: str, body: dict[str, Any], count: int = 100) -> list[dict[str, Any]]:
    out, page = [], 0
    while True:
        bundle = client.post(path, params={"_count": count, "_page": page}, json=body).json()
        out += [e["resource"] for e in bundle["entry"]]
        if not bundle["entry"]:
            return out
        page += 1


# -- section 1: auth ------------------------------------------------------------------------------------------
def test_token_body_is_the_observed_apigee_shape_for_form_and_json(tenant: SandboxServer) -> None:
    creds = {"client_id": tenant.client_id, "client_secret": tenant.client_secret}
    for kwargs in ({"data": {"grant_type": "client_credentials", **creds}}, {"json": creds}):
        response = httpx.post(tenant.base_url + "/oauth/accesstoken", **kwargs)
        assert response.status_code == 200
        body = response.json()
        assert re.fullmatch(r"[0-9a-f]{32}", body["access_token"])
        assert body["token_type"] == "BearerToken"
        assert body["expires_in"] == "3599"
        assert isinstance(body["issued_at"], int) and abs(body["issued_at"] - time.time()) < 60
        assert body["refresh_token_expires_in"] == "0" and body["refresh_count"] == "0"
        assert body["scope"] == "" and body["status"] == "approved" and body["client_id"] == tenant.client_id
        assert "refresh_token" not in body


def test_token_refuses_a_wrong_secret_and_lives_only_at_the_host_root(
    tenant: SandboxServer, client: httpx.Client
) -> None:
    bad = httpx.post(tenant.base_url + "/oauth/accesstoken", data={"client_id": tenant.client_id, "client_secret": "x"})
    assert bad.status_code == 401
    assert client.post("/v1/oauth/accesstoken", data={}).status_code == 403


def test_requests_need_the_bearer_scheme_not_the_token_type(tenant: SandboxServer) -> None:
    token = token_for(tenant)
    url = tenant.base_url + "/v1/patients/_search/"
    assert httpx.post(url, json={}, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.post(url, json={}, headers={"Authorization": f"BearerToken {token}"}).status_code == 401
    assert httpx.post(url, json={}).status_code == 401
    assert httpx.post(url, json={}, headers={"Authorization": "Bearer " + "0" * 32}).status_code == 401


# -- section 2 and 7: routes ----------------------------------------------------------------------------------
def test_trailing_slash_is_mandatory(client: httpx.Client) -> None:
    assert client.post("/v1/patients/_search/", json={}).status_code == 200
    missing = client.post("/v1/patients/_search", json={})
    assert missing.status_code == 403
    pid = client.post("/v1/patients/_search/", json={}).json()["entry"][0]["resource"]["id"]
    assert client.get(f"/v1/patients/{pid}/").status_code == 200
    assert client.get(f"/v1/patients/{pid}").status_code == 403


def test_locations_search_is_the_one_route_without_a_slash(client: httpx.Client) -> None:
    bundle = client.post("/v1/locations/_search", json={}).json()
    assert bundle["totalRecords"] >= 1 and bundle["entry"][0]["resource"]["resourceType"] == "Location"
    assert client.post("/v1/locations/_search/", json={}).status_code == 403


def test_unknown_routes_answer_403_with_the_aws_message(client: httpx.Client, tenant: SandboxServer) -> None:
    header = client.headers["authorization"]
    digest = base64.b64encode(hashlib.sha256(header.encode()).digest()).decode()
    for method, path in (
        ("GET", "/v1/Practitioner"),
        ("POST", "/v1/documentreferences/"),
        ("GET", "/clients"),
        ("GET", "/v1/v1/patients/"),
        ("GET", "/v1/patient/"),
        ("POST", "/v1/prospects/1/notes"),
    ):
        response = client.request(method, path)
        assert response.status_code == 403, path
        assert response.json() == {
            "message": "Invalid key=value pair (missing equal-sign) in Authorization header (hashed with SHA-256 "
            f"and encoded with Base64): '{digest}'."
        }
    assert httpx.get(tenant.base_url + "/shifts").json() == {"message": "Missing Authentication Token"}


def test_singular_and_camel_case_names(client: httpx.Client) -> None:
    pid = client.post("/v1/patients/_search/", json={}).json()["entry"][0]["resource"]["id"]
    assert client.post("/v1/appointment/_search/", json={"clientId": pid, "monthNo": "202607"}).status_code == 200
    assert client.post("/v1/appointments/_search/", json={"clientId": pid, "monthNo": "202607"}).status_code == 403
    assert client.post("/v1/encounter/_search/", json={"clientId": pid}).status_code == 200
    assert client.post("/v1/encounters/_search/", json={"clientId": pid}).status_code == 403
    assert client.get(f"/v1/relatedperson/{pid}/").status_code == 200


# -- paging and bundles ---------------------------------------------------------------------------------------
def test_bundle_shape_and_total_records(client: httpx.Client, tenant: SandboxServer) -> None:
    bundle = client.post("/v1/patients/_search/", json={}).json()
    assert {k: bundle[k] for k in ("resourceType", "id", "type")} == {
        "resourceType": "Bundle",
        "id": "searchParams",
        "type": "searchset",
    }
    assert bundle["totalRecords"] == len(tenant.truth("patients")) == 120
    assert len(bundle["entry"]) == 20  # _count defaults to 20
    assert set(bundle["entry"][0]) == {"resource"}
    caregivers = client.post("/v1/practitioners/_search/", json={}).json()
    assert caregivers["totalRecords"] == len(tenant.truth("practitioners"))


def test_page_is_zero_based_and_counts_pages(client: httpx.Client, tenant: SandboxServer) -> None:
    def ids(page: int) -> list[str]:
        bundle = client.post("/v1/patients/_search/", params={"_count": 7, "_page": page}, json={}).json()
        return [e["resource"]["id"] for e in bundle["entry"]]

    first, second = ids(0), ids(1)
    truth = sorted(r["id"] for r in tenant.truth("patients"))
    assert first == truth[:7] and second == truth[7:14]
    assert sorted(r["id"] for r in search_all(client, "/v1/patients/_search/", {}, count=11)) == truth


@pytest.mark.parametrize("params", [{"_count": 101}, {"_count": 0}, {"_page": -1}, {"_count": "x"}])
def test_paging_bounds(client: httpx.Client, params: dict[str, Any]) -> None:
    response = client.post("/v1/patients/_search/", params=params, json={})
    assert response.status_code == 400 and response.json()["error"]


def test_organizations_is_one_unpaged_get(client: httpx.Client) -> None:
    whole = client.get("/v1/organizations/").json()
    assert whole == client.get("/v1/organizations/", params={"_count": 1, "_page": 3}).json()
    assert whole["totalRecords"] == len(whole["entry"]) >= 1


# -- created/updated filters ----------------------------------------------------------------------------------
def test_updated_is_honoured_on_patients_and_practitioners(client: httpx.Client, tenant: SandboxServer) -> None:
    for res, entity in (("patients", "patients"), ("practitioners", "practitioners")):
        truth = sorted(tenant.truth(entity), key=lambda r: r["updated_at"])
        cut = truth[len(truth) // 2]["updated_at"]
        naive = cut.replace("Z", "")
        for op, keep in (
            ("ge", lambda t, c=cut: t >= c),
            ("gt", lambda t, c=cut: t > c),
            ("lt", lambda t, c=cut: t < c),
            ("le", lambda t, c=cut: t <= c),
            ("eq", lambda t, c=cut: t == c),
        ):
            got = search_all(client, f"/v1/{res}/_search/", {"updated": op + naive})
            assert sorted(r["id"] for r in got) == sorted(r["id"] for r in truth if keep(r["updated_at"])), op
    bad = client.post("/v1/patients/_search/", json={"updated": ["ge2026-01-01T00:00:00", "le2026-02-01T00:00:00"]})
    assert bad.status_code == 400  # one comparator per field: no ranges


def test_updated_is_honoured_on_relatedperson(client: httpx.Client) -> None:
    everyone = search_all(client, "/v1/relatedperson/_search/", {})
    stamps = sorted(c["meta"]["lastUpdated"] for c in everyone)
    cut = stamps[len(stamps) // 2]
    got = search_all(client, "/v1/relatedperson/_search/", {"updated": "ge" + cut[:19]})
    assert {c["id"] for c in got} == {c["id"] for c in everyone if c["meta"]["lastUpdated"] >= cut}
    assert 0 < len(got) < len(everyone)


def test_updated_is_silently_ignored_elsewhere(client: httpx.Client, tenant: SandboxServer) -> None:
    pid = next(a["patient_id"] for a in tenant.truth("encounters"))
    future = {"updated": "ge2099-01-01T00:00:00", "created": "ge2099-01-01T00:00:00"}
    plain = client.post("/v1/encounter/_search/", json={"clientId": pid}).json()
    assert plain["totalRecords"] > 0
    assert client.post("/v1/encounter/_search/", json={"clientId": pid, **future}).json() == plain
    appt = next(a for a in tenant.truth("appointments") if a["patient_id"] == pid)
    window = {"clientId": pid, "monthNo": appt["start"][:7].replace("-", "")}
    plain = client.post("/v1/appointment/_search/", json=window).json()
    assert plain["totalRecords"] > 0
    assert client.post("/v1/appointment/_search/", json={**window, **future}).json() == plain


def test_active_alone_matches_nothing_as_in_production(client: httpx.Client) -> None:
    assert client.post("/v1/patients/_search/", json={"active": "true"}).json()["totalRecords"] == 0
    both = client.post("/v1/patients/_search/", json={"active": "true", "last_name:contains": "a"}).json()
    assert both["totalRecords"] > 0


# -- appointments ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"monthNo": "202607"}, 400),  # no client or caregiver
        ({"clientId": "CLIENT"}, 400),  # no window
        ({"clientId": "CLIENT", "startDate": "20260701", "additionalDays": "7"}, 422),
        ({"clientId": "CLIENT", "startDate": "2026-07-01"}, 422),
        ({"clientId": "CLIENT", "weekNo": "2026-27"}, 422),
        ({"clientId": "CLIENT", "monthNo": "202613"}, 422),
        ({"clientId": "CLIENT", "monthNo": "202607", "weekNo": "202627"}, 400),
    ],
)
def test_appointment_search_is_refused_without_person_and_window(
    client: httpx.Client, tenant: SandboxServer, body: dict[str, Any], status: int
) -> None:
    pid = tenant.truth("patients")[0]["id"]
    body = {k: (pid if v == "CLIENT" else v) for k, v in body.items()}
    response = client.post("/v1/appointment/_search/", json=body)
    assert response.status_code == status and response.json()["error"]


def _appointment_truth(tenant: SandboxServer) -> tuple[str, list[dict[str, Any]]]:
    appts = tenant.truth("appointments")
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for a in appts:
        by_patient.setdefault(a["patient_id"], []).append(a)
    pid = max(by_patient, key=lambda p: len(by_patient[p]))
    return pid, by_patient[pid]


def test_appointment_windows_match_the_truth(client: httpx.Client, tenant: SandboxServer) -> None:
    pid, appts = _appointment_truth(tenant)
    day = date.fromisoformat(appts[0]["start"][:10])

    def starts(body: dict[str, Any]) -> list[str]:
        return sorted(r["start"] for r in search_all(client, "/v1/appointment/_search/", {"clientId": pid, **body}))

    def truth(lo: date, hi: date) -> list[str]:
        return sorted(
            a["start"].replace("Z", "+00:00") for a in appts if lo <= date.fromisoformat(a["start"][:10]) <= hi
        )

    assert starts({"startDate": day.strftime("%Y%m%d")}) == truth(day, day)
    assert starts({"startDate": day.strftime("%Y%m%d"), "additionalDays": 6}) == truth(day, day + timedelta(days=6))
    iso_year, week, _ = day.isocalendar()
    monday = date.fromisocalendar(iso_year, week, 1)
    assert starts({"weekNo": f"{iso_year}{week:02d}"}) == truth(monday, monday + timedelta(days=6))
    first = day.replace(day=1)
    last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    assert starts({"monthNo": day.strftime("%Y%m")}) == truth(first, last)
    caregiver = appts[0]["practitioner_id"]
    by_cg = search_all(client, "/v1/appointment/_search/", {"caregiverId": caregiver, "monthNo": day.strftime("%Y%m")})
    assert by_cg and all(r["caregiver"]["id"] == caregiver for r in by_cg)


def test_appointment_shape_utc_and_no_names(client: httpx.Client, tenant: SandboxServer) -> None:
    pid, appts = _appointment_truth(tenant)
    month = appts[0]["start"][:7].replace("-", "")
    shift = client.post("/v1/appointment/_search/", json={"clientId": pid, "monthNo": month}).json()["entry"][0]
    shift = shift["resource"]
    assert shift["start"].endswith("+00:00") and shift["end"].endswith("+00:00")
    assert shift["status"] in ("SCHEDULED", "COMPLETED", "CANCELLED")
    assert set(shift["client"]) == {"id"} and set(shift["caregiver"]) == {"id"}
    assert isinstance(shift["id"], str)
    assert isinstance(shift["position"]["latitude"], float)


def test_recurring_shifts_share_an_id(client: httpx.Client, tenant: SandboxServer) -> None:
    repeats = 0
    for patient in tenant.truth("patients")[:60]:
        months = {
            a["start"][:7].replace("-", "") for a in tenant.truth("appointments") if a["patient_id"] == patient["id"]
        }
        shifts = []
        for month in months:
            shifts += search_all(client, "/v1/appointment/_search/", {"clientId": patient["id"], "monthNo": month})
        ids = [s["id"] for s in shifts]
        for shared in {i for i in ids if ids.count(i) > 1}:
            occurrences = [s for s in shifts if s["id"] == shared]
            assert len({s["start"] for s in occurrences}) == len(occurrences)  # same id, different times
            one = client.get(f"/v1/appointment/{shared}/").json()
            assert one["id"] == shared and one["start"] in {s["start"] for s in occurrences}
            repeats += 1
        if repeats >= 3:
            break
    assert repeats >= 3


# -- encounters -----------------------------------------------------------------------------------------------
def test_encounter_search_window_and_shape(client: httpx.Client, tenant: SandboxServer) -> None:
    encounters = tenant.truth("encounters")
    pid = encounters[0]["patient_id"]
    mine = [e for e in encounters if e["patient_id"] == pid]
    assert client.post("/v1/encounter/_search/", json={"startDate": "20250101"}).status_code == 400
    got = search_all(client, "/v1/encounter/_search/", {"clientId": pid})
    assert sorted(e["id"] for e in got) == sorted(e["id"] for e in mine)
    day = mine[0]["start"][:10].replace("-", "")
    window = search_all(client, "/v1/encounter/_search/", {"clientId": pid, "startDate": day, "endDate": day})
    assert [e["id"] for e in window] == [e["id"] for e in mine if e["start"][:10].replace("-", "") == day]
    log = got[0]
    assert log["subject"]["reference"] == f"Patient/{pid}"
    assert isinstance(log["participant"]["Individual"], list)
    assert log["status"] in ("COMPLETE", "IN_PROGRESS") and log["period"]["start"].endswith("+00:00")
    assert {"payRate", "billRate"} <= set(log["rates"]) and log["rates"]["payRate"][0]["method"]
    assert log["appointment"]["reference"].startswith("Appointment/")
    tasks = client.get(f"/v1/encounter/{log['id']}/tasklog/").json()
    assert tasks["resourceType"] == "Bundle" and tasks["total"] == len(tasks["entry"]) >= 1
    assert {"id", "title", "description", "status", "comment", "recorded"} <= set(tasks["entry"][0])


# -- section 3: tags ------------------------------------------------------------------------------------------
def test_meta_tags_are_strings_with_documented_codes(client: httpx.Client, tenant: SandboxServer) -> None:
    truth = {p["id"]: p for p in tenant.truth("patients")}
    for patient in search_all(client, "/v1/patients/_search/", {}):
        tags = {t["code"]: t["display"] for t in patient["meta"]["tag"]}
        assert all(isinstance(v, str) for v in tags.values())
        assert {"agencyId", "isClient", "status", "locationId"} <= set(tags)
        code = int(tags["status"])
        assert code in (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
        status = truth[patient["id"]]["status"]
        assert (tags["isClient"] == "true") == (status in ("active", "discharged"))
        assert patient["active"] == (status in ("active", "pending"))
    for caregiver in search_all(client, "/v1/practitioners/_search/", {}):
        tags = {t["code"]: t["display"] for t in caregiver["meta"]["tag"]}
        assert all(isinstance(v, str) for v in tags.values())
        assert tags["isHired"] in ("true", "false") and re.fullmatch(r"(\d+(,\d+)*)?", tags["profileTags"])
        assert int(tags["status"]) in (10, 15, 18, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100, 110)


# -- section 4: writes ----------------------------------------------------------------------------------------
def _agency(client: httpx.Client) -> str:
    patient = client.post("/v1/patients/_search/", params={"_count": 1}, json={}).json()["entry"][0]["resource"]
    return next(t["display"] for t in patient["meta"]["tag"] if t["code"] == "agencyId")


def _new_patient(agency: str, **over: Any) -> dict[str, Any]:
    body = {
        "resourceType": "Patient",
        "name": [{"use": "official", "family": "Quill", "given": ["Odette"]}],
        "telecom": [{"system": "phone", "value": "2145550199", "use": "home"}],
        "address": [{"use": "home", "line": ["12 Elm St"], "city": "Dallas", "state": "TX", "postalCode": "75201"}],
        "gender": "female",
        "birthDate": "1941-03-09",
        "meta": {"tag": [{"code": "agencyId", "display": agency}, {"code": "isClient", "display": "false"}]},
    }
    body.update(over)
    return body


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"telecom": [{"system": "phone", "value": "1145550199", "use": "home"}]}, 422, "first digit"),
        ({"telecom": [{"system": "phone", "value": "214555019", "use": "mobile"}]}, 422, "10 digits"),
        ({"telecom": [{"system": "phone", "value": "+12145550199", "use": "home"}]}, 422, "10 digits"),
        ({"birthDate": "03/09/1941"}, 422, "YYYY-MM-DD"),
        ({"name": [{"family": "Qu\x01ill", "given": ["Odette"]}]}, 400, "control character"),
        ({"meta": {"tag": []}}, 422, "'agencyId' is required."),
        ({"name": []}, 422, "name"),
    ],
)
def test_patient_create_validation(writable: SandboxServer, change: dict[str, Any], status: int, fragment: str) -> None:
    with api(writable) as client:
        response = client.post("/v1/patients/", json=_new_patient(_agency(client), **change))
        assert response.status_code == status
        assert fragment in response.json()["error"]
        assert client.post("/v1/patients/_search/", json={}).json()["totalRecords"] == 30


def test_patient_create_then_partial_put(writable: SandboxServer) -> None:
    with api(writable) as client:
        agency = _agency(client)
        work = {"system": "phone", "value": "9725550100x123", "use": "work"}
        email = {"system": "email", "value": "odette@example.test", "use": "home"}
        created = client.post(
            "/v1/patients/",
            json=_new_patient(
                agency,
                name=[{"family": "Quill", "given": ["Odette\tM"]}],
                telecom=[{"system": "phone", "value": "2145550199", "use": "home"}, work, email],
            ),
        )
        assert created.status_code == 201
        assert set(created.json()) == {"resourceType", "id"} and created.json()["resourceType"] == "Patient"
        pid = created.json()["id"]
        record = client.get(f"/v1/patients/{pid}/").json()
        assert record["name"][0]["family"] == "Quill" and record["birthDate"] == "1941-03-09"
        assert work in record["telecom"] and email in record["telecom"]
        truth = next(p for p in writable.truth("patients") if p["id"] == pid)
        assert truth["status"] == "pending" and truth["phone"] == "(214) 555-0199"
        put = client.put(
            f"/v1/patients/{pid}/",
            json={
                "meta": {"tag": [{"code": "status", "display": "80"}]},
                "telecom": [{"system": "phone", "value": "4695550111"}],
            },
        )
        assert put.status_code == 200
        after = client.get(f"/v1/patients/{pid}/").json()
        assert after["name"] == record["name"] and after["birthDate"] == record["birthDate"]  # partial
        assert after["telecom"][0]["value"] == "4695550111"
        assert {t["code"]: t["display"] for t in after["meta"]["tag"]}["status"] == "80"
        assert next(p for p in writable.truth("patients") if p["id"] == pid)["status"] == "active"
        stamp = after["meta"]["lastUpdated"]
        assert client.put(f"/v1/patients/{pid}/", json={"gender": "female"}).status_code == 200
        assert client.get(f"/v1/patients/{pid}/").json()["meta"]["lastUpdated"] == stamp  # no-op write
        bad = client.put(f"/v1/patients/{pid}/", json={"birthDate": "1941-02-30"})
        assert bad.status_code == 422 and "birthDate" in bad.json()["error"]
    audit = [e for e in writable.audit() if e["record_id"] == pid]
    assert [(e["method"], e["action"], e["status"]) for e in audit] == [
        ("POST", "created", 201),
        ("PUT", "updated", 200),
        ("PUT", "updated", 200),
        ("PUT", "rejected", 422),
    ]
    assert all(e["entity"] == "patients" and e["principal"] == writable.client_id for e in audit)


def test_practitioner_create_keeps_string_tags(writable: SandboxServer) -> None:
    with api(writable) as client:
        agency = _agency(client)
        body = _new_patient(
            agency,
            resourceType="Practitioner",
            ssn="123456789",
            meta={
                "tag": [
                    {"code": "agencyId", "display": agency},
                    {"code": "isHired", "display": "false"},
                    {"code": "status", "display": "40"},
                    {"code": "profileTags", "display": "45,67"},
                ]
            },
        )
        created = client.post("/v1/practitioners/", json=body)
        assert created.status_code == 201
        got = client.get(f"/v1/practitioners/{created.json()['id']}/").json()
        tags = {t["code"]: t["display"] for t in got["meta"]["tag"]}
        assert tags["isHired"] == "false" and tags["status"] == "40" and tags["profileTags"] == "45,67"
        assert "ssn" not in got
        hired = search_all(client, "/v1/practitioners/_search/", {"is_hired": "false", "active": "true"})
        assert created.json()["id"] in {p["id"] for p in hired}


def test_encounter_create_needs_agency_id(writable: SandboxServer) -> None:
    with api(writable) as client:
        patient = writable.truth("patients")[0]["id"]
        caregiver = writable.truth("practitioners")[0]["id"]
        body = {
            "status": "COMPLETE",
            "patientId": patient,
            "practitionerId": caregiver,
            "startDateTime": "2026-11-20T14:00:00",
            "endDateTime": "2026-11-20T18:00:00",
            "billRateMethod": "Hourly",
            "billRateId": 201,
            "payRateMethod": "Hourly",
            "payRateId": 101,
        }
        missing = client.post("/v1/encounter/", json=body)
        assert missing.status_code == 422 and missing.json()["error"] == "'agencyId' is required."
        created = client.post("/v1/encounter/", json={**body, "agencyId": _agency(client)})
        assert created.status_code == 201 and created.json()["resourceType"] == "Encounter"
        log = client.get(f"/v1/encounter/{created.json()['id']}/").json()
        assert log["period"] == {"start": "2026-11-20T14:00:00+00:00", "end": "2026-11-20T18:00:00+00:00"}
        swapped = {**body, "agencyId": _agency(client), "endDateTime": "2026-11-20T13:00:00"}
        assert client.post("/v1/encounter/", json=swapped).status_code == 422


def test_clock_in_and_out_are_idempotent(writable: SandboxServer) -> None:
    appts = [a for a in writable.truth("appointments") if a["status"] == "scheduled"]
    appt = appts[0]
    with api(writable) as client:
        month = appt["start"][:7].replace("-", "")
        shown = search_all(client, "/v1/appointment/_search/", {"clientId": appt["patient_id"], "monthNo": month})
        shift = next(s for s in shown if s["start"] == appt["start"].replace("Z", "+00:00"))
        body = {
            "resourceType": "Encounter",
            "period": {"start": appt["start"].replace("Z", "")},
            "position": {"latitude": 32.78, "longitude": -96.8},
        }
        first = client.post(f"/v1/encounter/{shift['id']}/clockin/", json=body)
        assert first.status_code == 200
        reply = first.json()
        assert reply["success"] is True and reply["clockedOut"] is False and reply["status"] == "IN_PROGRESS"
        assert isinstance(reply["id"], int) and reply["period"]["end"] is None and reply["resourceType"] == "Encounter"
        again = client.post(f"/v1/encounter/{shift['id']}/clockin/", json=body)
        assert again.json() == reply  # the existing care log, not a second one
        assert client.put(f"/v1/encounter/{shift['id']}/clockout/", json={}).status_code == 404  # an appointment id
        out = {
            "period": {"end": appt["end"].replace("Z", "")},
            "position": {"latitude": 32.78, "longitude": -96.8},
            "generalComment": "All tasks done",
            "mileage": 4,
            "mileageDescription": "errand",
        }
        assert client.put(f"/v1/encounter/{reply['id']}/clockout/", json=out).json() == {"success": True}
        log = client.get(f"/v1/encounter/{reply['id']}/").json()
        assert log["status"] == "COMPLETE" and log["period"]["end"] == appt["end"].replace("Z", "+00:00")
        stamp = next(e for e in writable.truth("encounters") if e["id"] == str(reply["id"]))["updated_at"]
        later = {**out, "period": {"end": "2099-01-01T00:00:00"}}
        assert client.put(f"/v1/encounter/{reply['id']}/clockout/", json=later).json() == {"success": True}
        log2 = client.get(f"/v1/encounter/{reply['id']}/").json()
        assert log2["period"] == log["period"]  # no update when already out
        assert next(e for e in writable.truth("encounters") if e["id"] == str(reply["id"]))["updated_at"] == stamp
        assert client.post(f"/v1/encounter/{shift['id']}/clockin/", json=body).json()["clockedOut"] is True


def test_encounter_put_is_partial_and_task_updates_need_a_comment(writable: SandboxServer) -> None:
    enc = next(e for e in writable.truth("encounters") if e["appointment_id"])
    with api(writable) as client:
        before = client.get(f"/v1/encounter/{enc['id']}/").json()
        put = client.put(f"/v1/encounter/{enc['id']}/", json={"payRateMethod": "perVisit", "payRateId": 150})
        assert put.status_code == 200
        after = client.get(f"/v1/encounter/{enc['id']}/").json()
        assert after["period"] == before["period"] and after["subject"] == before["subject"]
        assert after["rates"]["payRate"] == [{"id": 150, "amount": None, "method": "perVisit"}]
        bad = client.put(f"/v1/encounter/{enc['id']}/", json={"endDateTime": "1999-01-01T00:00:00"})
        assert bad.status_code == 422 and "endDateTime" in bad.json()["error"]
        appt = next(a for a in writable.truth("appointments") if a["id"] == enc["appointment_id"])
        month = appt["start"][:7].replace("-", "")
        shifts = search_all(client, "/v1/appointment/_search/", {"clientId": appt["patient_id"], "monthNo": month})
        shift = next(s for s in shifts if s["start"] == appt["start"].replace("Z", "+00:00"))
        task = shift["tasks"][0]["id"]
        url = f"/v1/encounter/{enc['id']}/task/{task}/"
        refused = client.put(url, json={"status": "NOT_COMPLETE"})
        assert refused.status_code == 422 and "comment" in refused.json()["error"]
        assert client.put(url, json={"status": "NOT_COMPLETE", "comment": "Client asleep"}).json() == {"success": True}
        shifts = search_all(client, "/v1/appointment/_search/", {"clientId": appt["patient_id"], "monthNo": month})
        shift = next(s for s in shifts if s["start"] == appt["start"].replace("Z", "+00:00"))
        assert shift["tasks"][0]["status"] == "NOT_COMPLETE" and shift["tasks"][0]["comment"] == "Client asleep"
        assert client.put(f"/v1/encounter/{enc['id']}/task/1/", json={"status": "COMPLETE"}).status_code == 404


def test_profile_tags_are_a_post_only_collection(writable: SandboxServer) -> None:
    with api(writable) as client:
        assert client.get("/v1/profileTags/").status_code == 405
        assert client.get("/v1/profileTags/45/").json() == {
            "resourceType": "ProfileTag",
            "id": "45",
            "name": "Dementia Care",
        }
        created = client.post("/v1/profileTags/", json={"name": "Night Shifts"})
        assert created.status_code == 201
        tag = created.json()["id"]
        assert client.get(f"/v1/profileTags/{tag}/").json()["name"] == "Night Shifts"
        caregiver = next(p["id"] for p in writable.truth("practitioners") if p["active"])  # active: hired
        tags = {"meta": {"tag": [{"code": "profileTags", "display": f"45,{tag}"}]}}
        assert client.put(f"/v1/practitioners/{caregiver}/", json=tags).status_code == 200
        assert (
            client.put(
                f"/v1/practitioners/{caregiver}/", json={"meta": {"tag": [{"code": "profileTags", "display": "9999"}]}}
            ).status_code
            == 422
        )
        found = search_all(client, "/v1/practitioners/_search/", {"tags": tag, "is_hired": "true"})
        assert [p["id"] for p in found] == [caregiver]


def test_get_collections_take_the_filters_in_the_query(client: httpx.Client, tenant: SandboxServer) -> None:
    truth = tenant.truth("patients")
    name = truth[0]["last_name"]
    got = client.get("/v1/patients/", params={"last_name:contains": name[1:4], "_count": 100}).json()
    assert {p["id"] for p in truth if name[1:4].lower() in p["last_name"].lower()} == {
        e["resource"]["id"] for e in got["entry"]
    }
    pid, appts = _appointment_truth(tenant)
    month = appts[0]["start"][:7].replace("-", "")
    by_get = client.get("/v1/appointment/", params={"clientId": pid, "monthNo": month}).json()
    assert by_get == client.post("/v1/appointment/_search/", json={"clientId": pid, "monthNo": month}).json()


def test_task_logs_read_and_write(writable: SandboxServer) -> None:
    enc = writable.truth("encounters")[0]["id"]
    with api(writable) as client:
        before = client.get(f"/v1/encounter/{enc}/tasklog/").json()["total"]
        body = {
            "resourceType": "TaskLog",
            "title": "Shift note",
            "description": "Walked to the park",
            "status": "COMPLETE",
            "comment": "",
            "recorded": "2026-11-20T15:00:00",
            "show_in_family_room": True,
            "message_for_next_caregiver": False,
        }
        created = client.post(f"/v1/encounter/{enc}/tasklog/", json=body)
        assert created.status_code == 201
        assert created.json()["success"] is True and isinstance(created.json()["taskLogId"], int)
        after = client.get(f"/v1/encounter/{enc}/tasklog/").json()
        assert after["total"] == before + 1
        assert any(e["id"] == created.json()["taskLogId"] for e in after["entry"])
        refused = client.post(f"/v1/encounter/{enc}/tasklog/", json={**body, "status": "NOT_COMPLETE"})
        assert refused.status_code == 422 and "comment" in refused.json()["error"]
        assert client.get("/v1/encounter/99999999/tasklog/").status_code == 404


def test_related_persons(writable: SandboxServer) -> None:
    pid = writable.truth("patients")[0]["id"]
    with api(writable) as client:
        before = client.get(f"/v1/relatedperson/{pid}/").json()
        assert before["resourceType"] == "Bundle"
        body = {
            "resourceType": "RelatedPerson",
            "patient": {"reference": f"Patient/{pid}"},
            "name": [{"given": ["Nina"], "family": "Quill"}],
            "relationship": {"coding": [{"code": "DAU", "display": "Daughter"}]},
            "telecom": [{"system": "phone", "value": "2145550142", "use": "mobile"}],
            "emergencyContact": True,
            "primaryContact": True,
            "payer": False,
            "poa": False,
        }
        created = client.post("/v1/relatedperson/", json=body)
        assert created.status_code == 201
        cid = created.json()["id"]
        after = client.get(f"/v1/relatedperson/{pid}/").json()
        assert after["totalRecords"] == before["totalRecords"] + 1
        contact = next(e["resource"] for e in after["entry"] if e["resource"]["id"] == cid)
        assert contact["relationship"] == {"coding": [{"code": "DAU", "display": "Daughter"}]}
        assert client.put(f"/v1/relatedperson/{cid}/", json={"poa": True}).status_code == 200
        found = client.post("/v1/relatedperson/_search/", json={"patient": pid, "name": "nina"}).json()
        assert [e["resource"]["poa"] for e in found["entry"]] == [True]
        bad = client.post("/v1/relatedperson/", json={**body, "telecom": [{"system": "phone", "value": "0145550142"}]})
        assert bad.status_code == 422


def test_appointment_writes_are_off_unless_the_sandbox_flag_is_set(writable: SandboxServer) -> None:
    appt = writable.truth("appointments")[0]
    body = {
        "client": {"id": appt["patient_id"]},
        "caregiver": {"id": appt["practitioner_id"]},
        "start": "2026-12-01T15:00:00",
        "end": "2026-12-01T19:00:00",
        "status": "SCHEDULED",
    }
    with api(writable) as client:
        assert client.post("/v1/appointment/", json=body).status_code == 403
        writable.control("POST", "/_sandbox/homeconnect/options", json={"appointment_writes": True})
        created = client.post("/v1/appointment/", json=body)
        assert created.status_code == 201
        shift = client.get(f"/v1/appointment/{created.json()['id']}/").json()
        assert shift["start"] == "2026-12-01T15:00:00+00:00" and shift["status"] == "SCHEDULED"


def test_conflict_options_switch_to_the_other_source(writable: SandboxServer) -> None:
    """Fact sheet section 7: the default follows the better source; each other side is a sandbox option."""
    pid = next(e["patient_id"] for e in writable.truth("encounters"))
    appt = next(a for a in writable.truth("appointments") if a["patient_id"] == pid)
    window = {"clientId": pid, "monthNo": appt["start"][:7].replace("-", "")}
    with api(writable) as client:
        truth_ids = sorted(r["id"] for r in writable.truth("patients"))
        caregiver = client.post("/v1/practitioners/_search/", json={}).json()["entry"][0]["resource"]
        assert caregiver["communication"] == [
            {"language": {"coding": [{"code": "en-us", "display": "English"}]}, "preferred": True}
        ]
        assert "total" not in client.post("/v1/appointment/_search/", json=window).json()
        assert client.post("/v1/organizations/_search/", json={}).status_code == 403
        future = {"clientId": pid, "updated": "ge2099-01-01T00:00:00"}
        assert client.post("/v1/encounter/_search/", json=future).json()["totalRecords"] > 0
        options = {
            "paging": "ref",
            "ref_paths": True,
            "comparators_everywhere": True,
            "communication": "ref",
            "appointment_total": True,
            "tasklog_id_string": True,
        }
        assert writable.control("POST", "/_sandbox/homeconnect/options", json=options) == {
            **writable.control("GET", "/_sandbox/homeconnect/options"),
            **options,
        }
        first = client.post("/v1/patients/_search/", params={"_count": 5, "_page": 1}, json={}).json()
        assert [e["resource"]["id"] for e in first["entry"]] == truth_ids[:5]  # 1-based pages
        assert client.post("/v1/patients/_search/", params={"_page": 0}, json={}).status_code == 400
        caregiver = client.post("/v1/practitioners/_search/", json={}).json()["entry"][0]["resource"]
        assert caregiver["communication"] == [{"coding": [{"code": "en-us", "display": "English"}]}]
        shifts = client.post("/v1/appointment/_search/", json=window).json()
        assert shifts["total"] == shifts["totalRecords"] > 0
        assert client.post("/v1/locations/_search/", json={}).status_code == 200
        assert client.post("/v1/organizations/_search/", json={}).status_code == 200
        assert client.post("/v1/encounter/_search/", json=future).json()["totalRecords"] == 0
        enc = next(e["id"] for e in writable.truth("encounters"))
        note = {"resourceType": "TaskLog", "title": "Note", "status": "COMPLETE"}
        assert isinstance(client.post(f"/v1/encounter/{enc}/tasklog/", json=note).json()["taskLogId"], str)
        bad = httpx.post(writable.base_url + "/_sandbox/homeconnect/options", json={"paging": "2-based"})
        assert bad.status_code == 400 and "paging" in bad.json()["message"]


# -- section 5: subscriptions ---------------------------------------------------------------------------------
class _Receiver:
    """A loopback HTTP endpoint recording what it is sent."""

    def __init__(self) -> None:
        received: list[tuple[dict[str, str], Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                received.append((dict(self.headers), json.loads(self.rfile.read(length))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_subscription_delivers_the_thin_payload_with_the_subscribers_header(writable: SandboxServer) -> None:
    receiver = _Receiver()
    try:
        with api(writable) as client:
            agency = _agency(client)
            sub = {
                "resourceType": "Subscription",
                "status": "active",
                "criteria": "patient.name.changed",
                "reason": "sync",
                "channel": {
                    "type": "rest-hook",
                    "endpoint": receiver.url,
                    "payload": "application/fhir+json",
                    "header": ["Authorization: Shared s3cr3t-value"],
                },
                "meta": {"tag": [{"code": "agencyId", "display": agency}]},
            }
            assert client.post("/v1/subscriptions/", json={**sub, "criteria": "patient.everything"}).status_code == 422
            created = client.post("/v1/subscriptions/", json=sub)
            assert created.status_code == 201 and isinstance(created.json()["id"], int)
            listed = client.get("/v1/subscriptions/").json()
            assert [e["resource"]["criteria"] for e in listed["entry"]] == ["patient.name.changed"]
            pid = writable.truth("patients")[0]["id"]
            client.put(f"/v1/patients/{pid}/", json={"telecom": [{"system": "phone", "value": "4695550111"}]})
            client.put(f"/v1/patients/{pid}/", json={"name": [{"family": "Renamed", "given": ["Ona"]}]})
            deadline = time.monotonic() + 10
            while not receiver.received and time.monotonic() < deadline:
                time.sleep(0.02)
            assert receiver.received, "no delivery within 10 s"
            headers, body = receiver.received[0]
            assert body == {"resourceType": "Patient", "id": int(pid)}
            assert headers.get("Authorization") == "Shared s3cr3t-value"
            assert len(receiver.received) == 1  # the telecom change matches no subscription
            assert client.delete(f"/v1/subscriptions/{created.json()['id']}/").status_code == 200
            assert client.get(f"/v1/subscriptions/{created.json()['id']}/").status_code == 404
    finally:
        receiver.close()


def test_a_day_of_changes_notifies_the_matching_subscriptions(writable: SandboxServer) -> None:
    receiver = _Receiver()
    try:
        before = {p["id"]: p for p in writable.truth("patients")}
        with api(writable) as client:
            agency = _agency(client)
            for criteria in ("patient.created", "patient.telecom.changed"):
                sub = {
                    "resourceType": "Subscription",
                    "status": "active",
                    "criteria": criteria,
                    "channel": {"type": "rest-hook", "endpoint": receiver.url, "header": [f"X-Criteria: {criteria}"]},
                    "meta": {"tag": [{"code": "agencyId", "display": agency}]},
                }
                assert client.post("/v1/subscriptions/", json=sub).status_code == 201
        writable.advance(count=60, seed=5)
        after = {p["id"]: p for p in writable.truth("patients")}
        expected = {("patient.created", int(i)) for i in after if i not in before} | {
            ("patient.telecom.changed", int(i))
            for i in before
            if i in after and before[i]["phone"] != after[i]["phone"]
        }
        assert expected
        deadline = time.monotonic() + 15
        while len(receiver.received) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.02)
        got = {(h["X-Criteria"], body["id"]) for h, body in receiver.received}
        assert got == expected and len(receiver.received) == len(expected)
        log = writable.control("GET", "/_sandbox/homeconnect/deliveries")
        assert all(d["delivered"] for d in log["deliveries"]) and len(log["deliveries"]) == len(expected)
    finally:
        receiver.close()


# -- section 6: limits, plus the sandbox's own machinery -------------------------------------------------------
def test_soft_rate_limit_answers_but_counts_overruns(writable: SandboxServer) -> None:
    with api(writable) as client:
        statuses = set()
        for _ in range(3000):
            statuses.add(client.get("/v1/organizations/").status_code)
            if writable.tenant.homeconnect.stats()["overruns"]:  # type: ignore[union-attr]
                break
        assert statuses == {200}
    stats = writable.stats()["homeconnect"]
    assert stats["overruns"] >= 1 and stats["peak_per_second"] > 100 and stats["limit_per_second"] == 100


def test_faults_apply_to_v1_but_not_to_the_token(writable: SandboxServer) -> None:
    writable.set_faults("error=1")
    assert (
        httpx.post(
            writable.base_url + "/oauth/accesstoken",
            data={"client_id": writable.client_id, "client_secret": writable.client_secret},
        ).status_code
        == 200
    )
    with api(writable) as client:
        assert client.post("/v1/patients/_search/", json={}).status_code in (500, 502, 503)
        writable.set_faults("malformed=1")
        cut = client.post("/v1/patients/_search/", json={})
        assert cut.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(cut.content)
    writable.set_faults(None)
    assert writable.stats()["faults_total"] >= 1


def test_token_expiry_is_enforced(sandbox_factory: Any) -> None:
    sb = sandbox_factory(product="personal_care", scale=5, sftp_port=None, token_ttl_seconds=1.5)
    with api(sb) as client:
        assert client.post("/v1/patients/_search/", json={}).status_code == 200
        deadline = time.monotonic() + 10
        while client.post("/v1/patients/_search/", json={}).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        expired = client.post("/v1/patients/_search/", json={})
        assert expired.status_code == 401 and "expired" in expired.json()["fault"]["faultstring"]


def test_same_seed_same_answers(sandbox_factory: Any) -> None:
    answers = []
    for _ in range(2):
        sb = sandbox_factory(product="personal_care", scale=25, sftp_port=None, seed=9)
        with api(sb) as client:
            people = client.post("/v1/patients/_search/", params={"_count": 100}, json={}).json()
            pid = people["entry"][3]["resource"]["id"]
            contacts = client.get(f"/v1/relatedperson/{pid}/").json()
            logs = client.post("/v1/encounter/_search/", json={"clientId": pid}).json()
        answers.append((people, contacts, logs))
    assert answers[0] == answers[1]


def test_advance_changes_show_up_through_the_updated_filter(writable: SandboxServer) -> None:
    result = writable.advance(count=40, seed=3)
    since = result["updated_at"]
    with api(writable) as client:
        for entity in ("patients", "practitioners"):
            got = search_all(client, f"/v1/{entity}/_search/", {"updated": "ge" + since.replace("Z", "")})
            assert sorted(r["id"] for r in got) == sorted(r["id"] for r in writable.truth(entity, since))


def test_truth_stays_canonical(tenant: SandboxServer) -> None:
    """The oracle speaks the core's canonical models, whole: every field (fields this tenant does not hold are
    null or empty, e.g. ``status_code``), each value valid, no data-quality flags, no Home Connect wire names."""
    from wellsky_core.models import ENTITIES

    for entity in ("patients", "practitioners", "appointments", "encounters", "care_plans", "authorizations",
                   "referrals", "coverage"):
        model = ENTITIES[entity].model
        records = tenant.truth(entity)
        assert records, entity
        for record in records:
            assert set(record) == {info.alias or name for name, info in model.model_fields.items()}, entity
            model.model_validate(record)
            assert record["data_quality"] == [], entity
    patient = tenant.truth("patients")[0]
    assert patient["status"] in ("pending", "active", "discharged", "inactive")
    assert patient["status_code"] is None, "Home Connect's numeric client status stays out of the canonical truth"
    assert all(not k.startswith("_") or k == "_sdc_deleted_at" for a in tenant.truth("appointments") for k in a)
    assert datetime.fromisoformat(patient["updated_at"].replace("Z", "+00:00")).tzinfo == UTC


def test_people_look_like_an_agency_s(writable: SandboxServer) -> None:
    """Issue 28: first names fit the gender, caregivers carry a credential (HHA/CNA/LPN) among readable profile
    tags, and the same seed gives the same people."""
    from wellsky_sandbox.generator import MALE_NAMES

    with api(writable) as client:
        clients = search_all(client, "/v1/patients/_search/", {})
        caregivers = search_all(client, "/v1/practitioners/_search/", {})
        for person in clients + caregivers:
            first = person["name"][0]["given"][0]
            if person["gender"] in ("male", "female"):
                assert (first in MALE_NAMES) == (person["gender"] == "male"), "a first name of the other gender"
        credentials = set()
        for caregiver in caregivers:
            ids = next(t["display"] for t in caregiver["meta"]["tag"] if t["code"] == "profileTags").split(",")
            names = [client.get(f"/v1/profileTags/{i}/").json()["name"] for i in ids if i]
            credentials |= {n for n in names if n in ("HHA", "CNA", "LPN")}
            assert len([n for n in names if n in ("HHA", "CNA", "LPN")]) == 1
        assert credentials <= {"HHA", "CNA", "LPN"} and len(credentials) >= 2
    again = [r for e, r in Generator("personal_care", 42).generate(30) if e == "patients"]
    first = [r for e, r in Generator("personal_care", 42).generate(30) if e == "patients"]
    assert again == first
