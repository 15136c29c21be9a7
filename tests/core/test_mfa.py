"""MFA against a real sandbox tenant over loopback: TOTP, SMS and email codes from every code source."""

from __future__ import annotations

import sys
import threading
import time

import pyotp
import pytest

from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import MfaError
from wellsky_core.http.auth import SessionAuth
from wellsky_core.http.client import WellSkyClient
from wellsky_core.http.mfa import Challenge, TotpSource


@pytest.fixture
def mfa_sandbox(sandbox_factory):
    return sandbox_factory(scale=20, mfa=True, sftp_port=None)


def session_config(sb, **extra) -> WellSkyConfig:
    return WellSkyConfig.load(
        {"base_url": sb.base_url, "username": sb.username, "password": sb.password, "max_retries": 1, **extra},
        env={},
    )


def login_and_check(cfg: WellSkyConfig) -> WellSkyClient:
    client = WellSkyClient(cfg)
    assert client.get_json("/tenant")["product"] == "home_health"
    assert isinstance(client.auth, SessionAuth) and client.auth.logins == 1
    return client


def test_totp(mfa_sandbox):
    with login_and_check(session_config(mfa_sandbox, mfa_method="totp", totp_secret=mfa_sandbox.totp_secret)):
        pass


@pytest.mark.parametrize("method", ["sms", "email"])
def test_sms_and_email_from_sandbox_outbox(mfa_sandbox, method):
    cfg = session_config(mfa_sandbox, mfa_method=method, mfa_code_source="sandbox_outbox")
    with login_and_check(cfg):
        sent = [m for m in mfa_sandbox.outbox() if m["method"] == method]
        assert len(sent) == 1 and sent[0]["to"] == mfa_sandbox.username


def test_sms_from_command(mfa_sandbox, tmp_path):
    """The command gets the challenge id in its environment and polls the outbox like a phone gateway would."""
    script = tmp_path / "fetch_code.py"
    script.write_text(
        "import os, sys, time, httpx\n"
        "cid = os.environ['WELLSKY_MFA_CHALLENGE_ID']\n"
        "assert os.environ['WELLSKY_MFA_METHOD'] == 'sms'\n"
        "for _ in range(50):\n"
        f"    msgs = httpx.get('{mfa_sandbox.base_url}/_sandbox/outbox').json()['messages']\n"
        "    hits = [m['code'] for m in msgs if m['challenge_id'] == cid]\n"
        "    if hits:\n"
        "        print('Your WellSky code is', hits[-1]); sys.exit(0)\n"
        "    time.sleep(0.1)\n"
        "sys.exit(1)\n"
    )
    cfg = session_config(mfa_sandbox, mfa_method="sms", mfa_code_command=f"{sys.executable} {script}")
    with login_and_check(cfg):
        pass


def test_email_from_watched_file(mfa_sandbox, tmp_path):
    code_file = tmp_path / "code.txt"
    code_file.write_text("old code 000000\n")
    stop = threading.Event()

    def mail_robot() -> None:
        """Copies the code into the file a moment after it is sent, like a mail rule would."""
        while not stop.is_set():
            msgs = [m for m in mfa_sandbox.outbox() if m["method"] == "email"]
            if msgs:
                time.sleep(0.3)
                code_file.write_text(f"Subject: sign-in code\n\nYour code: {msgs[-1]['code']}\n")
                return
            time.sleep(0.05)

    robot = threading.Thread(target=mail_robot, daemon=True)
    robot.start()
    try:
        cfg = session_config(
            mfa_sandbox, mfa_method="email", mfa_code_source="file", mfa_code_file=str(code_file)
        )
        with login_and_check(cfg):
            pass
    finally:
        stop.set()
        robot.join(5)


