"""Test helpers: start emulated tenants from pytest (``SandboxServer`` is the whole API)."""

from __future__ import annotations

from .server import SandboxServer

__all__ = ["SandboxServer"]
