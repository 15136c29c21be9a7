"""Two runs of one tenant at once: a scheduled tap sync meets a source-wellsky read (or a backfill, or a target).

The request budget is the tenant's. Before, each process paced itself at the whole budget: two syncs of a scale-M
tenant at once put 190 requests into one second of a 100 requests/s budget (329 over). Now the processes share it
(``wellsky_core/http/tenant_share.py``), and the tenant's own meter is the judge: the sandbox counts every
request in each of its seconds. Both runs must still deliver every record."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from wellsky_core.models import MODELED_ENTITIES

from .conftest import (
    SUBPROCESS_TIMEOUT,
    assert_no_traceback,
    child_env,
    parse_messages,
    record_set,
    tap_args,
    tap_config,
    truth_set,
    write_json,
)

SOURCE_CMD = [sys.executable, "-m", "tap_wellsky.airbyte"]
BUDGET = 20


def _source_records(stdout: str) -> set[tuple[str, str]]:
    """The Airbyte RECORD messages' keys, as ``record_set`` keys Singer ones."""
    singer = [
        {"type": "RECORD", "stream": m["record"]["stream"], "record": m["record"]["data"]}
        for m in parse_messages(stdout)
        if m.get("type") == "RECORD"
    ]
    return record_set(singer)


def test_a_tap_and_a_source_reading_one_tenant_at_once_stay_within_its_budget(
    tmp_path: Path, sandbox_factory: Any
) -> None:
    sb = sandbox_factory(scale=100, rate_limit=BUDGET, sftp_port=None)
    config = tap_config(sb, page_size=20, max_requests_per_second=BUDGET)
    catalog = {
        "streams": [
            {
                "stream": {"name": name, "json_schema": {}, "supported_sync_modes": ["full_refresh"]},
                "sync_mode": "full_refresh",
                "destination_sync_mode": "overwrite",
            }
            for name in MODELED_ENTITIES
        ]
    }
    source = [
        *SOURCE_CMD, "read",
        "--config", str(write_json(tmp_path / "source-config.json", config)),
        "--catalog", str(write_json(tmp_path / "catalog.json", catalog)),
    ]
    runs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        for cmd in (tap_args(tmp_path, config), source)
    ]
    (tap_out, tap_err), (source_out, source_err) = (run.communicate(timeout=SUBPROCESS_TIMEOUT) for run in runs)
    assert [run.returncode for run in runs] == [0, 0], (tap_err[-2000:], source_out[-2000:])
    assert_no_traceback(tap_err, "tap-wellsky")
    assert_no_traceback(source_err, "source-wellsky")

    meter = sb.rate()
    assert meter["overruns"] == 0 and meter["peak_per_second"] <= BUDGET, meter
    assert meter["requests"] > 4 * BUDGET, "enough requests for the budget to bind"
    truth = truth_set(sb)
    assert record_set(parse_messages(tap_out)) == truth
    assert _source_records(source_out) == truth
