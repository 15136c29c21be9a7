"""The product registry: each product is one package whose dialect is the only switch for its channels."""

from __future__ import annotations

import pytest

from wellsky_core.channels import CHANNELS, channel_class
from wellsky_core.channels.portal import PortalChannel
from wellsky_core.channels.rest import RestChannel
from wellsky_core.errors import NormalizationError
from wellsky_core.products import DIALECTS, PRODUCTS, dialect
from wellsky_core.products.kinnser.channel import KinnserPortalChannel
from wellsky_core.products.personal_care.channel import HomeConnectChannel


def test_the_dialect_names_the_channel_for_api_and_portal() -> None:
    assert channel_class("api", "personal_care") is HomeConnectChannel
    assert channel_class("portal", "personal_care") is PortalChannel
    for product in ("home_health", "hospice"):
        assert channel_class("api", product) is RestChannel
        assert channel_class("portal", product) is KinnserPortalChannel
    assert channel_class("portal") is PortalChannel  # no product: the registry's default


def test_every_named_channel_resolves_for_every_product() -> None:
    for product in PRODUCTS:
        for name in CHANNELS:
            assert channel_class(name, product).name == name


def test_dialect_lookup() -> None:
    assert set(PRODUCTS) == {"home_health", "hospice", "personal_care"} == set(DIALECTS)
    assert dialect("hospice").portal_channel == dialect("home_health").portal_channel
    with pytest.raises(NormalizationError, match="expected one of"):
        dialect("clinic")


NEW_PRODUCT = '''
"""A product added for the test: nothing but this package names it."""
from ..base import Dialect

DIALECT = Dialect(product="demo_care", camel_case=True, streams=frozenset({"patients", "appointments"}),
                  writable=frozenset({"patients"}), rate_budget=25.0, default_base_url="https://demo.example")
'''

PROBE = '''
import json
from wellsky_core.config import TapConfig, WellSkyConfig, config_json_schema
from wellsky_core.discovery import discoverable_streams
from wellsky_core.products import PRODUCTS, dialect

config = WellSkyConfig.load({"product": "demo_care", "base_url": "http://127.0.0.1:9", "username": "u",
                             "password": "p"}, env={})
schema = config_json_schema(TapConfig)  # what python -m wellsky_core.schemas --write ships
print(json.dumps({
    "products": list(PRODUCTS),
    "streams": discoverable_streams(config),
    "rate": config.max_requests_per_second,
    "enum": "demo_care" in json.dumps(schema["properties"]["product"]),
    "described": "demo_care default: https://demo.example" in WellSkyConfig.model_fields["base_url"].description,
    "writable": sorted(dialect("demo_care").writable),
}))
'''


def test_adding_a_product_is_adding_its_package(tmp_path) -> None:
    """A copy of the core plus one new package under products/ (and nothing else edited): the registry, the
    config's allowed values and descriptions, discovery and the published config schema all know the product."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import wellsky_core

    core = tmp_path / "wellsky_core"
    shutil.copytree(Path(wellsky_core.__file__).parent, core, ignore=shutil.ignore_patterns("__pycache__"))
    package = core / "products" / "demo_care"
    package.mkdir()
    (package / "__init__.py").write_text("from .dialect import DIALECT\n\n__all__ = ['DIALECT']\n")
    (package / "dialect.py").write_text(NEW_PRODUCT)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "", "XDG_STATE_HOME": str(tmp_path / "state")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["products"] == sorted([*PRODUCTS, "demo_care"])
    assert got["streams"] == ["patients", "appointments"]
    assert got["rate"] == 25.0 and got["enum"] and got["described"] and got["writable"] == ["patients"]
