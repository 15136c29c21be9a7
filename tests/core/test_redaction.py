"""Log redaction: secrets and patient data never reach captured log output."""

from __future__ import annotations

import logging

import pytest

from wellsky_core import redaction
from wellsky_core.config import WellSkyConfig
from wellsky_core.redaction import (
    PHI_MASK,
    RedactionFilter,
    install_redaction,
    redact,
    register_phi,
    register_secret,
)
from wellsky_core.transport import WellSkyClient


@pytest.fixture(autouse=True)
def clean_registry():
    redaction.clear_registry()
    yield
    redaction.clear_registry()


def test_registered_secrets_and_credential_shapes_are_masked():
    register_secret("hunter2-very-secret", None, "ab")
    text = redact(
        "login password=hunter2-very-secret again hunter2-very-secret; Authorization: Bearer abc.def-ghi "
        'Cookie: wsk_session=Zm9vYmFy; {"access_token": "tok123", "client_secret": "cs-1"} '
        "assertion eyJhbGciOiJSUzM4NCJ9.eyJpc3MiOiJ4In0.c2ln"
    )
    for leaked in ("hunter2-very-secret", "abc.def-ghi", "Zm9vYmFy", "tok123", "cs-1", "eyJhbGci"):
        assert leaked not in text
    assert "ab" in redact("about ab"), "values shorter than 3 chars are not registered (keeps logs readable)"


def test_phi_masked_as_whole_words_case_insensitively():
    register_phi("Mary Ann", "Okafor", "1950-03-12", "MRN00123", None)
    text = redact("patient MARY okafor-smith born 1950-03-12 mrn MRN00123; Maryland and Annex stay readable")
    assert "MARY" not in text and "okafor" not in text and "1950-03-12" not in text and "MRN00123" not in text
    assert "Maryland" in text and "Annex" in text and text.count(PHI_MASK) == 4
    assert redact("GET /patients?mrn=Z-77&limit=5") == "GET /patients?mrn=***&limit=5"


def test_phi_set_is_bounded(monkeypatch):
    monkeypatch.setattr(redaction._registry, "max_phi", 100)
    register_phi(*[f"name{i}" for i in range(1000)])
    assert len(redaction._registry.phi) == 100
    assert redact("name999") == PHI_MASK and redact("name0") == "name0"


def test_filter_redacts_args_exceptions_and_child_loggers(caplog):
    install_redaction()
    register_secret("pw-in-a-traceback")
    register_phi("Quixote")
    log = logging.getLogger("wellsky_core.normalize.deep.child")
    caplog.set_level(logging.DEBUG)
    log.info("patient %s logged in with %s", "Quixote", "pw-in-a-traceback")
    try:
        raise ValueError("bad record for Quixote with pw-in-a-traceback")
    except ValueError:
        log.exception("failed")
    logging.getLogger("tap_wellsky.streams").warning("name=%s", "Quixote")
    logging.getLogger("httpx").info("HTTP Request: GET /patients?mrn=%s", "Quixote")
    output = caplog.text + "".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "Quixote" not in output and "pw-in-a-traceback" not in output
    assert output.count(PHI_MASK) >= 3


def test_filter_on_a_handler_covers_foreign_loggers():
    register_secret("foreign-secret-value")
    record = logging.LogRecord("somelib", logging.INFO, __file__, 1, "x=%s", ("foreign-secret-value",), None)
    assert RedactionFilter().filter(record) is True
    assert record.getMessage() == "x=***"


def test_a_whole_session_sync_logs_no_secret_and_no_patient_name(sandbox_factory, caplog):
    """Log everything at DEBUG (httpx, httpcore, retries under faults, MFA) and grep for every sensitive value."""
    sb = sandbox_factory(scale=30, mfa=True, sftp_port=None, faults="error=0.2,reset=0.2,retry_after=0,seed=7")
    install_redaction()
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "wellsky_core"):  # other tests in this worker may have quieted them
        caplog.set_level(logging.DEBUG, logger=name)
    cfg = WellSkyConfig.load(
        {
            "base_url": sb.base_url,
            "username": sb.username,
            "password": sb.password,
            "mfa_method": "totp",
            "totp_secret": sb.totp_secret,
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.02,
            "max_retries": 10,
        },
        env={},
    )
    patients = sb.truth("patients")
    with WellSkyClient(cfg) as client:
        for page in client.iter_pages("/patients", {"limit": 5}):
            for native in page:
                register_phi(native["name"]["first"], native["name"]["last"], native.get("mrn"))
                logging.getLogger("wellsky_core.normalize").debug("normalized %s", native)
        cookie = client.auth._cookie
        assert sum(client.metrics.retries.values()) > 0
    output = caplog.text
    assert "wellsky_core.transport" in output and "HTTP Request" in output
    sensitive = [sb.password, sb.totp_secret, cookie] + [p["last_name"] for p in patients[:20]]
    sensitive += [p["mrn"] for p in patients[:20] if p.get("mrn")]
    leaked = [value for value in sensitive if value and value in output]
    assert not leaked, f"{len(leaked)} sensitive values leaked into the logs"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage() + (record.stack_info or ""))


