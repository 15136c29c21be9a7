"""Log redaction: secrets and patient data never reach captured log output."""

from __future__ import annotations

import logging

import httpx
import pytest

from wellsky_core import redaction
from wellsky_core.channels.rest import rest_pages
from wellsky_core.config import WellSkyConfig
from wellsky_core.http.client import WellSkyClient
from wellsky_core.redaction import (
    PHI_MASK,
    RedactionFilter,
    install_redaction,
    redact,
    register_secret,
)


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


HOSTILE_TEXT = "Patient Jane Q Okonkwo (MRN 00482913, DOB 1950-03-04, SSN 123-45-6789) is locked"
FHIR_PATIENT = (
    '{"resourceType": "Patient", "id": "p1", "name": [{"family": "Okonkwo", "given": ["Jane", "Q"]}], '
    '"telecom": [{"system": "phone", "value": "555-867-5309"}, {"system": "email", "value": "jq@example.org"}], '
    '"address": [{"line": ["12 Elm St", "Apt 4"], "city": "Austin", "postalCode": "78701"}], '
    '"birthDate": "1950-03-04", "identifier": [{"type": {"text": "MR"}, "value": "00482913"}]}'
)


def test_fhir_shaped_bodies_lose_names_telecom_address_identifiers_and_birth_date():
    text = redact(FHIR_PATIENT)
    for leaked in ("Okonkwo", "Jane", "555-867-5309", "jq@example.org", "12 Elm St", "Apt 4", "Austin", "78701",
                   "1950-03-04", "00482913"):
        assert leaked not in text, leaked
    assert '"resourceType": "Patient"' in text and '"id": "p1"' in text, "structure stays readable"
    native = str({"name": {"first": "Mary", "last": "Okafor"}, "mrn": "Z-77"})  # a Python dict in a log line
    assert "Mary" not in redact(native) and "Okafor" not in redact(native) and "Z-77" not in redact(native)


def test_labelled_identifiers_ssn_phone_and_session_cache_key_in_prose():
    text = redact(HOSTILE_TEXT + "; call (555) 867-5309; /Scheduler.cfm?sessionCacheKey=9f8e7d6c&x=1")
    for leaked in ("00482913", "1950-03-04", "123-45-6789", "867-5309", "9f8e7d6c"):
        assert leaked not in text, leaked
    assert "MRN [PHI]" in text and "DOB [PHI]" in text and text.count(PHI_MASK) >= 4
    assert redact("GET /patients?mrn=Z-77&limit=5") == "GET /patients?mrn=***&limit=5"
    assert redact("gave no usable answer (last: deadline); 3 attempt(s), 2026-12-06") == (
        "gave no usable answer (last: deadline); 3 attempt(s), 2026-12-06"
    ), "our own words, counts and dates stay readable"


def test_there_is_no_phi_value_registry():
    """register_phi had no caller but the tests: deleted, with every claim about it (docs/reliability.md)."""
    assert not hasattr(redaction, "register_phi")
    assert "register_phi" not in (redaction.__doc__ or "").replace("``register_phi``", "")


def test_filter_redacts_args_exceptions_and_child_loggers(caplog):
    """An exception logged as an argument or with exc_info shows its public message, never its text."""
    from wellsky_core.errors import RemoteError

    install_redaction()
    register_secret("pw-in-a-traceback")
    log = logging.getLogger("wellsky_core.normalize.deep.child")
    caplog.set_level(logging.DEBUG)
    log.info("patient %s logged in with %s", {"family": "Quixote"}, "pw-in-a-traceback")
    detail = "bad record for Quixote with pw-in-a-traceback"  # a variable: the frames show source lines
    try:
        raise ValueError(detail)
    except ValueError:
        log.exception("failed")
    answer = httpx.Response(423, json={"error": "Patient Quixote is locked", "message": HOSTILE_TEXT},
                            request=httpx.Request("GET", "https://t.example/patients/7"))
    server = RemoteError.from_response(answer)  # the one way server text reaches an error
    log.warning("write refused: %s", server)
    try:
        raise server
    except RemoteError:
        logging.getLogger("tap_wellsky.streams").error("stream failed", exc_info=True)
    logging.getLogger("httpx").info("HTTP Request: GET /patients?mrn=%s", "Quixote")
    output = caplog.text + "".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for leaked in ("Quixote", "pw-in-a-traceback", "Okonkwo", "00482913", "1950-03-04", "123-45-6789"):
        assert leaked not in output, leaked
    assert "HTTP 423" in output and "[unlisted_code]" in output and "/patients/7" in output
    assert "Traceback" in output and "test_redaction.py" in output, "the frames are kept"


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
        for page in rest_pages(client, "/patients", {"limit": 5}):
            for native in page:  # a record dumped into a log line: masked by its shape (no value registry)
                logging.getLogger("wellsky_core.normalize").debug("normalized %s", native)
        cookie = client.auth._cookie
        assert sum(client.metrics.retries.values()) > 0
    output = caplog.text
    assert "wellsky_core.http.client" in output and "HTTP Request" in output
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
    from pydantic import SecretStr

    register_secret(SecretStr("from-secretstr"), "xyz", "xy")
    assert redact("from-secretstr xyz xy") == "*** *** xy", "3 characters is long enough, 2 is not"


def test_a_new_registry_starts_empty():
    fresh = redaction._Registry()
    with fresh.lock:
        assert fresh.secrets == set()


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
