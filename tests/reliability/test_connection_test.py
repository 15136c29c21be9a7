"""``tap-wellsky --test`` proves the connection without printing a patient record to stdout (issue 16, risks).

The SDK's ``--test`` emits one RECORD per stream: a full patient (name, birth date, MRN) lands in whatever
captures stdout, typically a CI log. Now ``--test`` reads one record per stream and reports counts on stderr;
``--test=records`` is the explicit ask for the SDK's behaviour.
"""

from __future__ import annotations

import subprocess

from .conftest import child_env, tap_args, tap_config


def _test(tmp_path, sandbox, flag: str) -> subprocess.CompletedProcess[str]:
    cmd = [*tap_args(tmp_path, tap_config(sandbox)), flag]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=child_env())


def test_test_reads_but_prints_no_record(tmp_path, sandbox):
    proc = _test(tmp_path, sandbox, "--test")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"RECORD"' not in proc.stdout
    patient = sandbox.truth("patients")[0]
    assert patient["last_name"] not in proc.stdout + proc.stderr
    assert "patients: 1 record read (not printed" in proc.stderr


def test_test_records_is_the_explicit_ask(tmp_path, sandbox):
    proc = _test(tmp_path, sandbox, "--test=records")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count('"type":"RECORD"') + proc.stdout.count('"type": "RECORD"') >= 8
