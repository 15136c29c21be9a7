"""The demo: sandbox tenant -> tap-wellsky -> target-jsonl, an incremental run, and a write-back round trip.

Run through ``scripts/demo`` (which sets up the virtualenvs first). Everything happens under ``.demo/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORK = ROOT / ".demo"


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n== {title}")


def start_sandbox(scale: str) -> tuple[subprocess.Popen, dict]:
    ready = WORK / "sandbox.json"
    ready.unlink(missing_ok=True)
    cmd = [
        str(BIN / "wellsky-sandbox"),
        "serve",
        "--scale",
        scale,
        "--product",
        "home_health",
        "--mfa",
        "--port",
        "0",
        "--sftp-port",
        "0",
        "--data-dir",
        str(WORK / "sandbox"),
        "--ready-file",
        str(ready),
    ]
    with open(WORK / "sandbox.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 180
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"sandbox did not start; see {WORK / 'sandbox.log'}")
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())


def run_pipeline(tap_config: Path, out_dir: Path, state: Path | None, label: str) -> dict:
    """tap-wellsky | target-jsonl; returns the tap summary lines and the last state."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tap_cmd = [str(BIN / "tap-wellsky"), "--config", str(tap_config)]
    if state is not None:
        tap_cmd += ["--state", str(state)]
    target_config = WORK / f"target-jsonl-{label}.json"
    target_config.write_text(json.dumps({"destination_path": str(out_dir), "do_timestamp_file": False}))
    loader = ROOT / ".venv-target-jsonl" / "bin" / "target-jsonl"
    tap_log = WORK / f"tap-{label}.log"
    with open(tap_log, "w") as log:
        tap = subprocess.Popen(tap_cmd, stdout=subprocess.PIPE, stderr=log)
        target = subprocess.run(
            [str(loader), "--config", str(target_config)], stdin=tap.stdout, capture_output=True, text=True
        )
        tap.wait()
    if tap.returncode or target.returncode:
        raise SystemExit(
            f"pipeline failed (tap {tap.returncode}, target-jsonl {target.returncode}); see {tap_log}\n"
            + target.stderr[-2000:]
        )
    states = [line for line in target.stdout.splitlines() if line.strip()]
    state_file = WORK / f"state-{label}.json"
    state_file.write_text(states[-1] if states else "{}")
    summary = tap_log.read_text().split("tap-wellsky sync summary", 1)[-1]
    return {"state": state_file, "summary": "tap-wellsky sync summary" + summary.rstrip()}


def count_lines(out_dir: Path) -> Counter:
    counts: Counter = Counter()
    for path in out_dir.glob("*.jsonl"):
        with open(path) as fh:
            counts[path.stem] = sum(1 for _ in fh)
    return counts


def http(creds: dict, method: str, path: str, body: dict | None = None) -> dict:
    import httpx

    response = httpx.request(method, creds["base_url"] + path, json=body, timeout=60)
    response.raise_for_status()
    return response.json()


def connection_settings(creds: dict) -> dict:
    """How the tap and the target reach the sandbox: password + TOTP MFA, no client-side rate limit."""
    return {
        "base_url": creds["base_url"],
        "username": creds["username"],
        "password": creds["password"],
        "mfa_method": "totp",
        "totp_secret": creds["totp_secret"],
        "max_requests_per_second": 0,
    }


