"""The core stays free of the Singer edge: importing every core module loads no singer-sdk."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import wellsky_core

CORE_MODULES = sorted(m.name for m in pkgutil.walk_packages(wellsky_core.__path__, "wellsky_core."))


def test_no_core_module_imports_singer_sdk():
    probe = (
        "import importlib, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    if name.endswith('.__main__'):\n"
        "        continue\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'singer_sdk' or m.startswith('singer_sdk.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the core pulled in singer-sdk: {out.stdout.strip()}"
    assert len(CORE_MODULES) > 20
