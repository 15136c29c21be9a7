"""requirements.lock (what scripts/bootstrap installs) covers pyproject.toml: every declared dependency, of the
connector and of the sandbox and dev extras, is pinned there at a version its specifier admits, with hashes.
Fast and offline; ``scripts/lock`` regenerates the lock after a dependency change."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
CVE_FLOORS = {"python-multipart": "0.0.18", "starlette": "0.47.2", "cryptography": "44.0.1", "h11": "0.16.0"}
"""First releases without the published CVEs (a floor below one of these admits a vulnerable release)."""
SANDBOX_SERVER = {"starlette", "uvicorn", "python-multipart", "xlwt", "httptools", "uvloop"}


def _declared(group: str | None) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return {canonicalize_name(Requirement(line).name): Requirement(line) for line in lines}


def _pins() -> dict[str, Version]:
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", LOCK.read_text(), re.MULTILINE)
    return {canonicalize_name(name): Version(version) for name, version in found}


def _just_below(floor: str) -> Version:
    """The release right before ``floor`` at its last non-zero place (44.0.0 for 44.0.1, 0.0.17 for 0.0.18)."""
    parts = [int(p) for p in floor.split(".")]
    last = max(i for i, p in enumerate(parts) if p > 0)
    parts[last] -= 1
    return Version(".".join(map(str, parts)))


def test_the_lock_pins_every_declared_dependency_within_its_specifier():
    pins = _pins()
    for name, requirement in (_declared(None) | _declared("sandbox") | _declared("dev")).items():
        assert name in pins, f"{name} is not in requirements.lock: run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {requirement.specifier}: run scripts/lock"
        )
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().split("\n", 2)[2])
    unhashed = [block.split()[0] for block in blocks if "==" in block and "--hash=sha256:" not in block]
    assert not unhashed, f"pinned without hashes: {unhashed}"


def test_floors_are_past_the_known_cves_and_the_sandbox_server_is_an_extra():
    runtime, sandbox = _declared(None), _declared("sandbox")
    assert not set(runtime) & SANDBOX_SERVER, "the sandbox's server packages are not connector dependencies"
    assert set(sandbox) == SANDBOX_SERVER
    pins = _pins()
    for name, floor in CVE_FLOORS.items():
        requirement = (runtime | sandbox)[name]
        assert not requirement.specifier.contains(_just_below(floor)), f"{name}'s floor admits a release before {floor}"
        assert pins[name] >= Version(floor)
