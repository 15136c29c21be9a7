"""Without ``dead_letter_path`` a malformed HL7 message or CSV export row stops the read (docs/guide.md's promise).

With a dead-letter file such inputs are set aside and the read goes on (``tests/channels/test_malformed_batch.py``);
without one nothing may be dropped silently: the read stops with an error naming the problem and the setting.
Bad inputs are dropped into the sandbox's real outbound folders and read through its real SFTP server.
"""

from __future__ import annotations

import pytest

from wellsky_core.channels.export import ExportChannel
from wellsky_core.channels.hl7_sftp import Hl7SftpChannel
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import WellSkyError
from wellsky_sandbox.hl7 import feeds_for

KEYS = ("base_url", "username", "password", "sftp_host", "sftp_port", "sftp_username", "sftp_password", "sftp_host_key")


def _config(sandbox) -> WellSkyConfig:
    creds = sandbox.credentials()
    return WellSkyConfig.load({k: creds[k] for k in KEYS})


def test_a_malformed_hl7_message_stops_the_read(sandbox):
    feeds = feeds_for(sandbox.tenant)
    feeds.refresh()
    (feeds.hl7.dir / "29991231T000000Z-999999.hl7").write_text("MSH|^~\\&|WELLSKY|X|Y|Z|2026|MFN^M02|1|P|3.0\r")
    with Hl7SftpChannel(config=_config(sandbox)) as channel, pytest.raises(WellSkyError) as info:
        list(channel.iter_records("patients", None))
    assert "MSH-12" in str(info.value)  # the reason, naming the field; nothing is skipped silently


def test_a_malformed_csv_row_stops_the_read(sandbox):
    feeds = feeds_for(sandbox.tenant)
    feeds.refresh()
    source = next(feeds.exports.dir.glob("patients_*.csv")).read_text().splitlines()
    (feeds.exports.dir / "patients_29991231T000000Z_9001.csv").write_text(
        "\r\n".join([source[0], source[1], "only,three,cells"]) + "\r\n"
    )
    with ExportChannel(config=_config(sandbox)) as channel, pytest.raises(WellSkyError) as info:
        list(channel.iter_records("patients", None))
    assert "cells" in str(info.value)
