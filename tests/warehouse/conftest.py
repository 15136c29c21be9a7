"""Warehouse test parts shared by the loader and dbt tests: a throwaway PostgreSQL cluster, the loaders' own
virtualenvs (scripts/warehouse-setup) and the `tap | target` pipe."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TAP = str(Path(sys.executable).with_name("tap-wellsky"))
SCHEMA = "wellsky"


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Postgres:
    """initdb + pg_ctl in a temporary directory, listening on 127.0.0.1 only, password (SCRAM) auth.

    PostgreSQL refuses to run as root, so as root (CI) the cluster runs as the `postgres` system user.
    """

    user = "wellsky"
    password = "warehouse-test-pw"
    database = "warehouse"

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="wellsky-pg-"))
        self.data = self.dir / "data"
        self.run_as: str | None = None
        if os.geteuid() == 0:
            try:
                self.run_as = "postgres"
                account = pwd.getpwnam(self.run_as)
            except KeyError:
                pytest.skip("running as root without a `postgres` user: run scripts/system-deps first")
            os.chown(self.dir, account.pw_uid, account.pw_gid)

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def _run(self, *args: str) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    def start(self) -> Postgres:
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if self.run_as:
            account = pwd.getpwnam(self.run_as)
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off -c full_page_writes=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        with self.connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {self.database}")
        return self

    def connect(self, database: str | None = None) -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database or self.database,
            autocommit=True,
        )

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed: run scripts/system-deps")
    server = Postgres(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def target_postgres() -> str:
    return warehouse_tool("target-postgres")


def target_postgres_config(postgres: Postgres, tmp_path: Path) -> Path:
    """target-postgres settings for the throwaway cluster: upsert into SCHEMA (one row per primary key)."""
    path = tmp_path / "target-postgres.json"
    settings = {
        "host": "127.0.0.1",
        "port": postgres.port,
        "user": postgres.user,
        "password": postgres.password,
        "database": postgres.database,
        "default_target_schema": SCHEMA,
        "load_method": "upsert",
    }
    path.write_text(json.dumps(settings))
    return path


def warehouse_tool(name: str) -> str:
    """Install (cached) and locate a loader or dbt in its own virtualenv."""
    proc = subprocess.run([str(ROOT / "scripts/warehouse-setup"), name], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"scripts/warehouse-setup {name} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout.strip().splitlines()[-1]


# --- the pipeline ----------------------------------------------------------------------------------------------


def tap_config(sandbox, tmp_path: Path) -> Path:
    creds = sandbox.credentials()
    path = tmp_path / "tap.json"
    path.write_text(
        json.dumps(
            {
                "base_url": creds["base_url"],
                "username": creds["username"],
                "password": creds["password"],
                "page_size": 100,
            }
        )
    )
    return path


def pipe(tap_args: list[str], target_args: list[str]) -> str:
    """`tap | target`; returns the target's stdout (the STATE lines it confirms after loading)."""
    with subprocess.Popen(tap_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as tap:
        target = subprocess.run(target_args, stdin=tap.stdout, capture_output=True, text=True, timeout=300)
        tap.stdout.close()
        tap_err = tap.stderr.read().decode(errors="replace")
        tap.wait(timeout=60)
    assert tap.returncode == 0, f"tap failed:\n{tap_err[-3000:]}"
    assert target.returncode == 0, f"target failed:\n{target.stderr[-3000:]}"
    return target.stdout


def last_state(target_stdout: str) -> dict[str, Any]:
    states = [json.loads(line) for line in target_stdout.splitlines() if line.strip()]
    assert states, "the target confirmed no STATE"
    message = states[-1]
    return message.get("value", message)


def as_utc(value: Any) -> datetime:
    """target-postgres stores date-time as ``timestamp`` (UTC, without zone); the sandbox says ...Z."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
