"""Configuration: fail fast, name every bad key and its fix, never echo a secret."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wellsky_core.config import TargetConfig, WellSkyConfig, config_json_schema, secret_fields
from wellsky_core.errors import ConfigError

BASE = {"base_url": "https://agency.wellsky.example/api", "username": "ops@agency.test", "password": "pw-Secret-123"}
TOTP = "JBSWY3DPEHPK3PXP"


def load(**overrides):
    return WellSkyConfig.load({**BASE, **overrides}, env={})


def test_valid_config_defaults_and_normalization():
    cfg = load(base_url="https://agency.wellsky.example/api/", totp_secret="jbsw y3dp ehpk 3pxp", mfa_method="totp")
    assert cfg.base_url == "https://agency.wellsky.example/api"
    assert cfg.totp_secret is not None and cfg.totp_secret.get_secret_value() == TOTP
    assert (cfg.max_retries, cfg.page_size, cfg.timeout_seconds, cfg.source) == (6, 500, 30, "api")
    assert cfg.resolved_token_url() == "https://agency.wellsky.example/api/oauth/token"


def test_missing_password_names_the_field_and_the_fix():
    with pytest.raises(ConfigError) as info:
        WellSkyConfig.load({"base_url": BASE["base_url"], "username": "u"}, env={})
    assert info.value.fields == ["password"]
    assert "auth_method=session" in str(info.value) and "WELLSKY_PASSWORD" in str(info.value)


@pytest.mark.parametrize("mapping", [[BASE], "product=personal_care", 5], ids=["list", "string", "number"])
def test_settings_that_are_not_an_object_are_one_config_error(mapping) -> None:
    """Every loader (the webhook CLIs too) got an AttributeError traceback from a config file holding a list."""
    with pytest.raises(ConfigError) as info:
        WellSkyConfig.load(mapping, env={})
    assert info.value.fields == ["config"] and "must be a JSON object of settings" in str(info.value)


def test_a_start_date_in_the_future_is_refused_with_a_day_of_slack() -> None:
    """2099-01-01 read nothing and exited 0: every stream's records are older than it."""
    from datetime import UTC, datetime, timedelta

    with pytest.raises(ConfigError) as info:
        load(start_date="2099-01-01T00:00:00Z")
    assert info.value.fields == ["start_date"] and "is in the future (2099-01-01)" in str(info.value)
    tomorrow = (datetime.now(UTC) + timedelta(hours=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert load(start_date=tomorrow).start_date is not None  # a date given in the agency's zone, ahead of UTC


def test_bad_totp_secret_is_named_and_not_echoed():
    secret = "not-base32-1890!"
    with pytest.raises(ConfigError) as info:
        load(mfa_method="totp", totp_secret=secret)
    assert info.value.fields == ["totp_secret"]
    assert "base32" in str(info.value)
    assert secret not in str(info.value) and secret not in repr(info.value.problems)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_totp_required_for_totp_method():
    with pytest.raises(ConfigError) as info:
        load(mfa_method="totp")
    assert info.value.fields == ["totp_secret"]


@pytest.mark.parametrize("url", ["http://agency.wellsky.example", "http://10.0.0.5:8080", "ftp://x.example"])
def test_plain_http_outside_loopback_is_refused(url):
    with pytest.raises(ConfigError) as info:
        load(base_url=url)
    assert info.value.fields == ["base_url"]
    assert "https://" in str(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8123", "http://localhost:9/api", "http://[::1]:8080"])
def test_plain_http_on_loopback_is_allowed(url):
    assert load(base_url=url).base_url == url.rstrip("/")


def test_base_url_may_be_empty_for_the_embedded_sandbox():
    assert WellSkyConfig.load({"username": "u", "password": "p"}, env={}).base_url is None


def test_every_problem_is_listed_at_once_with_typo_hint():
    with pytest.raises(ConfigError) as info:
        WellSkyConfig.load(
            {"base_url": "http://example.com", "usernam": "u", "page_size": 5000, "mfa_method": "totp"}, env={}
        )
    fields = set(info.value.fields)
    assert {"base_url", "usernam", "page_size", "password", "totp_secret"} <= fields
    assert "did you mean `username`?" in str(info.value)


def test_environment_fallback_and_mapping_precedence():
    env = {
        "WELLSKY_PASSWORD": "from-env-pw",
        "WELLSKY_MAX_RETRIES": "2",
        "WELLSKY_USERNAME": "env-user",
        "WELLSKY_STREAM_SOURCES": '{"encounters": "fhir"}',
        "WELLSKY_VERIFY_TLS": "false",
    }
    cfg = WellSkyConfig.load({"base_url": BASE["base_url"], "username": "cfg-user"}, env=env)
    assert cfg.password is not None and cfg.password.get_secret_value() == "from-env-pw"
    assert (cfg.username, cfg.max_retries, cfg.verify_tls) == ("cfg-user", 2, False)
    assert cfg.source_for("encounters") == "fhir" and cfg.source_for("patients") == "api"


def test_sdk_builtin_keys_are_ignored():
    cfg = WellSkyConfig.load({**BASE, "stream_maps": {}, "flattening_enabled": False}, env={})
    assert cfg.username == BASE["username"]


def test_oauth_requirements():
    with pytest.raises(ConfigError) as info:
        WellSkyConfig.load({"base_url": BASE["base_url"], "auth_method": "oauth_client_credentials"}, env={})
    assert set(info.value.fields) == {"client_id", "client_secret"}
    with pytest.raises(ConfigError) as info:
        WellSkyConfig.load(
            {"base_url": BASE["base_url"], "auth_method": "oauth_private_key_jwt", "client_id": "c"}, env={}
        )
    assert set(info.value.fields) == {"private_key", "private_key_id"}


def test_private_key_must_match_algorithm(tmp_path):
    pem = (
        ec.generate_private_key(ec.SECP384R1())
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    cfg = {
        "base_url": BASE["base_url"],
        "auth_method": "oauth_private_key_jwt",
        "client_id": "c",
        "private_key_id": "k",
    }
    with pytest.raises(ConfigError) as info:
        WellSkyConfig.load({**cfg, "private_key": pem}, env={})
    assert info.value.fields == ["jwt_algorithm"]
    assert pem not in str(info.value)
    ok = WellSkyConfig.load({**cfg, "private_key": pem, "jwt_algorithm": "ES384"}, env={})
    assert ok.private_key_pem().strip() == pem.encode().strip()
    key_file = tmp_path / "key.pem"
    key_file.write_text(pem)
    assert WellSkyConfig.load({**cfg, "private_key_path": str(key_file), "jwt_algorithm": "ES384"}, env={})
    with pytest.raises(ConfigError) as info:
        WellSkyConfig.load({**cfg, "private_key": "-----BEGIN PRIVATE KEY-----\nnope\n"}, env={})
    assert info.value.fields == ["private_key"]


def test_sms_email_need_a_code_source():
    with pytest.raises(ConfigError) as info:
        load(mfa_method="sms")
    assert info.value.fields == ["mfa_code_command"]
    with pytest.raises(ConfigError) as info:
        load(mfa_method="email", mfa_code_source="file")
    assert info.value.fields == ["mfa_code_file"]
    assert load(mfa_method="email", mfa_code_source="sandbox_outbox").mfa_code_source == "sandbox_outbox"


def test_secrets_never_in_repr():
    cfg = load(mfa_method="totp", totp_secret=TOTP, client_secret="cs-very-secret")
    text = repr(cfg) + str(cfg) + str(cfg.model_dump())
    for secret in ("pw-Secret-123", TOTP, "cs-very-secret"):
        assert secret not in text
    assert sorted(cfg.secret_values()) == sorted(["pw-Secret-123", TOTP, "cs-very-secret"])


def test_json_schema_flags_secrets_and_lists_every_key():
    schema = config_json_schema(WellSkyConfig)
    props = schema["properties"]
    assert set(props) == set(WellSkyConfig.model_fields)
    for name in secret_fields(WellSkyConfig):
        assert props[name]["secret"] is True and props[name]["airbyte_secret"] is True
    assert set(secret_fields(WellSkyConfig)) == {
        "password", "totp_secret", "client_secret", "private_key", "sftp_password", "sftp_private_key",
        "webhook_header",
    }
    assert props["base_url"]["type"] == ["string", "null"]
    assert props["auth_method"]["enum"] == ["session", "oauth_client_credentials", "oauth_private_key_jwt", None]
    assert "secret" not in props["username"]
    target = config_json_schema(TargetConfig)["properties"]
    assert {"authorization_policy", "dry_run", "write_concurrency", "audit_log_path", "strict"} <= set(target)
    assert TargetConfig.load({**BASE}, env={}).write_concurrency == 8


# -- issue 28: one line per bad value, a did-you-mean for enum values, no masked non-secret word ------------------
def test_a_misspelled_enum_value_suggests_the_valid_one():
    with pytest.raises(ConfigError) as info:
        WellSkyConfig.load({"product": "personal-care", "client_id": "c", "client_secret": "s"}, env={})
    assert info.value.fields == ["product"]
    assert "did you mean `personal_care`?" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load(source="fhir-bulk")
    assert "did you mean `fhir_bulk`?" in str(info.value)


def test_a_required_key_message_keeps_the_word_required_on_the_cli(tmp_path):
    """The log redaction's key=value rule masked "required" after `client_secret:`; config errors mask only
    registered secret values."""
    import os
    import subprocess
    import sys

    path = tmp_path / "c.json"
    path.write_text('{"product": "personal_care", "client_id": "x"}')
    proc = subprocess.run(
        [sys.executable, "-m", "tap_wellsky.tap", "--config", str(path)], capture_output=True, text=True, timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("WELLSKY_")}, "XDG_STATE_HOME": str(tmp_path)},
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [
        "tap-wellsky: error: invalid configuration: client_secret: required when auth_method=oauth_client_credentials; "
        "set `client_secret` or WELLSKY_CLIENT_SECRET"
    ]


def test_config_error_lines_keep_the_fix_and_still_mask_secrets():
    from wellsky_core.redaction import clear_registry, redact_config_message, register_secret

    register_secret("s3cr3t-value")
    try:
        text = "client_secret: required; got s3cr3t-value, Bearer abc.def"
        assert redact_config_message(text) == "client_secret: required; got ***, Bearer ***"
    finally:
        clear_registry()


def test_the_portal_needs_agency_timezone_before_any_stream_begins():
    with pytest.raises(ConfigError) as info:
        load(stream_sources={"appointments": "portal"})
    assert info.value.fields == ["agency_timezone"] and "source=portal" in str(info.value)
    assert load(source="portal", agency_timezone="America/Chicago").agency_timezone == "America/Chicago"


def test_quality_ignore_names_known_streams_and_fields():
    from wellsky_core.config import TapConfig

    ok = TapConfig.load({**BASE, "quality_ignore": '{"appointments": ["service_code"]}'}, env={})
    assert ok.quality_ignore == {"appointments": ["service_code"]}
    with pytest.raises(ConfigError) as info:
        TapConfig.load({**BASE, "quality_ignore": {"appointmnts": ["service_code"]}}, env={})
    assert "did you mean `appointments`?" in str(info.value)
    with pytest.raises(ConfigError) as info:
        TapConfig.load({**BASE, "quality_ignore": {"appointments": ["servce_code"]}}, env={})
    assert "did you mean `service_code`?" in str(info.value)