def write_back(creds: dict) -> None:
    """New patients and appointments from 'another system' written twice: the second run changes nothing."""
    from wellsky_core.schemas import stream_schema

    truth_patients = http(creds, "GET", "/_sandbox/truth/patients")["data"][:25]
    auths = [
        a
        for a in http(creds, "GET", "/_sandbox/truth/authorizations")["data"]
        if a["status"] == "active" and a["unit_type"] == "visit" and a["units_authorized"] - a["units_used"] >= 1
    ]
    lines = [
        json.dumps(
            {"type": "SCHEMA", "stream": "patients", "schema": stream_schema("patients"), "key_properties": ["id"]}
        )
    ]
    for i, p in enumerate(truth_patients):
        rec = {k: v for k, v in p.items() if k not in ("id", "updated_at")}
        rec["mrn"] = f"DEMO{i:05d}"
        lines.append(json.dumps({"type": "RECORD", "stream": "patients", "record": rec}))
    lines.append(
        json.dumps(
            {
                "type": "SCHEMA",
                "stream": "appointments",
                "schema": stream_schema("appointments"),
                "key_properties": ["id"],
            }
        )
    )
    codes = {"SN": "G0299", "PT": "G0151", "OT": "G0152", "ST": "G0153"}
    booked = 0
    for i, auth in enumerate(auths[:12]):
        day = max(auth["start_date"], "2026-11-02")
        if day > auth["end_date"]:
            continue
        code = auth["service_codes"][0]
        base = {
            "patient_id": auth["patient_id"],
            "payer_id": auth["payer_id"],
            "status": "scheduled",
            "discipline": code,
            "service_code": codes.get(code, code),
            "start": f"{day}T15:00:00Z",
            "end": f"{day}T16:00:00Z",
        }
        lines.append(
            json.dumps(
                {"type": "RECORD", "stream": "appointments", "record": {**base, "external_id": f"DEMO-APPT-{i:03d}"}}
            )
        )
        booked += 1
        if booked == 1:  # one booking far beyond what the payer authorized: must be refused, not sent
            left = auth["units_authorized"] - auth["units_used"]
            for j in range(left + 1):
                lines.append(
                    json.dumps(
                        {
                            "type": "RECORD",
                            "stream": "appointments",
                            "record": {**base, "external_id": f"DEMO-OVER-{j:03d}"},
                        }
                    )
                )
    singer = WORK / "writeback.singer.jsonl"
    singer.write_text("\n".join(lines) + "\n")
    config = WORK / "target-wellsky.json"
    config.write_text(
        json.dumps(
            {
                **connection_settings(creds),
                "dead_letter_path": str(WORK / "writeback.dead.jsonl"),
                "audit_log_path": str(WORK / "writeback.audit.jsonl"),
            }
        )
    )
    (WORK / "writeback.dead.jsonl").unlink(missing_ok=True)
    for attempt in ("first run", "same input again"):
        with open(singer) as stdin:
            proc = subprocess.run(
                [str(BIN / "target-wellsky"), "--config", str(config)], stdin=stdin, capture_output=True, text=True
            )
        summary = proc.stderr.split("target-wellsky summary", 1)[-1]
        say(f"-- {attempt} (exit {proc.returncode}: {'some records refused' if proc.returncode == 3 else 'ok'})")
        say("target-wellsky summary" + summary.rstrip())
        if proc.returncode not in (0, 3):
            raise SystemExit(proc.stderr[-3000:])
    dead = [json.loads(x) for x in (WORK / "writeback.dead.jsonl").read_text().splitlines() if x.strip()]
    reasons = Counter(d["reason"].split(":")[0] for d in dead)
    say(f"dead-letter file: {len(dead)} refused record(s) kept with their reason ({dict(reasons)})")


