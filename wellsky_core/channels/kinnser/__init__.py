"""The portal channel for WellSky Home Health and Hospice (the Kinnser web portal); see ``channel.py``."""

from .channel import KinnserPortalChannel

__all__ = ["KinnserPortalChannel"]
