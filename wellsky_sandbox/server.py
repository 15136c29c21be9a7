"""Run a sandbox tenant: uvicorn on a loopback port in a background thread (plus its SFTP server).

``SandboxServer`` is what the CLI, the tap's embedded mode, the benchmark and the pytest fixtures use. It can
be stopped and started again on the same data directory and port, which is how the reliability suite
restarts the "vendor" in the middle of a sync.
"""

from __future__ import annotations

import importlib
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from .app import build_app
from .faults import FaultPlan
from .generator import scale_to_patients
from .security import Settings
from .tenant import Tenant, TenantConfig
from .wan import WanPlan


class SandboxServer:
    """A running emulated tenant. Use as a context manager, or call ``start()`` / ``stop()``."""

    def __init__(
        self,
        *,
        scale: str | int = "S",
        product: str = "home_health",
        seed: int = 42,
        data_dir: str | Path | None = None,
        port: int = 0,
        sftp_port: int | None = 0,
        mfa: bool = False,
        read_only: bool = False,
        faults: str | dict[str, Any] | None = None,
        session_ttl_seconds: float = 3600.0,
        cookie_rotate_seconds: float = 60.0,
        cookie_grace_seconds: float = 10.0,
        token_ttl_seconds: float = 3600.0,
        host: str = "127.0.0.1",
        homeconnect: str | dict[str, Any] | None = None,
        latency: str | float | None = None,
        jitter: str | float | None = None,
        rate_limit: int | None = None,
        fhir_references: str = "literal",
    ) -> None:
        """``latency`` (``"150ms"`` or seconds) delays every request by latency ± jitter (default a fifth of
        it); ``rate_limit`` is the soft requests/s whose overruns ``/_sandbox/stats`` counts (None: the
        product's documented limit, 100 for personal care); ``fhir_references="identifier"`` refers to
        practitioners by NPI as certified US Core servers do (see ``fhir.Fhir.identifier_references``)."""
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="wellsky-sandbox-"))
        self.config = TenantConfig(
            product=product,
            patients=scale_to_patients(scale),
            seed=seed,
            data_dir=self.data_dir,
            read_only=read_only,
            security=Settings(
                mfa=mfa,
                session_ttl_seconds=session_ttl_seconds,
                cookie_rotate_seconds=cookie_rotate_seconds,
                cookie_grace_seconds=cookie_grace_seconds,
                token_ttl_seconds=token_ttl_seconds,
            ),
            faults=FaultPlan.parse(faults),
            homeconnect=homeconnect,
            wan=WanPlan.parse(latency, jitter, seed=seed),
            rate_limit=rate_limit,
            fhir_references=fhir_references,
        )
        self.host = host
        self.port = port
        self.sftp_port = sftp_port
        self.tenant: Tenant | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sftp: Any = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> SandboxServer:
        self.tenant = Tenant(self.config)
        app = build_app(self.tenant)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            loop="uvloop",
            http="httptools",
            access_log=False,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"wellsky-sandbox-{self.port}"
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("sandbox HTTP server did not start; see the log above")
            time.sleep(0.01)
        self._start_sftp()
        return self

    def _start_sftp(self) -> None:
        if self.sftp_port is None:
            return
        try:
            sftp = importlib.import_module("wellsky_sandbox.sftp")
        except ModuleNotFoundError as exc:
            if exc.name != "wellsky_sandbox.sftp":
                raise
            self.sftp_port = None
            return
        assert self.tenant is not None
        self._sftp = sftp.SftpServer(self.tenant, host=self.host, port=self.sftp_port)
        self._sftp.start()
        self.sftp_port = self._sftp.port

    def stop(self) -> None:
        if self._sftp is not None:
            self._sftp.stop()
            self._sftp = None
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._server = None
        if self.tenant is not None:
            self.tenant.close()
            self.tenant = None

    def restart(self) -> None:
        """Stop and start on the same port and data file (sessions and tokens are forgotten)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- what clients need ----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def _security(self) -> Any:
        assert self.tenant is not None, "sandbox is not running"
        return self.tenant.security

    @property
    def username(self) -> str:
        return self._security.username

    @property
    def password(self) -> str:
        return self._security.password

    @property
    def totp_secret(self) -> str:
        return self._security.totp_secret

    @property
    def client_id(self) -> str:
        return self._security.client_id

    @property
    def client_secret(self) -> str:
        return self._security.client_secret

    @property
    def product(self) -> str:
        return self.config.product

    def credentials(self) -> dict[str, Any]:
        """Connection settings for the demo and tests (the sandbox's own, synthetic credentials)."""
        creds = {
            "base_url": self.base_url,
            "product": self.product,
            "username": self.username,
            "password": self.password,
            "totp_secret": self.totp_secret,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }
        if self.sftp_port:
            creds.update(
                sftp_host=self.host, sftp_port=self.sftp_port, sftp_username=self.username, sftp_password=self.password
            )
            if self._sftp is not None:
                creds["sftp_host_key"] = self._sftp.host_key_line
        return creds

    # -- control API shortcuts ------------------------------------------------------------------------
    def control(self, method: str, path: str, **kw: Any) -> Any:
        response = httpx.request(method, self.base_url + path, timeout=120, **kw)
        response.raise_for_status()
        return response.json()

    def advance(self, fraction: float | None = None, count: int | None = None, seed: int = 1) -> dict[str, Any]:
        body: dict[str, Any] = {"seed": seed}
        if fraction is not None:
            body["fraction"] = fraction
        if count is not None:
            body["count"] = count
        return self.control("POST", "/_sandbox/advance", json=body)

    def stats(self) -> dict[str, Any]:
        return self.control("GET", "/_sandbox/stats")

    def rate(self) -> dict[str, Any]:
        """The soft-limit meter: ``{requests, overruns, peak_per_second, limit_per_second}``."""
        return self.stats()["rate"]

    def set_faults(self, spec: str | dict[str, Any] | None) -> dict[str, Any]:
        return self.control("POST", "/_sandbox/faults", json={"spec": spec or ""})

    def outbox(self) -> list[dict[str, Any]]:
        return self.control("GET", "/_sandbox/outbox")["messages"]

    def truth(self, entity: str, updated_since: str | None = None) -> list[dict[str, Any]]:
        params = {"updated_since": updated_since} if updated_since else None
        return self.control("GET", f"/_sandbox/truth/{entity}", params=params)["data"]

    def audit(self) -> list[dict[str, Any]]:
        return self.control("GET", "/_sandbox/audit")["entries"]

    def register_jwt_client(
        self, client_id: str, public_key_pem: str, kid: str = "key-1", scopes: list[str] | None = None
    ) -> None:
        self.control(
            "POST",
            "/_sandbox/clients",
            json={"client_id": client_id, "public_key_pem": public_key_pem, "kid": kid, "scopes": scopes},
        )

    def set_tenant(self, **settings: Any) -> dict[str, Any]:
        return self.control("POST", "/_sandbox/tenant", json=settings)
