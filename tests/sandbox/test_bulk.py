"""The sandbox's Bulk Data face, spoken to as the IG's kick-off/status/file protocol (raw HTTP, no core code)."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import pytest

from tests.waiting import wait_for
from wellsky_sandbox.testing import SandboxServer

ASYNC = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


@pytest.fixture
def server(sandbox_factory: Any) -> SandboxServer:
    sb = sandbox_factory(product="hospice", scale=40, sftp_port=None)
    sb.control("POST", "/_sandbox/bulk", json={"delay_seconds": 0.3, "retry_after_seconds": 1})
    return sb


def token(server: SandboxServer, client_id: str | None = None, secret: str | None = None) -> dict[str, str]:
    body = httpx.post(
        server.base_url + "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id or server.client_id,
            "client_secret": secret or server.client_secret,
            "scope": "system/*.read",
        },
    ).json()
    return {"Authorization": f"Bearer {body['access_token']}"}


def wait_manifest(server: SandboxServer, url: str, auth: dict[str, str]) -> tuple[dict[str, Any], list[httpx.Response]]:
    """Poll the status URL at the server's Retry-After (1 s here) until the manifest is there."""
    seen: list[httpx.Response] = []

    def ready() -> httpx.Response | None:
        response = httpx.get(url, headers=auth)
        seen.append(response)
        return response if response.status_code != 202 else None

    final = wait_for(ready, timeout=60, interval=1.0, what="the export manifest")
    assert final.status_code == 200, final.text
    return final.json(), seen


def test_kickoff_status_files_delete(server: SandboxServer) -> None:
    server.control("POST", "/_sandbox/bulk", json={"delay_seconds": 3})  # the first poll surely finds it running
    auth = token(server)
    kick = httpx.get(
        server.base_url + "/fhir/$export", headers={**ASYNC, **auth}, params={"_type": "Patient,Encounter"}
    )
    assert kick.status_code == 202 and kick.headers["content-location"].startswith(server.base_url)
    manifest, polls = wait_manifest(server, kick.headers["content-location"], auth)
    assert polls[0].status_code == 202 and polls[0].headers["x-progress"] and polls[0].headers["retry-after"] == "1"
    assert manifest["requiresAccessToken"] is True and manifest["transactionTime"].endswith("Z")
    assert manifest["request"].endswith("_type=Patient%2CEncounter") and manifest["error"] == []
    assert [o["type"] for o in manifest["output"]] == ["Patient", "Encounter"]
    patients = manifest["output"][0]
    assert patients["count"] == len(server.truth("patients"))
    assert httpx.get(patients["url"]).status_code == 401, "files need the token (requiresAccessToken)"
    other = httpx.get(patients["url"], headers={**auth, "Accept-Encoding": "identity"})
    assert other.headers["content-type"] == "application/fhir+ndjson" and "content-encoding" not in other.headers
    zipped = httpx.get(patients["url"], headers={**auth, "Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == other.content  # httpx inflated it
    raw = httpx.Client().send(
        httpx.Request("GET", patients["url"], headers={**auth, "Accept-Encoding": "gzip"}), stream=True
    )
    assert gzip.decompress(b"".join(raw.iter_raw())) == other.content
    lines = other.content.decode().splitlines()
    assert len(lines) == patients["count"] and all(line.startswith('{"resourceType":"Patient"') for line in lines)
    assert httpx.delete(kick.headers["content-location"], headers=auth).status_code == 202
    assert httpx.get(kick.headers["content-location"], headers=auth).status_code == 404
    assert httpx.get(patients["url"], headers=auth).status_code == 404


def test_kickoff_rules_and_lenient_handling(server: SandboxServer) -> None:
    auth = token(server)
    url = server.base_url + "/fhir/$export"
    no_prefer = httpx.get(url, headers={"Accept": "application/fhir+json", **auth})
    assert no_prefer.status_code == 400 and "respond-async" in no_prefer.text
    assert httpx.get(url, headers=ASYNC).status_code == 401
    strict = httpx.get(url, headers={**ASYNC, **auth}, params={"_type": "Patient,ServiceRequest", "_elements": "id"})
    assert strict.status_code == 400 and strict.json()["resourceType"] == "OperationOutcome"
    lenient = httpx.get(
        url,
        headers={**ASYNC, **auth, "Prefer": "respond-async, handling=lenient"},
        params={"_type": "Patient,ServiceRequest", "_elements": "id"},
    )
    assert lenient.status_code == 202
    manifest, _ = wait_manifest(server, lenient.headers["content-location"], auth)
    assert [o["type"] for o in manifest["output"]] == ["Patient"]
    (errors,) = manifest["error"]
    outcomes = httpx.get(errors["url"], headers=auth).text.splitlines()
    assert errors["count"] == len(outcomes) == 2 and all('"OperationOutcome"' in o for o in outcomes)
    bad_since = httpx.get(url, headers={**ASYNC, **auth}, params={"_since": "yesterday"})
    assert bad_since.status_code == 400 and bad_since.json()["issue"][0]["expression"] == ["_since"]


def test_patient_parameter_group_and_since(server: SandboxServer) -> None:
    auth = token(server)
    patients = server.truth("patients")
    chosen = patients[0]["id"]
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Patient,Appointment"},
            {"name": "patient", "valueReference": {"reference": f"Patient/{chosen}"}},
        ],
    }
    kick = httpx.post(server.base_url + "/fhir/Patient/$export", headers={**ASYNC, **auth}, json=body)
    assert kick.status_code == 202, kick.text
    manifest, _ = wait_manifest(server, kick.headers["content-location"], auth)
    counts = {o["type"]: o["count"] for o in manifest["output"]}
    assert counts["Patient"] == 1
    assert counts.get("Appointment", 0) == sum(1 for a in server.truth("appointments") if a["patient_id"] == chosen)
    group = httpx.get(server.base_url + "/fhir/Group/discharged", headers={"Accept": "application/fhir+json", **auth})
    assert group.json()["quantity"] == sum(1 for p in patients if p["status"] == "discharged")
    # _since is inclusive and every change after transactionTime is newer than it
    server.advance(count=15, seed=4)
    since = manifest["transactionTime"]
    again = httpx.get(server.base_url + "/fhir/$export", headers={**ASYNC, **auth}, params={"_since": since})
    later, _ = wait_manifest(server, again.headers["content-location"], auth)
    total = sum(o["count"] for o in later["output"] if o["type"] in ("Patient", "Appointment", "Coverage"))
    changed = sum(len(server.truth(e, updated_since=since)) for e in ("patients", "appointments", "coverage"))
    assert total == changed > 0


