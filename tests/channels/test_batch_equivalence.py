"""The same tenant through hl7_sftp and export equals the sandbox's truth, field by field, on every product.

Documented exceptions: none for patients and appointments — every canonical field is carried by both feeds
(HL7: PID/PV1/IN1 and SCH/AIS/AIP/ZSC; CSV: one column per field). ``EXCEPTIONS`` lists fields a channel is
allowed to miss; it is empty, so any difference fails with the entity, id and field names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wellsky_core.channels.export import ExportChannel
from wellsky_core.channels.hl7_sftp import Hl7SftpChannel
from wellsky_core.config import WellSkyConfig
from wellsky_core.deadletter import DeadLetter
from wellsky_core.models import ENTITIES
from wellsky_sandbox.testing import SandboxServer


def json_fields(model: type) -> list[str]:
    """A canonical model's fields as records spell them (by alias: ``_sdc_deleted_at``)."""
    return [info.alias or name for name, info in model.model_fields.items()]

KEYS = ("base_url", "username", "password", "sftp_host", "sftp_port", "sftp_username", "sftp_password", "sftp_host_key")
EXCEPTIONS: dict[tuple[str, str], set[str]] = {}
"""(channel, entity) -> fields allowed to differ from the truth. Empty: no exceptions."""


def field_differences(channel: str, entity: str, got: list[dict[str, Any]], truth: list[dict[str, Any]]) -> list[str]:
    by_id = {r["id"]: r for r in got}
    allowed = EXCEPTIONS.get((channel, entity), set())
    problems = [f"{channel} {entity}: missing id {r['id']}" for r in truth if r["id"] not in by_id]
    problems += [f"{channel} {entity}: unexpected id {i}" for i in set(by_id) - {r["id"] for r in truth}]
    for rec in truth:
        mine = by_id.get(rec["id"])
        if mine is None:
            continue
        assert set(mine) == set(json_fields(ENTITIES[entity].model))
        problems += [
            f"{channel} {entity} {rec['id']}: field {field}"
            for field in rec
            if field not in allowed and mine.get(field) != rec[field]
        ]
    return problems


@pytest.mark.parametrize("product", ["home_health", "hospice", "personal_care"])
def test_hl7_and_export_equal_truth(sandbox_factory: Any, product: str, tmp_path: Path) -> None:
    sandbox: SandboxServer = sandbox_factory(product=product, scale=60)
    sandbox.advance(count=80, seed=11)  # updates, reschedules, cancellations, new patients before the read
    creds = sandbox.credentials()
    config = WellSkyConfig.load({k: creds[k] for k in KEYS} | {"dead_letter_path": str(tmp_path / "dead.jsonl")})
    problems: list[str] = []
    with Hl7SftpChannel(config=config, product=product) as hl7, ExportChannel(config=config, product=product) as exp:
        for entity in ("patients", "appointments"):
            truth = sandbox.truth(entity)
            hl7_records = list(hl7.iter_records(entity, None))
            export_records = list(exp.iter_records(entity, None))
            assert [r["id"] for r in hl7_records] == [r["id"] for r in truth]  # same (updated_at, id) order
            problems += field_differences("hl7_sftp", entity, hl7_records, truth)
            problems += field_differences("export", entity, export_records, truth)
            assert hl7_records == export_records
        problems += field_differences(
            "hl7_sftp", "encounters", list(hl7.iter_records("encounters", None)), sandbox.truth("encounters")
        )
    assert problems == []
    assert DeadLetter.read(tmp_path / "dead.jsonl") == []
