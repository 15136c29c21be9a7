"""WellSky Hospice: its dialect (the modeled REST API); its web portal is the shared Kinnser portal
(``wellsky_core/products/kinnser/``), named by the dialect's ``portal_channel``."""

from .dialect import DIALECT

__all__ = ["DIALECT"]
