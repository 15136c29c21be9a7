"""Auth flows against a real sandbox: sessions, cookie rotation, re-login, OAuth client secret and JWT."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.waiting import wait_for
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import AuthError
from wellsky_core.http.auth import ClientCredentialsAuth, PrivateKeyJwtAuth, SessionAuth
from wellsky_core.http.client import WellSkyClient


def pem_pair(kind: str = "rsa") -> tuple[str, str]:
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, public


def config(sb, **extra) -> WellSkyConfig:
    base = {"base_url": sb.base_url, "max_retries": 2, "backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05}
    if extra.get("auth_method", "session") == "session":
        base.update(username=sb.username, password=sb.password)
    return WellSkyConfig.load({**base, **extra}, env={})


def test_session_login_and_wrong_password(sandbox_factory):
    sb = sandbox_factory(scale=20, sftp_port=None)
    with WellSkyClient(config(sb)) as client:
        assert client.get_json("/tenant")["product"] == "home_health"
        assert isinstance(client.auth, SessionAuth) and client.auth.logins == 1
    bad = config(sb, password="definitely-wrong")
    start = time.monotonic()
    with pytest.raises(AuthError) as info, WellSkyClient(bad) as client:
        client.get_json("/tenant")
    assert time.monotonic() - start < 2, "a refused password is not retried"
    assert "password" in str(info.value) and "definitely-wrong" not in str(info.value)
    assert info.value.status == 401


def test_cookie_rotation_is_followed(sandbox_factory):
    """The cookie rotates every 0.2 s; requests until it rotated 5 times never re-login (a grace of 2 s keeps a
    stalled machine from killing the cookie between two requests)."""
    sb = sandbox_factory(scale=20, sftp_port=None, cookie_rotate_seconds=0.2, cookie_grace_seconds=2)
    with WellSkyClient(config(sb)) as client:
        auth = client.auth
        assert isinstance(auth, SessionAuth)
        wait_for(lambda: client.get_json("/tenant") and auth.rotations >= 5, what="five cookie rotations")
        assert auth.logins == 1 and client.metrics.reauths == 0


def test_stale_cookie_after_grace_would_fail_without_rotation(sandbox_factory):
    """Control: the first cookie really is rejected after rotation + grace, so following rotation matters."""
    sb = sandbox_factory(scale=20, sftp_port=None, cookie_rotate_seconds=0.1, cookie_grace_seconds=0.1)
    with WellSkyClient(config(sb)) as client:
        client.get_json("/tenant")
        auth = client.auth
        assert isinstance(auth, SessionAuth)
        first = auth._cookie
        wait_for(lambda: client.get_json("/tenant") and auth._cookie != first, what="the cookie to rotate")
        stale = wait_for(
            lambda: (r := httpx.get(f"{sb.base_url}/tenant", cookies={"wsk_session": first or ""})).status_code == 401
            and r,
            what="the first cookie to be refused after its grace",
        )
        assert stale.json()["error"] == "cookie_rotated"


def test_session_expiry_triggers_one_relogin_and_replay(sandbox_factory):
    sb = sandbox_factory(scale=20, sftp_port=None)
    with WellSkyClient(config(sb)) as client:
        client.get_json("/tenant")
        sb.set_tenant(expire_sessions=True)
        assert client.get_json("/tenant")["product"] == "home_health"
        assert client.auth.logins == 2 and client.metrics.reauths == 1


def test_concurrent_expiry_logs_in_once(sandbox_factory):
    """Eight threads hit the same dead session: one re-login, seven replays with the new cookie."""
    sb = sandbox_factory(scale=20, sftp_port=None)
    with WellSkyClient(config(sb, max_requests_per_second=0)) as client:
        client.get_json("/tenant")
        sb.set_tenant(expire_sessions=True)
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def worker() -> None:
            try:
                barrier.wait()
                for _ in range(3):
                    client.get_json("/tenant")
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert client.auth.logins == 2


def test_session_renewed_before_announced_expiry(sandbox_factory):
    sb = sandbox_factory(scale=20, sftp_port=None, session_ttl_seconds=1.0)
    with WellSkyClient(config(sb)) as client:
        client.get_json("/tenant")
        wait_for(lambda: time.monotonic() >= client.auth._renew_at, what="the client's renewal point")
        client.get_json("/tenant")
        assert client.auth.logins == 2
        assert client.metrics.reauths == 0, "renewed proactively, not after a 401"


def test_client_credentials_token_is_cached(sandbox_factory):
    sb = sandbox_factory(scale=20, sftp_port=None)
    cfg = config(sb, auth_method="oauth_client_credentials", client_id=sb.client_id, client_secret=sb.client_secret)
    with WellSkyClient(cfg) as client:
        for _ in range(5):
            assert client.get_json("/tenant")["product"] == "home_health"
        auth = client.auth
        assert isinstance(auth, ClientCredentialsAuth)
        assert auth.logins == 1
        assert set(auth.granted_scopes.split()) == {"system/*.read", "system/*.write"}
        sb.set_tenant(expire_sessions=True)  # kills tokens too
        client.get_json("/tenant")
        assert auth.logins == 2 and client.metrics.reauths == 1


def test_client_credentials_wrong_secret(sandbox_factory):
    sb = sandbox_factory(scale=20, sftp_port=None)
    cfg = config(sb, auth_method="oauth_client_credentials", client_id=sb.client_id, client_secret="nope-nope")
    with pytest.raises(AuthError) as info, WellSkyClient(cfg) as client:
        client.get_json("/tenant")
    assert "client_secret" in str(info.value) and "nope-nope" not in str(info.value)


def test_token_refreshed_before_expiry(sandbox_factory):
    sb = sandbox_factory(scale=20, sftp_port=None, token_ttl_seconds=2)
    cfg = config(sb, auth_method="oauth_client_credentials", client_id=sb.client_id, client_secret=sb.client_secret)
    with WellSkyClient(cfg) as client:
        client.get_json("/tenant")
        wait_for(lambda: time.monotonic() >= client.auth._renew_at, what="the token's renewal point")
        client.get_json("/tenant")
        assert client.auth.logins == 2 and client.metrics.reauths == 0


@pytest.mark.parametrize(("kind", "alg"), [("rsa", "RS384"), ("ec", "ES384")])
def test_private_key_jwt_accepted(sandbox_factory, kind, alg):
    sb = sandbox_factory(scale=20, sftp_port=None)
    private, public = pem_pair(kind)
    sb.register_jwt_client("backend-svc", public, kid="k-2026", scopes=["system/*.read"])
    cfg = config(
        sb,
        auth_method="oauth_private_key_jwt",
        client_id="backend-svc",
        private_key=private,
        private_key_id="k-2026",
        jwt_algorithm=alg,
        oauth_scopes=["system/*.read"],
    )
    with WellSkyClient(cfg) as client:
        assert client.get_json("/tenant")["product"] == "home_health"
        auth = client.auth
        assert isinstance(auth, PrivateKeyJwtAuth) and auth.granted_scopes == "system/*.read"
        sb.set_tenant(expire_sessions=True)
        client.get_json("/tenant")  # a second assertion with a fresh jti is accepted
        assert auth.logins == 2


def test_forged_assertion_is_rejected(sandbox_factory):
    sb = sandbox_factory(scale=20, sftp_port=None)
    _, public = pem_pair("rsa")
    forged_private, _ = pem_pair("rsa")
    sb.register_jwt_client("backend-svc", public, kid="k1")
    cfg = config(
        sb,
        auth_method="oauth_private_key_jwt",
        client_id="backend-svc",
        private_key=forged_private,
        private_key_id="k1",
    )
    with pytest.raises(AuthError) as info, WellSkyClient(cfg) as client:
        client.get_json("/tenant")
    assert info.value.status == 401
    assert "private_key" in str(info.value) and "BEGIN" not in str(info.value)
