"""The product registry: one package per WellSky product line, and nothing else lists products.

Each ``wellsky_core/products/<product>/`` holds that product's dialect (``dialect.py``, defining ``DIALECT``) and
whatever it does its own way: its channels, normalizer, writer and webhooks (personal care), or a shared portal
it names (home health and hospice name ``products/kinnser/``, which is no product itself).

``PRODUCTS`` (the config's allowed ``product`` values, the tenant check in ``connection.py``) is the keys of
``DIALECTS``. The registry finds the products itself: every subpackage with a ``dialect`` module is one, so
adding a product is adding its package (see docs/architecture.md, "How to add a product"); a shared package such
as ``kinnser`` has no dialect and is no product.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from ..errors import NormalizationError
from .base import DATE_FIELDS, ID_FIELDS, TIMESTAMP_FIELDS, Dialect


def _product_packages() -> tuple[str, ...]:
    """The subpackages defining a dialect, in name order (the order of ``PRODUCTS``); looked up on disk, so a
    shared package (the Kinnser portal) is not imported for it."""
    return tuple(
        sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg and _has_dialect(m.name))
    )


def _has_dialect(package: str) -> bool:
    return any((Path(root) / package / "dialect.py").is_file() for root in __path__)


_MODULES = _product_packages()

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
