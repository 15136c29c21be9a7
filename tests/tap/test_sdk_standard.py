"""singer-sdk's own standard tap tests, once per way a tenant is read, so every stream has records somewhere and
no stream is skipped (issue 29):

- home health through the REST API (the streams that API serves);
- personal care through Home Connect (adds related_persons and locations);
- home health through the Kinnser portal in headless Chromium (adds episodes, claims and unbilled; marked
  ``browser`` like the other portal tests).

Each class names its product, so discovery lists only the streams that configuration serves: a stream with
no records is a failure here, never a skip.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

import pytest
from singer_sdk.testing import SuiteConfig, get_tap_test_class

from tap_wellsky.tap import TapWellSky
from wellsky_sandbox.testing import SandboxServer

CHROMIUM = "/usr/bin/chromium"
_DIR = tempfile.mkdtemp(prefix="tap-std-")
atexit.register(shutil.rmtree, _DIR, True)


def _tenant(**kw: object) -> SandboxServer:
    server = SandboxServer(scale="XS", sftp_port=None, data_dir=f"{_DIR}/{kw.get('product', 'hh')}", **kw).start()
    atexit.register(server.cleanup)
    return server


_HOME_HEALTH = _tenant()
_PERSONAL_CARE = _tenant(product="personal_care")
SUITE = SuiteConfig(max_records_limit=None)  # no stream may come back empty

TestTapWellSkyStandard = get_tap_test_class(
    tap_class=TapWellSky,
    config={
        "product": "home_health",
        "base_url": _HOME_HEALTH.base_url,
        "username": _HOME_HEALTH.username,
        "password": _HOME_HEALTH.password,
        "page_size": 200,
        "max_requests_per_second": 0,
        "data_quality_report_path": f"{_DIR}/dq-home-health.json",
    },
    suite_config=SUITE,
)

TestTapWellSkyPersonalCareStandard = get_tap_test_class(
    tap_class=TapWellSky,
    config={
        "product": "personal_care",
        "base_url": _PERSONAL_CARE.base_url,
        "client_id": _PERSONAL_CARE.client_id,
        "client_secret": _PERSONAL_CARE.client_secret,
        "max_requests_per_second": 0,
        "start_date": "2024-01-01T00:00:00Z",
        "home_connect_future_months": 14,
        "data_quality_report_path": f"{_DIR}/dq-personal-care.json",
    },
    suite_config=SUITE,
)

# The portal walk is slow: an XS tenant's sync through headless Chromium took 296 s on the shared 2-core machine
# (load ~20; 258 s of it the schedule walk), over the suite's default 300 s per-test timeout with the SDK's own
# connection test on top, so this class gets its own timeout.
TestTapWellSkyPortalStandard = pytest.mark.timeout(1500)(
    pytest.mark.browser(
        pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Debian's chromium (.ci/run installs it)")(
            get_tap_test_class(
                tap_class=TapWellSky,
                config={
                    "product": "home_health",
                    "source": "portal",
                    "base_url": _HOME_HEALTH.base_url,
                    "username": _HOME_HEALTH.username,
                    "password": _HOME_HEALTH.password,
                    "chromium_path": CHROMIUM,
                    "agency_timezone": "America/Chicago",
                    "portal_state_path": f"{_DIR}/portal-state.json",
                    "portal_wait_seconds": 20,
                    "data_quality_report_path": f"{_DIR}/dq-portal.json",
                },
                suite_config=SUITE,
            )
        )
    )
)

pytestmark = pytest.mark.sdk_suite  # generic singer-sdk checks, counted apart from project tests

