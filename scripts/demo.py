"""The demo: per product, a sandbox tenant -> tap-wellsky -> target-jsonl over the surfaces that product really has,
an incremental run, a write-back round trip where the product has one, and a DuckDB warehouse with the dbt marts.

    scripts/demo                          # personal care (Home Connect), the default
    scripts/demo --product home_health    # or hospice, or all (the three in turn)

Run through ``scripts/demo`` (which sets up the virtualenvs first). Everything happens under ``.demo/<product>/``.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO = ROOT / ".demo"
WORK = DEMO  # the current product's directory (set per product in main)

PLANS: dict[str, dict[str, Any]] = {
    "personal_care": {
        "title": "personal care through Home Connect, WellSky's partner API (OAuth client credentials)",
        "scale": "XS",
        "login": "client_credentials",
        "settings": {"source": "api", "home_connect_history_months": 26},  # the tenant's two years of shifts
        "writes": True,
        "incremental_note": " (Home Connect has no change filter for shifts and care logs: they are re-read for "
        "the trailing home_connect_trailing_months (2) and only changed ones are sent; older reschedules wait "
        "for a full re-read)",
    },
    "home_health": {
        "title": "home health (no partner API) through HL7 v2 feeds over SFTP (patients, visits, encounters) and "
        "the Kinnser web portal in headless Chromium (claims, unbilled)",
        "scale": "30",
        "login": "session+sftp",
        "settings": {
            "source": "hl7_sftp",
            "stream_sources": {"claims": "portal", "unbilled": "portal"},
            "agency_timezone": "America/Chicago",
            "portal_state_path": "{work}/state/portal.json",  # the last snapshot: the next walk sends only changes
            "hl7_timezone": "America/Chicago",
            "max_parallel_streams": 1,  # the HL7 channel's file cache is per stream thread
        },
        "incremental_note": " (the portal shows no change times: a walk stamps what it first sees with one time, "
        "and the inclusive bookmark sends that second again; loaders merge on id)",
        "writes": False,
    },
    "hospice": {
        "title": "hospice through FHIR Bulk Data ($export, NDJSON) as the interop API offers it",
        "scale": "XS",
        "login": "client_credentials",
        "settings": {"source": "fhir_bulk"},
        "writes": False,
    },
}
"""What each product really has (docs/facts/): the surface the demo reads it through."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n== {title}")


