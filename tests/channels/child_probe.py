"""Run a channel read in a fresh interpreter and trace its memory there.

The sandbox serving a test runs in the test's own process (its SFTP server threads, its feeds), and so do the
threads earlier tests left winding down: a ``tracemalloc`` peak taken in the test process counts them too (one CI
run measured 24 MB for a read that takes 7). A child process holds the client alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

PRELUDE = """
import json, sys, tracemalloc
PAYLOAD = json.load(sys.stdin)
"""


def run_child(code: str, payload: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    """``code`` runs with ``PAYLOAD`` read; it imports what it reads with, then starts ``tracemalloc`` (the
    modules' own code is no part of a read's memory), and prints one JSON object as its last line
    (``tracemalloc.get_traced_memory()[1]`` under ``peak``, and whatever the test checks)."""
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], input=json.dumps(payload),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
