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