def test_jobs_belong_to_their_client_and_are_limited(server: SandboxServer) -> None:
    auth = token(server)
    server.control("POST", "/_sandbox/clients", json={"client_id": "other", "client_secret": "other-secret"})
    kick = httpx.get(server.base_url + "/fhir/$export", headers={**ASYNC, **auth})
    other = token(server, "other", "other-secret")
    assert httpx.get(kick.headers["content-location"], headers=other).status_code == 404
    server.control("POST", "/_sandbox/bulk", json={"max_active_jobs": 0})
    busy = httpx.get(server.base_url + "/fhir/$export", headers={**ASYNC, **auth})
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    server.control("POST", "/_sandbox/bulk", json={"max_active_jobs": 4, "fail_jobs": True})
    failing = httpx.get(server.base_url + "/fhir/$export", headers={**ASYNC, **auth}, params={"_type": "Coverage"})
    status = wait_for(
        lambda: (r := httpx.get(failing.headers["content-location"], headers=auth)).status_code != 202 and r,
        timeout=60,
        interval=0.2,
        what="the failed job's status",
    )
    assert status.status_code == 500 and status.json()["resourceType"] == "OperationOutcome"


def test_smart_configuration_and_capability(server: SandboxServer) -> None:
    smart = httpx.get(server.base_url + "/fhir/.well-known/smart-configuration").json()
    assert smart["token_endpoint"] == server.base_url + "/oauth/token"
    assert "private_key_jwt" in smart["token_endpoint_auth_methods_supported"]
    assert set(smart["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    cap = httpx.get(server.base_url + "/fhir/metadata", headers=token(server)).json()
    assert cap["instantiates"] == ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]
    ops = {r["type"]: r.get("operation") for r in cap["rest"][0]["resource"]}
    assert ops["Patient"][0]["definition"].endswith("patient-export")
    assert ops["Group"][0]["definition"].endswith("group-export")
