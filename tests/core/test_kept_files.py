"""The files the connector keeps (dead letters, the audit trail and its key) when a write fails half way."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from wellsky_core import jsonl
from wellsky_core.audit import AuditLog, key_hash_secret
from wellsky_core.deadletter import DeadLetter
from wellsky_core.errors import ConfigError, LocalWriteFailed


def test_a_line_the_volume_took_half_of_is_cut_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The volume fills in the middle of a line: the half that reached the file is cut, so the next run's
    first entry does not continue a broken line, and the error names the setting, not the entry."""
    path = tmp_path / "dead.jsonl"
    letters = DeadLetter(path)
    letters.write(stage="read", stream="patients", reason="first", payload={"mrn": "MRN-1"})
    real_write = os.write
    calls: list[int] = []

    def half_then_full(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jsonl.os, "write", half_then_full)
    with pytest.raises(LocalWriteFailed) as caught:
        letters.write(stage="read", stream="patients", reason="second", payload={"mrn": "MRN-2"})
    monkeypatch.undo()
    letters.close()
    text = str(caught.value)
    assert "dead_letter_path" in text and "No space left on device" in text and "MRN-2" not in text, text
    assert [entry["reason"] for entry in DeadLetter.read(path)] == ["first"]
    assert path.read_bytes().endswith(b"\n")


def test_close_never_raises_what_a_write_already_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record(stream="patients", action="created", wellsky_id="1", idempotency_key="k", key_hash="h")

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jsonl.os, "write", full)
    with pytest.raises(LocalWriteFailed, match="audit_log_path"):
        log.record(stream="patients", action="created", wellsky_id="2", idempotency_key="k2", key_hash="h2")
    log.close()  # nothing buffered to flush again
    assert [e["wellsky_id"] for e in AuditLog.read(tmp_path / "audit.jsonl")] == ["1"]


def test_a_damaged_audit_key_file_is_refused_naming_the_setting(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    first = key_hash_secret(None, str(audit))
    assert first is not None and key_hash_secret(None, str(audit)) == first, "kept across runs"
    (tmp_path / "audit.jsonl.key").write_text("0123abc")  # a half key a full volume once left
    with pytest.raises(ConfigError) as caught:
        key_hash_secret(None, str(audit))
    assert caught.value.field == "audit_log_path" and "damaged" in str(caught.value)


def test_a_full_volume_anywhere_is_one_line_on_both_faces_and_a_bug_stays_a_bug(tmp_path: Path) -> None:
    import sqlite3

    from wellsky_core.airbyte import describe_error
    from wellsky_core.cli import EXIT_FATAL, EXIT_INTERNAL, exit_code_for

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    db = sqlite3.connect(":memory:")
    try:
        db.execute("PRAGMA max_page_count=2")
        db.execute("CREATE TABLE t (x BLOB)")
        with pytest.raises(sqlite3.OperationalError) as sqlite_full:
            db.execute("INSERT INTO t VALUES (zeroblob(100000))")
    finally:
        db.close()
    for exc in (full, sqlite_full.value):
        message, _, failure_type = describe_error(exc)
        assert message.startswith(("No space left on device", "the disk is full")) and "TMPDIR" in message, message
        assert failure_type == "system_error" and exit_code_for(exc) == EXIT_FATAL
    bug = OSError(errno.EBADF, os.strerror(errno.EBADF))
    assert LocalWriteFailed.from_os_error(bug) is None and exit_code_for(bug) == EXIT_INTERNAL
