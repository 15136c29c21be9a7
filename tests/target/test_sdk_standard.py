"""singer-sdk's standard target tests. They send generic sample streams, which target-wellsky must accept
without crashing (counted and skipped: only patients and appointments are writable)."""

from __future__ import annotations

import atexit
import tempfile

import pytest
from singer_sdk.testing import get_target_test_class

from target_wellsky.target import TargetWellSky
from wellsky_sandbox.server import SandboxServer

_SANDBOX = SandboxServer(scale="XS", sftp_port=None).start()
atexit.register(_SANDBOX.cleanup)
_DIR = tempfile.mkdtemp(prefix="target-std-")

TestTargetWellSkyStandard = get_target_test_class(
    target_class=TargetWellSky,
    config={
        "base_url": _SANDBOX.base_url,
        "username": _SANDBOX.username,
        "password": _SANDBOX.password,
        "dead_letter_path": f"{_DIR}/dead.jsonl",
    },
)

pytestmark = pytest.mark.sdk_suite  # generic singer-sdk checks, counted apart from project tests
