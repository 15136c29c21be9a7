"""The product registry: one package per WellSky product line, and nothing else lists products.

Each ``wellsky_core/products/<product>/`` holds that product's dialect (``dialect.py``, defining ``DIALECT``) and
whatever it does its own way: its channels, normalizer, writer and webhooks (personal care), or a shared portal
it names (home health and hospice name ``products/kinnser/``, which is no product itself).

``PRODUCTS`` (the config's allowed ``product`` values, the tenant check in ``connection.py``) is the keys of
``DIALECTS``. To add a product, add its package and name it in ``_MODULES`` (see docs/architecture.md, "How to
add a product").
"""

from __future__ import annotations

import importlib

from ..errors import NormalizationError
from .base import DATE_FIELDS, ID_FIELDS, TIMESTAMP_FIELDS, Dialect

_MODULES = ("home_health", "hospice", "personal_care")

DIALECTS: dict[str, Dialect] = {
    d.product: d for d in (importlib.import_module(f"{__name__}.{m}.dialect").DIALECT for m in _MODULES)
}
PRODUCTS: tuple[str, ...] = tuple(DIALECTS)


def dialect(product: str) -> Dialect:
    """The dialect of ``product``; an unknown product is a NormalizationError naming the known ones."""
    try:
        return DIALECTS[product]
    except KeyError:
        raise NormalizationError("tenant", "product", f"unknown product; expected one of {sorted(DIALECTS)}") from None


__all__ = ["DATE_FIELDS", "DIALECTS", "ID_FIELDS", "PRODUCTS", "TIMESTAMP_FIELDS", "Dialect", "dialect"]
