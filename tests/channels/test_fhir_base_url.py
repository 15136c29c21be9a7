"""``fhir_base_url``: the FHIR base at any path on the tenant's host, for source=fhir and fhir_bulk (issue 26).

A fake server (``httpx.MockTransport``) answers only under ``/r4/tenant-123``, as a multi-tenant FHIR host does;
every FHIR request, SMART discovery included, must go there and nowhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from wellsky_core.channels import open_channel
from wellsky_core.channels.fhir import FhirChannel
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import ConfigError
from wellsky_core.http.client import WellSkyClient

from .test_fhir_bulk_protocol import BASE, FakeBulkServer, make

FHIR = f"{BASE}/r4/tenant-123"


def test_default_is_base_url_slash_fhir_and_any_path_is_kept() -> None:
    plain = WellSkyConfig.load({"base_url": "https://agency.example/api", "username": "u", "password": "p"}, env={})
    assert plain.fhir_base == "https://agency.example/api/fhir"
    custom = WellSkyConfig.load(
        {"base_url": "https://agency.example/api", "username": "u", "password": "p", "fhir_base_url": "https://agency.example/r4/t-1/"},
        env={},
    )
    assert custom.fhir_base == "https://agency.example/r4/t-1"


def test_a_fhir_base_on_another_host_is_refused_with_the_field_named() -> None:
    with pytest.raises(ConfigError) as info:
        WellSkyConfig.load(
            {"base_url": "https://agency.example", "username": "u", "password": "p", "fhir_base_url": "https://fhir.other.example/r4"},
            env={},
        )
    assert "fhir_base_url" in str(info.value) and "host" in str(info.value)


def test_bulk_discovery_metadata_and_kickoff_go_under_the_configured_base(tmp_path: Path) -> None:
    server = FakeBulkServer()
    server.smart = {"token_endpoint": f"{BASE}/auth/token", "capabilities": ["client-confidential-symmetric"]}
    channel, client = make(server, tmp_path, fhir_base_url=FHIR)
    try:
        records = list(channel.iter_records("patients", None))
    finally:
        channel.close()
        client.close()
    assert len(records) == 5
    fhir_calls = [url for _, url in server.calls if "/status/" not in url and "/output/" not in url
                  and not url.endswith("/token")]
    assert any(u.startswith(f"{FHIR}/.well-known/smart-configuration") for u in fhir_calls)
    assert any(u.startswith(f"{FHIR}/metadata") for u in fhir_calls)
    assert any(u.split("?")[0] == f"{FHIR}/$export" for u in fhir_calls)
    assert all(u.startswith(FHIR + "/") for u in fhir_calls), fhir_calls
    assert server.tokens and server.tokens[0]["url"] == f"{BASE}/auth/token", "discovered relative to the base"


def _search_server(calls: list[str]) -> Any:
    patient = {"resourceType": "Patient", "id": "p1", "meta": {"lastUpdated": "2026-01-02T00:00:00Z"},
               "name": [{"family": "Shaw", "given": ["Amy"]}]}

    def answer(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        calls.append(url)
        if request.method == "POST" and url.endswith("/oauth/token"):
            return httpx.Response(200, json={"access_token": "t", "token_type": "Bearer", "expires_in": 300})
        if not url.startswith(FHIR + "/"):
            return httpx.Response(404)
        if url.split("?")[0].endswith("/metadata"):
            return httpx.Response(200, json={"resourceType": "CapabilityStatement", "rest": [
                {"mode": "server", "resource": [{"type": "Patient", "interaction": [{"code": "search-type"}]}]}]})
        if url.split("?")[0] == f"{FHIR}/Patient":
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset",
                                             "entry": [{"resource": patient, "search": {"mode": "match"}}]})
        return httpx.Response(404)

    return answer


def test_search_channel_reads_under_the_configured_base() -> None:
    config = WellSkyConfig.load(
        {"base_url": BASE, "auth_method": "oauth_client_credentials", "client_id": "c", "client_secret": "s",
         "product": "home_health", "fhir_base_url": FHIR, "max_requests_per_second": 0},
        env={},
    )
    calls: list[str] = []
    client = WellSkyClient(config)
    client._http._transport = httpx.MockTransport(_search_server(calls))
    client._http._mounts = {}
    channel = open_channel("fhir", config, client, "home_health")
    assert isinstance(channel, FhirChannel)
    try:
        assert [r["id"] for r in channel.iter_records("patients", None)] == ["p1"]
    finally:
        channel.close()
        client.close()
    data = [u for u in calls if not u.endswith("/oauth/token")]
    assert data and all(u.startswith(FHIR + "/") for u in data), data
