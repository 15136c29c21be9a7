"""Control characters are refused before writing, and child processes get no secrets (issue 16, risks).

The real API rejects NUL and other control characters in text; the target refuses them itself, naming the
field, so nothing is sent. Child processes (Playwright's driver, Chromium, an MFA command) used to inherit
``WELLSKY_*`` secrets through the environment.
"""

from __future__ import annotations

import pytest

from wellsky_core.redaction import child_environment, clear_registry, register_secret
from wellsky_core.writes import WriteRefused, validate_for_write

PATIENT = {
    "mrn": "MRN-1",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "birth_date": "1950-12-10",
    "gender": "female",
    "status": "active",
}


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x07", "\x7f", "\x0b"])
def test_control_characters_are_refused_naming_the_field(char):
    with pytest.raises(WriteRefused) as info:
        validate_for_write("patients", {**PATIENT, "last_name": f"Love{char}lace"})
    assert info.value.code == "control_character" and str(info.value).startswith("last_name:")
    nested = {**PATIENT, "address": {"line1": f"1 Ma{char}in", "city": "X", "state": "TX", "postal_code": "1"}}
    with pytest.raises(WriteRefused, match=r"^address\.line1:"):
        validate_for_write("patients", nested)


def test_tab_and_newlines_are_text():
    assert validate_for_write("patients", {**PATIENT, "last_name": "Lo\tve\r\nlace"})["last_name"] == "Lo\tve\r\nlace"


def test_child_environment_has_no_secrets():
    register_secret("s3cret-value-xyz")
    try:
        env = child_environment(
            {"PATH": "/bin", "WELLSKY_PASSWORD": "pw", "wellsky_client_secret": "c", "OTHER": "has s3cret-value-xyz"},
            EXTRA="1",
        )
    finally:
        clear_registry()
    assert env == {"PATH": "/bin", "EXTRA": "1"}


def test_playwright_driver_gets_the_scrubbed_environment(monkeypatch):
    from playwright._impl import transport

    from wellsky_core.chromium import scrub_playwright_driver_environment

    monkeypatch.setenv("WELLSKY_PASSWORD", "driver-must-not-see")
    monkeypatch.setattr(transport, "get_driver_env", transport.get_driver_env)  # restored after the test
    scrub_playwright_driver_environment()
    env = transport.get_driver_env()
    assert "WELLSKY_PASSWORD" not in env and env.get("PW_LANG_NAME") == "python"
