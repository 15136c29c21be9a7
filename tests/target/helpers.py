"""Build Singer input for the target from a sandbox's own data, and run the target as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from wellsky_core.schemas import stream_schema

TARGET = [sys.executable, "-m", "target_wellsky.target"]


def singer_lines(stream: str, records: list[dict[str, Any]]) -> list[str]:
    key = ["id"]
    lines = [json.dumps({"type": "SCHEMA", "stream": stream, "schema": stream_schema(stream), "key_properties": key})]
    lines += [json.dumps({"type": "RECORD", "stream": stream, "record": r}) for r in records]
    return lines


def new_patients(sb: Any, n: int, prefix: str = "NEW") -> list[dict[str, Any]]:
    """Patients that do not exist yet: a copy of the tenant's first ones under fresh MRNs and no id."""
    out = []
    existing = sb.truth("patients")
    for i in range(n):
        rec = {k: v for k, v in existing[i % len(existing)].items() if k not in ("id", "updated_at")}
        rec["mrn"] = f"{prefix}{i:06d}"
        out.append(rec)
    return out


def bookable_appointments(sb: Any, n: int, prefix: str = "EXT") -> list[dict[str, Any]]:
    """New appointments that fit an active authorization with room left (one visit each)."""
    auths = [
        a
        for a in sb.truth("authorizations")
        if a["status"] == "active" and a["unit_type"] == "visit" and a["units_authorized"] - a["units_used"] >= 2
    ]
    out: list[dict[str, Any]] = []
    for i, auth in enumerate(auths):
        if len(out) >= n:
            break
        day = max(date.fromisoformat(auth["start_date"]), date(2026, 11, 1)) + timedelta(days=1)
        if day > date.fromisoformat(auth["end_date"]):
            continue
        code = auth["service_codes"][0]
        discipline = code if code in ("SN", "PT", "OT", "ST", "MSW", "HHA") else "HHA"
        service = {"SN": "G0299", "PT": "G0151", "OT": "G0152", "ST": "G0153"}.get(discipline, code)
        start = datetime(day.year, day.month, day.day, 15, 0)
        out.append(
            {
                "external_id": f"{prefix}{i:06d}",
                "patient_id": auth["patient_id"],
                "payer_id": auth["payer_id"],
                "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "end": (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "status": "scheduled",
                "discipline": discipline,
                "service_code": service,
            }
        )
    assert len(out) == n, f"sandbox has only {len(out)} bookable authorizations"
    return out


def run_target(
    tmp: Path, config: dict[str, Any], lines: list[str], *, name: str = "run"
) -> subprocess.CompletedProcess:
    cfg = tmp / f"{name}-config.json"
    cfg.write_text(json.dumps(config))
    return subprocess.run(
        [*TARGET, "--config", str(cfg)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=240
    )


def target_config(sb: Any, tmp: Path, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": sb.base_url,
        "username": sb.username,
        "password": sb.password,
        "max_requests_per_second": 0,
        "dead_letter_path": str(tmp / "dead.jsonl"),
        "audit_log_path": str(tmp / "audit.jsonl"),
        **extra,
    }