def test_command_without_code_times_out_naming_method_and_setting(mfa_sandbox):
    cfg = session_config(
        mfa_sandbox, mfa_method="sms", mfa_code_command="echo no code here", mfa_code_timeout_seconds=1
    )
    start = time.monotonic()
    with pytest.raises(MfaError) as info, WellSkyClient(cfg) as client:
        client.get_json("/tenant")
    assert time.monotonic() - start < 5
    assert info.value.method == "sms" and info.value.setting == "mfa_code_command"
    assert "sms" in str(info.value) and "mfa_code_command" in str(info.value)


def test_file_source_times_out(mfa_sandbox, tmp_path):
    cfg = session_config(
        mfa_sandbox,
        mfa_method="email",
        mfa_code_source="file",
        mfa_code_file=str(tmp_path / "never-written.txt"),
        mfa_code_timeout_seconds=0.5,
    )
    with pytest.raises(MfaError) as info, WellSkyClient(cfg) as client:
        client.get_json("/tenant")
    assert info.value.method == "email" and "mfa_code_file" in str(info.value)


def test_wrong_totp_secret_is_rejected(mfa_sandbox):
    cfg = session_config(
        mfa_sandbox, mfa_method="totp", totp_secret=pyotp.random_base32(), mfa_code_timeout_seconds=0.5
    )
    with pytest.raises(MfaError) as info, WellSkyClient(cfg) as client:
        client.get_json("/tenant")
    assert info.value.method == "totp" and "totp_secret" in str(info.value)
    assert "rejected" in str(info.value)


def test_a_refused_login_fails_every_waiting_request_without_logging_in_again(mfa_sandbox):
    """Parallel streams share one auth: after WellSky refuses the credentials, the others fail at once.

    Each further login would be refused too, after its own wait for the next TOTP step (8 streams took 237 s).
    """
    cfg = session_config(
        mfa_sandbox, mfa_method="totp", totp_secret=pyotp.random_base32(), mfa_code_timeout_seconds=0.5
    )
    with WellSkyClient(cfg) as client:
        auth = client.auth
        assert isinstance(auth, SessionAuth)
        logins = []
        real_login = auth._login

        def counted_login():
            logins.append(threading.current_thread().name)
            return (yield from real_login())

        auth._login = counted_login
        errors: list[BaseException] = []

        def call() -> None:
            try:
                client.get_json("/tenant")
            except BaseException as exc:  # collected and checked below
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        with pytest.raises(MfaError):
            client.get_json("/tenant")  # a later request too
    assert len(errors) == 4 and all(isinstance(e, MfaError) and "totp_secret" in str(e) for e in errors), errors
    assert len(logins) == 1, f"{len(logins)} logins after a refusal"


def test_tenant_asking_for_mfa_without_mfa_method(mfa_sandbox):
    with pytest.raises(MfaError) as info, WellSkyClient(session_config(mfa_sandbox)) as client:
        client.get_json("/tenant")
    assert info.value.setting == "mfa_method" and "mfa_method" in str(info.value)


def test_totp_source_waits_for_the_next_step_after_a_rejection():
    clock_now = [1_000_000.0]

    def clock() -> float:
        return clock_now[0]

    def sleep(seconds: float) -> None:
        clock_now[0] += seconds

    source = TotpSource(pyotp.random_base32(), 60, clock=clock, sleep=sleep)
    challenge = Challenge("c", "totp", "u", clock())
    first = source.get_code(challenge)
    second = source.get_code(challenge, previous=first)
    assert second != first and clock_now[0] > 1_000_000.0


def test_outbox_source_only_takes_this_challenges_code(mfa_sandbox):
    """Two logins in a row: each picks its own code, never the previous challenge's."""
    cfg = session_config(mfa_sandbox, mfa_method="sms", mfa_code_source="sandbox_outbox")
    for _ in range(2):
        with login_and_check(cfg):
            pass
    challenge_ids = [m["challenge_id"] for m in mfa_sandbox.outbox()]
    assert len(challenge_ids) == 2 and len(set(challenge_ids)) == 2
