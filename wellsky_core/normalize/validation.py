"""The one way every normalizer validates a canonical record: leniently, naming fields (never values, which may
be PHI).

Native REST, FHIR, HL7, export and portal records all end here. A record is refused (NormalizationError) only
when its primary key or replication timestamp is unusable; any other value that fails the entity's model is
nulled and named in the record's ``data_quality`` flags, and empty expected fields are flagged too (the rule
itself lives in :func:`wellsky_core.quality.finish`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..quality import finish


def validated(
    entity: str, data: dict[str, Any], record_id: str | None = None, flags: Iterable[Mapping[str, str]] = ()
) -> dict[str, Any]:
    """``data`` validated by the entity's canonical model, as a JSON-ready dict with its ``data_quality`` flags
    (``flags``: what the normalizer already knows it could not map)."""
    return finish(entity, data, flags, record_id=record_id)
