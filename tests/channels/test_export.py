"""export channel: nightly CSVs from the sandbox over SFTP and over signed HTTP URLs (real servers, loopback)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.channels.child_probe import run_child
from wellsky_core.channels.export import ExportChannel
from wellsky_core.config import WellSkyConfig
from wellsky_core.deadletter import DeadLetter
from wellsky_core.errors import RemoteError
from wellsky_core.http.client import WellSkyClient
from wellsky_core.models import MODELED_ENTITIES as ENTITIES
from wellsky_sandbox.testing import SandboxServer

API_KEYS = ("base_url", "username", "password")
SFTP_KEYS = ("sftp_host", "sftp_port", "sftp_username", "sftp_password", "sftp_host_key")


def config_for(sandbox: SandboxServer, tmp_path: Path, sftp: bool) -> WellSkyConfig:
    creds = sandbox.credentials()
    keys = API_KEYS + (SFTP_KEYS if sftp else ())
    return WellSkyConfig.load({k: creds[k] for k in keys} | {"dead_letter_path": str(tmp_path / "dead.jsonl")})


@pytest.fixture
def http_channel(sandbox: SandboxServer, tmp_path: Path) -> Iterator[ExportChannel]:
    config = config_for(sandbox, tmp_path, sftp=False)
    with WellSkyClient(config) as client, ExportChannel(config=config, client=client) as channel:
        yield channel


def canonical(entity: str, records: list[dict]) -> list[dict]:
    model = ENTITIES[entity].model
    return [model.model_validate(r).model_dump(mode="json", by_alias=True) for r in records]


def test_every_entity_over_sftp_and_http_equals_the_tenant(
    sandbox: SandboxServer, http_channel: ExportChannel, tmp_path: Path
) -> None:
    assert http_channel.via == "http"
    with ExportChannel(config=config_for(sandbox, tmp_path, sftp=True)) as sftp_channel:
        assert sftp_channel.via == "sftp"
        for entity in ENTITIES:
            truth = canonical(entity, sandbox.truth(entity))  # canonical form: defaults of newer fields included
            assert list(sftp_channel.iter_records(entity, None)) == truth, entity
            assert list(http_channel.iter_records(entity, None)) == truth, entity
    assert DeadLetter.read(tmp_path / "dead.jsonl") == []


def test_incremental_reads_only_newer_nights(sandbox: SandboxServer, http_channel: ExportChannel) -> None:
    list(http_channel.iter_records("appointments", None))
    result = sandbox.advance(count=50, seed=8)
    since = datetime.fromisoformat(result["updated_at"].replace("Z", "+00:00"))
    http_channel.files_read.clear()
    got = list(http_channel.iter_records("appointments", since))
    assert got == canonical("appointments", sandbox.truth("appointments", updated_since=result["updated_at"]))
    assert got and http_channel.files_read and all(n.endswith("_0002.csv") for n in http_channel.files_read)


class SlowExportChannel(ExportChannel):
    """Waits after each listing so that short-lived URLs expire before the download (client-side delay only)."""

    delay = 1.3

    def _list(self) -> list[dict[str, Any]]:
        files = super()._list()
        if self.relists == 0:
            time.sleep(self.delay)
        return files


def test_expired_url_is_relisted(sandbox: SandboxServer, tmp_path: Path) -> None:
    sandbox.control("POST", "/_sandbox/exports", json={"url_ttl_seconds": 1})
    config = config_for(sandbox, tmp_path, sftp=False)
    with WellSkyClient(config) as client, SlowExportChannel(config=config, client=client) as channel:
        assert list(channel.iter_records("referrals", None)) == canonical("referrals", sandbox.truth("referrals"))
        assert channel.relists >= 1


class TamperedListing(ExportChannel):
    def _list(self) -> list[dict[str, Any]]:
        return [{**f, "sha256": "0" * 64} for f in super()._list()]


def test_checksum_mismatch_is_refused(sandbox: SandboxServer, tmp_path: Path) -> None:
    config = config_for(sandbox, tmp_path, sftp=False)
    with (
        WellSkyClient(config) as client,
        TamperedListing(config=config, client=client) as channel,
        pytest.raises(RemoteError) as exc,
    ):
        list(channel.iter_records("patients", None))
    assert exc.value.code == "checksum_mismatch"


def test_streams_read_in_parallel_share_one_sftp_connection(sandbox: SandboxServer, tmp_path: Path) -> None:
    """Parallel streams share one channel (``Connection.channel``): every thread gets exactly the serial records,
    over one SFTP connection (they once raced ``connect_sftp``, and the HL7 run died on an SFTP timeout)."""
    from concurrent.futures import ThreadPoolExecutor

    from wellsky_core.channels.hl7_sftp import HL7_ENTITIES, Hl7SftpChannel

    config = config_for(sandbox, tmp_path, sftp=True)
    for cls, entities in ((ExportChannel, list(ENTITIES)), (Hl7SftpChannel, list(HL7_ENTITIES))):
        with cls(config=config) as serial:
            want = {e: list(serial.iter_records(e, None)) for e in entities}
        with cls(config=config) as shared, ThreadPoolExecutor(len(entities)) as pool:
            got = dict(zip(entities, pool.map(lambda e, c=shared: list(c.iter_records(e, None)), entities),
                           strict=True))
            connection = shared._sftp if cls is ExportChannel else shared._conn
            assert connection is not None
        assert got == want, cls.__name__
        assert any(want.values()), cls.__name__


def test_a_large_export_over_sftp_is_read_a_block_at_a_time(sandbox: SandboxServer, tmp_path: Path) -> None:
    """A guard, not a fix: an export file over SFTP streams through its CSV reader (paramiko pulls a prefetched
    block only when it is read), so a nightly file as large as the agency's history is never held whole."""
    import csv
    import io

    from wellsky_sandbox.hl7 import feeds_for

    feeds = feeds_for(sandbox.tenant)
    feeds.refresh()
    [source] = [p for p in feeds.exports.dir.glob("patients_*.csv") if not p.name.endswith("_full.csv")][:1]
    header, first, *_ = list(csv.reader(io.StringIO(source.read_text(encoding="utf-8"))))
    big = source.parent / "patients_29990101T000000Z_9999.csv"
    rows = 10_000
    with big.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for n in range(rows):
            row = list(first)
            row[header.index("id")] = f"BIG-{n:05d}"
            row[header.index("last_name")] = "Longname" * 250  # 2 kB a row: 20 MB
            writer.writerow(row)
    size = big.stat().st_size
    creds = sandbox.credentials()
    config = {k: creds[k] for k in API_KEYS + SFTP_KEYS} | {"dead_letter_path": str(tmp_path / "dead.jsonl")}
    result = run_child(
        """
        from wellsky_core.channels.export import ExportChannel
        from wellsky_core.config import WellSkyConfig
        config = WellSkyConfig.load(PAYLOAD)
        with ExportChannel(config=config) as channel:
            list(channel.iter_records("practitioners", None))  # what a first read imports is not the read's memory
            tracemalloc.start()
            ids = [r["id"] for r in channel.iter_records("patients", None) if r["id"].startswith("BIG-")]
        print(json.dumps({"peak": tracemalloc.get_traced_memory()[1], "ids": len(ids)}))
        """,
        config,
    )
    peak = result["peak"]
    print(f"FIGURES export {size / 1e6:.0f} MB over SFTP: traced peak {peak / 1e6:.1f} MB (the client's process)")
    assert result["ids"] == rows
    assert peak < size / 2, f"traced peak {peak / 1e6:.0f} MB reading a {size / 1e6:.0f} MB file"
    assert DeadLetter.read(tmp_path / "dead.jsonl") == []
