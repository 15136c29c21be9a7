"""The portal channel in real headless Chromium against the sandbox portal (login, TOTP, reports, CSV)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from wellsky_core.channels import open_channel
from wellsky_core.channels.portal import PortalChannel
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import AuthError, MfaError, PortalLayoutChanged
from wellsky_core.models import ENTITIES
from wellsky_sandbox.testing import SandboxServer

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Debian's chromium (.ci/run installs it)"),
]


def canonical(entity: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    model = ENTITIES[entity].model
    dumped = (model.model_validate(r).model_dump(mode="json", by_alias=True) for r in records)
    return sorted(dumped, key=lambda r: r["id"])


def config_for(server: SandboxServer, **overrides: Any) -> WellSkyConfig:
    settings = {
        "base_url": server.base_url,
        "username": server.username,
        "password": server.password,
        "mfa_method": "totp",
        "totp_secret": server.totp_secret,
        "chromium_path": CHROMIUM,
        "timeout_seconds": 20,
        **overrides,
    }
    return WellSkyConfig.load(settings, env={})


@pytest.fixture
def tenant(sandbox_factory: Callable[..., SandboxServer]) -> SandboxServer:
    # 450 patients: about 225 care plans, so the report spans two pages of 200
    return sandbox_factory(product="personal_care", scale=450, mfa=True)


@pytest.fixture
def channel(tenant: SandboxServer) -> Iterator[PortalChannel]:
    chan = open_channel("portal", config_for(tenant), None, tenant.product)
    assert isinstance(chan, PortalChannel)
    yield chan
    chan.close()


def test_records_equal_truth_and_session_cookies_work_for_the_api(
    tenant: SandboxServer, channel: PortalChannel
) -> None:
    assert channel.supports("care_plans") and channel.supports("authorizations") and not channel.supports("patients")
    assert not channel.ordered
    plans = list(channel.iter_records("care_plans", None))
    assert len(plans) > 200  # more than one report page
    assert sorted(plans, key=lambda r: r["id"]) == canonical("care_plans", tenant.truth("care_plans"))
    auths = list(channel.iter_records("authorizations", None))
    assert sorted(auths, key=lambda r: r["id"]) == canonical("authorizations", tenant.truth("authorizations"))

    truth = tenant.truth("authorizations")
    pivot = truth[len(truth) // 2]["updated_at"]
    since = datetime.fromisoformat(pivot.replace("Z", "+00:00"))
    recent = list(channel.iter_records("authorizations", since))
    assert sorted(recent, key=lambda r: r["id"]) == canonical("authorizations", tenant.truth("authorizations", pivot))

    cookies = {c["name"]: c["value"] for c in channel.cookies()}
    assert {"wsk_portal", "wsk_session"} <= set(cookies)
    api = httpx.get(tenant.base_url + "/tenant", cookies={"wsk_session": cookies["wsk_session"]})
    assert api.status_code == 200 and api.json()["product"] == "personal_care"


def test_changed_layout_fails_clearly_with_no_records(tenant: SandboxServer, channel: PortalChannel) -> None:
    assert list(channel.iter_records("authorizations", None))  # signed in and working on v1
    tenant.control("POST", "/_sandbox/portal", json={"layout": "v2"})
    for entity, selector in (
        ("care_plans", "table#care-plans-report"),
        ("authorizations", "table#authorizations-report"),
    ):
        emitted: list[dict[str, Any]] = []
        with pytest.raises(PortalLayoutChanged) as info:
            emitted.extend(channel.iter_records(entity, None))
        assert emitted == []
        assert info.value.selector == selector
        assert info.value.page.startswith("/portal/reports/")
        assert "portal layout changed" in str(info.value) and selector in str(info.value)


def test_wrong_password_and_wrong_totp_secret_are_auth_errors(tenant: SandboxServer) -> None:
    bad_password = PortalChannel(config=config_for(tenant, password="wrong-password"), product=tenant.product)
    try:
        with pytest.raises(AuthError) as info:
            list(bad_password.iter_records("care_plans", None))
        assert info.value.setting == "password" and "wrong-password" not in str(info.value)
    finally:
        bad_password.close()
    bad_secret = PortalChannel(
        config=config_for(tenant, totp_secret="JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"), product=tenant.product
    )
    try:
        with pytest.raises(MfaError) as mfa:
            list(bad_secret.iter_records("authorizations", None))
        assert mfa.value.setting == "totp_secret"
    finally:
        bad_secret.close()


def test_missing_browser_is_a_config_error(tenant: SandboxServer, tmp_path: Path) -> None:
    from wellsky_core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        PortalChannel(config=config_for(tenant, chromium_path=str(tmp_path / "nope")), product=tenant.product)
    assert info.value.field == "chromium_path"
