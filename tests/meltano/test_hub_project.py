"""A data team's own Meltano project: `meltano init`, then `meltano add --from-ref` of the Hub definitions in hub/
(pip_url pointed at the built wheel, as a user would before the package is on PyPI), `meltano config set`, and
`meltano run tap-wellsky target-jsonl` against a sandbox tenant. Nothing from this checkout's meltano.yml is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wellsky_core.models import MODELED_ENTITIES as ENTITIES

ROOT = Path(__file__).resolve().parents[2]

TARGET_JSONL_REF = """\
name: target-jsonl
namespace: target_jsonl
variant: andyh1203
pip_url: target-jsonl==0.1.4 setuptools<81
executable: target-jsonl
settings:
- name: destination_path
  kind: string
- name: do_timestamp_file
  kind: boolean
"""


def test_hub_definitions_are_generated_from_meltano_yml():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/hub_definitions.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def meltano() -> str:
    proc = subprocess.run([str(ROOT / "scripts/meltano-setup")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"scripts/meltano-setup failed:\n{proc.stderr[-4000:]}"
    return str(ROOT / ".venv-meltano/bin/meltano")


@pytest.mark.timeout(900)  # installs three plugins from PyPI into a new project
def test_fresh_meltano_project_from_the_hub_definitions(meltano, sandbox, tmp_path):
    wheel_dir = tmp_path / "dist"
    subprocess.run(["uv", "build", "-q", "--wheel", "-o", str(wheel_dir), str(ROOT)], check=True, timeout=300)
    wheel = next(wheel_dir.glob("*.whl"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "VIRTUAL_ENV", "TAP_", "TARGET_"))},
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
        "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
    }

    def cli(*args: str, cwd: Path) -> str:
        proc = subprocess.run([meltano, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"meltano {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc.stdout

    cli("init", "agency-warehouse", "--no_usage_stats", cwd=tmp_path)
    project = tmp_path / "agency-warehouse"
    cli("config", "set", "meltano", "venv.backend", "uv", cwd=project)
    refs = {}
    for kind, name in (("extractors", "tap-wellsky"), ("loaders", "target-wellsky")):
        text = (ROOT / "hub" / kind / f"{name}.yml").read_text()
        assert "\npip_url: tap-wellsky\n" in text
        refs[name] = tmp_path / f"{name}.yml"
        refs[name].write_text(text.replace("\npip_url: tap-wellsky\n", f"\npip_url: {wheel}\n"))
    (tmp_path / "target-jsonl.yml").write_text(TARGET_JSONL_REF)
    cli("add", "--plugin-type", "extractor", "tap-wellsky", "--from-ref", str(refs["tap-wellsky"]), cwd=project)
    cli("add", "--plugin-type", "loader", "target-wellsky", "--from-ref", str(refs["target-wellsky"]), cwd=project)
    cli("add", "--plugin-type", "loader", "target-jsonl", "--from-ref", str(tmp_path / "target-jsonl.yml"), cwd=project)

    creds = sandbox.credentials()
    for setting, value in (
        ("base_url", creds["base_url"]),
        ("username", creds["username"]),
        ("password", creds["password"]),
        ("page_size", "100"),
    ):
        cli("config", "set", "tap-wellsky", setting, value, cwd=project)
    assert creds["password"] not in (project / "meltano.yml").read_text(), (
        "a kind: password setting landed in meltano.yml"
    )
    out = project / "output"
    cli("config", "set", "target-jsonl", "destination_path", str(out), cwd=project)
    cli("config", "set", "target-jsonl", "do_timestamp_file", "false", cwd=project)
    cli("run", "tap-wellsky", "target-jsonl", cwd=project)

    for stream in ENTITIES:
        rows = [json.loads(line) for line in (out / f"{stream}.jsonl").read_text().splitlines() if line.strip()]
        truth = sandbox.truth(stream)
        assert sorted(r["id"] for r in rows) == sorted(str(r["id"]) for r in truth), f"{stream} differs from truth"
    version = cli("invoke", "target-wellsky", "--version", cwd=project)
    assert "0.1.0" in version
