"""Home Connect (personal_care) sync cost: requests per synced record and wall time at the vendor's 100 req/s.

    python bench/home_connect.py [--scale S] [--rate 100]

Starts ``wellsky-sandbox serve --product personal_care`` in its own process, then:
1. a full ``tap-wellsky`` sync (subprocess, records to /dev/null) at ``max_requests_per_second`` = rate;
2. the same sync again with the state of the first (nothing changed: known clients over the re-read horizon);
3. the same again with ``home_connect_reconcile_days: 0`` (the weekly reconcile: every client in full);
4. per stream, the channel in-process with its own request counter, for the requests-per-record table.
Requests per run are the tenant's own meter (``/_sandbox/stats``, every request including the token); the
per-stream lines are the tap's run-end reports (docs/home-connect-incremental.md).
Prints figures; asserts nothing (speed targets live here, not in unit tests).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).absolute().parent.parent


def start_sandbox(scale: str, data_dir: str) -> tuple[subprocess.Popen[str], dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "wellsky_sandbox.cli", "serve", "--product", "personal_care", "--scale", scale,
         "--port", "0", "--data-dir", data_dir],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    return proc, info


def tap_run(config: dict, tmp: Path, state: dict | None = None) -> tuple[float, Counter[str], dict | None, str]:
    (tmp / "config.json").write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "tap_wellsky.tap", "--config", str(tmp / "config.json")]
    if state is not None:
        (tmp / "state.json").write_text(json.dumps(state))
        cmd += ["--state", str(tmp / "state.json")]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"tap-wellsky failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    counts: Counter[str] = Counter()
    last_state = None
    for line in proc.stdout.splitlines():
        message = json.loads(line)
        if message["type"] == "RECORD":
            counts[message["stream"]] += 1
        elif message["type"] == "STATE":
            last_state = message["value"]
    reports = [line[line.find(m.group(0)):] for line in proc.stderr.splitlines()
               if (m := re.search(r"(appointments|encounters): (re-read|reconcile)", line))]
    summary = "\n".join(reports) + "\n" + proc.stderr[proc.stderr.find("tap-wellsky sync summary"):]
    return wall, counts, last_state, summary


def tenant_meter(base_url: str) -> dict:
    """The tenant's soft-limit meter: requests answered so far, seconds over the vendor's limit, peak rate."""
    import httpx

    return dict(httpx.get(base_url + "/_sandbox/stats", timeout=30).json()["homeconnect"])


def measured(config: dict, tmp: Path, state: dict | None, label: str) -> dict | None:
    """One tap run: its records, wall time, tenant requests and the channel's per-stream run-end reports."""
    before = tenant_meter(config["base_url"])
    wall, counts, new_state, summary = tap_run(config, tmp, state)
    after = tenant_meter(config["base_url"])
    requests = int(after["requests"]) - int(before["requests"])
    print(f"\n{label}: {sum(counts.values())} records, {requests} requests, {wall:.1f} s wall "
          f"(tenant: {int(after.get('overruns', 0)) - int(before.get('overruns', 0))} seconds over its limit, "
          f"peak {after.get('peak_per_second')}/s so far)")
    for line in summary.splitlines():
        if line.strip():
            print("  " + line.strip())
    return new_state


def per_stream(config: dict) -> list[tuple[str, int, int, float]]:
    from wellsky_core.config import WellSkyConfig
    from wellsky_core.connection import Connection
    from wellsky_core.models import ENTITIES
    from wellsky_core.products import dialect

    rows = []
    for stream in (s for s in ENTITIES if s in dialect("personal_care").streams):  # the dialect's streams
        connection = Connection(WellSkyConfig.load(config, env={}))
        started = time.monotonic()
        records = sum(1 for _ in connection.channel(stream).iter_records(stream, None))
        requests = connection.metrics.snapshot()["requests"] - 1  # minus the token request
        rows.append((stream, records, requests, time.monotonic() - started))
        connection.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="S")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--skip-per-stream", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hc-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        server, info = start_sandbox(args.scale, str(tmp / "tenant"))
        try:
            config = {
                "product": "personal_care",
                "base_url": info["base_url"],
                "client_id": info["client_id"],
                "client_secret": info["client_secret"],
                "max_requests_per_second": args.rate,
            }
            print(f"Home Connect sandbox, scale {args.scale} ({info['counts']['patients']} patients), "
                  f"{args.rate:g} req/s, defaults: 12 months of history + 2 ahead, fan-out per client, task logs on",
                  flush=True)
            state = measured(config, tmp, None, "full sync")
            measured(config, tmp, state, "incremental sync, nothing changed (reconcile not due)")
            measured({**config, "home_connect_reconcile_days": 0}, tmp, state, "incremental sync with the reconcile")
            if not args.skip_per_stream:
                print(f"\n{'stream':<16}{'records':>9}{'requests':>10}{'req/rec':>9}{'seconds':>9}")
                all_records = all_requests = 0
                for stream, records, requests, seconds in per_stream(config):
                    all_records += records
                    all_requests += requests
                    ratio = requests / records if records else float("nan")
                    print(f"{stream:<16}{records:>9}{requests:>10}{ratio:>9.2f}{seconds:>9.1f}")
                print(f"{'total':<16}{all_records:>9}{all_requests:>10}{all_requests / max(all_records, 1):>9.2f}")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
