"""Nothing the user sees (stderr, logs, error messages, audit trail) holds a secret or a patient identifier.

Everything runs as real subprocesses at ``LOGLEVEL=DEBUG``: a full MFA (TOTP) sync under faults with cookie
rotation, an OAuth client-credentials sync, a target run with accepted, refused and invalid records, and the
failure cases (wrong password, wrong TOTP secret, wrong client secret, read-only tenant). The sandbox runs in
this process, so every session cookie and access token it issues is recorded as it is minted; the search list
is those values, the configured secrets, and every patient's full name, last name, birth date and MRN.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from wellsky_core.schemas import stream_schema

from .conftest import TARGET_CMD, assert_no_traceback, child_env, run_target_cli, tap_args, tap_config, write_json

FAULTS = "error=0.1,reset=0.05,malformed=0.05,retry_after=0,seed=5"


class IssuedCredentials:
    """Wraps the sandbox's session and token minting to remember every credential value it hands out."""

    def __init__(self, sb: Any) -> None:
        self.values: set[str] = set()
        self.kinds: dict[str, int] = {"session": 0, "rotated": 0, "token": 0}
        security = sb.tenant.security
        new_session, session_for_cookie, issue_token = (
            security.new_session, security.session_for_cookie, security.issue_token
        )

        def minted_session(user: str) -> tuple[str, str]:
            sid, token = new_session(user)
            self.values.add(token)
            self.kinds["session"] += 1
            return sid, token

        def rotated(token: str) -> Any:
            principal, new = session_for_cookie(token)
            if new:
                self.values.add(new)
                self.kinds["rotated"] += 1
            return principal, new

        def token(*args: Any, **kwargs: Any) -> dict[str, Any]:
            answer = issue_token(*args, **kwargs)
            self.values.add(answer["access_token"])
            self.kinds["token"] += 1
            return answer

        security.new_session, security.session_for_cookie, security.issue_token = minted_session, rotated, token


