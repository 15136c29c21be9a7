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

_Standard = get_target_test_class(
    target_class=TargetWellSky,
    config={
        "base_url": _SANDBOX.base_url,
        "username": _SANDBOX.username,
        "password": _SANDBOX.password,
        "dead_letter_path": f"{_DIR}/dead.jsonl",
    },
)



class TestTargetWellSkyStandard(_Standard):  # type: ignore[misc,valid-type]
    @pytest.mark.skip(
        reason="deliberate: a record missing a key property is never raised (issue 23 item 5): on a writable "
        "stream it is refused in one line and dead-lettered (tests/target/test_refusals.py), on a stream WellSky "
        "cannot take (this SDK sample) it is counted and skipped like the stream's other records"
    )
    def test_target_record_missing_key_property(self) -> None:  # the SDK expects MissingKeyPropertiesError
        """Replaced: see the skip reason."""


pytestmark = pytest.mark.sdk_suite  # generic singer-sdk checks, counted apart from project tests
