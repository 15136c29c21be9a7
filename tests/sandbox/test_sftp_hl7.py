"""The sandbox's SFTP server and HL7 feed, over real SSH on loopback (paramiko client)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import paramiko
import pytest

from wellsky_sandbox.generator import ENTITIES
from wellsky_sandbox.testing import SandboxServer


@contextmanager
def sftp_session(creds: dict[str, Any], **auth: Any) -> Iterator[paramiko.SFTPClient]:
    transport = paramiko.Transport((creds["sftp_host"], creds["sftp_port"]))
    try:
        transport.connect(username=creds["sftp_username"], **(auth or {"password": creds["sftp_password"]}))
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        yield client
    finally:
        transport.close()


def messages_of(data: bytes) -> list[list[str]]:
    """Messages of a batch file as lists of segments (split on \\r only: the feed's terminator)."""
    text = data.decode("utf-8")
    assert "\n" not in text
    out: list[list[str]] = []
    for seg in text.split("\r"):
        if seg.startswith("MSH|"):
            out.append([seg])
        elif seg and not seg.startswith(("FHS|", "BHS|", "BTS|", "FTS|")):
            out[-1].append(seg)
    return out


def read_all(sftp: paramiko.SFTPClient, directory: str) -> dict[str, bytes]:
    return {name: sftp.open(f"{directory}/{name}").read() for name in sorted(sftp.listdir(directory))}


def test_tree_and_hl7_messages_match_the_tenant(sandbox: SandboxServer) -> None:
    creds = sandbox.credentials()
    assert creds["sftp_host_key"].startswith("ssh-ed25519 ")
    with sftp_session(creds) as sftp:
        assert sorted(sftp.listdir("/")) == ["archive", "outbound"]
        files = read_all(sftp, "/outbound/hl7")
    assert len(files) >= 2 and list(files) == sorted(files)
    msgs = [m for data in files.values() for m in messages_of(data)]
    truth = {e: {r["id"]: r for r in sandbox.truth(e)} for e in ("patients", "appointments", "encounters")}
    assert len(msgs) == sum(len(v) for v in truth.values())  # every record once, nothing else
    control_ids = [m[0].split("|")[9] for m in msgs]
    assert len(set(control_ids)) == len(control_ids)
    kinds = {m[0].split("|")[8] for m in msgs}
    assert kinds == {"ADT^A04^ADT_A01", "SIU^S12^SIU_S12", "ORU^R01^ORU_R01"}
    stamps = [m[0].split("|")[6] for m in msgs]
    assert stamps == sorted(stamps)  # updated_at order across files
    for m in msgs:
        names = [s[:3] for s in m]
        kind = m[0].split("|")[8]
        if kind.startswith("ADT"):
            pid = next(s for s in m if s.startswith("PID|")).split("|")
            rec = truth["patients"][pid[3].split("^")[0]]
            assert f"{rec['mrn']}^^^AGENCY^MR" in pid[3]
            assert pid[5] == f"{rec['last_name']}^{rec['first_name']}"
            assert pid[7] == rec["birth_date"].replace("-", "")
            assert names.count("IN1") == len(rec["coverage"])
        elif kind.startswith("SIU"):
            sch = next(s for s in m if s.startswith("SCH|")).split("|")
            rec = truth["appointments"][sch[1].split("^")[0]]
            assert {"AIS", "ZSC", "PID"} <= set(names)
            assert (
                sch[11].split("^")[3] == rec["start"].replace("-", "").replace(":", "").replace("T", "")[:14] + "+0000"
            )
        else:
            obr = next(s for s in m if s.startswith("OBR|")).split("|")
            rec = truth["encounters"][obr[3]]
            assert names.count("DG1") == len(rec["diagnoses"])
        ts = rec["updated_at"].replace("-", "").replace(":", "").replace("T", "").rstrip("Z") + "+0000"
        assert m[0].split("|")[6] == ts


def test_advance_appends_new_files_and_update_events(sandbox: SandboxServer) -> None:
    creds = sandbox.credentials()
    with sftp_session(creds) as sftp:
        before = read_all(sftp, "/outbound/hl7")
        sandbox.advance(count=60, seed=3)
        after = read_all(sftp, "/outbound/hl7")
    assert {k: after[k] for k in before} == before  # written files never change
    new = [after[k] for k in sorted(set(after) - set(before))]
    assert new and min(set(after) - set(before)) > max(before)
    kinds = {m[0].split("|")[8].split("^")[1] for data in new for m in messages_of(data)}
    assert kinds & {"A08", "S13", "S14", "S15", "R01"}
    with sftp_session(creds) as sftp:  # nothing changed: listing again renders nothing new
        assert sorted(sftp.listdir("/outbound/hl7")) == sorted(after)


def test_password_and_public_key_logins(sandbox: SandboxServer) -> None:
    creds = sandbox.credentials()
    with pytest.raises(paramiko.AuthenticationException), sftp_session(creds, password="wrong-password"):
        pass
    key = paramiko.ECDSAKey.generate()
    with pytest.raises(paramiko.AuthenticationException), sftp_session(creds, pkey=key):
        pass
    sandbox.control(
        "POST", "/_sandbox/sftp/authorized-keys", json={"public_key": f"{key.get_name()} {key.get_base64()} test"}
    )
    with sftp_session(creds, pkey=key) as sftp:
        assert "hl7" in sftp.listdir("/outbound")
    bad = httpx_post(sandbox, "/_sandbox/sftp/authorized-keys", {"public_key": "ssh-ed25519 not-base64!"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_public_key"


def httpx_post(sandbox: SandboxServer, path: str, body: Any) -> Any:
    import httpx

    return httpx.post(sandbox.base_url + path, json=body, timeout=10)


def test_read_only_except_archive_and_remove(sandbox: SandboxServer) -> None:
    creds = sandbox.credentials()
    with sftp_session(creds) as sftp:
        names = sorted(sftp.listdir("/outbound/hl7"))
        with pytest.raises(PermissionError):
            sftp.open("/outbound/hl7/new.hl7", "w")
        with pytest.raises(PermissionError):
            sftp.mkdir("/outbound/x")
        with pytest.raises(PermissionError):
            sftp.rename(f"/outbound/hl7/{names[0]}", f"/outbound/exports/{names[0]}")
        with pytest.raises(FileNotFoundError):
            sftp.open("/outbound/hl7/../../../etc/passwd")
        sftp.rename(f"/outbound/hl7/{names[0]}", f"/archive/{names[0]}")
        sftp.remove(f"/outbound/hl7/{names[1]}")
        assert sftp.listdir("/archive") == [names[0]]
        assert sorted(sftp.listdir("/outbound/hl7")) == names[2:]
        archived = sftp.open(f"/archive/{names[0]}").read()
        assert archived.startswith(b"FHS|")


def test_restart_keeps_host_key_and_file_states(sandbox_factory: Callable[..., SandboxServer]) -> None:
    server = sandbox_factory(scale=30)
    creds = server.credentials()
    with sftp_session(creds) as sftp:
        names = sorted(sftp.listdir("/outbound/hl7"))
        digest = hashlib.sha256(sftp.open(f"/outbound/hl7/{names[-1]}").read()).hexdigest()
        sftp.rename(f"/outbound/hl7/{names[0]}", f"/archive/{names[0]}")
    server.restart()
    creds2 = server.credentials()
    assert creds2["sftp_host_key"] == creds["sftp_host_key"] and creds2["sftp_port"] == creds["sftp_port"]
    with sftp_session(creds2) as sftp:
        assert sorted(sftp.listdir("/outbound/hl7")) == names[1:]  # not regenerated, not repeated
        assert sftp.listdir("/archive") == [names[0]]
        assert hashlib.sha256(sftp.open(f"/outbound/hl7/{names[-1]}").read()).hexdigest() == digest


def test_many_sequential_connections_and_exports_dir(sandbox: SandboxServer) -> None:
    creds = sandbox.credentials()
    for _ in range(15):
        with sftp_session(creds) as sftp:
            exports = sorted(sftp.listdir("/outbound/exports"))
    entities = {n.split("_2")[0] for n in exports}
    assert entities == set(ENTITIES)
    with sftp_session(creds) as sftp:
        name = next(n for n in exports if n.startswith("patients_"))
        text = io.BytesIO(sftp.open(f"/outbound/exports/{name}").read()).read().decode()
    assert text.splitlines()[0].startswith("id,mrn,")
    assert len(text.splitlines()) == 1 + len(sandbox.truth("patients"))
