"""The sandbox's own contract, over real HTTP: data, paging, sessions/MFA/OAuth, writes, faults, restarts."""

from __future__ import annotations

import time
import uuid

import httpx
import jwt
import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.waiting import wait_for
from wellsky_sandbox.generator import ENTITIES, Generator
from wellsky_sandbox.store import Store

RESOURCES = [
    "patients",
    "practitioners",
    "appointments",
    "encounters",
    "care-plans",
    "authorizations",
    "referrals",
    "coverage",
]


def login(sb, client: httpx.Client | None = None) -> httpx.Client:
    client = client or httpx.Client(base_url=sb.base_url)
    client.post("/sessions", json={"username": sb.username, "password": sb.password}).raise_for_status()
    return client


def all_pages(client: httpx.Client, path: str, **params) -> list[dict]:
    out, cursor = [], None
    while True:
        page = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        page.raise_for_status()
        body = page.json()
        out += body["data"]
        cursor = body["next_cursor"]
        if not cursor:
            return out


# -- data ------------------------------------------------------------------------------------------------
def test_generation_is_deterministic_and_scales(tmp_path):
    first = list(Generator("hospice", seed=9).generate(50))
    again = list(Generator("hospice", seed=9).generate(50))
    other = list(Generator("hospice", seed=10).generate(50))
    assert first == again
    assert first != other
    counts = Store(tmp_path / "t.sqlite").seed("home_health", 1000, 42)
    assert counts["patients"] == 1000
    assert 9_000 <= sum(counts.values()) <= 11_000


def test_paging_is_stable_ordered_and_complete(sandbox):
    client = login(sandbox)
    for resource in RESOURCES:
        small = all_pages(client, f"/{resource}", limit=7)
        big = all_pages(client, f"/{resource}", limit=1000)
        assert small == big
        keys = [(r.get("lastModified"), r.get("id") or r.get("visitId") or r.get("clinicianId")) for r in big]
        assert keys == sorted(keys), resource
        entity = resource.replace("-", "_")
        assert len(big) == len(sandbox.truth(entity)), resource


def test_updated_since_is_inclusive(sandbox):
    client = login(sandbox)
    truth = sandbox.truth("appointments")
    mark = sorted(r["updated_at"] for r in truth)[len(truth) // 2]
    got = all_pages(client, "/appointments", updated_since=mark, limit=50)
    assert len(got) == sum(1 for r in truth if r["updated_at"] >= mark)


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/patients", {"limit": "0"}, 400, "invalid_parameter"),
        ("/patients", {"limit": "many"}, 400, "invalid_parameter"),
        ("/patients", {"updated_since": "yesterday"}, 400, "invalid_parameter"),
        ("/patients", {"cursor": "not-a-cursor"}, 400, "invalid_cursor"),
        ("/patients", {"colour": "blue"}, 400, "unknown_parameter"),
        ("/visits", {}, 404, "unknown_resource"),
        ("/clients", {}, 404, "unknown_resource"),
        ("/patients/nope", {}, 404, "not_found"),
    ],
)
def test_bad_requests_get_json_errors(sandbox, path, params, status, code):
    response = login(sandbox).get(path, params=params)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == code and body["message"]


