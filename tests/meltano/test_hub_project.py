"""A data team's own Meltano project, as README.md describes it: a minimal meltano.yml (no Hub access, no
--from-ref; pip_url pointed at the built wheel with the README's extras, as a user would before the package is on
PyPI), `meltano run tap-wellsky target-jsonl` first with no credentials (the embedded sandbox), then with
secrets in .env against a personal-care sandbox tenant. Nothing from this checkout's meltano.yml is used; the
Hub definitions in hub/ are checked to be generated from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

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


def readme_meltano_yml() -> str:
    """The minimal meltano.yml README.md tells a newcomer to write (between its meltano-minimal markers)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- meltano-minimal:start -->", 1)[1].split("<!-- meltano-minimal:end -->", 1)[0]
    return block.split("```yaml\n", 1)[1].split("```", 1)[0]


@pytest.mark.timeout(900)  # installs two plugins from PyPI into a new project
def test_the_readme_meltano_project_reaches_a_personal_care_table(meltano, sandbox_factory, tmp_path):
    """Issue 28: following only README.md — its meltano.yml (no Hub, no --from-ref; pip_url pointed at the built
    wheel, keeping the README's ``[sandbox]`` extra) — `meltano run tap-wellsky target-jsonl` lands personal-care
    tables from the embedded sandbox (no credentials), then, with credentials in .env as WELLSKY_*, a tenant's."""
    tenant = sandbox_factory(product="personal_care", scale=20)
    wheel_dir = tmp_path / "dist"
    subprocess.run(["uv", "build", "-q", "--wheel", "-o", str(wheel_dir), str(ROOT)], check=True, timeout=300)
    wheel = next(wheel_dir.glob("*.whl"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "VIRTUAL_ENV", "TAP_", "TARGET_",
                                                                       "WELLSKY_"))},
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
        "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
    }

    def cli(*args: str, cwd: Path) -> str:
        proc = subprocess.run([meltano, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"meltano {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc.stdout + proc.stderr

    project = tmp_path / "agency-warehouse"
    project.mkdir()
    documented = readme_meltano_yml()
    assert len(documented.splitlines()) < 30 and "settings:" not in documented  # only what the user sets
    pip_line = next(line for line in documented.splitlines() if "pip_url: /path/to/tap-wellsky" in line)
    extras = pip_line.split("tap-wellsky", 1)[1]  # e.g. "[sandbox]": the embedded sandbox's server packages
    (project / "meltano.yml").write_text(documented.replace(pip_line, f"    pip_url: {wheel}{extras}"))
    cli("config", "set", "meltano", "venv.backend", "uv", cwd=project)
    cli("install", cwd=project)

    # no credentials: the embedded sandbox of `product` (XS through the environment only to keep the test short)
    env["WELLSKY_SANDBOX_SCALE"] = "XS"
    log = cli("run", "tap-wellsky", "target-jsonl", cwd=project)
    del env["WELLSKY_SANDBOX_SCALE"]
    assert "EMBEDDED SANDBOX: synthetic personal_care data" in log
    embedded = project / "output"
    landed = {p.stem for p in embedded.glob("*.jsonl")}
    assert landed == {"patients", "practitioners", "appointments", "encounters", "related_persons", "locations"}
    ids = [json.loads(line)["id"] for line in (embedded / "patients.jsonl").read_text().splitlines() if line]
    assert ids and len(ids) == len(set(ids))
    embedded.rename(project / "output-embedded")

    # a tenant: credentials in .env, as the README's comment shows (base_url too: this tenant is on loopback)
    (project / ".env").write_text(
        f"WELLSKY_BASE_URL={tenant.base_url}\nWELLSKY_CLIENT_ID={tenant.client_id}\n"
        f"WELLSKY_CLIENT_SECRET={tenant.client_secret}\nWELLSKY_HOME_CONNECT_HISTORY_MONTHS=3\n"
        "WELLSKY_MAX_REQUESTS_PER_SECOND=0\n"
    )
    log = cli("run", "--full-refresh", "tap-wellsky", "target-jsonl", cwd=project)  # the stored state is the sandbox's
    assert f"TENANT AT 127.0.0.1:{tenant.port} (personal_care)" in log

    out = project / "output"
    rows = [json.loads(line) for line in (out / "patients.jsonl").read_text().splitlines() if line.strip()]
    assert sorted(r["id"] for r in rows) == sorted(str(r["id"]) for r in tenant.truth("patients"))
    landed = {p.stem for p in out.glob("*.jsonl")}
    assert {"patients", "practitioners", "appointments", "encounters", "related_persons", "locations"} <= landed
    assert not landed & {"authorizations", "coverage", "care_plans", "referrals"}  # personal care has none
