"""singer-sdk's own standard tap tests, against the embedded sandbox (no base_url: the tap starts one)."""

from __future__ import annotations

import pytest
from singer_sdk.testing import SuiteConfig, get_tap_test_class

from tap_wellsky.tap import TapWellSky
from wellsky_core.models import ENTITIES

PORTAL_ONLY = [name for name, spec in ENTITIES.items() if spec.sources and "api" not in spec.sources]
"""episodes, claims, unbilled: only the portal carries them (tests/channels/test_kinnser_portal_browser.py)."""

TestTapWellSkyStandard = get_tap_test_class(
    tap_class=TapWellSky,
    config={"sandbox_scale": "XS", "page_size": 200},
    # related_persons and locations come only from personal care's Home Connect API: a home health tenant has none;
    # episodes, claims and unbilled only through the portal (tests/channels/test_kinnser_portal_browser.py)
    suite_config=SuiteConfig(
        max_records_limit=None, ignore_no_records_for_streams=["related_persons", "locations", *PORTAL_ONLY]
    ),
)

pytestmark = pytest.mark.sdk_suite  # generic singer-sdk checks, counted apart from project tests