def test_garbage_bodies_never_crash_the_server(sandbox):
    client = login(sandbox)
    for body in (b"", b"{", b"[]", b"null", b'{"name": 5}', b"\xff\xfe", b'{"birthDate": []}'):
        response = client.post("/patients", content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, body
        assert response.json()["message"]
    assert client.get("/patients", params={"limit": 1}).status_code == 200


# -- sessions, MFA, OAuth ------------------------------------------------------------------------------
def test_unauthenticated_and_wrong_password(sandbox):
    client = httpx.Client(base_url=sandbox.base_url)
    assert client.get("/patients").json()["error"] == "unauthenticated"
    bad = client.post("/sessions", json={"username": sandbox.username, "password": "nope"})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_credentials"


@pytest.mark.parametrize("method", ["totp", "sms", "email"])
def test_mfa_by_every_method(sandbox_factory, method):
    sb = sandbox_factory(mfa=True, scale=5)
    client = httpx.Client(base_url=sb.base_url)
    challenge = client.post("/sessions", json={"username": sb.username, "password": sb.password})
    assert challenge.status_code == 202 and challenge.json()["methods"] == ["totp", "sms", "email"]
    cid = challenge.json()["challenge_id"]
    assert client.get("/patients").status_code == 401, "no session before the second factor"
    if method == "totp":
        code = pyotp.TOTP(sb.totp_secret).now()
    else:
        client.post(f"/sessions/{cid}/send", json={"method": method}).raise_for_status()
        code = next(m["code"] for m in reversed(sb.outbox()) if m["challenge_id"] == cid and m["method"] == method)
    wrong = client.post(f"/sessions/{cid}/mfa", json={"method": method, "code": "000000" if code != "000000" else "1"})
    assert wrong.status_code in (400, 401)
    done = client.post(f"/sessions/{cid}/mfa", json={"method": method, "code": code})
    assert done.status_code == 201
    assert client.get("/patients", params={"limit": 1}).status_code == 200


def test_cookie_rotation_grace_then_rejection_and_session_expiry(sandbox_factory):
    sb = sandbox_factory(scale=5, cookie_rotate_seconds=0, cookie_grace_seconds=1.5, session_ttl_seconds=4)
    client = login(sb)
    first = client.cookies["wsk_session"]
    client.get("/tenant").raise_for_status()
    rotated = client.cookies["wsk_session"]
    assert rotated != first
    old = httpx.Client(base_url=sb.base_url, cookies={"wsk_session": first})
    assert old.get("/tenant").status_code == 200, "the previous cookie is honoured during the grace window"
    late = wait_for(lambda: _refused(old), what="the rotated-out cookie to be refused after its grace")
    assert late.json()["error"] == "cookie_rotated"
    expired = wait_for(lambda: _refused(client), what="the session to expire")
    assert expired.json()["error"] in ("session_expired", "invalid_session")


def _refused(client: httpx.Client) -> httpx.Response | None:
    response = client.get("/tenant")
    return response if response.status_code == 401 else None


def _rsa_pem() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem.decode()


def test_oauth_client_credentials_and_private_key_jwt(sandbox):
    token_url = sandbox.base_url + "/oauth/token"
    ok = httpx.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": sandbox.client_id,
            "client_secret": sandbox.client_secret,
            "scope": "system/*.read",
        },
    )
    assert ok.status_code == 200 and ok.json()["token_type"] == "Bearer"
    read_only = {"authorization": f"Bearer {ok.json()['access_token']}"}
    assert httpx.get(sandbox.base_url + "/patients", headers=read_only).status_code == 200
    denied = httpx.post(sandbox.base_url + "/patients", headers=read_only, json={})
    assert denied.status_code == 403 and denied.json()["error"] == "insufficient_scope"

    key, pem = _rsa_pem()
    sandbox.register_jwt_client("backend-1", pem, kid="k1")

    def assertion(signing_key, jti: str) -> str:
        claims = {"iss": "backend-1", "sub": "backend-1", "aud": token_url, "exp": int(time.time()) + 240, "jti": jti}
        return jwt.encode(claims, signing_key, algorithm="RS384", headers={"kid": "k1"})

    form = {
        "grant_type": "client_credentials",
        "scope": "system/*.read system/*.write",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    }
    jti = str(uuid.uuid4())
    good = httpx.post(token_url, data={**form, "client_assertion": assertion(key, jti)})
    assert good.status_code == 200 and "system/*.write" in good.json()["scope"]
    replay = httpx.post(token_url, data={**form, "client_assertion": assertion(key, jti)})
    assert replay.status_code == 401 and "replay" in replay.json()["message"]
    forger, _ = _rsa_pem()
    forged = httpx.post(token_url, data={**form, "client_assertion": assertion(forger, str(uuid.uuid4()))})
    assert forged.status_code == 401 and forged.json()["error"] == "invalid_client"


def test_token_expiry(sandbox_factory):
    sb = sandbox_factory(scale=5, token_ttl_seconds=2)
    token = httpx.post(
        sb.base_url + "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": sb.client_id, "client_secret": sb.client_secret},
    ).json()["access_token"]
    headers = {"authorization": f"Bearer {token}"}
    assert httpx.get(sb.base_url + "/tenant", headers=headers).status_code == 200
    expired = wait_for(
        lambda: (r := httpx.get(sb.base_url + "/tenant", headers=headers)).status_code == 401 and r,
        what="the access token to expire",
    )
    assert expired.json()["error"] == "token_expired"


# -- writes --------------------------------------------------------------------------------------------------
def _new_patient(mrn: str) -> dict:
    return {
        "name": {"first": "Test", "last": "Person"},
        "birthDate": "1950-02-03",
        "gender": "F",
        "mrn": mrn,
        "status": "Admitted",
    }


def test_idempotency_replay_conflict_and_keyless_writes(sandbox):
    client = login(sandbox)
    key = {"Idempotency-Key": "key-" + uuid.uuid4().hex}
    first = client.post("/patients", json=_new_patient("IDEM1"), headers=key)
    again = client.post("/patients", json=_new_patient("IDEM1"), headers=key)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    changed = client.post("/patients", json=_new_patient("IDEM2"), headers=key)
    assert changed.status_code == 409 and changed.json()["error"] == "idempotency_key_reused"
    a = client.post("/patients", json={**_new_patient(None), "mrn": None})
    b = client.post("/patients", json={**_new_patient(None), "mrn": None})
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"], "no key: never de-duplicated"
    dup = client.post("/patients", json=_new_patient("IDEM1"))
    assert dup.status_code == 409 and dup.json()["existing_id"] == first.json()["id"]
    actions = [e["action"] for e in sandbox.audit()]
    assert actions.count("replayed") == 1 and actions.count("rejected") == 2


