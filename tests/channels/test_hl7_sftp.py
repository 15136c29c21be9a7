"""hl7_sftp channel against the sandbox's SFTP server and against a real OpenSSH sshd (loopback)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.channels.child_probe import run_child
from wellsky_core.channels.hl7_sftp import Hl7SftpChannel
from wellsky_core.config import WellSkyConfig
from wellsky_core.deadletter import DeadLetter
from wellsky_core.errors import AuthError, ConfigError, WellSkyTransportError
from wellsky_sandbox.hl7 import feeds_for
from wellsky_sandbox.testing import SandboxServer

SFTP_KEYS = (
    "base_url",
    "username",
    "password",
    "sftp_host",
    "sftp_port",
    "sftp_username",
    "sftp_password",
    "sftp_host_key",
)


def sftp_config(sandbox: SandboxServer, tmp_path: Path, **over: Any) -> WellSkyConfig:
    creds = sandbox.credentials()
    raw = {k: creds[k] for k in SFTP_KEYS} | {"dead_letter_path": str(tmp_path / "dead.jsonl"),
                                              "state_dir": str(tmp_path / "state")}
    raw.update(over)
    return WellSkyConfig.load({k: v for k, v in raw.items() if v is not None})


def read_patients(config: WellSkyConfig) -> list[dict[str, Any]]:
    with Hl7SftpChannel(config=config) as channel:
        return list(channel.iter_records("patients", None))


def test_reads_all_entities_then_only_newer(sandbox: SandboxServer, tmp_path: Path) -> None:
    config = sftp_config(sandbox, tmp_path)
    with Hl7SftpChannel(config=config, product="home_health") as channel:
        patients = list(channel.iter_records("patients", None))
        assert patients == sandbox.truth("patients")
        assert channel.bookmark()["file"] is not None and channel.files_read >= 2
        assert not channel.supports("care_plans")
    result = sandbox.advance(count=40, seed=4)
    since = datetime.fromisoformat(result["updated_at"].replace("Z", "+00:00"))
    with Hl7SftpChannel(config=config) as channel:
        newer = list(channel.iter_records("appointments", since))
        truth = sandbox.truth("appointments", updated_since=result["updated_at"])
        assert newer == truth and len(newer) == result["by_entity"].get("appointments", 0)
        assert channel.files_read == 1  # older files skipped by mtime, unread
    assert DeadLetter.read(tmp_path / "dead.jsonl") == []


def test_unknown_or_mismatched_host_key_is_refused(sandbox: SandboxServer, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as no_pin:
        read_patients(sftp_config(sandbox, tmp_path, sftp_host_key=None))
    assert no_pin.value.field == "sftp_host_key"
    other = paramiko.ECDSAKey.generate()
    with (
        pytest.raises(AuthError, match="host key mismatch") as bad,
        Hl7SftpChannel(
            config=sftp_config(sandbox, tmp_path, sftp_host_key=f"{other.get_name()} {other.get_base64()}")
        ) as channel,
    ):
        list(channel.iter_records("patients", None))
    assert bad.value.setting == "sftp_host_key"
    wrong_ed = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    with pytest.raises(AuthError, match="host key mismatch"):
        read_patients(sftp_config(sandbox, tmp_path, sftp_host_key=wrong_ed))
    known = tmp_path / "known_hosts"
    creds = sandbox.credentials()
    known.write_text(f"[{creds['sftp_host']}]:{creds['sftp_port']} {creds['sftp_host_key']}\n")
    with Hl7SftpChannel(config=sftp_config(sandbox, tmp_path, sftp_host_key=None, sftp_known_hosts=str(known))) as ch:
        assert len(list(ch.iter_records("encounters", None))) == len(sandbox.truth("encounters"))


def test_an_sftp_server_that_cannot_be_reached_is_one_line_naming_the_settings(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """A refused connection was paramiko's ``SSHException`` ("an unexpected SSHException; report it", with a
    traceback, on both faces), and paramiko connected without any timeout: a host dropping SYNs held the run for
    the kernel's minutes. Our own socket now connects within ``timeout_seconds``."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    with pytest.raises(WellSkyTransportError, match="check sftp_host and sftp_port") as refused:
        read_patients(sftp_config(sandbox, tmp_path, sftp_port=port))
    assert refused.value.reason == "ConnectionRefusedError"
    started = time.monotonic()
    with pytest.raises(WellSkyTransportError, match="check sftp_host and sftp_port"):  # TEST-NET-1: never answers
        read_patients(sftp_config(sandbox, tmp_path, sftp_host="192.0.2.1", timeout_seconds=1))
    assert time.monotonic() - started < 10


