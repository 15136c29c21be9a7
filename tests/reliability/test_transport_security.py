"""Transport security: TLS verified by default, SFTP host keys pinned, signed URLs and webhook signatures checked.

The HTTPS tenant is the sandbox's own app served by uvicorn with a certificate from a throwaway CA made here;
nothing is mocked on either side.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paramiko
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from wellsky_core.channels.rest import rest_pages
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import AuthError, ConfigError, WellSkyTransportError
from wellsky_core.http.client import WellSkyClient

from .conftest import TAP_CMD, assert_no_traceback, child_env, write_json


# -- HTTPS --------------------------------------------------------------------------------------------------------
def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, Any] | None, san: list[Any]) -> Any:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    encoding, private_format = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, private_format, serialization.NoEncryption())


class HttpsTenant:
    """The sandbox app over HTTPS on a loopback port, with a certificate for ``san`` signed by a private CA."""

    def __init__(self, sb: Any, tmp: Path, san: list[Any]) -> None:
        from wellsky_sandbox.app import build_app

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("reliability test CA", ca_key, None, [])
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert("tenant", key, (ca.subject, ca_key), san)
        self.ca_path = tmp / "ca.pem"
        self.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp / "key.pem").write_bytes(_pem_key(key))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            build_app(sb.tenant), log_level="critical", lifespan="off", access_log=False,
            ssl_certfile=str(tmp / "cert.pem"), ssl_keyfile=str(tmp / "key.pem"),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        self.base_url = f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def tls_tenant(sandbox_factory: Any, tmp_path: Path) -> Iterator[tuple[Any, HttpsTenant]]:
    sb = sandbox_factory(scale=20, sftp_port=None)
    https = HttpsTenant(sb, tmp_path, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    yield sb, https
    https.stop()


def _config(sb: Any, base_url: str, **extra: Any) -> WellSkyConfig:
    raw = {"base_url": base_url, "username": sb.username, "password": sb.password, "max_retries": 1, **extra}
    return WellSkyConfig.load(raw, env={})


def test_self_signed_https_is_refused_by_default_and_trusted_with_ca_bundle(tls_tenant: Any) -> None:
    sb, https = tls_tenant
    with pytest.raises(WellSkyTransportError) as info, WellSkyClient(_config(sb, https.base_url)) as client:
        client.get_json("/tenant")
    assert "ca_bundle" in str(info.value) and "not trusted" in str(info.value)

    with WellSkyClient(_config(sb, https.base_url, ca_bundle=str(https.ca_path))) as client:
        assert client.get_json("/tenant")["product"] == sb.product
        assert sum(len(p) for p in rest_pages(client, "/patients", {"limit": 50})) == len(sb.truth("patients"))

    with WellSkyClient(_config(sb, https.base_url, verify_tls=False)) as client:  # an explicit, visible opt-out
        assert client.get_json("/tenant")["product"] == sb.product


def test_ca_bundle_does_not_disable_hostname_checks(sandbox_factory: Any, tmp_path: Path) -> None:
    """A certificate from the trusted CA but for another host name is still refused."""
    sb = sandbox_factory(scale=5, sftp_port=None)
    https = HttpsTenant(sb, tmp_path, [x509.DNSName("other.example")])
    try:
        with pytest.raises(WellSkyTransportError) as info, WellSkyClient(
            _config(sb, https.base_url, ca_bundle=str(https.ca_path))
        ) as client:
            client.get_json("/tenant")
        assert "not trusted" in str(info.value)
    finally:
        https.stop()


def test_tap_cli_refuses_the_untrusted_certificate_with_one_clear_line(tls_tenant: Any, tmp_path: Path) -> None:
    sb, https = tls_tenant
    cfg = {"base_url": https.base_url, "username": sb.username, "password": sb.password, "max_retries": 1}
    proc = subprocess.run(
        [*TAP_CMD, "--config", str(write_json(tmp_path / "tls.json", cfg))],
        capture_output=True, text=True, env=child_env(), timeout=120,
    )
    assert_no_traceback(proc.stderr, "tap against an untrusted certificate")
    assert proc.returncode == 2 and "ca_bundle" in proc.stderr, proc.stderr[-1000:]
    assert proc.stdout.count('"type":"RECORD"') == 0


def test_plain_http_to_a_remote_host_is_refused_by_config() -> None:
    with pytest.raises(ConfigError) as info:
        WellSkyConfig.load({"base_url": "http://agency.example/api", "username": "u", "password": "p"}, env={})
    assert "base_url" in str(info.value) and "https" in str(info.value)


# -- SFTP host keys -------------------------------------------------------------------------------------------------
@pytest.fixture
def sftp_tenant(sandbox_factory: Any) -> Any:
    sb = sandbox_factory(scale=5)
    assert sb.sftp_port, "the sandbox must serve SFTP (project code never skips itself)"
    return sb


def _sftp_config(sb: Any, **extra: Any) -> WellSkyConfig:
    creds = sb.credentials()
    raw = {
        "base_url": sb.base_url, "username": sb.username, "password": sb.password, "sftp_host": creds["sftp_host"],
        "sftp_port": creds["sftp_port"], "sftp_username": creds["sftp_username"],
        "sftp_password": creds["sftp_password"], **extra,
    }
    return WellSkyConfig.load(raw, env={})


def test_sftp_without_a_pinned_host_key_is_refused(sftp_tenant: Any) -> None:
    from wellsky_core.channels.sftp import connect_sftp

    with pytest.raises(ConfigError) as info:
        connect_sftp(_sftp_config(sftp_tenant))
    assert "sftp_host_key" in str(info.value) and "refused" in str(info.value)


def test_sftp_unknown_host_key_is_refused(sftp_tenant: Any, tmp_path: Path) -> None:
    from wellsky_core.channels.sftp import connect_sftp

    other = paramiko.Ed25519Key.from_private_key_file(str(_ed25519_file(tmp_path)))
    with pytest.raises(AuthError) as info:
        connect_sftp(_sftp_config(sftp_tenant, sftp_host_key=f"{other.get_name()} {other.get_base64()}"))
    assert "mismatch" in str(info.value) and "sftp_host_key" in str(info.value)

    known = tmp_path / "known_hosts"
    known.write_text(f"[otherhost]:22 {other.get_name()} {other.get_base64()}\n")
    with pytest.raises(AuthError) as info:
        connect_sftp(_sftp_config(sftp_tenant, sftp_known_hosts=str(known)))
    assert "sftp_known_hosts" in str(info.value)

    transport, sftp = connect_sftp(_sftp_config(sftp_tenant, sftp_host_key=sftp_tenant.credentials()["sftp_host_key"]))
    try:
        assert sftp.listdir("/outbound") is not None  # the pinned key connects
    finally:
        sftp.close()
        transport.close()


def _ed25519_file(tmp: Path) -> Path:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp / "other_host_key"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                          serialization.NoEncryption())
    )
    return path


# -- signed export URLs -----------------------------------------------------------------------------------------
def test_export_urls_are_verified(sandbox_factory: Any) -> None:
    sb = sandbox_factory(scale=5, sftp_port=None)
    http = httpx.Client(base_url=sb.base_url, timeout=30)
    assert http.post("/sessions", json={"username": sb.username, "password": sb.password}).status_code == 201
    listing = http.get("/exports").json()
    assert listing, "the sandbox lists at least one export"
    url = httpx.URL(listing[0]["url"])
    params = dict(url.params)
    anonymous = httpx.Client(timeout=30)
    assert anonymous.get(url).status_code == 200, "the signed URL itself works without other credentials"
    tampered_sig = url.copy_with(params={**params, "signature": "0" * len(params["signature"])})
    later = url.copy_with(params={**params, "expires": str(int(params["expires"]) + 3600)})
    unsigned = url.copy_with(params={})
    bad_urls = [tampered_sig, later, unsigned]
    if len(listing) > 1:  # this file's signature on another file's name
        bad_urls.append(url.copy_with(path=url.path.rsplit("/", 1)[0] + "/" + listing[-1]["name"]))
    for bad in bad_urls:
        assert anonymous.get(bad).status_code == 403, bad
    digest = hashlib.sha256(anonymous.get(url).content).hexdigest()
    assert digest == listing[0]["sha256"], "the download matches the checksum the listing promised"


# -- webhook signatures -----------------------------------------------------------------------------------------
def test_webhook_signatures_are_verified(tmp_path: Path) -> None:
    from wellsky_core.errors import SignatureError
    from wellsky_core.webhooks import EventStore, WebhookReceiver, verify_signature

    secret = "whsec-reliability"
    body = json.dumps({"id": "evt-1", "type": "patient.changed", "entity": "patients", "record": {}}).encode()

    def sign(ts: int, payload: bytes = body, key: str = secret) -> str:
        return f"t={ts},v1={hmac.new(key.encode(), f'{ts}.'.encode() + payload, hashlib.sha256).hexdigest()}"

    now = int(time.time())
    assert verify_signature(secret, sign(now), body) == now
    bad_headers = {
        "missing": None,
        "malformed": "garbage",
        "no timestamp": "v1=abc",
        "no v1": f"t={now}",
        "wrong secret": sign(now, key="other"),
        "tampered body": sign(now, payload=body + b" "),
        "replayed (old)": sign(now - 3600),
        "from the future": sign(now + 3600),
    }
    for case, header in bad_headers.items():
        with pytest.raises(SignatureError) as info:
            verify_signature(secret, header, body)
        assert secret not in str(info.value), f"{case}: the secret leaked into the error"

    store = EventStore(tmp_path / "events.sqlite")
    with WebhookReceiver(store, secret) as receiver:
        post = lambda header: httpx.post(  # noqa: E731
            receiver.url, content=body, headers={"X-WellSky-Signature": header} if header else {}, timeout=10
        )
        for case, header in bad_headers.items():
            assert post(header).status_code in (400, 401, 403), case
        assert store.count() == 0, "an unverified event was stored"
        assert post(sign(int(time.time()))).status_code in (200, 202)
        assert store.count() == 1
    store.close()
