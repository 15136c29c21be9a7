"""WellSky Personal Care: its dialect, and its partner API ("Home Connect") channel, record mapping, writer and
webhooks. Importing the package loads only the dialect; the channel, writer and webhooks load on first use."""

from .dialect import DIALECT

__all__ = ["DIALECT"]