def test_authorization_rules_answer_422_with_the_reason(sandbox):
    client = login(sandbox)
    auth = next(a for a in sandbox.truth("authorizations") if a["status"] == "active" and a["unit_type"] == "visit")
    code = auth["service_codes"][0]
    service = {"SN": "G0299", "PT": "G0151", "OT": "G0152", "ST": "G0153"}[code]
    day = max(auth["start_date"], "2026-11-02")
    base = {
        "patientId": auth["patient_id"],
        "payerId": auth["payer_id"],
        "discipline": code,
        "serviceCode": service,
        "scheduledStart": f"{day}T15:00:00Z",
        "scheduledEnd": f"{day}T16:00:00Z",
    }
    cases = {
        "authorization_missing": {**base, "payerId": "NOPE"},
        "authorization_out_of_range": {
            **base,
            "scheduledStart": "2030-01-01T15:00:00Z",
            "scheduledEnd": "2030-01-01T16:00:00Z",
        },
        "service_not_authorized": {**base, "discipline": "MSW", "serviceCode": "G0155"},
    }
    for expected, body in cases.items():
        response = client.post("/appointments", json=body)
        assert response.status_code == 422 and response.json()["error"] == expected, (expected, response.text)
    left = auth["units_authorized"] - auth["units_used"]
    for i in range(left):
        client.post("/appointments", json={**base, "externalId": f"A{i}"}).raise_for_status()
    over = client.post("/appointments", json={**base, "externalId": "A-over"})
    assert over.status_code == 422 and over.json()["error"] == "authorization_exceeded"
    assert over.json()["units_left"] == 0
    booked = client.get("/appointments", params={"external_id": "A0"}).json()["data"][0]
    cancelled = client.post("/appointments", json={"visitId": booked["visitId"], "status": "Cancelled"})
    assert cancelled.status_code == 200
    client.post("/appointments", json={**base, "externalId": "A-after-cancel"}).raise_for_status()


def test_read_only_tenant_refuses_writes(sandbox_factory):
    sb = sandbox_factory(read_only=True, scale=5)
    response = login(sb).post("/patients", json=_new_patient("RO1"))
    assert response.status_code == 403 and response.json()["error"] == "read_only_tenant"


# -- time, faults, restarts --------------------------------------------------------------------------------
def test_advance_changes_records_after_the_previous_high_water_mark(sandbox):
    before = {e: max(r["updated_at"] for r in sandbox.truth(e)) for e in ("patients", "appointments")}
    result = sandbox.advance(count=30, seed=5)
    assert result["changed"] + len(result["deleted"]) == 30  # deletions are changes too
    changed = sum(len(sandbox.truth(e, updated_since=result["updated_at"])) for e in ENTITIES)
    assert changed == result["changed"]
    assert not [k for k in result["deleted"] if sandbox.truth(k.split("/")[0]) and k.split("/")[1] in
                {r["id"] for r in sandbox.truth(k.split("/")[0])}], "a deleted record is gone from the truth"
    assert all(result["updated_at"] > mark for mark in before.values())


def test_fault_counters_match_what_clients_saw(sandbox_factory):
    sb = sandbox_factory(scale=5, faults="error=0.3,429=0.1,malformed=0.1,seed=3")
    client = login(sb)
    seen = {"error": 0, "429": 0, "malformed": 0, "ok": 0}
    for _ in range(60):
        response = client.get("/patients", params={"limit": 5})
        if response.status_code == 429:
            seen["429"] += 1
            assert response.headers["retry-after"] == "1"
        elif response.status_code >= 500:
            seen["error"] += 1
        else:
            try:
                response.json()
                seen["ok"] += 1
            except ValueError:
                seen["malformed"] += 1
    stats = sb.stats()["faults"]
    assert seen["error"] == sum(stats.get(s, 0) for s in ("500", "502", "503"))
    assert seen["429"] == stats.get("429", 0) and seen["malformed"] == stats.get("malformed", 0)
    assert min(seen.values()) > 0


def test_restart_keeps_every_record_write_and_key(sandbox):
    client = login(sandbox)
    key = {"Idempotency-Key": "restart-key-1"}
    created = client.post("/patients", json=_new_patient("RESTART1"), headers=key).json()
    before = {e: len(sandbox.truth(e)) for e in ("patients", "appointments")}
    port = sandbox.port
    sandbox.restart()
    assert sandbox.port == port
    assert {e: len(sandbox.truth(e)) for e in ("patients", "appointments")} == before
    fresh = login(sandbox, httpx.Client(base_url=sandbox.base_url))
    replay = fresh.post("/patients", json=_new_patient("RESTART1"), headers=key)
    assert replay.headers.get("idempotent-replayed") == "true" and replay.json()["id"] == created["id"]
