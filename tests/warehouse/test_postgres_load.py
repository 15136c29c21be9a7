"""Warehouse load end to end: `tap-wellsky | target-postgres` (meltanolabs-target-postgres, from its own virtualenv)
into a throwaway PostgreSQL cluster on a loopback port, then an incremental re-run from the tap's last STATE.

Also a DuckDB variant with a small upserting loader, showing the Singer stream loads into any warehouse that can
merge on the primary key.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.warehouse.conftest import SCHEMA, TAP, as_utc, last_state, pipe, tap_config, target_postgres_config
from wellsky_core.models import MODELED_ENTITIES as ENTITIES


def assert_warehouse_equals_truth(conn: Any, sandbox, deleted: tuple[str, ...] = ()) -> int:
    """The warehouse holds the tenant's current versions; ``deleted`` (``stream/id`` from /_sandbox/advance) stay:
    the api source reads by change time and cannot know a deletion (docs/deletions.md)."""
    total = 0
    for stream in ENTITIES:
        rows = conn.execute(f'SELECT id, updated_at FROM {SCHEMA}."{stream}"').fetchall()
        truth = {str(r["id"]): as_utc(r["updated_at"]) for r in sandbox.truth(stream)}
        ids = [str(r[0]) for r in rows]
        assert len(ids) == len(set(ids)), f"{stream}: duplicate primary keys in the warehouse"
        kept = {k.split("/", 1)[1] for k in deleted if k.startswith(f"{stream}/")}
        assert kept <= set(ids), f"{stream}: a deleted row vanished although the api source cannot know deletions"
        rows = [r for r in rows if str(r[0]) not in kept]
        assert len(rows) == len(truth), f"{stream}: {len(rows)} rows, sandbox holds {len(truth)}"
        warehouse = {str(i): as_utc(u) for i, u in rows}
        assert warehouse == truth, f"{stream}: warehouse rows are not the tenant's current versions"
        total += len(rows)
    return total


@pytest.mark.postgres
def test_tap_to_target_postgres_full_then_incremental(postgres, target_postgres, sandbox, tmp_path):
    config = tap_config(sandbox, tmp_path)
    target_config = target_postgres_config(postgres, tmp_path)
    out = pipe([TAP, "--config", str(config)], [target_postgres, "--config", str(target_config)])
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(last_state(out)))
    with postgres.connect() as conn:
        loaded = assert_warehouse_equals_truth(conn, sandbox)
    assert loaded > 500

    deleted = tuple(sandbox.advance(fraction=0.02)["deleted"])
    out = pipe(
        [TAP, "--config", str(config), "--state", str(state_file)],
        [target_postgres, "--config", str(target_config)],
    )
    assert last_state(out)["bookmarks"], "the incremental run confirmed no bookmarks"
    with postgres.connect() as conn:
        reloaded = assert_warehouse_equals_truth(conn, sandbox, deleted)
    assert reloaded + len(deleted) >= loaded  # advance adds rows and updates others; the upsert keeps one row per id


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
    deleted = sandbox.advance(fraction=0.02)["deleted"]
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(state))
    sync("--state", str(state_file))
    with duckdb.connect(str(database)) as conn:
        for stream in ENTITIES:
            truth = {str(r["id"]): as_utc(r["updated_at"]) for r in sandbox.truth(stream)}
            kept = {k.split("/", 1)[1] for k in deleted if k.startswith(f"{stream}/")}  # api: deletions unknown
            rows = [r for r in conn.execute(f'SELECT id, updated_at FROM "{stream}"').fetchall()
                    if str(r[0]) not in kept]
            assert len(rows) == len(truth), f"{stream}: {len(rows)} rows, sandbox holds {len(truth)}"
            assert {i: as_utc(u) for i, u in rows} == truth, f"{stream}: stale rows after the incremental run"
