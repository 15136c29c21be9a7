"""One tenant connection shared by tap, target and the Airbyte face: client, product and channels."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from .channels import Channel, channel_class, open_channel
from .config import WellSkyConfig
from .errors import ConfigError, RemoteError
from .http.client import WellSkyClient
from .metrics import Metrics
from .products import DIALECTS, PRODUCTS
from .quality import ExitCodeRule, QualityCounter, save_report

log = logging.getLogger(__name__)


class Connection:
    """Lazily opened: discovery and ``--about`` never touch the network."""

    def __init__(self, config: WellSkyConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self._client: WellSkyClient | None = None
        self._product: str | None = config.product
        self._tenant: dict[str, Any] | None = None
        self._channels: dict[str, Channel] = {}
        self._channels_lock = threading.Lock()  # streams read in parallel open their channel once between them
        self.quality = QualityCounter(
            ignore=getattr(config, "quality_ignore", None), never_sent=lambda: DIALECTS[self.product].never_sent
        )

    @property
    def client(self) -> WellSkyClient:
        if self._client is None:
            self._client = WellSkyClient(self.config, metrics=self.metrics)
        return self._client

    def tenant(self) -> dict[str, Any]:
        """``GET /tenant`` once: proves URL, TLS and credentials, and tells the product.

        A product without it (personal care's Home Connect) is probed by its api channel instead.
        """
        if self._tenant is None:
            product = DIALECTS.get(self.config.product or "")
            if product is not None and not product.has_tenant_endpoint:
                channel_class("api", product.product).probe(self.client)  # type: ignore[attr-defined]
                self._tenant = {"product": product.product, "name": f"{product.product} tenant"}
            else:
                self._tenant = self._tenant_endpoint()
        return self._tenant

    def sign_in(
        self,
        streams: Iterable[str],
        *,
        max_flagged_fraction: float | None = None,
        exit_code: ExitCodeRule | None = None,
    ) -> None:
        """Prove URL, TLS and credentials before any stream begins, when one of ``streams`` reads the tenant's
        API (its ``GET /tenant`` or the product's probe, which a sync needs anyway): a wrong secret is then one
        error, not a failure per stream. Other channels (SFTP, FHIR, the portal) sign in with their first read.

        A refusal still replaces the tenant's data-quality report with an ``aborted`` one (the last run's ``ok``
        must not stand for this run), without a log line: the refusal is the run's one line. The connection is
        then closed: the run ends here. First of all, the state directory the run keeps everything in must be
        usable (it failed only when the sync was over, as the report was written)."""
        self.config.usable_state_dir()
        try:
            if any(self.config.source_for(stream) == "api" for stream in streams):
                self.tenant()
        except BaseException as exc:
            save_report(self.quality_report(max_flagged_fraction, ended_by=exc, exit_code=exit_code), self.config, None)
            self.close()
            raise

    def _tenant_endpoint(self) -> dict[str, Any]:
        """``GET /tenant`` (the WellSky REST API's health check and product name)."""
        body = self.client.get_json("/tenant")
        if not isinstance(body, dict):
            raise RemoteError(200, "unexpected_shape", "/tenant did not answer a JSON object", url="/tenant")
        return body

    @property
    def product(self) -> str:
        if self._product is None:
            found = self.tenant().get("product")
            if found not in PRODUCTS:
                raise RemoteError(
                    200,
                    "unknown_product",
                    f"GET /tenant did not name a known product; set `product` to one of {', '.join(PRODUCTS)}",
                    url="/tenant",
                )
            self._product = found
        return self._product

    def channel(self, stream: str) -> Channel:
        """The channel configured for ``stream`` (``stream_sources`` or ``source``), opened once and shared."""
        name = self.config.source_for(stream)
        with self._channels_lock:
            if name not in self._channels:
                try:
                    client = self._client_for(channel_class(name).client_use)
                    self._channels[name] = open_channel(name, self.config, client, self.product)
                except ValueError as exc:
                    raise ConfigError("source", str(exc)) from None
            return self._channels[name]

    def _client_for(self, use: str) -> WellSkyClient | None:
        """The client a channel declared it needs (``Channel.client_use``)."""
        if use == "required" or (use == "optional" and self.config.base_url):
            return self.client
        return None

    def quality_report(
        self,
        max_flagged_fraction: float | None = None,
        *,
        ended_by: BaseException | None = None,
        incomplete: Iterable[str] = (),
        exit_code: ExitCodeRule | None = None,
    ) -> dict[str, Any]:
        """The run's data-quality report: record counts observed so far plus the open channels' refusals;
        ``ended_by``, ``incomplete`` and ``exit_code`` as in :meth:`QualityCounter.report` (the verdict)."""
        counter = QualityCounter()
        counter.merge(self.quality)
        for channel in self._channels.values():
            for key, count in channel.dead_letter.counts.items():
                stage, _, stream = key.partition(":")
                if stage == "read":
                    counter.add_dead_lettered(stream if stream != "-" else "unknown", count)
            for kind, count in channel.skipped.items():
                counter.add_skipped(channel.name, kind, count)
        return counter.report(max_flagged_fraction, ended_by=ended_by, incomplete=incomplete, exit_code=exit_code)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self._client is not None:
            self._client.close()
            self._client = None


def reads_in_any_thread(config: WellSkyConfig, stream: str) -> bool:
    """Whether ``stream`` may be read on a worker thread (``Channel.thread_safe``): both faces read the others
    afterwards, in the thread that runs the sync (the portals' browser belongs to the thread that started it).
    Decided from the validated settings alone, before any channel is opened."""
    return channel_class(config.source_for(stream), config.product).thread_safe
