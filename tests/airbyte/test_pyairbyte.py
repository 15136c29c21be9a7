"""PyAirbyte, as a data team would use it: `get_source(..., local_executable=...)` offline, read into its DuckDB
cache, then an incremental read after the tenant changed — every record once, current versions, no duplicates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wellsky_core.models import ENTITIES, MODELED_ENTITIES

ROOT = Path(__file__).resolve().parents[2]
SOURCE = str(Path(sys.executable).with_name("source-wellsky"))


@pytest.fixture(scope="module")
def pyairbyte_python() -> str:
    proc = subprocess.run(
        [str(ROOT / "scripts/warehouse-setup"), "pyairbyte"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"scripts/warehouse-setup pyairbyte failed:\n{proc.stderr[-3000:]}"
    return proc.stdout.strip().splitlines()[-1]


def read(python: str, config: Path, cache: Path, mode: str) -> dict[str, list[str]]:
    proc = subprocess.run(
        [python, str(ROOT / "tests/airbyte/pyairbyte_read.py"), SOURCE, str(config), str(cache), mode],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cache.parent,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cache.parent), "AIRBYTE_OFFLINE_MODE": "1", "DO_NOT_TRACK": "1"},
    )
    assert proc.returncode == 0, f"PyAirbyte read failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    line = next(line for line in proc.stdout.splitlines() if line.startswith("PYAIRBYTE-SUMMARY "))
    return json.loads(line.removeprefix("PYAIRBYTE-SUMMARY "))["streams"]


@pytest.mark.timeout(900)
def test_pyairbyte_full_then_incremental_into_its_cache(pyairbyte_python, sandbox, tmp_path):
    creds = sandbox.credentials()
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "base_url": creds["base_url"],
                "username": creds["username"],
                "password": creds["password"],
                "page_size": 100,
            }
        )
    )
    cache = tmp_path / "cache"

    def check(streams: dict[str, list[str]], deleted: tuple[str, ...] = ()) -> None:
        assert set(MODELED_ENTITIES) <= set(streams) <= set(ENTITIES)
        for stream in set(streams) - set(MODELED_ENTITIES):  # personal care only: nothing from home health
            assert streams[stream] == [], stream
        for stream, ids in ((s, i) for s, i in streams.items() if s in MODELED_ENTITIES):
            assert len(ids) == len(set(ids)), f"{stream}: duplicate keys in PyAirbyte's cache"
            kept = {k.split("/", 1)[1] for k in deleted if k.startswith(f"{stream}/")}  # api: deletions unknown
            assert sorted(ids) == sorted({str(r["id"]) for r in sandbox.truth(stream)} | kept), f"{stream} != truth"

    check(read(pyairbyte_python, config, cache, "full"))
    # updates, new rows and deletions: the incremental read must merge, not append
    deleted = tuple(sandbox.advance(fraction=0.05)["deleted"])
    check(read(pyairbyte_python, config, cache, "incremental"), deleted)


@pytest.mark.timeout(900)
def test_pyairbyte_reads_a_personal_care_tenant_as_the_readme_shows(pyairbyte_python, sandbox_factory, tmp_path):
    """Issue 28: the README's PyAirbyte lines with a personal-care config (a tenant, then none: the embedded
    sandbox) reach its tables in the DuckDB cache — only the six streams Home Connect serves, every patient once."""
    tenant = sandbox_factory(product="personal_care", scale=20)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "product": "personal_care", "base_url": tenant.base_url, "client_id": tenant.client_id,
        "client_secret": tenant.client_secret, "home_connect_history_months": 3, "max_requests_per_second": 0,
    }))
    streams = read(pyairbyte_python, config, tmp_path / "cache", "full")
    assert set(streams) == {"patients", "practitioners", "appointments", "encounters", "related_persons", "locations"}
    assert sorted(streams["patients"]) == sorted(str(r["id"]) for r in tenant.truth("patients"))
    assert all(len(ids) == len(set(ids)) for ids in streams.values())
    # the README's lines as written: no credentials, so the embedded sandbox of `product` (XS to keep it short)
    embedded = tmp_path / "embedded.json"
    embedded.write_text(json.dumps({"product": "personal_care", "sandbox_scale": "XS"}))
    streams = read(pyairbyte_python, embedded, tmp_path / "embedded-cache", "full")
    assert set(streams) == {"patients", "practitioners", "appointments", "encounters", "related_persons", "locations"}
    assert streams["patients"] and len(streams["patients"]) == len(set(streams["patients"]))