def test_bad_password_names_the_setting(sandbox: SandboxServer, tmp_path: Path) -> None:
    with pytest.raises(AuthError) as exc:
        read_patients(sftp_config(sandbox, tmp_path, sftp_password="not-it"))
    assert exc.value.setting == "sftp_password" and "not-it" not in str(exc.value)


def test_archive_after_read_and_key_auth(sandbox: SandboxServer, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    sandbox.control("POST", "/_sandbox/sftp/authorized-keys", json={"public_key": pub})
    config = sftp_config(sandbox, tmp_path, sftp_password=None, sftp_private_key=pem, sftp_after_read="archive")
    inbox = feeds_for(sandbox.tenant).hl7.dir
    archive = feeds_for(sandbox.tenant).root / "archive"
    with Hl7SftpChannel(config=config) as channel:
        patients = list(channel.iter_records("patients", None))
        assert patients == sandbox.truth("patients")
    # a file moves only once a later run's bookmark shows its records were delivered: the first run proves nothing
    assert list(archive.iterdir()) == []
    bookmark = max(datetime.fromisoformat(p["updated_at"].replace("Z", "+00:00")) for p in patients)
    mtimes = {p.name: p.stat().st_mtime for p in inbox.glob("*.hl7")}
    # a late file whose mtime is older than the bookmark (copied with its times kept): no scan reads it, so no
    # run may move it either; it stays where a person can find it
    late = inbox / "19990101T000000Z-late.hl7"
    late.write_bytes(next(inbox.glob("*.hl7")).read_bytes())
    os.utime(late, (0, 0))
    with Hl7SftpChannel(config=config) as channel:  # the next run, from the committed bookmark
        again = list(channel.iter_records("patients", bookmark))
        assert all(p["updated_at"] >= patients[-1]["updated_at"] for p in again)
    moved = sorted(p.name for p in archive.iterdir())
    assert moved and moved == sorted(n for n, m in mtimes.items() if m < bookmark.timestamp())
    kept = sorted([late.name, *(n for n, m in mtimes.items() if m >= bookmark.timestamp())])
    assert sorted(p.name for p in inbox.glob("*.hl7")) == kept


def test_a_full_sync_under_archive_reads_the_archive_too(sandbox: SandboxServer, tmp_path: Path) -> None:
    """A full refresh (a new destination, `meltano run --full-refresh`) after earlier runs archived files read the
    inbox only: every record held only by archived files was missing, without a word. It reads the archive too."""
    config = sftp_config(sandbox, tmp_path, sftp_after_read="archive")
    archive = feeds_for(sandbox.tenant).root / "archive"
    with Hl7SftpChannel(config=config) as channel:
        patients = list(channel.iter_records("patients", None))
    bookmark = max(datetime.fromisoformat(p["updated_at"].replace("Z", "+00:00")) for p in patients)
    with Hl7SftpChannel(config=config) as channel:  # the next run: its input state shows the files delivered
        list(channel.iter_records("patients", bookmark))
    assert list(archive.iterdir()), "files were archived"
    with Hl7SftpChannel(config=config) as channel:  # a full sync: no state
        again = list(channel.iter_records("patients", None))
    assert again == sandbox.truth("patients")


# -- a real OpenSSH server ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keypair(path: Path) -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return pem.decode(), pub


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """sshd -D on a loopback port: internal-sftp only, key auth, files served from ``home``."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(binary):
        pytest.skip("OpenSSH sshd is not installed (apt-get install openssh-server)")
    root = tmp_path / "sshd"
    home = root / "home"
    (home / "outbound" / "hl7").mkdir(parents=True)
    (home / "archive").mkdir()
    _, host_pub = _keypair(root / "host_ed25519")
    client_pem, client_pub = _keypair(root / "client_ed25519")
    (root / "authorized_keys").write_text(client_pub + "\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory sshd insists on
    port = _free_port()
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_ed25519'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"AllowUsers {user}\nSubsystem sftp internal-sftp\nForceCommand internal-sftp -d {home}\n"
        "LogLevel ERROR\n"
    )
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(root / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"sshd did not start: {err[-500:]}")
            time.sleep(0.05)
    try:
        yield {"port": port, "home": home, "user": user, "host_key": host_pub, "client_key": client_pem}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.sshd
def test_real_openssh_server(sshd: dict[str, Any], sandbox: SandboxServer, tmp_path: Path) -> None:
    feeds = feeds_for(sandbox.tenant)
    feeds.refresh()
    for path in sorted(feeds.hl7.dir.glob("*.hl7")):
        shutil.copy2(path, sshd["home"] / "outbound" / "hl7" / path.name)
    creds = sandbox.credentials()
    base = {
        "base_url": creds["base_url"],
        "username": creds["username"],
        "password": creds["password"],
        "sftp_host": "127.0.0.1",
        "sftp_port": sshd["port"],
        "sftp_username": sshd["user"],
        "sftp_private_key": sshd["client_key"],
        "sftp_hl7_dir": str(sshd["home"] / "outbound" / "hl7"),
        "dead_letter_path": str(tmp_path / "dead.jsonl"),
        "state_dir": str(tmp_path / "state"),
    }
    config = WellSkyConfig.load(base | {"sftp_host_key": sshd["host_key"], "sftp_after_read": "archive"})
    bookmarks = {}
    with Hl7SftpChannel(config=config, archive_dir=str(sshd["home"] / "archive")) as channel:
        for entity in ("patients", "appointments", "encounters"):
            read = list(channel.iter_records(entity, None))
            assert read == sandbox.truth(entity)
            bookmarks[entity] = datetime.fromisoformat(read[-1]["updated_at"].replace("Z", "+00:00"))
    assert list((sshd["home"] / "archive").iterdir()) == [], "moved before a later run's bookmark covered it"
    inbox = sshd["home"] / "outbound" / "hl7"
    cut = min(bookmarks.values()).timestamp()
    mtimes = {p.name: p.stat().st_mtime for p in inbox.iterdir()}
    with Hl7SftpChannel(config=config, archive_dir=str(sshd["home"] / "archive")) as channel:
        for entity, since in bookmarks.items():
            list(channel.iter_records(entity, since))
    assert sorted(p.name for p in (sshd["home"] / "archive").iterdir()) == sorted(
        n for n, m in mtimes.items() if m < cut
    )
    assert sorted(p.name for p in inbox.iterdir()) == sorted(n for n, m in mtimes.items() if m >= cut)
    mismatch = WellSkyConfig.load(base | {"sftp_host_key": sandbox.credentials()["sftp_host_key"]})
    with pytest.raises(AuthError, match="host key mismatch"), Hl7SftpChannel(config=mismatch) as channel:
        list(channel.iter_records("patients", None))


def test_standard_interface_engine_files_over_sftp(sandbox: SandboxServer, tmp_path: Path) -> None:
    """The hand-written standard fixtures dropped beside WellSky's own feed: BOM, MLLP, batches, every line ending;
    merges mark the merged id, unsupported types are counted per type, nothing is dead-lettered."""
    import json
    import shutil

    from wellsky_core.deadletter import DeadLetter
    from wellsky_sandbox.hl7 import feeds_for

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "hl7"
    feeds = feeds_for(sandbox.tenant)
    feeds.refresh()
    for i, source in enumerate(sorted(fixtures.glob("*.hl7"))):
        shutil.copy(source, feeds.hl7.dir / f"29990101T0000{i:02d}Z-{source.stem}.hl7")
    expected = json.loads((fixtures / "expected.json").read_text())
    config = sftp_config(sandbox, tmp_path, hl7_timezone=expected["_options"]["timezone"])
    with Hl7SftpChannel(config=config) as channel:
        records = {e: {r["id"]: r for r in channel.iter_records(e, None)} for e in ("patients", "appointments",
                                                                                  "encounters")}
        skipped = dict(channel.skipped)
    assert DeadLetter.read(tmp_path / "dead.jsonl") == []
    assert skipped == {"MDM^T02": 1, "ACK^A01": 1, "ADT^A17": 1, "ORM^O01": 1, "SIU^S23": 1}
    assert records["patients"]["MRN500"]["merged_ids"] == ["MRN501"]
    assert records["patients"]["MRN600"]["merged_ids"] == ["MRN-OLD-600"]
    assert records["appointments"]["FL-3007"]["status"] == "missed"
    assert records["appointments"]["FL-2001"]["location_name"] == "Patient home"
    assert records["encounters"]["VISIT-9001"]["vitals"]["pulse_bpm"] == 72
    wanted = [r for name, messages in expected.items() if not name.startswith("_") for m in messages
              if isinstance(m, list) for r in m]
    for want in wanted:
        assert want["id"] in records[want["entity"]], want["id"]


def test_a_large_batch_file_is_read_a_block_at_a_time(sandbox: SandboxServer, tmp_path: Path) -> None:
    """A backfill batch file was read whole, then decoded whole, then split whole: a 40 MB file held ~4x its size
    at once. The file is now read in blocks and cut into messages as it arrives; each message is decoded on its
    own (UTF-8, else Latin-1 for that message alone), so one legacy message no longer turns a UTF-8 file's
    accents into mojibake."""
    feeds = feeds_for(sandbox.tenant)
    feeds.refresh()
    for old in feeds.hl7.dir.glob("*.hl7"):
        old.unlink()
    unsupported = (
        "MSH|^~\\&|EHR|AGENCY|WELLSKY|AGENCY01|20260205171000-0500||MDM^T02^MDM_T02|MDM-{n}|P|2.5.1\r"
        "EVN|T02|20260205171000-0500\rTXA|1|CN|TX|20260205171000-0500" + "|" * 300 + "\r"
    )
    block = "".join(unsupported.format(n=n) for n in range(1000)).encode()
    big = feeds.hl7.dir / "29990101T000000Z-backfill.hl7"
    with big.open("wb") as out:
        for _ in range(40_000_000 // len(block)):
            out.write(block)
    accents = (
        "MSH|^~\\&|EHR|AGENCY|WELLSKY|AGENCY01|20260205170000-0500||ADT^A08^ADT_A01|ADT-1|P|2.5.1\r"
        "EVN|A08|20260205170000-0500\rPID|1||MRN-UTF8^^^NORTHSIDE^MR||NÚÑEZ^JOSÉ||19500101|M\r"
    ).encode()
    legacy = (
        "MSH|^~\\&|EHR|AGENCY|WELLSKY|AGENCY01|20260205170100-0500||ADT^A08^ADT_A01|ADT-2|P|2.5.1\r"
        "EVN|A08|20260205170100-0500\rPID|1||MRN-LATIN1^^^NORTHSIDE^MR||MÜLLER^RENÉ||19500101|M\r"
    ).encode("latin-1")
    (feeds.hl7.dir / "29990101T000001Z-mixed.hl7").write_bytes(accents + legacy)
    size = big.stat().st_size
    creds = sandbox.credentials()
    config = {k: creds[k] for k in SFTP_KEYS} | {"dead_letter_path": str(tmp_path / "dead.jsonl"),
                                               "state_dir": str(tmp_path / "state")}
    result = run_child(
        """
        from wellsky_core.channels.hl7_sftp import Hl7SftpChannel
        from wellsky_core.config import WellSkyConfig
        from wellsky_core.channels import base, sftp  # what a first read imports is not the read's memory
        base.LatestVersions().close()
        config = WellSkyConfig.load(PAYLOAD)
        sftp.close_sftp(sftp.connect_sftp(config))
        tracemalloc.start()
        with Hl7SftpChannel(config=config) as channel:
            patients = {r["id"]: r for r in channel.iter_records("patients", None)}
            skipped = dict(channel.skipped)
        print(json.dumps({"peak": tracemalloc.get_traced_memory()[1], "patients": patients, "skipped": skipped}))
        """,
        config,
    )
    peak, patients, skipped = result["peak"], result["patients"], result["skipped"]
    print(f"FIGURES hl7 {size / 1e6:.0f} MB batch file: traced peak {peak / 1e6:.1f} MB (the client's process)")
    assert skipped == {"MDM^T02": size // len(block) * 1000}
    assert patients["MRN-UTF8"]["last_name"] == "Núñez" or patients["MRN-UTF8"]["last_name"] == "NÚÑEZ"
    assert "Ã" not in patients["MRN-UTF8"]["last_name"], "a UTF-8 message decoded as Latin-1"
    assert patients["MRN-LATIN1"]["first_name"].upper() == "RENÉ"
    # whole, the file alone is 40 MB; read a block at a time, 8 MB (1 MiB reads, the SSH window, the splitter)
    assert peak < size / 3, f"traced peak {peak / 1e6:.0f} MB reading a {size / 1e6:.0f} MB file"
