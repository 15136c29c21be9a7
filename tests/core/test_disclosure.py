"""disclosure.public_message: what any output may say about an error (issue 24 #1).

Errors that carry server-derived fields are shown by status, allow-listed code, request id, URL path and our fix,
never by their text; errors composed by our own code keep their message; anything else is named by type only.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import httpx

from wellsky_core.disclosure import OTHER_CODE, public_message, public_traceback, safe_code, safe_request_id
from wellsky_core.errors import (
    AuthError,
    AuthorizationRefused,
    ConfigError,
    MfaError,
    RemoteError,
    WellSkyTransportError,
    WriteAborted,
    WriteRefused,
)
from wellsky_core.writes import WriteResult

PHI_TEXT = "Patient Jane Q Okonkwo (MRN 00482913, DOB 1950-03-04, SSN 123-45-6789) is locked"
PHI_VALUES = ("Okonkwo", "00482913", "1950-03-04", "123-45-6789", "Jane")


def hostile(status: int, code: str = PHI_TEXT, url: str = "https://t.example/patients/HH-P7") -> RemoteError:
    """The only way server text can reach a RemoteError: a hostile answer (``RemoteError.from_response``)."""
    request = httpx.Request("GET", url)
    body = {"error": code, "message": PHI_TEXT, "detail": PHI_TEXT}
    return RemoteError.from_response(httpx.Response(status, json=body, request=request))


def _clean(text: str) -> str:
    leaked = [v for v in PHI_VALUES if v in text]
    assert not leaked, f"leaked {leaked}: {text}"
    return text


def test_a_server_error_shows_status_allowed_code_request_id_and_our_fix():
    error = hostile(423, "locked", url="https://t.example/patients/HH-P7?mrn=00482913")
    error.request_id = "req-7f3a9b2c41"
    text = _clean(public_message(error))
    assert text.startswith(
        "WellSky returned an error from https://t.example/patients/HH-P7?mrn=*** (HTTP 423) [locked] "
        "request id req-7f3a9b2c41; "
    )
    error.fix = "unlock the chart in WellSky, then rerun"  # type: ignore[attr-defined]
    assert public_message(error).endswith("; unlock the chart in WellSky, then rerun"), "the builder's fix wins"


def test_codes_outside_the_allow_list_and_odd_request_ids_are_not_shown():
    assert safe_code(PHI_TEXT) == OTHER_CODE and safe_code("Okonkwo") == OTHER_CODE
    assert safe_code("invalid_grant") == "invalid_grant" and safe_code("404") == "404" and safe_code(None) is None
    assert safe_code("RemoteError") == "RemoteError", "our own exception names are codes too"
    assert safe_request_id("00482913") is None, "digits only: could be an MRN"
    assert safe_request_id("Jane Okonkwo") is None and safe_request_id("x" * 200) is None
    assert safe_request_id("7f3a-9b2c-41d0") == "7f3a-9b2c-41d0"
    _clean(public_message(hostile(409)))


def test_each_error_kind_and_an_exception_of_unknown_origin():
    assert _clean(public_message(AuthError(f"refused: {PHI_TEXT}", setting="password", status=401))) == (
        "WellSky did not accept the login (HTTP 401); check `password`"
    )
    assert _clean(public_message(MfaError(PHI_TEXT, method="totp", setting="totp_secret"))) == (
        "no usable MFA code (totp); check `totp_secret`"
    )
    refused = AuthorizationRefused(f"units on {PHI_TEXT}", code="authorization_exceeded")
    assert "too few units left" in _clean(public_message(refused))
    assert public_message(ValueError(PHI_TEXT)) == "unexpected builtins.ValueError"
    config = ConfigError("page_size", "must be 1-1000")
    assert public_message(config) == "invalid configuration: page_size: must be 1-1000"
    transport = WellSkyTransportError("GET gave no usable answer", url="https://t/x?mrn=1", status=503, attempts=3)
    assert public_message(transport) == "GET gave no usable answer [https://t/x?mrn=***; status 503; 3 attempt(s)]"
    result = WriteResult.refused("patients", hostile(500, "server_error"))
    aborted = WriteAborted(result, hostile(500, "server_error"))
    assert _clean(public_message(aborted)).startswith("the write run stopped: WellSky returned an error from ")
    assert "(HTTP 500) [server_error]" in public_message(aborted)
    assert WriteResult.refused("patients", WriteRefused("validation_error", "birth_date: required")).reason == (
        "birth_date: required"
    )


def test_write_results_and_dead_letters_sanitise_what_they_are_given(tmp_path):
    from wellsky_core.audit import AuditLog
    from wellsky_core.deadletter import DeadLetter

    result = WriteResult("patients", "rejected", code=PHI_TEXT, reason="MRN 00482913, DOB 1950-03-04")
    assert result.code == OTHER_CODE and _clean(result.reason or "")
    letters = DeadLetter(tmp_path / "dl.jsonl")
    letters.write(stage="write", stream="patients", reason=hostile(409), payload={},
                  context={"code": PHI_TEXT})
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.record(stream="patients", action="rejected", wellsky_id=None, idempotency_key=None, key_hash=None,
                 code=PHI_TEXT)
    letters.close()
    audit.close()
    _clean((tmp_path / "dl.jsonl").read_text() + (tmp_path / "audit.jsonl").read_text())


def test_public_traceback_keeps_frames_and_chains_but_no_message(caplog):
    def inner() -> None:
        raise hostile(423)

    try:
        try:
            inner()
        except RemoteError as exc:
            raise RuntimeError(PHI_TEXT) from exc
    except RuntimeError as outer:
        text = public_traceback(outer)
    _clean(text)
    assert "in inner" in text and "direct cause" in text and "builtins.RuntimeError" in text


def test_uncaught_exceptions_in_threads_and_main_print_public_tracebacks():
    """An exception nobody catches (a receiver's worker thread, a bug) is printed by Python's hooks."""
    script = (
        "import threading\n"
        "from wellsky_core.redaction import install_redaction\n"
        "import httpx\n"
        "from wellsky_core.errors import RemoteError\n"
        f"TEXT = {PHI_TEXT!r}\n"
        "install_redaction()\n"
        "def work():\n"
        "    answer = httpx.Response(423, json={'error': TEXT, 'message': TEXT}, request=httpx.Request('GET', 'https://t/x'))\n"
        "    raise RemoteError.from_response(answer)\n"
        "t = threading.Thread(target=work); t.start(); t.join()\n"
        "raise ValueError(TEXT)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Exception in thread" in proc.stderr and "HTTP 423" in proc.stderr and "ValueError" in proc.stderr
    _clean(proc.stderr)
    logging.getLogger(__name__).debug("done")


def test_a_field_the_server_names_is_shown_only_when_it_is_one_of_ours():
    error = hostile(422, "validation_error", url="https://t.example/appointments")
    error.field = "end"  # type: ignore[attr-defined]
    assert "field end" in public_message(error)
    error.field = "Okonkwo"  # type: ignore[attr-defined]
    assert "field" not in _clean(public_message(error)).split(";")[0]


def test_our_plain_channel_errors_keep_their_sentence_subclasses_do_not():
    from wellsky_core.errors import WellSkyError

    own = WellSkyError("the Unbilled report refused the filter selection; the portal's filters changed")
    assert public_message(own) == str(own)

    class Unknown(WellSkyError):
        pass

    assert public_message(Unknown(PHI_TEXT)) == "Unknown", "an error class not known to be ours: its name only"
