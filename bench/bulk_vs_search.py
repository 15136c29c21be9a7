"""fhir_bulk vs paged FHIR search on the same sandbox tenant: records/s, wall, CPU, peak RSS, requests.

Each run is tap-wellsky as its own child process to /dev/null (rusage from the child), on one freshly generated
``wellsky-sandbox serve`` tenant (home health), every stream routed to the source under test:

1. ``fhir``       full sync by ``_lastUpdated`` search (``_count`` = page_size 1000, ``_revinclude``/``_include``)
2. ``fhir_bulk``  full sync by one system ``$export`` (NDJSON, gzip)
3. both again, incremental from their own final state, after ``POST /_sandbox/advance {"fraction": 0.01}``

Requests are the tap's own count (its summary line) and the sandbox's count of data requests. The sandbox's
bulk job delay is set to 0 and its Retry-After to 1 s (a real server's minimum useful poll interval).

    python bench/bulk_vs_search.py [--scale S|M|L|<patients>]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import BIN, Sandbox, log, run_pipeline, tap_config

REQUESTS = re.compile(r"total (\d+) records; (\d+) pages, (\d+) requests")
SECONDS = re.compile(r"tap-wellsky sync summary \(([\d.]+)s")


def data_requests(sb: Sandbox) -> int:
    with urllib.request.urlopen(f"{sb.base_url}/_sandbox/stats", timeout=60) as response:
        return int(json.loads(response.read())["data_requests"])


def run_tap(sb: Sandbox, work: Path, source: str, state: dict[str, Any] | None, label: str) -> dict[str, Any]:
    config = {**tap_config(sb), "source": source, "fhir_bulk_job_dir": str(work / "bulk-jobs")}
    cfg = work / f"config-{label}.json"
    cfg.write_text(json.dumps(config))
    cmd = [str(BIN / "tap-wellsky"), "--config", str(cfg)]
    if state is not None:
        (work / f"state-{label}.json").write_text(json.dumps(state))
        cmd += ["--state", str(work / f"state-{label}.json")]
    out = work / f"out-{label}.jsonl"
    before = data_requests(sb)
    measure = run_pipeline([cmd], stdout_path=out)
    if measure.returncode:
        raise RuntimeError(f"{label} failed: {measure.stderr[-1500:]}")
    summary = REQUESTS.search(measure.stderr)
    states = [
        json.loads(line)["value"] for line in out.read_text().splitlines() if '"type":"STATE"' in line.replace(" ", "")
    ]
    records = int(summary[1]) if summary else 0
    return {
        "run": label,
        "records": records,
        "wall_s": round(measure.wall_s, 2),
        "rec_per_s": round(records / measure.wall_s) if measure.wall_s else 0,
        "cpu_s": round(measure.cpu_s, 2),
        "rss_mb": measure.rss_mb,
        "tap_requests": int(summary[3]) if summary else None,
        "server_requests": data_requests(sb) - before,
        "state": states[-1] if states else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="S", help="sandbox scale (S, M, L or a patient count)")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="wellsky-bulk-bench-") as tmp:
        work = Path(tmp)
        sb = Sandbox(args.scale, work).start()
        try:
            sb.post("/_sandbox/bulk", {"delay_seconds": 0, "retry_after_seconds": 1})
            full = {source: run_tap(sb, work, source, None, f"{source}-full") for source in ("fhir", "fhir_bulk")}
            rows += full.values()
            log(f"advance: {sb.post('/_sandbox/advance', {'fraction': 0.01, 'seed': 5})}")
            for source in ("fhir", "fhir_bulk"):
                rows.append(run_tap(sb, work, source, full[source]["state"], f"{source}-incremental"))
        finally:
            sb.stop()
    header = f"{'run':<22}{'records':>9}{'wall s':>9}{'rec/s':>9}{'cpu s':>8}{'RSS MB':>8}{'tap req':>9}{'srv req':>9}"
    print(f"scale {args.scale}: fhir_bulk vs paged FHIR search (tap-wellsky -> /dev/null)")
    print(header)
    for r in rows:
        print(
            f"{r['run']:<22}{r['records']:>9}{r['wall_s']:>9}{r['rec_per_s']:>9}{r['cpu_s']:>8}{r['rss_mb']:>8}"
            f"{r['tap_requests']!s:>9}{r['server_requests']:>9}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
