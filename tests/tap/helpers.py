"""Run the tap as users do (a subprocess speaking Singer on stdout) and read its messages."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

TAP = [sys.executable, "-m", "tap_wellsky.tap"]


def run_tap(
    tmp: Path,
    config: dict[str, Any],
    *,
    state: dict | None = None,
    catalog: dict | None = None,
    args: tuple[str, ...] = (),
    check: bool = True,
) -> subprocess.CompletedProcess:
    cfg = tmp / "tap-config.json"
    cfg.write_text(json.dumps(config))
    cmd = [*TAP, "--config", str(cfg), *args]
    if state is not None:
        (tmp / "state.json").write_text(json.dumps(state))
        cmd += ["--state", str(tmp / "state.json")]
    if catalog is not None:
        (tmp / "catalog.json").write_text(json.dumps(catalog))
        cmd += ["--catalog", str(tmp / "catalog.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"tap failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def messages(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def records_by_stream(msgs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in msgs:
        if m["type"] == "RECORD":
            out[m["stream"]].append(m["record"])
    return out


def last_state(msgs: list[dict[str, Any]]) -> dict[str, Any] | None:
    states = [m["value"] for m in msgs if m["type"] == "STATE"]
    return states[-1] if states else None


def bookmarks(state: dict[str, Any]) -> dict[str, str]:
    return {
        s: v.get("replication_key_value")
        for s, v in state.get("bookmarks", {}).items()
        if v.get("replication_key_value")
    }


def sandbox_config(sb: Any, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": sb.base_url,
        "username": sb.username,
        "password": sb.password,
        "page_size": 100,
        "max_requests_per_second": 0,
        **extra,
    }
