"""Rows the tap reports deleted (`_sdc_deleted_at`, docs/deletions.md) are dropped by the dbt staging models:
a real tap load into DuckDB (target-duckdb, which keeps soft-deleted rows), then a deletion of one appointment,
one patient and one authorization, then ``dbt build``: its tests pass (a tombstone with null status would fail
them) and no model holds the rows."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime

from tests.warehouse.conftest import SCHEMA, TAP, pipe, tap_config, warehouse_tool
from tests.warehouse.test_dbt import dbt_build
from wellsky_core.schemas import stream_schema


def test_a_deleted_appointment_leaves_staging_and_marts(sandbox, tmp_path):
    import duckdb

    database = tmp_path / "warehouse.duckdb"
    target_config = tmp_path / "target-duckdb.json"
    target_config.write_text(json.dumps({"path": str(database), "default_target_schema": SCHEMA}))
    target = [warehouse_tool("target-duckdb"), "--config", str(target_config)]
    pipe([TAP, "--config", str(tap_config(sandbox, tmp_path))], target)
    gone = sandbox.truth("appointments")[5]
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tombstone = {"id": gone["id"], "patient_id": gone["patient_id"], "data_quality": [], "updated_at": stamp,
                 "_sdc_deleted_at": stamp}
    lines = [{"type": "SCHEMA", "stream": "appointments", "schema": stream_schema("appointments"),
              "key_properties": ["id"]}]
    # target-duckdb 0.8.0 with duckdb >= 1.3 loses the first row of every batch (README): send it twice
    lines += [{"type": "RECORD", "stream": "appointments", "record": tombstone}] * 2
    # a full export's deletions: a merged-away patient and a voided authorization
    others = {"patients": sandbox.truth("patients")[3], "authorizations": sandbox.truth("authorizations")[2]}
    for stream, rec in others.items():
        body = {"id": rec["id"], "data_quality": [], "updated_at": stamp, "_sdc_deleted_at": stamp}
        if stream == "authorizations":
            body["patient_id"] = rec["patient_id"]
        lines += [{"type": "SCHEMA", "stream": stream, "schema": stream_schema(stream), "key_properties": ["id"]},
                  *[{"type": "RECORD", "stream": stream, "record": body}] * 2]
    loaded = subprocess.run(target, input="\n".join(json.dumps(x) for x in lines) + "\n", capture_output=True,
                            text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    with duckdb.connect(str(database), read_only=True) as conn:
        raw = conn.execute(f'select _sdc_deleted_at from {SCHEMA}."appointments" where id = ?', [gone["id"]]).fetchall()
    assert len(raw) == 1 and raw[0][0] is not None, "the loader keeps the row, marked deleted"

    dbt_build(warehouse_tool("dbt"), tmp_path, {
        "DBT_TARGET": "duckdb", "WELLSKY_DUCKDB_PATH": str(database), "WELLSKY_PRODUCT": "home_health",
        "WELLSKY_AS_OF_DATE": datetime.now(UTC).date().isoformat(),
    })
    with duckdb.connect(str(database), read_only=True) as conn:
        staged = conn.execute("select appointment_id from main_staging.stg_wellsky__appointments").fetchall()
        visits = conn.execute("select count(*) from main_marts.visit_completion").fetchone()[0]
        patients = {r[0] for r in conn.execute("select patient_id from main_staging.stg_wellsky__patients").fetchall()}
        auths = {r[0] for r in conn.execute(
            "select authorization_id from main_staging.stg_wellsky__authorizations").fetchall()}
    assert others["patients"]["id"] not in patients and len(patients) == len(sandbox.truth("patients")) - 1
    assert others["authorizations"]["id"] not in auths and len(auths) == len(sandbox.truth("authorizations")) - 1
    ids = {row[0] for row in staged}
    assert gone["id"] not in ids
    assert len(ids) == len(sandbox.truth("appointments")) - 1
    assert visits <= len(ids)