def build_marts(tap_config: Path) -> None:
    """Load every stream into DuckDB with target-duckdb, `dbt build` the package, print a few mart rows."""
    import duckdb

    database = WORK / "warehouse.duckdb"
    target_config = WORK / "target-duckdb.json"
    target_config.write_text(json.dumps({"path": str(database), "default_target_schema": "wellsky"}))
    loader = ROOT / ".venv-target-duckdb" / "bin" / "target-duckdb"
    with open(WORK / "tap-warehouse.log", "w") as log:
        tap = subprocess.Popen(
            [str(BIN / "tap-wellsky"), "--config", str(tap_config)], stdout=subprocess.PIPE, stderr=log
        )
        target = subprocess.run([str(loader), "--config", str(target_config)], stdin=tap.stdout, capture_output=True)
        tap.wait()
    if tap.returncode or target.returncode:
        raise SystemExit(f"warehouse load failed (tap {tap.returncode}, target-duckdb {target.returncode})")
    env = {
        **os.environ,
        "DBT_TARGET": "duckdb",
        "WELLSKY_DUCKDB_PATH": str(database),
        "WELLSKY_PRODUCT": "home_health",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    dbt = subprocess.run(
        [
            str(ROOT / ".venv-dbt" / "bin" / "dbt"),
            "build",
            "--project-dir",
            "transform",
            "--profiles-dir",
            "transform",
            "--target-path",
            str(WORK / "dbt-target"),
            "--log-path",
            str(WORK / "dbt-logs"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    done = [line.split("Done.", 1)[1].strip() for line in dbt.stdout.splitlines() if "Done." in line]
    say(f"dbt build: {done[-1] if done else 'no summary'} (models and data tests)")
    if dbt.returncode:
        raise SystemExit("dbt build failed:\n" + dbt.stdout[-3000:])
    with duckdb.connect(str(database), read_only=True) as conn:
        census = conn.execute(
            "select payer_name, active_patients from main_marts.census order by active_patients desc limit 4"
        ).fetchall()
        auths = conn.execute(
            "select count(*), sum(case when is_at_risk then 1 else 0 end),"
            " sum(case when is_over_booked then 1 else 0 end) from main_marts.authorization_utilisation"
        ).fetchone()
        visits = conn.execute(
            "select count(*), avg(case when is_documented then 1.0 else 0 end), avg(case when is_on_time then 1.0"
            " else 0 end), sum(case when is_missed then 1 else 0 end) from main_marts.visit_completion"
        ).fetchone()
        busiest = conn.execute(
            "select first_name || ' ' || last_name, week_start, visits_scheduled, hours_scheduled"
            " from main_marts.practitioner_workload order by visits_scheduled desc, week_start limit 1"
        ).fetchone()
    say("census (active patients by primary payer): " + ", ".join(f"{p} {n}" for p, n in census))
    say(f"authorizations: {auths[0]}, at risk of over-use {auths[1]}, over-booked {auths[2]}")
    say(f"visits: {visits[0]}, documented {visits[1]:.0%}, on time {visits[2]:.0%}, missed {visits[3]}")
    if busiest:
        say(f"busiest week: {busiest[0]}, week of {busiest[1]}: {busiest[2]} visits, {busiest[3]} h scheduled")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", default="S", help="sandbox size: XS, S (default), M, L")
    args = parser.parse_args()
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir()
    started = time.monotonic()

    step(f"1. start a sandbox WellSky tenant (home health, scale {args.scale}, TOTP MFA on)")
    sandbox, creds = start_sandbox(args.scale)
    try:
        total = sum(creds["counts"].values())
        say(f"tenant at {creds['base_url']} (SFTP on port {creds.get('sftp_port')}), {total:,} synthetic records")

        tap_config = WORK / "tap-wellsky.json"
        tap_config.write_text(json.dumps({**connection_settings(creds), "page_size": 1000}))

        step("2. full sync: tap-wellsky | target-jsonl")
        full = run_pipeline(tap_config, WORK / "output", None, "full")
        say(full["summary"])
        landed = count_lines(WORK / "output")
        say(f"landed in {WORK / 'output'}: " + ", ".join(f"{s} {n:,}" for s, n in sorted(landed.items())))
        expected = creds["counts"]
        ok = all(landed.get(s, 0) == n for s, n in expected.items())
        say(f"check against the tenant: {'every record landed exactly once' if ok else 'MISMATCH ' + str(expected)}")

        step("3. a day of changes in the tenant (1% of records), then an incremental sync from the saved state")
        changed = http(creds, "POST", "/_sandbox/advance", {"fraction": 0.01, "seed": 7})
        say(f"tenant changed {changed['changed']} records: {changed['by_kind']}")
        inc = run_pipeline(tap_config, WORK / "output-incremental", full["state"], "incremental")
        say(inc["summary"])
        got = sum(count_lines(WORK / "output-incremental").values())
        say(f"incremental run moved {got} records (the changes plus records sharing the bookmark's second)")

        step("4. write-back with target-wellsky: new patients and appointments, authorization-checked, twice")
        write_back(creds)

        step("5. warehouse: tap-wellsky | target-duckdb, then the dbt package (transform/) builds the marts")
        build_marts(tap_config)
        if not ok:
            return 1
    finally:
        sandbox.send_signal(signal.SIGTERM)
        try:
            sandbox.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sandbox.kill()
    say(
        f"\ndone in {time.monotonic() - started:.0f}s; everything is under {WORK.relative_to(ROOT)}/ "
        "(outputs, state, logs, audit trail, dead letters)"
    )
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