def start_sandbox(scale: str, product: str) -> tuple[subprocess.Popen, dict]:
    ready = WORK / "sandbox.json"
    ready.unlink(missing_ok=True)
    cmd = [
        str(BIN / "wellsky-sandbox"),
        "serve",
        "--scale",
        scale,
        "--product",
        product,
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
    began = time.monotonic()
    singer = WORK / f"{label}.singer.jsonl"  # kept: the warehouse step loads the same messages
    with open(tap_log, "w") as log, open(singer, "w") as out:
        tap = subprocess.run(tap_cmd, stdout=out, stderr=log)
    with open(singer) as messages:
        target = subprocess.run(
            [str(loader), "--config", str(target_config)], stdin=messages, capture_output=True, text=True
        )
    if tap.returncode or target.returncode:
        raise SystemExit(
            f"pipeline failed (tap {tap.returncode}, target-jsonl {target.returncode}); see {tap_log}\n"
            + target.stderr[-2000:]
        )
    states = [line for line in target.stdout.splitlines() if line.strip()]
    state_file = WORK / f"state-{label}.json"
    state_file.write_text(states[-1] if states else "{}")
    summary = tap_log.read_text().split("tap-wellsky sync summary", 1)[-1]
    return {"state": state_file, "summary": "tap-wellsky sync summary" + summary.rstrip(),
            "seconds": time.monotonic() - began}


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


def connection_settings(creds: dict, product: str) -> dict:
    """How the tap and the target reach the sandbox as that product's agencies do: Home Connect with client
    credentials, the FHIR interop API with OAuth client credentials, HL7 files over SFTP (pinned host key)."""
    settings: dict[str, Any] = {"base_url": creds["base_url"], "product": product, "max_requests_per_second": 0}
    if PLANS[product]["login"] == "session+sftp":
        settings.update(
            username=creds["username"], password=creds["password"], sftp_host=creds["sftp_host"],
            sftp_port=creds["sftp_port"], sftp_username=creds["sftp_username"],
            sftp_password=creds["sftp_password"], sftp_host_key=creds["sftp_host_key"],
        )
    else:
        settings.update(
            auth_method="oauth_client_credentials", client_id=creds["client_id"], client_secret=creds["client_secret"]
        )
    return settings


def build_marts(product: str) -> None:
    """Load what the full and incremental syncs sent into DuckDB with target-duckdb, `dbt build` the package,
    print a few mart rows."""
    import duckdb

    database = WORK / "warehouse.duckdb"
    target_config = WORK / "target-duckdb.json"
    target_config.write_text(json.dumps({"path": str(database), "default_target_schema": "wellsky"}))
    loader = ROOT / ".venv-target-duckdb" / "bin" / "target-duckdb"
    for label in ("full", "incremental"):  # the two syncs' messages, merged on each stream's key (upserts)
        with open(WORK / f"{label}.singer.jsonl") as messages:
            target = subprocess.run([str(loader), "--config", str(target_config)], stdin=messages, capture_output=True)
        if target.returncode:
            raise SystemExit(f"warehouse load failed (target-duckdb {target.returncode}): {target.stderr[-2000:]!r}")
    env = {
        **os.environ,
        "DBT_TARGET": "duckdb",
        "WELLSKY_DUCKDB_PATH": str(database),
        "WELLSKY_PRODUCT": product,
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
    if auths[0]:
        say(f"authorizations: {auths[0]}, at risk of over-use {auths[1]}, over-booked {auths[2]}")
    else:
        say("authorizations: none read from this product's surface (an empty table, not a failure)")
    say(f"visits: {visits[0]}, documented {visits[1]:.0%}, on time {visits[2]:.0%}, missed {visits[3]}")
    if busiest:
        who = busiest[0] or "a practitioner this surface does not list"
        say(f"busiest week: {who}, week of {busiest[1]}: {busiest[2]} visits, {busiest[3]} h scheduled")


def write_back_patients(creds: dict, product: str) -> None:
    """New clients from 'another system' written twice through the product's write API: the second run changes
    nothing (matched on name and birth date, idempotent)."""
    from wellsky_core.schemas import stream_schema

    truth = http(creds, "GET", "/_sandbox/truth/patients")["data"][:10]
    lines = [json.dumps({"type": "SCHEMA", "stream": "patients", "schema": stream_schema("patients"),
                         "key_properties": ["id"]})]
    for i, p in enumerate(truth):
        rec = {k: v for k, v in p.items() if k not in ("id", "updated_at")}
        rec.update(last_name=f"Demo{i:02d}", mrn=f"DEMO{i:05d}")
        lines.append(json.dumps({"type": "RECORD", "stream": "patients", "record": rec}))
    singer = WORK / "writeback.singer.jsonl"
    singer.write_text("\n".join(lines) + "\n")
    config = WORK / "target-wellsky.json"
    config.write_text(json.dumps({**connection_settings(creds, product),
                                  "dead_letter_path": str(WORK / "writeback.dead.jsonl"),
                                  "audit_log_path": str(WORK / "writeback.audit.jsonl")}))
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


def run_product(product: str, scale: str) -> dict[str, Any]:
    """The demo for one product; returns the figures of the final summary."""
    global WORK
    WORK = DEMO / product
    WORK.mkdir(parents=True)
    plan = PLANS[product]
    started = time.monotonic()
    step(f"{product} 1. start a sandbox tenant: {plan['title']}, scale {scale}")
    sandbox, creds = start_sandbox(scale, product)
    result: dict[str, Any] = {"product": product}
    try:
        say(f"tenant at {creds['base_url']}; the tenant holds: "
            + ", ".join(f"{s} {n:,}" for s, n in creds["counts"].items() if n))

        tap_config = WORK / "tap-wellsky.json"
        settings = {k: v.format(work=WORK) if isinstance(v, str) else v for k, v in plan["settings"].items()}
        tap_config.write_text(json.dumps({**connection_settings(creds, product), **settings,
                                          "page_size": 1000, "data_quality_report_path": str(WORK / "quality.json"),
                                          "state_dir": str(WORK / "state")}))

        step(f"{product} 2. full sync: tap-wellsky | target-jsonl")
        full = run_pipeline(tap_config, WORK / "output", None, "full")
        say(full["summary"])
        landed = count_lines(WORK / "output")
        say(f"landed in {(WORK / 'output').relative_to(ROOT)}: "
            + ", ".join(f"{s} {n:,}" for s, n in sorted(landed.items())))
        listed = {line.split()[0] for line in full["summary"].splitlines() if line.startswith("  ") and line.split()}
        served = {s: n for s, n in creds["counts"].items() if s in landed or s in listed}
        same = [s for s, n in served.items() if landed.get(s, 0) == n]
        differ = {s: f"{landed.get(s, 0):,} of {n:,}" for s, n in served.items() if landed.get(s, 0) != n}
        say(f"check against the tenant: {', '.join(same) or 'no stream'} landed exactly once"
            + (f"; partly read by this surface: {differ}" if differ else ""))
        result.update(records=sum(landed.values()), streams=len(landed), seconds_full=full["seconds"])

        step(f"{product} 3. a day of changes in the tenant (1% of records), then an incremental sync")
        changed = http(creds, "POST", "/_sandbox/advance", {"fraction": 0.01, "seed": 7})
        say(f"tenant changed {changed['changed']} records: {changed['by_kind']}")
        inc = run_pipeline(tap_config, WORK / "output-incremental", full["state"], "incremental")
        say(inc["summary"])
        moved = sum(count_lines(WORK / "output-incremental").values())
        say(f"incremental run moved {moved} records" + plan.get("incremental_note", ""))
        result.update(incremental=moved)

        if plan["writes"]:
            step(f"{product} 4. write-back with target-wellsky: new clients through the product's write API, twice")
            write_back_patients(creds, product)
        else:
            step(f"{product} 4. write-back: skipped ({product} agencies have no write API; see docs/guide.md)")

        step(f"{product} 5. warehouse: both syncs' messages into DuckDB (target-duckdb), then the dbt marts")
        build_marts(product)
        result["seconds"] = time.monotonic() - started
        return result
    finally:
        sandbox.send_signal(signal.SIGTERM)
        try:
            sandbox.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sandbox.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--product", default="personal_care", choices=[*PLANS, "all"],
                        help="which product to show (default personal_care; all: the three in turn)")
    parser.add_argument("--scale", default=None,
                        help="sandbox size: XS, S, M, L or a patient count (default: XS; home health 30, as the "
                        "portal walk reads every patient's pages)")
    args = parser.parse_args()
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir()
    started = time.monotonic()
    products = list(PLANS) if args.product == "all" else [args.product]
    results = [run_product(product, args.scale or PLANS[product]["scale"]) for product in products]
    say("\n== summary")
    for r in results:
        say(f"  {r['product']:<14} {r['streams']} streams, {r['records']:,} records in {r['seconds_full']:.0f}s "
            f"(full sync), {r['incremental']} on the incremental run; {r['seconds']:.0f}s in all")
    say(f"done in {time.monotonic() - started:.0f}s; everything is under {DEMO.relative_to(ROOT)}/<product>/ "
        "(outputs, state, logs, data-quality report, warehouse)")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
