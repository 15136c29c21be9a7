"""Meltano end to end: meltano.yml as a new user runs it (`meltano run tap-wellsky target-jsonl`) against a sandbox
tenant, plus the checks that keep meltano.yml and catalog.json in step with the code.

The Meltano installation is cached (.venv-meltano/, .meltano/) by scripts/meltano-setup: the first run on a fresh
machine installs from PyPI (about 20 s warm cache), later runs reuse it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from tap_wellsky.tap import TAP_ONLY_KEYS
from wellsky_core.config import TargetConfig, WellSkyConfig, secret_fields
from wellsky_core.models import ENTITIES, MODELED_ENTITIES

ROOT = Path(__file__).resolve().parents[2]
TAP = str(Path(sys.executable).with_name("tap-wellsky"))


def plugin(kind: str, name: str) -> dict[str, Any]:
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    return next(p for p in project["plugins"][kind] if p["name"] == name)


@pytest.mark.parametrize(
    ("kind", "name", "model", "extra"),
    [
        ("extractors", "tap-wellsky", WellSkyConfig, set(TAP_ONLY_KEYS)),
        ("loaders", "target-wellsky", TargetConfig, set()),
    ],
)
def test_meltano_settings_mirror_the_config_model(kind, name, model, extra):
    entry = plugin(kind, name)
    names = [s["name"] for s in entry["settings"]]
    assert len(names) == len(set(names)), f"duplicate settings in meltano.yml {name}"
    settings = {s["name"]: s for s in entry["settings"]}
    expected = set(model.model_fields) | extra
    missing, stale = sorted(expected - set(settings)), sorted(set(settings) - expected)
    assert not missing and not stale, (
        f"meltano.yml {name} settings drifted from wellsky_core.config: add {missing}, remove {stale} "
        "(kind: password for SecretStr keys)"
    )
    passwords = {n for n, s in settings.items() if s.get("kind") == "password"}
    assert passwords == set(secret_fields(model))
    assert settings["stream_sources"]["kind"] == "object"
    assert entry["namespace"] == name.replace("-", "_") and entry["pip_url"] == "-e ." and entry["executable"] == name
    for setting in settings.values():
        assert "value" not in setting or setting.get("kind") != "password", "no secret value in meltano.yml"


def _literal_values(annotation: Any) -> set[Any]:
    """The values a ``Literal`` (possibly inside ``X | None``) allows."""
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    return set().union(*(_literal_values(a) for a in typing.get_args(annotation)))


@pytest.mark.parametrize(
    ("kind", "name", "model"),
    [("extractors", "tap-wellsky", WellSkyConfig), ("loaders", "target-wellsky", TargetConfig)],
)
def test_meltano_options_are_the_config_models_values(kind, name, model):
    """An options list in meltano.yml restates a ``Literal`` of the config (the products, the sources...): it must
    name exactly its values, of their type (an unquoted ``off`` is YAML's false, which the Hub files then carried)."""
    for setting in plugin(kind, name)["settings"]:
        if setting.get("kind") != "options":
            continue
        listed = [o["value"] for o in setting["options"]]
        allowed = _literal_values(model.model_fields[setting["name"]].annotation)
        typed = [(type(v), v) for v in listed]
        assert set(typed) == {(type(v), v) for v in allowed}, f"{setting['name']}: {listed} (quote string values)"
        assert set(listed) == allowed, f"meltano.yml {name} {setting['name']}: options {listed}, the config allows " \
            f"{sorted(allowed)}"


def test_tap_capabilities_declared():
    assert set(plugin("extractors", "tap-wellsky")["capabilities"]) >= {
        "catalog",
        "discover",
        "state",
        "about",
        "stream-maps",
    }


def discovered_catalog(tmp_path: Path) -> dict[str, Any]:
    """`tap-wellsky --discover` with every stream selected (discovery makes no request, so any URL does)."""
    config = tmp_path / "discover-config.json"
    config.write_text(json.dumps({"base_url": "http://127.0.0.1:9", "username": "u", "password": "p"}))
    proc = subprocess.run([TAP, "--discover", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    catalog = json.loads(proc.stdout)
    for stream in catalog["streams"]:
        for entry in stream["metadata"]:
            if entry["breadcrumb"] == []:
                entry["metadata"]["selected"] = True
    return catalog


def test_catalog_json_is_the_discovered_catalog_with_everything_selected(tmp_path):
    """catalog.json is generated: WELLSKY_WRITE_CATALOG=1 pytest tests/meltano -k catalog rewrites it."""
    expected = discovered_catalog(tmp_path)
    path = ROOT / "catalog.json"
    if os.environ.get("WELLSKY_WRITE_CATALOG") == "1":
        path.write_text(json.dumps(expected, indent=2) + "\n")
    committed = json.loads(path.read_text())
    assert committed == expected, "catalog.json is stale: run WELLSKY_WRITE_CATALOG=1 pytest tests/meltano -k catalog"
    # product detected at sync time: every stream some product serves through the api (portal-only ones need
    # stream_sources, see tests/tap/test_tap.py::test_discovery_lists_what_the_product_and_sources_serve)
    assert {s["tap_stream_id"] for s in committed["streams"]} == {n for n, e in ENTITIES.items() if e.sources is None}
    assert all(
        e["metadata"]["selected"] is True for s in committed["streams"] for e in s["metadata"] if e["breadcrumb"] == []
    )


@pytest.fixture(scope="module")
def meltano() -> str:
    """Meltano and the plugins installed once (cached across runs by scripts/meltano-setup)."""
    proc = subprocess.run([str(ROOT / "scripts/meltano-setup")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"scripts/meltano-setup failed:\n{proc.stderr[-4000:]}"
    return str(ROOT / ".venv-meltano/bin/meltano")


def meltano_run(meltano: str, env: dict[str, str], *args: str) -> None:
    proc = subprocess.run(
        [meltano, "--log-level=warning", "run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"meltano run failed:\n{proc.stderr[-4000:]}"


def read_jsonl(directory: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        path.stem: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for path in sorted(directory.glob("*.jsonl"))
    }


def test_meltano_run_into_jsonl_then_incremental_with_meltano_state(meltano, sandbox, tmp_path):
    creds = sandbox.credentials()
    env = {
        **os.environ,
        "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'meltano.db'}",  # this test's own state store
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
        "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
        "TAP_WELLSKY_BASE_URL": creds["base_url"],
        "TAP_WELLSKY_USERNAME": creds["username"],
        "TAP_WELLSKY_PASSWORD": creds["password"],
        "TAP_WELLSKY_PAGE_SIZE": "100",
    }
    first_dir, second_dir = tmp_path / "run1", tmp_path / "run2"
    meltano_run(
        meltano,
        {**env, "TARGET_JSONL_DESTINATION_PATH": str(first_dir)},
        "--state-id-suffix",
        "tenant-a",
        "tap-wellsky",
        "target-jsonl",
    )

    first = read_jsonl(first_dir)
    assert set(first) == set(MODELED_ENTITIES)
    bookmarks = {}
    for stream in MODELED_ENTITIES:
        truth = sandbox.truth(stream)
        assert len(first[stream]) == len(truth), f"{stream}: {len(first[stream])} rows, sandbox holds {len(truth)}"
        assert sorted(r["id"] for r in first[stream]) == sorted(str(r["id"]) for r in truth)
        bookmarks[stream] = max(r["updated_at"] for r in first[stream])

    sandbox.advance(fraction=0.05)
    meltano_run(
        meltano,
        {**env, "TARGET_JSONL_DESTINATION_PATH": str(second_dir)},
        "--state-id-suffix",
        "tenant-a",
        "tap-wellsky",
        "target-jsonl",
    )
    second = read_jsonl(second_dir)
    changed = 0
    for stream in MODELED_ENTITIES:
        expected = sorted(str(r["id"]) for r in sandbox.truth(stream, updated_since=bookmarks[stream]))
        got = sorted(r["id"] for r in second.get(stream, []))
        assert got == expected, f"{stream}: the second run did not resume from Meltano's stored state"
        changed += len(got)
    assert 0 < changed < sum(len(v) for v in first.values()) / 2
