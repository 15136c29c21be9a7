"""Shared core of tap-wellsky and target-wellsky: auth, transport, channels and canonical records."""

from __future__ import annotations

import sys
import types


def _defer_httpx_cli() -> None:
    """httpx's ``__init__`` imports its command-line client (``httpx._main``: rich, pygments) when those are
    installed; nothing here uses it, and it was a fifth of a no-change incremental's start-up. A stand-in
    loads the real one if ``httpx.main`` is ever called."""
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return
    stub = types.ModuleType("httpx._main")

    def main(*args: object, **kwargs: object) -> object:
        import importlib

        sys.modules.pop("httpx._main", None)
        return importlib.import_module("httpx._main").main(*args, **kwargs)

    stub.main = main  # type: ignore[attr-defined]
    sys.modules["httpx._main"] = stub


_defer_httpx_cli()
