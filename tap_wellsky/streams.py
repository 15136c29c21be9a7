"""The tap's streams, generated from ``wellsky_core.models.ENTITIES`` (the one list of streams).

Each canonical entity becomes a small ``WellSkyStream`` subclass named after it, with its description as the
docstring; keys and schemas come from the core. Only the webhook event stream, which reads the receiver's
store instead of a channel, is declared by hand.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, ClassVar

from wellsky_core.models import ENTITIES

from .stream import WellSkyStream


def _stream_class(name: str) -> type[WellSkyStream]:
    class_name = "".join(part.title() for part in name.split("_")) + "Stream"
    spec = ENTITIES[name]
    body = {
        "name": name,
        "__doc__": spec.description,
        "__module__": __name__,
        "primary_keys": list(spec.primary_key),
        "replication_key": spec.replication_key,
    }
    return type(class_name, (WellSkyStream,), body)


STREAM_TYPES: dict[str, type[WellSkyStream]] = {name: _stream_class(name) for name in ENTITIES}
"""Stream name -> class, one per canonical entity, in ``ENTITIES`` order."""


class WebhookEventsStream(WellSkyStream):
    """Change events received by the webhook receiver, replayed in arrival order (bookmark: ``seq``).

    Only offered when ``webhook_events_path`` points at the receiver's event store.
    """

    name = "webhook_events"
    primary_keys: ClassVar[list[str]] = ["id"]
    replication_key = "seq"

    @property
    def is_sorted(self) -> bool:
        return True

    def get_records(self, context: dict | None) -> Iterable[dict[str, Any]]:
        from wellsky_core.webhooks import EventStore, iter_canonical_events

        since = self.get_starting_replication_key_value(context) or 0
        store = EventStore(self.wellsky_tap.settings.webhook_events_path or "")
        self.summary["source"] = "webhooks"
        project = self.selected_projection()
        try:
            skipped: Counter[str] = Counter()
            for event in iter_canonical_events(store, int(since), self.wellsky_tap.connection.product, skipped):
                self.summary["records"] += 1
                yield event if project is None else project(event)
            if skipped:
                self.summary["skipped"] = dict(skipped)
                self.logger.warning(
                    "webhook_events: %d stored event(s) skipped as unmappable (%s)",
                    sum(skipped.values()),
                    ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())),
                )
        finally:
            store.close()
