"""Home Connect state size: the change memo's bytes per record, the state's size, and the STATE bytes per run.

    python bench/home_connect_state.py [--scale XS] [--faces singer,airbyte] [--dense 1000]

Starts ``wellsky-sandbox serve --product personal_care`` in its own process, then per face (tap-wellsky, the
Singer face; source-wellsky, the Airbyte face): a full sync, then an incremental with its state. For each run it
prints the STATE messages written, their bytes, the biggest one, and the child's CPU seconds; then, for the
final state, each memo's records, encoded bytes and bytes per record, and the CPU of reading and writing it.
``--dense N`` adds an emulated agency the sandbox does not model: N clients with a visit a day over the synced
history (12 months back, 2 ahead) and a care log for each past one, to show the memo at a realistic density.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).absolute().parent))
sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

from home_connect import ROOT, start_sandbox

MEMO_STREAMS = ("appointments", "encounters", "locations")


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_face(face: str, config: dict, tmp: Path, state: Any) -> tuple[dict[str, float], Any]:
    """One sync through ``face``; the STATE figures and the state to resume from."""
    (tmp / "config.json").write_text(json.dumps(config))
    if face == "singer":
        cmd = [sys.executable, "-m", "tap_wellsky.tap", "--config", str(tmp / "config.json")]
    else:
        catalog = tmp / "catalog.json"
        if not catalog.exists():
            out = subprocess.run([sys.executable, "-m", "tap_wellsky.airbyte", "discover", "--config",
                                  str(tmp / "config.json")], capture_output=True, text=True, check=True, cwd=ROOT)
            streams = next(json.loads(line)["catalog"]["streams"] for line in out.stdout.splitlines()
                           if json.loads(line).get("type") == "CATALOG")
            catalog.write_text(json.dumps({"streams": [
                {"stream": s, "sync_mode": "incremental", "destination_sync_mode": "append",
                 "cursor_field": ["updated_at"]} for s in streams]}))
        cmd = [sys.executable, "-m", "tap_wellsky.airbyte", "read", "--config", str(tmp / "config.json"),
               "--catalog", str(catalog)]
    if state is not None:
        (tmp / "state.json").write_text(json.dumps(state))
        cmd += ["--state", str(tmp / "state.json")]
    cpu, started = child_cpu(), time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, cwd=ROOT)
    figures = {"wall": time.monotonic() - started, "cpu": child_cpu() - cpu, "out_bytes": len(proc.stdout),
               "states": 0, "state_bytes": 0, "biggest": 0, "records": 0}
    if proc.returncode != 0:
        raise SystemExit(f"{face} failed ({proc.returncode}):\n{proc.stderr.decode()[-3000:]}")
    last: Any = None
    per_stream: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        message = json.loads(line)
        if message["type"] == "RECORD":
            figures["records"] += 1
        elif message["type"] == "STATE":
            figures["states"] += 1
            figures["state_bytes"] += len(line) + 1
            figures["biggest"] = max(figures["biggest"], len(line) + 1)
            if face == "singer":
                last = message["value"]
            else:
                stream = message["state"]["stream"]
                per_stream[stream["stream_descriptor"]["name"]] = message["state"]
    return figures, (last if face == "singer" else list(per_stream.values()))


def memos_of(face: str, state: Any) -> dict[str, dict]:
    if face == "singer":
        bookmarks = state["bookmarks"]
    else:
        bookmarks = {s["stream"]["stream_descriptor"]["name"]: s["stream"].get("stream_state") for s in state}
    return {name: (bookmarks.get(name) or {}).get("content_hashes") for name in MEMO_STREAMS
            if (bookmarks.get(name) or {}).get("content_hashes")}


def as_version_2(memo: dict) -> dict:
    """The same memo as version 2 stored it (``{key: [20 hex digits, date, person]}``), for the before figures."""
    from wellsky_core.products.personal_care.schedule_memo import records_of

    records = records_of(memo)
    return {**{k: v for k, v in memo.items() if k != "count"}, "v": 2, "records": {
        key: [digest.hex() + "0000", day.isoformat() if day else None, person]
        for key, (digest, day, person) in records.items()}}


def memo_figures(name: str, memo: dict, scope: str | None = None) -> str:
    """Records, encoded bytes and bytes per record, the CPU of reading and writing the memo once, and of the
    deep copy singer-sdk makes of the whole state at every STATE it writes; version 2 of the same for comparison."""
    from wellsky_core.products.personal_care.schedule_memo import ScheduleMemo

    if memo.get("v") != 3:  # a state written before version 3 (run from an older checkout): its size only
        return f"{name:<13}v{memo.get('v')} {len(json.dumps(memo, separators=(',', ':'))):>11,} bytes"
    scope = scope or memo.get("scope") or name
    out = []
    for label, form in (("v2", as_version_2(memo)), ("v3", memo)):
        encoded = json.dumps(form, separators=(",", ":"))
        cpu = time.process_time()
        loaded = ScheduleMemo(json.loads(encoded), scope)
        read_cpu = time.process_time() - cpu
        records = len(loaded.previous)
        loaded.current = dict(loaded.previous)
        cpu = time.process_time()
        if label == "v2":  # what version 2's dump did: one list per record
            again: dict = {**form, "records": {k: [h.hex() + "0000", d.isoformat() if d else None, p]
                                               for k, (h, d, p) in loaded.current.items()}}
        else:
            again = loaded.dump(people=loaded.people or set(), floor=date.min, read_at=datetime.now(UTC),
                                reconciled_at=loaded.reconciled_at, event_seq=loaded.event_seq)
        json.dumps(again, separators=(",", ":"))
        write_cpu = time.process_time() - cpu
        cpu = time.process_time()
        copy.deepcopy(form)
        copy_cpu = time.process_time() - cpu
        per = len(encoded) / records if records else float("nan")
        out.append(f"{name:<13}{label} {records:>7} records {len(encoded):>11,} bytes {per:>5.1f} B/record  "
                   f"read {read_cpu * 1000:>6.0f} ms  write {write_cpu * 1000:>6.0f} ms  "
                   f"deepcopy {copy_cpu * 1000:>6.1f} ms")
    return "\n  ".join(out)


def dense_memo(clients: int, entity: str) -> tuple[dict, str]:
    """A memo as a sync of ``clients`` clients with a visit a day would leave it (keys shaped like the real ones)."""
    today = date(2026, 12, 6)
    first, last = date(2025, 12, 1), date(2027, 2, 28)
    scope = f"{entity}:client:12m"
    from wellsky_core.products.personal_care.schedule_memo import ScheduleMemo

    memo = ScheduleMemo(None, scope)
    serial = 10_000_000
    for client in range(1, clients + 1):
        pid = str(40_000 + client)
        day = first
        series = str(700_000 + client * 3)
        while day <= last:
            if entity == "encounters" and day > today:
                break
            serial += 1
            start = f"{day.isoformat()}T{8 + client % 9:02d}:00:00Z"
            key = f"{series}@{start}" if entity == "appointments" else str(serial)
            record = {"id": key, "patient_id": pid, "start": start, "status": "completed", "n": serial}
            memo.changed(key, record, day, pid)
            day += timedelta(days=1)
    people = {str(40_000 + c) for c in range(1, clients + 1)}
    now = datetime(2026, 12, 6, 8, tzinfo=UTC)
    return memo.dump(people=people, floor=first, read_at=now, reconciled_at=now), scope


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="XS")
    parser.add_argument("--faces", default="singer,airbyte")
    parser.add_argument("--dense", type=int, default=0, help="also an emulated agency of N clients, a visit a day")
    args = parser.parse_args()
    if args.scale != "none":
        with tempfile.TemporaryDirectory(prefix="hc-state-") as tmp_dir:
            tmp = Path(tmp_dir)
            server, info = start_sandbox(args.scale, str(tmp / "tenant"))
            try:
                config = {"product": "personal_care", "base_url": info["base_url"], "client_id": info["client_id"],
                          "client_secret": info["client_secret"], "max_requests_per_second": 0}
                print(f"Home Connect sandbox, scale {args.scale} ({info['counts']['patients']} patients)")
                for face in args.faces.split(","):
                    state = None
                    for label in ("full sync", "incremental"):
                        figures, state_after = run_face(face, config, tmp, state)
                        print(f"{face:<8}{label:<12} {figures['records']:>6} records  {figures['states']:>4} STATE "
                              f"{figures['state_bytes']:>11,} bytes (biggest {figures['biggest']:>9,}; all output "
                              f"{figures['out_bytes']:>11,})  child CPU {figures['cpu']:6.1f} s")
                        state = state_after
                    for name, memo in memos_of(face, state).items():
                        print("  " + memo_figures(name, memo))
            finally:
                server.terminate()
                server.wait(timeout=30)
    if args.dense:
        print(f"emulated agency: {args.dense} clients, a visit a day from 2025-12-01 to 2027-02-28")
        for entity in ("appointments", "encounters"):
            memo, scope = dense_memo(args.dense, entity)
            print("  " + memo_figures(entity, memo, scope))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
