"""An emulated WellSky tenant: real HTTP, SFTP and portal on loopback, deterministic synthetic data."""

from __future__ import annotations

import importlib.util

SERVER_PACKAGES = {"starlette": "starlette", "uvicorn": "uvicorn", "multipart": "python-multipart", "xlwt": "xlwt"}
"""The sandbox's server packages (import name -> distribution): the ``sandbox`` extra, not connector dependencies."""
INSTALL_HINT = "pip install 'tap-wellsky[sandbox]'"


def missing_server_packages() -> list[str]:
    """Distributions of :data:`SERVER_PACKAGES` that are not installed (empty: the sandbox can run)."""
    return [dist for module, dist in SERVER_PACKAGES.items() if importlib.util.find_spec(module) is None]


def server_packages_problem() -> str | None:
    """One line saying what is missing and how to get it, or None when the sandbox can run."""
    missing = missing_server_packages()
    if not missing:
        return None
    return f"the WellSky sandbox needs {', '.join(missing)} (not installed); install them with: {INSTALL_HINT}"
