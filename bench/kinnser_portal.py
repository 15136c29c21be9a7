"""Kinnser portal walk speed: patients per second through the clinical walk, before vs after, in one run.

    python bench/kinnser_portal.py [--patients 40] [--latency 150ms] [--before-ref bee13e7] [--tabs 1,default]

Starts ``wellsky-sandbox serve --product home_health`` in its own process (``--latency`` delays every page like
a WAN link), then times the portal channel's clinical walk (Patient Manager, every patient's Episode Manager
pages, the Past Due and Schedule Deviation reports, for every office) in a child process per variant:

- ``before``: the channel as it was at ``--before-ref`` (``git archive`` of its ``wellsky_core`` into a temp
  directory, put first on ``sys.path``): today's rate, measured in the same run on the same sandbox;
- ``tabs=N``: the current channel with ``portal_tabs`` N; ``default``: the current channel with default settings.

Per variant it prints patients, walk seconds, patients/s, seconds per patient, the speed-up over ``before``,
the peak RSS of the Python process (its ``VmHWM``, bench/peak_rss.py) and the peak PSS of its whole process tree
(Playwright's driver and Chromium, sampled every 0.2 s), and the 1-minute load average when the run started. Asserts
nothing: speed figures live here, not in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from peak_rss import vm_hwm_kb  # bench/ is this script's directory, first on sys.path

ROOT = Path(__file__).absolute().parent.parent
BEFORE_REF = "bee13e7"  # the last commit with the one-tab walk (issue 27 item 3 started after it)


def start_sandbox(patients: int, latency: str, data_dir: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    cmd = [
        sys.executable,
        "-m",
        "wellsky_sandbox.cli",
        "serve",
        "--product",
        "home_health",
        "--scale",
        str(patients),
        "--port",
        "0",
        "--sftp-port",
        "0",
        "--data-dir",
        str(data_dir),
    ]
    if latency:
        cmd += ["--latency", latency]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def _tree_pss_kb(root: int) -> int:
    """Proportional set size of ``root`` and every descendant (Linux /proc), in kB: Chromium's processes share
    most of their pages, so summing their RSS would count the shared pages once per process."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
        except OSError:
            pass
        todo += children.get(pid, [])
    return total


def measure(variant: str, info: dict[str, Any], core_path: str | None, tabs: int | None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (core_path, str(ROOT)) if p)}
    args = [sys.executable, __file__, "--child", json.dumps({"info": info, "tabs": tabs})]
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(args, stdout=out, env=env, cwd=ROOT)
        peak = own_peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak, own_peak
            while not done.is_set():
                peak = max(peak, _tree_pss_kb(proc.pid))
                own_peak = max(own_peak, vm_hwm_kb(proc.pid) or 0)  # ru_maxrss would carry this driver's size in
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, _ = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed ({proc.returncode}); its output:\n{text[-2000:]}")
    result = json.loads(text.strip().splitlines()[-1])
    return {
        "variant": variant,
        **result,
        "patients_per_s": result["patients"] / result["walk_s"],
        "s_per_patient": result["walk_s"] / result["patients"],
        "rss_mb": own_peak / 1024,
        "tree_pss_mb": peak / 1024,
        "load": load,
    }


def child(spec: dict[str, Any]) -> None:
    """One walk in this process: the clinical group of the portal channel, every office, fresh state."""
    from wellsky_core.channels import open_channel
    from wellsky_core.config import WellSkyConfig

    info = spec["info"]
    with tempfile.TemporaryDirectory() as tmp:
        settings: dict[str, Any] = {
            "base_url": info["base_url"],
            "username": info["username"],
            "password": info["password"],
            "chromium_path": "/usr/bin/chromium",
            "agency_timezone": "America/Chicago",
            "portal_state_path": str(Path(tmp) / "state.json"),
            "source": "portal",
        }
        if spec["tabs"] is not None:
            settings["portal_tabs"] = spec["tabs"]
        channel = open_channel("portal", WellSkyConfig.load(settings, env={}), None, "home_health")
        started = time.monotonic()
        try:
            patients = sum(1 for _ in channel.iter_records("patients", None))
            episodes = sum(1 for _ in channel.iter_records("episodes", None))
            visits = sum(1 for _ in channel.iter_records("appointments", None))
        finally:
            channel.close()
        walk = time.monotonic() - started
        stats = dict(channel.browser.stats)  # type: ignore[attr-defined]
    print(
        json.dumps({"patients": patients, "episodes": episodes, "appointments": visits, "walk_s": walk, "stats": stats})
    )


def before_core(ref: str, into: Path) -> str:
    """``wellsky_core`` as it was at ``ref``, extracted under ``into`` (for ``sys.path``)."""
    archive = subprocess.run(["git", "archive", ref, "wellsky_core"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return str(into)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--latency", default="", help="e.g. 150ms (default: loopback)")
    parser.add_argument("--before-ref", default=BEFORE_REF, help="git ref of the 'before' channel ('' to skip)")
    parser.add_argument("--tabs", default="1,default", help="comma list of portal_tabs values, or 'default'")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    with tempfile.TemporaryDirectory(prefix="bench-kinnser-") as tmp:
        proc, info = start_sandbox(args.patients, args.latency, Path(tmp) / "tenant")
        try:
            variants: list[tuple[str, str | None, int | None]] = []
            if args.before_ref:
                variants.append((f"before ({args.before_ref})", before_core(args.before_ref, Path(tmp)), None))
            for tabs in args.tabs.split(","):
                if tabs == "default":
                    variants.append(("after, default settings", None, None))
                else:
                    variants.append((f"after, portal_tabs={int(tabs)}", None, int(tabs)))
            rows = [measure(name, info, core, tabs) for name, core, tabs in variants]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    base = rows[0]["patients_per_s"] if args.before_ref else None
    where = f"latency {args.latency}" if args.latency else "loopback"
    print(f"Kinnser portal clinical walk, home_health, {args.patients}-patient scale, {where}, {os.cpu_count()} CPUs")
    head = (
        f"{'variant':<28}{'patients':>9}{'walk s':>8}{'pat/s':>7}{'s/pat':>7}{'x before':>9}"
        f"{'RSS MB':>8}{'tree PSS':>9}{'load':>6}  logins/restarts"
    )
    print(head)
    for r in rows:
        speedup = f"{r['patients_per_s'] / base:>9.2f}" if base else f"{'-':>9}"
        print(
            f"{r['variant']:<28}{r['patients']:>9}{r['walk_s']:>8.1f}{r['patients_per_s']:>7.2f}"
            f"{r['s_per_patient']:>7.2f}{speedup}{r['rss_mb']:>8.0f}{r['tree_pss_mb']:>9.0f}{r['load']:>6.1f}"
            f"  {r['stats'].get('logins')}/{r['stats'].get('restarts')}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
