"""A child Python process that takes something (a lock, a lease) in its ``setup`` lines, says so, and then only
lives until it is killed: what another run on the same machine looks like to the code under test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def start_holder(setup: str, path: Path) -> subprocess.Popen[str]:
    """Run ``setup`` (``path`` is ``Path(sys.argv[1])`` there as ``target``) in a child, wait for it to finish, and
    return the child, still alive: kill it to end the hold."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "target = Path(sys.argv[1])\n"
        f"{setup}\n"
        "print('holding', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "holding"
    return child
