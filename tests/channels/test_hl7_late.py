"""Batch files that arrive late. HL7: a file copied in with its old times kept, or messages older than the bookmark
in a new file (an interface engine sending what it queued during an outage). Exports: a night's file made again
later with its old stamp. Each stream remembers, in its state, the files
it delivered (``channels/delivered_files.py``), so such records are sent in the next run, in the newest version
any file holds; and where that cannot be checked (``sftp_after_read=delete``) the run says so."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.channels.test_hl7_sftp import sftp_config
from wellsky_core.channels import delivered_files
from wellsky_core.channels.export import ExportChannel
from wellsky_core.channels.hl7_sftp import Hl7SftpChannel
from wellsky_core.config import WellSkyConfig
from wellsky_core.redaction import install_redaction
from wellsky_core.state_codec import MemoError
from wellsky_sandbox.hl7 import feeds_for
from wellsky_sandbox.testing import SandboxServer

Memo = dict[str, Any] | None


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def run(config: WellSkyConfig, since: datetime | None, memo: Memo, entity: str = "patients"
        ) -> tuple[list[dict[str, Any]], Memo, Hl7SftpChannel]:
    """One stream's read as the read loop does it: the memo in, the records, the memo out."""
    with Hl7SftpChannel(config=config, product="home_health") as channel:
        channel.load_memo(entity, memo)
        records = list(channel.iter_records(entity, since))
        return records, channel.dump_memo(entity), channel


def _first_run(sandbox: SandboxServer, config: WellSkyConfig) -> tuple[list[dict[str, Any]], Memo, datetime]:
    patients, memo, _ = run(config, None, None)
    assert patients == sandbox.truth("patients")
    return patients, memo, max(_instant(p["updated_at"]) for p in patients)


