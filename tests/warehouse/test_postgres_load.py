"""Warehouse load end to end: `tap-wellsky | target-postgres` (meltanolabs-target-postgres, from its own virtualenv)
into a throwaway PostgreSQL cluster on a loopback port, then an incremental re-run from the tap's last STATE.

Also a DuckDB variant with a small upserting loader, showing the Singer stream loads into any warehouse that can
merge on the primary key.
"""

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

from wellsky_core.models import ENTITIES

ROOT = Path(__file__).resolve().parents[2]
TAP = str(Path(sys.executable).with_name("tap-wellsky"))
SCHEMA = "wellsky"


# --- a throwaway PostgreSQL cluster ----------------------------------------------------------------------------


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
    proc = subprocess.run([str(ROOT / "scripts/warehouse-setup")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"scripts/warehouse-setup failed:\n{proc.stderr[-3000:]}"
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


def _as_utc(value: Any) -> datetime:
    """target-postgres stores date-time as ``timestamp`` (UTC, without zone); the sandbox says ...Z."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def assert_warehouse_equals_truth(conn: Any, sandbox) -> int:
    total = 0
    for stream in ENTITIES:
        rows = conn.execute(f'SELECT id, updated_at FROM {SCHEMA}."{stream}"').fetchall()
        truth = {str(r["id"]): _as_utc(r["updated_at"]) for r in sandbox.truth(stream)}
        ids = [str(r[0]) for r in rows]
        assert len(ids) == len(set(ids)), f"{stream}: duplicate primary keys in the warehouse"
        assert len(rows) == len(truth), f"{stream}: {len(rows)} rows, sandbox holds {len(truth)}"
        warehouse = {str(i): _as_utc(u) for i, u in rows}
        assert warehouse == truth, f"{stream}: warehouse rows are not the tenant's current versions"
        total += len(rows)
    return total


@pytest.mark.postgres
def test_tap_to_target_postgres_full_then_incremental(postgres, target_postgres, sandbox, tmp_path):
    config = tap_config(sandbox, tmp_path)
    target_config = tmp_path / "target.json"
    target_config.write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "port": postgres.port,
                "user": postgres.user,
                "password": postgres.password,
                "database": postgres.database,
                "default_target_schema": SCHEMA,
                "load_method": "upsert",
            }
        )
    )
    out = pipe([TAP, "--config", str(config)], [target_postgres, "--config", str(target_config)])
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(last_state(out)))
    with postgres.connect() as conn:
        loaded = assert_warehouse_equals_truth(conn, sandbox)
    assert loaded > 500

    sandbox.advance(fraction=0.02)
    out = pipe(
        [TAP, "--config", str(config), "--state", str(state_file)],
        [target_postgres, "--config", str(target_config)],
    )
    assert last_state(out)["bookmarks"], "the incremental run confirmed no bookmarks"
    with postgres.connect() as conn:
        reloaded = assert_warehouse_equals_truth(conn, sandbox)
    assert reloaded >= loaded  # advance adds rows and updates others; the upsert keeps one row per id


# --- DuckDB -----------------------------------------------------------------------------------------------------


def load_into_duckdb(database: Path, singer_lines: list[str]) -> dict[str, Any] | None:
    """A minimal Singer loader: one table per stream (id, updated_at, record JSON), upserted on the primary key.

    Records are staged as NDJSON and merged in one statement per stream and checkpoint (row-by-row inserts are
    slow in DuckDB). Returns the last STATE value — what a real target confirms once the rows before it are
    committed.
    """
    import duckdb

    state = None
    pending: dict[str, dict[str, dict[str, Any]]] = {}  # stream -> id -> latest record (one row per key)
    staging = database.with_suffix(".staging.jsonl")
    with duckdb.connect(str(database)) as conn:

        def commit() -> None:
            for stream, rows in pending.items():
                if not rows:
                    continue
                staging.write_text(
                    "".join(json.dumps({"id": k, "record": json.dumps(r)}) + "\n" for k, r in rows.items())
                )
                conn.execute(
                    f"INSERT OR REPLACE INTO \"{stream}\" SELECT id, CAST(json_extract_string(record, '$.updated_at') "
                    "AS TIMESTAMPTZ), CAST(record AS JSON) FROM read_json(?, format = 'newline_delimited', "
                    "columns = {'id': 'VARCHAR', 'record': 'VARCHAR'})",
                    [str(staging)],
                )
                rows.clear()

        for line in singer_lines:
            message = json.loads(line)
            kind = message["type"]
            if kind == "SCHEMA":
                assert message["key_properties"] == ["id"]
                conn.execute(
                    f'CREATE TABLE IF NOT EXISTS "{message["stream"]}" '
                    "(id VARCHAR PRIMARY KEY, updated_at TIMESTAMPTZ NOT NULL, record JSON NOT NULL)"
                )
                pending.setdefault(message["stream"], {})
            elif kind == "RECORD":
                record = message["record"]
                pending[message["stream"]][record["id"]] = record
            elif kind == "STATE":
                commit()  # rows before a STATE are stored before the STATE is accepted
                state = message["value"]
        commit()
    return state


def test_tap_into_duckdb_full_then_incremental(sandbox, tmp_path):
    import duckdb

    config = tap_config(sandbox, tmp_path)
    database = tmp_path / "warehouse.duckdb"

    def sync(*extra: str) -> dict[str, Any] | None:
        proc = subprocess.run([TAP, "--config", str(config), *extra], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return load_into_duckdb(database, proc.stdout.splitlines())

    state = sync()
    sandbox.advance(fraction=0.02)
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(state))
    sync("--state", str(state_file))
    with duckdb.connect(str(database)) as conn:
        for stream in ENTITIES:
            truth = {str(r["id"]): _as_utc(r["updated_at"]) for r in sandbox.truth(stream)}
            rows = conn.execute(f'SELECT id, updated_at FROM "{stream}"').fetchall()
            assert len(rows) == len(truth), f"{stream}: {len(rows)} rows, sandbox holds {len(truth)}"
            assert {i: _as_utc(u) for i, u in rows} == truth, f"{stream}: stale rows after the incremental run"
