"""The one interface every source channel implements, so streams never care where data comes from."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar


class Channel(abc.ABC):
    """A way to reach one tenant's data that yields canonical records per entity."""

    name: ClassVar[str]
    ordered: ClassVar[bool] = True
    """True when records come in ``(updated_at, id)`` order, so a bookmark may advance as records are sent."""

    @abc.abstractmethod
    def supports(self, entity: str) -> bool:
        """Whether this channel can deliver ``entity`` for this tenant (product and permissions)."""

    @abc.abstractmethod
    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        """Yield canonical records (JSON-ready dicts) with ``updated_at >= since``."""

    def close(self) -> None:  # noqa: B027 - optional hook, most channels hold nothing
        """Release connections, browsers and temporary files."""

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
