"""The shared Kinnser web portal of WellSky Home Health and Hospice: both products' dialects name its channel
as their ``portal_channel``. Not a product (no ``DIALECT``): ``channel.py`` walks the portal, ``browser.py`` drives
Chromium, ``pagemap.py`` holds each product's pages, ``state.py`` the resumable walk, ``normalize.py`` the
report rows -> canonical records."""

from .channel import KinnserPortalChannel

__all__ = ["KinnserPortalChannel"]