def test_installing_from_scratch_covers_children_own_handlers_and_root_handlers(monkeypatch):
    """What install_redaction sets up in a fresh process (the process-wide state is reset for the test)."""
    original = logging.getLogRecordFactory()
    monkeypatch.setattr(redaction, "_factory_installed", False)
    monkeypatch.setattr(redaction, "_installed_prefixes", set())
    root, at_root = logging.getLogger(), _Collect()
    child, at_child = logging.getLogger("fresh_app.deep.child"), _Collect()
    named, at_named = logging.getLogger("fresh_app"), _Collect()
    foreign = logging.getLogger("fresh_foreign_lib")
    root.addHandler(at_root)
    child.addHandler(at_child)
    named.addHandler(at_named)
    saved = [(lg, lg.level, lg.propagate) for lg in (child, named, foreign)]
    for lg in (child, named, foreign):
        lg.setLevel(logging.DEBUG)
    child.propagate = named.propagate = False
    try:
        logging.setLogRecordFactory(logging.LogRecord)  # as in a fresh process: no earlier factory to lean on
        install_redaction("fresh_app")
        factory = logging.getLogRecordFactory()
        install_redaction("fresh_app")
        assert logging.getLogRecordFactory() is factory, "installing twice must not wrap the factory twice"
        register_secret("scratch-secret-1")
        child.warning("child %s", "scratch-secret-1")  # its own handler, no filter: the record factory redacts
        named.warning("named %s", "scratch-secret-1")
        foreign.warning("foreign %s", "scratch-secret-1")  # not a project logger: the root handler's filter
        assert at_child.lines == ["child ***"]
        assert at_named.lines == ["named ***"]
        assert at_root.lines == ["foreign ***"]
    finally:
        root.removeHandler(at_root)
        child.removeHandler(at_child)
        named.removeHandler(at_named)
        for lg, level, propagate in saved:
            lg.setLevel(level)
            lg.propagate = propagate
        for lg in (named, root):
            lg.filters = [f for f in lg.filters if not isinstance(f, RedactionFilter)]
        at_root.filters.clear()
        logging.setLogRecordFactory(original)


def test_filter_handles_bad_format_strings_and_stack_info():
    register_secret("stack-secret-9")
    bad = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items for stack-secret-9", ("many",), None)
    assert RedactionFilter().filter(bad) and bad.getMessage() == "%d items for ***"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    record.stack_info = 'File "x.py", line 1, in stack-secret-9'
    RedactionFilter().filter(record)
    assert record.stack_info == 'File "x.py", line 1, in ***'


def test_longer_secrets_are_masked_before_the_secrets_they_contain():
    register_secret("abc", "abcdef-long", "zz1", "aa-zz1-aa")  # by length, not alphabetically
    assert redact("token abcdef-long and abc, aa-zz1-aa and zz1") == "token *** and ***, *** and ***"


def test_registration_edges():
    from datetime import datetime

    from pydantic import SecretStr

    register_secret(SecretStr("from-secretstr"), "xyz", "xy")
    assert redact("from-secretstr xyz xy") == "*** *** xy", "3 characters is long enough, 2 is not"
    register_phi(None, "J Okonkwo-Ade", datetime(1950, 3, 12, 8, 30), "Al")
    assert redact("Okonkwo-Ade J Al 1950-03-12T08:30:00") == f"{PHI_MASK} J {PHI_MASK} {PHI_MASK}:{PHI_MASK}:{PHI_MASK}"


def test_a_new_registry_starts_empty_and_bounded():
    fresh = redaction._Registry()
    with fresh.lock:
        assert fresh.secrets == set() and list(fresh.phi) == [] and fresh.max_phi == redaction.MAX_PHI_VALUES


# Issue 29, escaped bug 7: ``birthDate`` (camelCase) was no longer masked and no test noticed. Every sensitive
# key is masked by its shape alone (the value never registered), in snake_case and camelCase, in JSON, in a
# Python repr and in a query string.
_SENSITIVE_SPELLINGS = [
    ("birth_date", "birthDate"),
    ("first_name", "firstName"),
    ("last_name", "lastName"),
    ("client_secret", "clientSecret"),
    ("access_token", "accessToken"),
    ("refresh_token", "refreshToken"),
    ("id_token", "idToken"),
    ("api_key", "apiKey"),
    ("private_key", "privateKey"),
    ("totp_secret", "totpSecret"),
    ("client_assertion", "clientAssertion"),
    ("medicare_mbi", "medicareMbi"),
    ("medicaid_id", "medicaidId"),
    ("member_id", "memberId"),
]


@pytest.mark.parametrize("key", [k for pair in _SENSITIVE_SPELLINGS for k in pair] + ["BIRTHDATE", "BirthDate"])
@pytest.mark.parametrize("form", ['{{"{k}": "{v}"}}', "{{'{k}': '{v}'}}", "?{k}={v}&x=1", "{k}: {v}"])
def test_sensitive_keys_are_masked_in_snake_and_camel_case(key: str, form: str) -> None:
    value = "Zq1950-03-12Zq"
    text = redact("body " + form.format(k=key, v=value))
    assert value not in text and key in text and "***" in text, text