def _late_changes(sandbox: SandboxServer, bookmark: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """A patient registered three days before the bookmark that nobody was sent, and an older version (two days
    before the bookmark, another family name) of the patient changed last: what a queued feed sends late."""
    store = sandbox.tenant.store
    newest = max(sandbox.truth("patients"), key=lambda p: (p["updated_at"], p["id"]))
    base = store.get("patients", newest["id"])
    assert base is not None
    registered = {**base, "id": "late-patient-1", "mrn": "LATE0001", "updated_at": _iso(bookmark - timedelta(days=3))}
    stale = {**base, "last_name": "Stalename", "updated_at": _iso(bookmark - timedelta(days=2))}
    return registered, stale


@pytest.mark.parametrize("keep_times", [True, False], ids=["old-file-times-kept", "late-messages-in-a-new-file"])
def test_late_hl7_is_sent_by_the_next_run_in_its_newest_version(
    sandbox: SandboxServer, tmp_path: Path, keep_times: bool
) -> None:
    config = sftp_config(sandbox, tmp_path)
    patients, memo, bookmark = _first_run(sandbox, config)
    registered, stale = _late_changes(sandbox, bookmark)
    feeds_for(sandbox.tenant).hl7.deliver_late([("patients", registered), ("patients", stale)], keep_times=keep_times)

    sent, memo2, _ = run(config, bookmark, memo)
    by_id = {p["id"]: p for p in sent}
    assert "late-patient-1" in by_id, "a patient sent late was skipped without a word"
    assert by_id["late-patient-1"]["mrn"] == "LATE0001"
    newest = next(p for p in patients if p["id"] == stale["id"])
    assert by_id.get(stale["id"], newest) == newest, "a late, older version undid a newer one"
    assert all(p["last_name"] != "Stalename" for p in sent)

    again, _, _ = run(config, bookmark, memo2)  # the run after: the late file is delivered now
    assert "late-patient-1" not in {p["id"] for p in again}


def test_without_the_list_of_delivered_files_a_late_file_is_missed(sandbox: SandboxServer, tmp_path: Path) -> None:
    """What the mtime bookmark alone did (and still does for a state written before the list existed)."""
    config = sftp_config(sandbox, tmp_path)
    _, _, bookmark = _first_run(sandbox, config)
    registered, _ = _late_changes(sandbox, bookmark)
    feeds_for(sandbox.tenant).hl7.deliver_late([("patients", registered)], keep_times=True)
    sent, memo, _ = run(config, bookmark, None)
    assert "late-patient-1" not in {p["id"] for p in sent}
    assert memo is not None and memo["count"] == len(list(feeds_for(sandbox.tenant).hl7.dir.glob("*.hl7")))


def test_archive_mode_checks_a_late_version_against_the_archived_files(sandbox: SandboxServer, tmp_path: Path) -> None:
    config = sftp_config(sandbox, tmp_path, sftp_after_read="archive")
    feed = feeds_for(sandbox.tenant)
    patients, memo, bookmark = _first_run(sandbox, config)
    _, memo2, _ = run(config, bookmark, memo)  # its input state covers the first run's files: they are archived
    archived = list((feed.root / "archive").glob("*.hl7"))
    assert archived and not [p for p in feed.hl7.dir.glob("*.hl7") if p.name in {a.name for a in archived}]
    registered, stale = _late_changes(sandbox, bookmark)
    feed.hl7.deliver_late([("patients", registered), ("patients", stale)], keep_times=True)

    sent, _, _ = run(config, bookmark, memo2)
    by_id = {p["id"]: p for p in sent}
    assert "late-patient-1" in by_id
    newest = next(p for p in patients if p["id"] == stale["id"])
    assert by_id[stale["id"]] == newest, "the newest version is in the archive: it, not the late one, is sent"


def test_delete_mode_holds_late_records_back_and_says_so(
    sandbox: SandboxServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = sftp_config(sandbox, tmp_path, sftp_after_read="delete")
    feed = feeds_for(sandbox.tenant)
    _, memo, bookmark = _first_run(sandbox, config)
    _, memo2, _ = run(config, bookmark, memo)  # the first run's files are deleted now
    registered, _ = _late_changes(sandbox, bookmark)
    late = feed.hl7.deliver_late([("patients", registered)], keep_times=True)

    for memo_in in (memo2, memo2):  # every run says it again while the file waits for a person
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="wellsky_core.channels.hl7_sftp"):
            sent, memo3, channel = run(config, bookmark, memo_in)
        assert "late-patient-1" not in {p["id"] for p in sent}
        assert any("1 record(s) arrived after newer changes" in r.getMessage() and "sftp_after_read=delete"
                   in r.getMessage() for r in caplog.records)
        assert sum(n for kind, n in channel.skipped.items() if "arrived late" in kind) == 1
        assert (feed.hl7.dir / late).exists(), "a file whose records were held back was deleted"
        assert memo3 is not None and delivered_files.file_digest(
            late, (feed.hl7.dir / late).stat().st_mtime, (feed.hl7.dir / late).stat().st_size
        ) not in delivered_files.decode(memo3)
    assert "LATE0001" not in caplog.text


def test_a_damaged_list_is_read_as_no_file_delivered(
    sandbox: SandboxServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    install_redaction()  # as every face runs: the reason must survive the log's redaction, being our own words
    config = sftp_config(sandbox, tmp_path)
    patients, memo, bookmark = _first_run(sandbox, config)
    assert memo is not None
    damaged = {**memo, "files": memo["files"][:-8]}
    with caplog.at_level(logging.WARNING, logger="wellsky_core.channels.delivered_files"):
        sent, _, _ = run(config, bookmark, damaged)
    # cut short, the string is bad base64 or a stream that does not inflate, as its length falls
    assert ("hl7_sftp: patients: the state's list of delivered files (bookmarks.patients.content_hashes) is "
            "unreadable (files ") in caplog.text
    assert "read again" in caplog.text
    assert sorted(p["id"] for p in sent) == sorted(p["id"] for p in patients)


@pytest.mark.parametrize(
    ("memo", "why"),
    [
        ([], "not an object"),
        ({"version": 2, "count": 0, "files": ""}, "version"),
        ({"version": 1, "count": -1, "files": ""}, "count"),
        ({"version": 1, "count": True, "files": ""}, "count"),
        ({"version": 1, "count": 1, "files": 5}, "encoded string"),
        ({"version": 1, "count": 1, "files": "***"}, "base64"),
        ({"version": 1, "count": 1, "files": "AAAA"}, "decompress"),
        ({**delivered_files.encode([b"12345678", b"abcdefgh"]), "count": 3}, "3 digests"),
        ({**delivered_files.encode([b"12345678", b"abcdefgh"]), "count": 1}, "more than 8 bytes"),
    ],
)
def test_the_list_refuses_what_it_did_not_write(memo: Any, why: str) -> None:
    with pytest.raises(MemoError, match=why):
        delivered_files.decode(memo)


def test_the_list_round_trips_and_names_a_file_by_name_time_and_size() -> None:
    digests = {delivered_files.file_digest(f"f{i}.hl7", 1_700_000_000 + i, 100 + i) for i in range(1000)}
    memo = delivered_files.encode(digests)
    assert delivered_files.decode(memo) == digests and memo["count"] == 1000
    assert memo == delivered_files.encode(sorted(digests, reverse=True))
    one = delivered_files.file_digest("a.hl7", 1_700_000_000.7, 10)
    assert one == delivered_files.file_digest("a.hl7", 1_700_000_000, 10)
    assert one != delivered_files.file_digest("a.hl7", 1_700_000_001, 10)
    assert one != delivered_files.file_digest("a.hl7", 1_700_000_000, 11)
    assert one != delivered_files.file_digest("b.hl7", 1_700_000_000, 10)


# -- the export channel: a night's file made again later, with its old stamp ----------------------------------
def _export_run(config: WellSkyConfig, since: datetime | None, memo: Memo
                ) -> tuple[list[dict[str, Any]], Memo, ExportChannel]:
    with ExportChannel(config=config) as channel:
        channel.load_memo("patients", memo)
        records = list(channel.iter_records("patients", since))
        return records, channel.dump_memo("patients"), channel


@pytest.mark.parametrize("with_list", [True, False], ids=["with-the-list", "without-it"])
def test_an_export_night_made_again_later_is_read(sandbox: SandboxServer, tmp_path: Path, with_list: bool) -> None:
    config = sftp_config(sandbox, tmp_path)
    patients, memo, _ = _export_run(config, None, None)
    assert sorted(p["id"] for p in patients) == sorted(p["id"] for p in sandbox.truth("patients"))
    bookmark = max(_instant(p["updated_at"]) for p in patients)
    registered, stale = _late_changes(sandbox, bookmark)
    feeds_for(sandbox.tenant).exports.deliver_late("patients", [registered, stale])

    sent, memo2, _ = _export_run(config, bookmark, memo if with_list else None)
    by_id = {p["id"]: p for p in sent}
    if not with_list:  # the stamp alone: the old night is skipped (a state from before the list)
        assert "late-patient-1" not in by_id
        return
    assert by_id["late-patient-1"]["mrn"] == "LATE0001"
    newest = next(p for p in patients if p["id"] == stale["id"])
    assert by_id.get(stale["id"], newest) == newest and all(p["last_name"] != "Stalename" for p in sent)
    again, _, _ = _export_run(config, bookmark, memo2)
    assert "late-patient-1" not in {p["id"] for p in again}


def test_files_still_arriving_late_at_the_last_pass_wait_for_the_next_run(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that runs out of passes (files kept arriving with old times) sends what it has from the bookmark on
    and keeps every file it had not delivered out of the list: the next run looks at them again."""
    import wellsky_core.channels.hl7_sftp as hl7_module

    config = sftp_config(sandbox, tmp_path)
    _, memo, bookmark = _first_run(sandbox, config)
    registered, _ = _late_changes(sandbox, bookmark)
    late = feeds_for(sandbox.tenant).hl7.deliver_late([("patients", registered)], keep_times=True)
    monkeypatch.setattr(hl7_module, "MAX_PASSES", 1)
    sent, memo2, _ = run(config, bookmark, memo)
    assert "late-patient-1" not in {p["id"] for p in sent}
    stat = (feeds_for(sandbox.tenant).hl7.dir / late).stat()
    assert memo2 is not None
    assert delivered_files.file_digest(late, stat.st_mtime, stat.st_size) not in delivered_files.decode(memo2)
    monkeypatch.setattr(hl7_module, "MAX_PASSES", 4)
    again, _, _ = run(config, bookmark, memo2)
    assert "late-patient-1" in {p["id"] for p in again}


def test_a_memo_error_is_shown_in_its_own_words() -> None:
    """Its sentences are ours and never quote the memo: the public rendering keeps them."""
    from wellsky_core.disclosure import public_message

    with pytest.raises(MemoError) as caught:
        delivered_files.decode({"version": 1, "count": 1, "files": "***"})
    assert public_message(caught.value) == "files is not valid base64 (cut short or edited)"
