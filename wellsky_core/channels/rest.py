"""The REST channel: the tenant's native JSON API, normalized per product."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..deadletter import DeadLetter
from ..errors import NormalizationError
from ..models import ENTITIES
from ..normalize.native import to_canonical
from .base import Channel, prefetch

if TYPE_CHECKING:
    from ..config import WellSkyConfig
    from ..transport import WellSkyClient

log = logging.getLogger(__name__)

PATHS = {entity: "/" + entity.replace("_", "-") for entity in ENTITIES}


class RestChannel(Channel):
    """``GET /<resource>?updated_since=&limit=&cursor=``: ordered by (updated_at, id), so bookmarks are exact."""

    name = "api"
    ordered = True

    def __init__(
        self,
        *,
        config: WellSkyConfig,
        client: WellSkyClient | None,
        product: str,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        if client is None:
            raise ValueError("the api channel needs a WellSkyClient")
        self.config = config
        self.client = client
        self.product = product
        self.dead_letter = DeadLetter(config.dead_letter_path)

    def supports(self, entity: str) -> bool:
        return entity in PATHS

    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"limit": self.config.page_size}
        if since is not None:
            params["updated_since"] = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for page in prefetch(self.client.iter_pages(PATHS[entity], params)):
            for native in page:
                try:
                    yield to_canonical(self.product, entity, native)
                except NormalizationError as exc:
                    self.reject(entity, exc, native)

    def reject(self, entity: str, exc: NormalizationError, native: Any) -> None:
        """Dead-letter a record the server sent malformed; without a dead-letter file, stop (never drop)."""
        if self.dead_letter.path is None:
            raise exc
        self.dead_letter.write(
            stage="read", stream=entity, reason=str(exc), payload=native, context={"channel": self.name}
        )
        log.warning("dead-lettered one %s record: %s", entity, exc)