REDACTION_OFF = (  # the same CLI with redaction switched off in the child only (the control run)
    "import runpy, sys; import wellsky_core.redaction as r; r.redact = lambda text, **_: text; "
    "sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def _without_redaction(cmd: list[str]) -> list[str]:
    """``python -m module args`` -> the same run with ``wellsky_core.redaction.redact`` a no-op."""
    assert cmd[1] == "-m", cmd
    return [cmd[0], "-c", REDACTION_OFF, *cmd[2:]]


def _run(cmd: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    import subprocess

    env = {**child_env(), "LOGLEVEL": "DEBUG"}
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=180)
    return proc.returncode, proc.stdout, proc.stderr


def _phi(sb: Any) -> list[str]:
    values: list[str] = []
    for p in sb.truth("patients"):
        values += [f"{p['first_name']} {p['last_name']}", p["birth_date"]]
        if len(p["last_name"]) >= 5:  # shorter surnames (e.g. "Lee") also occur as parts of ordinary words
            values.append(p["last_name"])
        if p.get("mrn"):
            values.append(p["mrn"])
    return values


def _leaks(texts: dict[str, str], sensitive: list[str]) -> list[str]:
    found = []
    for where, text in texts.items():
        for value in sensitive:
            if value and re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", text):
                found.append(f"{where}: {value[:3]}…")
    return found


def test_no_secret_token_cookie_or_patient_identifier_in_any_output(sandbox_factory, tmp_path: Path) -> None:
    sb = sandbox_factory(scale=40, mfa=True, sftp_port=None, faults=FAULTS, cookie_rotate_seconds=0.05)
    issued = IssuedCredentials(sb)
    texts: dict[str, str] = {}
    mfa = {"mfa_method": "totp", "totp_secret": sb.totp_secret}

    # 1. full MFA session sync under faults (retries, rotation, re-logins all log something)
    code, stdout, stderr = _run(tap_args(tmp_path, tap_config(sb, page_size=20, **mfa), tag="tap-mfa"))
    assert code == 0, stderr[-1500:]
    texts["tap mfa sync stderr"] = stderr
    assert "retrying" in stderr, "the faults must have produced retry log lines to inspect"
    synced = [json.loads(x) for x in stdout.splitlines() if x.startswith('{"type":"RECORD"')]
    assert synced

    # 2. OAuth client-credentials sync (bearer tokens)
    oauth = {"auth_method": "oauth_client_credentials", "client_id": sb.client_id, "client_secret": sb.client_secret}
    cfg = {k: v for k, v in tap_config(sb, **oauth).items() if k not in ("username", "password")}
    code, _, stderr = _run(tap_args(tmp_path, cfg, tag="tap-oauth"))
    assert code == 0, stderr[-1500:]
    texts["tap oauth sync stderr"] = stderr

    # 3. failure cases: wrong password, wrong TOTP secret, wrong client secret
    wrong_totp = base64.b32encode(b"not-the-secret-000!").decode()
    for tag, extra in (
        ("wrong password", {"password": sb.password[::-1], **mfa}),
        ("wrong totp", {"mfa_method": "totp", "totp_secret": wrong_totp}),
        ("wrong client secret", {**oauth, "client_secret": sb.client_secret[::-1]}),
    ):
        config = {**tap_config(sb, max_retries=1), **extra}
        code, _, stderr = _run(tap_args(tmp_path, config, tag=tag.replace(" ", "-")))
        assert code != 0, f"{tag} was accepted"
        assert_no_traceback(stderr, tag)
        texts[f"tap {tag} stderr"] = stderr

    # 4. target: unchanged, created, invalid and refused records, with an audit trail
    patients = [r["record"] for r in synced if r["stream"] == "patients"][:15]
    fresh = [{**{k: v for k, v in p.items() if k not in ("id", "updated_at")}, "mrn": f"LEAK-{i:04d}"}
             for i, p in enumerate(patients[:5])]
    invalid = [{**p, "birth_date": "31/02/1950"} for p in patients[5:8]]
    lines = [json.dumps({"type": "SCHEMA", "stream": "patients", "schema": stream_schema("patients"),
                         "key_properties": ["id"]})]
    lines += [json.dumps({"type": "RECORD", "stream": "patients", "record": r}) for r in patients + fresh + invalid]
    target_cfg = {**tap_config(sb, **mfa), "audit_log_path": str(tmp_path / "audit.jsonl"),
                  "dead_letter_path": str(tmp_path / "dead.jsonl")}
    result = run_target_cli(tmp_path, target_cfg, "\n".join(lines) + "\n", tag="target-mixed")
    assert result.returncode == 3, result.stderr[-1500:]
    texts["target stderr"] = result.stderr

    # control: the same tap and target runs with redaction switched off must show patient values, or the
    # search below would prove nothing about PHI
    control: dict[str, str] = {}
    code, _, control["tap"] = _run(_without_redaction(tap_args(tmp_path, tap_config(sb, page_size=20, **mfa),
                                                               tag="tap-control")))
    assert code == 0, control["tap"][-1500:]
    code, _, control["target"] = _run(
        _without_redaction([*TARGET_CMD, "--config", str(write_json(tmp_path / "control.json", target_cfg))]),
        "\n".join(lines) + "\n",
    )
    assert code == 3, control["target"][-1500:]
    texts["target audit log"] = (tmp_path / "audit.jsonl").read_text()
    sb.set_tenant(read_only=True)
    result = run_target_cli(tmp_path, {**target_cfg, "audit_log_path": str(tmp_path / "audit-ro.jsonl")},
                            "\n".join(lines[:1] + lines[-3:]) + "\n", tag="target-ro")
    texts["target read-only stderr"] = result.stderr
    sb.set_tenant(read_only=False)
    target_bad = run_target_cli(tmp_path, target_cfg, lines[0] + "\n" + lines[1][:-20] + "\n", tag="target-bad")
    assert target_bad.returncode == 2
    texts["target bad-input stderr"] = target_bad.stderr

    for where, text in texts.items():
        assert_no_traceback(text, where)
    assert all(issued.kinds.values()), f"sessions, rotated cookies and tokens must all occur: {issued.kinds}"
    secrets = [sb.password, sb.totp_secret, sb.client_secret, *sorted(issued.values)]
    phi = _phi(sb) + [f"{p['first_name']} {p['last_name']}" for p in fresh]
    everyone = sb.truth("patients") + fresh
    kinds = {
        "name": [p["last_name"] for p in everyone if len(p["last_name"]) >= 5],
        "birth date": [p["birth_date"] for p in everyone],
        "MRN": [p["mrn"] for p in everyone if p.get("mrn")],
    }
    for run, text in control.items():
        for kind, values in kinds.items():
            assert _leaks({run: text}, values), f"without redaction the {run} run should show a patient {kind}"
    unredacted = _leaks(control, phi)
    leaks = _leaks(texts, secrets + phi)
    assert not leaks, f"{len(leaks)} sensitive values leaked: {leaks[:10]}"
    size = sum(len(t) for t in texts.values())
    print(f"FIGURES leaks: 0 of {len(secrets)} secrets/credentials and {len(phi)} PHI values in {size} bytes "
          f"of output from {len(texts)} runs; credentials issued {issued.kinds}; control runs without redaction "
          f"showed {len(unredacted)} patient values")
