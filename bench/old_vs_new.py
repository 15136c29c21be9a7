"""Old vs new tap-wellsky on the same tenant, interleaved: client CPU per run, and the records compared.

``python bench/old_vs_new.py --old bb1b024 --config tap.json --runs 5`` archives the ``--old`` commit into a
temporary directory, byte-compiles both trees (a wheel install is compiled; without it every start compiles
the project from source, which ``PYTHONDONTWRITEBYTECODE=1`` makes the case here), then runs the tap from each
tree in turn with this venv. A loaded shared machine makes wall time noise; the figures are the child's
CPU seconds (``getrusage``), minimum and median, and CPU per 10k records. Each run's RECORD messages are hashed
per stream in emitted order (``time_extracted`` dropped: a clock); the script exits 1 if any two runs differ,
so a speed-up that changes one record cannot pass unnoticed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wellsky_core", "tap_wellsky", "target_wellsky")


def archive(ref: str, into: Path) -> Path:
    tar = into / "old.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(tar), ref], check=True)
    with tarfile.open(tar) as t:
        t.extractall(into / "old", filter="data")
    return into / "old"


def compile_tree(root: Path) -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", *PACKAGES], cwd=root, check=True,
                   stdout=subprocess.DEVNULL)


def check_imports_from(root: Path) -> None:
    """The child of ``root`` must import that tree's code (not the editable install's, not the caller's)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    where = subprocess.run([sys.executable, "-c", "import wellsky_core; print(wellsky_core.__file__)"], env=env,
                           cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"a run from {root} would import {where}")


def run_once(root: Path, config: str, state: str | None, state_home: Path) -> tuple[float, float, int, str]:
    """CPU s, wall s, records and the per-stream digest of one tap run from ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root), XDG_STATE_HOME=str(state_home))
    argv = [sys.executable, "-c", "from tap_wellsky.tap import main; main()", "--config", str(Path(config).resolve())]
    if state:
        argv += ["--state", str(Path(state).resolve())]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    # cwd=root: ``python -c`` puts the working directory first on sys.path, ahead of PYTHONPATH, so run from
    # another tree the child would import that tree's code
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=root)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"the tap from {root} exited {done.returncode}")
    streams: dict[str, list[bytes]] = {}
    for line in done.stdout.splitlines():
        if b'"RECORD"' not in line[:20]:
            continue
        message = orjson.loads(line)
        message.pop("time_extracted", None)
        streams.setdefault(message["stream"], []).append(orjson.dumps(message))
    digest = hashlib.sha256(b"\n".join(b"\n".join(streams[s]) for s in sorted(streams))).hexdigest()[:16]
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return cpu, wall, sum(map(len, streams.values())), digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="git ref of the old build")
    parser.add_argument("--config", required=True)
    parser.add_argument("--state")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="old-vs-new-") as tmp:
        builds = {"old": archive(args.old, Path(tmp)), "new": ROOT}
        for root in builds.values():
            compile_tree(root)
            check_imports_from(root)
        results: dict[str, list[tuple[float, float, int, str]]] = {name: [] for name in builds}
        for i in range(args.runs):
            for name, root in builds.items():
                row = run_once(root, args.config, args.state, Path(tmp) / f"state-{name}")
                results[name].append(row)
                print(f"{name} run {i}: cpu {row[0]:.2f} s, wall {row[1]:.2f} s, {row[2]} records, "
                      f"records {row[3]}, load {os.getloadavg()[0]:.1f}", flush=True)
    for name, rows in results.items():
        cpus = [r[0] for r in rows]
        print(f"{name}: cpu min {min(cpus):.2f} median {statistics.median(cpus):.2f} s; "
              f"per 10k records {min(cpus) / rows[0][2] * 1e4:.2f} s")
    digests = {r[3] for rows in results.values() for r in rows}
    print("records identical in every run" if len(digests) == 1 else f"RECORDS DIFFER: {sorted(digests)}")
    sys.exit(0 if len(digests) == 1 else 1)


if __name__ == "__main__":
    main()
