"""The one reject path of every channel (``Channel.reject``): dead-letter, or stop — never drop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from wellsky_core.channels import CHANNELS, channel_class
from wellsky_core.channels.base import Channel
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import NormalizationError

CREDS = {"username": "u", "password": "p"}


class OneChannel(Channel):
    name = "unit"

    def supports(self, entity: str) -> bool:
        return True

    def iter_records(self, entity: str, since: Any) -> Iterator[dict[str, Any]]:
        yield from ()


def test_without_a_dead_letter_file_a_reason_stops_the_sync_naming_the_fix():
    channel = OneChannel(config=WellSkyConfig.load(CREDS, env={}))
    with pytest.raises(NormalizationError) as info:
        channel.reject("patients", "row has 3 cells, header has 4", ["a", "b", "c"], file="p.csv", row=7)
    assert "dead_letter_path" in str(info.value) and "unit channel" in str(info.value)
    assert "a" not in info.value.reason.split(), "the payload never reaches the message"


def test_without_a_dead_letter_file_an_exception_is_raised_as_is():
    channel = OneChannel(config=WellSkyConfig.load(CREDS, env={}))
    exc = NormalizationError("patients", "birth_date", "expected YYYY-MM-DD")
    with pytest.raises(NormalizationError) as info:
        channel.reject("patients", exc, {})
    assert info.value is exc


def test_with_a_dead_letter_file_the_input_is_kept_with_reason_and_position(tmp_path):
    dead = tmp_path / "dead.jsonl"
    with OneChannel(config=WellSkyConfig.load({**CREDS, "dead_letter_path": str(dead)}, env={})) as channel:
        channel.reject("patients", "row has 3 cells, header has 4", ["x"], file="p.csv", row=7)
        assert channel.dead_letter.total == 1
        channel.dead_letter.close()
    (entry,) = [json.loads(line) for line in dead.read_text().splitlines()]
    assert entry["stream"] == "patients" and entry["payload"] == ["x"]
    assert entry["context"] == {"channel": "unit", "file": "p.csv", "row": 7}


def test_every_registered_channel_declares_its_client_use():
    for name in CHANNELS:
        cls = channel_class(name)
        assert cls.name == name and cls.client_use in ("required", "optional", "none")
        assert "reject" not in vars(cls), f"{name} must refuse records through Channel.reject"
