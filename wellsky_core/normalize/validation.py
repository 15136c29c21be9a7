"""The one way every normalizer validates a canonical record: the entity's pydantic model, errors naming the
field path (never the input value, which may be PHI)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..errors import NormalizationError
from ..models import ENTITIES


def validated(
    entity: str, data: dict[str, Any], record_id: str | None = None, *, root: str = "record", with_type: bool = False
) -> dict[str, Any]:
    """``data`` validated by the entity's canonical model, as a JSON-ready dict.

    ``root`` names an error about the record as a whole; ``with_type`` prefixes pydantic's error type (the
    HL7 dead-letter reasons carry it)."""
    try:
        return ENTITIES[entity].model.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or root
        reason = f"{first['type']}: {first['msg']}" if with_type else first["msg"]
        raise NormalizationError(entity, field, reason, record_id=record_id) from None
