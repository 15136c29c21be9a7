"""The package installs like any connector: an sdist and a wheel build, and a fresh virtualenv (or `uv tool
install`) with nothing but the wheel runs all five commands — outside this checkout, so nothing is imported
from the source tree by accident."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, (
        f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def uv() -> str:
    found = shutil.which("uv")
    assert found, "uv is not installed (scripts/bootstrap installs it)"
    return found


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([uv(), "build", "-q", "--sdist", "--wheel", "-o", str(out), str(ROOT)], cwd=ROOT)
    return out


@pytest.fixture(scope="module")
def clean_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a stranger's shell: no PYTHONPATH into this checkout, no project virtualenv on PATH."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "WELLSKY_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env["HOME"] = str(home)
    yield env


def test_sdist_and_wheel_build(dist):
    wheel = next(dist.glob("*.whl"))
    sdist = next(dist.glob("*.tar.gz"))
    assert wheel.name == f"tap_wellsky-{VERSION}-py3-none-any.whl"
    assert sdist.name == f"tap_wellsky-{VERSION}.tar.gz"
    listing = run([sys.executable, "-m", "zipfile", "-l", str(wheel)], cwd=ROOT)
    for package in ("wellsky_core/", "wellsky_sandbox/", "tap_wellsky/", "target_wellsky/"):
        assert package in listing, f"{package} missing from the wheel"
    assert "tests/" not in listing


def test_fresh_venv_from_the_wheel_runs_every_command(dist, clean_env, tmp_path):
    venv = tmp_path / "venv"
    run([uv(), "venv", "-q", str(venv), "-p", sys.executable], cwd=tmp_path, env=clean_env)
    run(
        [uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(next(dist.glob("*.whl")))],
        cwd=tmp_path,
        env=clean_env,
    )
    bin_ = venv / "bin"
    about = json.loads(run([str(bin_ / "tap-wellsky"), "--about", "--format", "json"], cwd=tmp_path, env=clean_env))
    assert about["name"] == "tap-wellsky" and about["version"] == VERSION
    version = run([str(bin_ / "target-wellsky"), "--version"], cwd=tmp_path, env=clean_env)
    assert VERSION in version and "could not be detected" not in version
    spec = json.loads(run([str(bin_ / "source-wellsky"), "spec"], cwd=tmp_path, env=clean_env).splitlines()[0])
    assert spec["type"] == "SPEC"
    assert "serve" in run([str(bin_ / "wellsky-sandbox"), "--help"], cwd=tmp_path, env=clean_env)
    spec = json.loads(run([str(bin_ / "destination-wellsky"), "spec"], cwd=tmp_path, env=clean_env).splitlines()[0])
    assert spec["type"] == "SPEC"

    # the sandbox's server packages are an extra: without it, the embedded sandbox says how to get them
    config = tmp_path / "tap.json"
    config.write_text(json.dumps({"sandbox_scale": "20"}))
    hint = "pip install 'tap-wellsky[sandbox]'"
    for command in ([str(bin_ / "tap-wellsky"), "--config", str(config)], [str(bin_ / "wellsky-sandbox"), "serve"]):
        bare = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=clean_env)
        assert bare.returncode == 2 and hint in bare.stderr, (command, bare.returncode, bare.stderr[-2000:])
        assert "Traceback" not in bare.stderr
    wheel = next(dist.glob("*.whl"))
    run([uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), f"{wheel}[sandbox]"],
        cwd=tmp_path, env=clean_env)

    # a real sync from the installed package: the tap starts its embedded sandbox tenant when no base_url is set
    out = run([str(bin_ / "tap-wellsky"), "--config", str(config)], cwd=tmp_path, env=clean_env)
    records = [json.loads(line) for line in out.splitlines() if '"RECORD"' in line]
    assert {r["stream"] for r in records} >= {"patients", "appointments"}


def test_uv_tool_install_from_the_wheel(dist, clean_env, tmp_path):
    env = {**clean_env, "UV_TOOL_DIR": str(tmp_path / "tools"), "UV_TOOL_BIN_DIR": str(tmp_path / "bin")}
    run([uv(), "tool", "install", "-q", str(next(dist.glob("*.whl")))], cwd=tmp_path, env=env)
    for command in ("tap-wellsky", "target-wellsky", "source-wellsky", "destination-wellsky", "wellsky-sandbox"):
        assert (tmp_path / "bin" / command).exists(), f"uv tool install did not expose {command}"
    version = run([str(tmp_path / "bin" / "target-wellsky"), "--version"], cwd=tmp_path, env=env)
    assert VERSION in version
