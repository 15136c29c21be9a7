"""The REST channel: the tenant's native JSON API, normalized per product."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import NormalizationError
from ..http.paging import CursorPaginator
from ..models import ENTITIES
from ..normalize.native import to_canonical
from ..products import dialect
from . import windows
from .base import Channel

if TYPE_CHECKING:
    from ..http.client import WellSkyClient

log = logging.getLogger(__name__)

PATHS = {
    entity: "/" + entity.replace("_", "-")
    for entity, spec in ENTITIES.items()
    if spec.modeled_rest and spec.sources is None
}

MAX_PAGE_SIZE = 1000
"""The most records the REST API returns per page (``limit``)."""


def rest_pages(
    client: WellSkyClient, path: str, params: dict[str, Any] | None = None, *, page_size: int | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Each page of a REST listing (``{"data": [...], "next_cursor": ...}``), cursor by cursor to the end."""
    paginator = CursorPaginator(
        client.get_json,
        metrics=client.metrics,
        page_size=page_size or client.config.page_size,
        api_max=MAX_PAGE_SIZE,
    )
    return paginator.pages(path, params)


class RestChannel(windows.WindowedChannel, Channel):
    """``GET /<resource>?updated_since=&limit=&cursor=``: ordered by (updated_at, id), so bookmarks are exact."""

    name = "api"
    ordered = True

    client_use = "required"
    client: WellSkyClient

    @classmethod
    def offers(cls, entity: str, product: str | None) -> bool:
        return entity in dialect(product).streams if product else entity in PATHS

    def supports(self, entity: str) -> bool:
        return self.offers(entity, self.product)

    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        return self.windowed(entity, since)  # updated_at windows in parallel, emitted in order

    def _pages(self, entity: str, since: datetime | None, before: datetime | None) -> Iterator[list[dict[str, Any]]]:
        """Canonical pages of ``since <= updated_at < before`` (``updated_before`` is exclusive)."""
        params: dict[str, Any] = {}
        if since is not None:
            params["updated_since"] = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if before is not None:
            params["updated_before"] = before.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for page in rest_pages(self.client, PATHS[entity], params):
            records = []
            for native in page:
                try:
                    records.append(to_canonical(self.product, entity, native))
                except NormalizationError as exc:
                    self.reject(entity, exc, native)
            yield records
