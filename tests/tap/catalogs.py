"""Catalogs that select a few streams on both faces, for tests that run tap-wellsky and source-wellsky alike."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from airbyte_protocol.models import Type

from tests.airbyte.test_airbyte import of_type, run_source, write_json

from .helpers import run_tap


def selected_catalog(tmp_path: Path, config: dict[str, Any], streams: Iterable[str]) -> dict[str, Any]:
    """The tap's discovered catalog with only ``streams`` selected."""
    wanted = set(streams)
    catalog = json.loads(run_tap(tmp_path, config, args=("--discover",)).stdout)
    for entry in catalog["streams"]:
        for meta in entry["metadata"]:
            if meta["breadcrumb"] == []:
                meta["metadata"]["selected"] = entry["tap_stream_id"] in wanted
    return catalog


def airbyte_catalog(tmp_path: Path, config_path: str, streams: Iterable[str]) -> str:
    """source-wellsky's discovered streams in ``streams``, configured incremental with dedup, as a file path."""
    wanted = set(streams)
    discovered = of_type(run_source("discover", "--config", config_path), Type.CATALOG)[0].catalog
    return write_json(tmp_path / "ab-catalog.json", {"streams": [
        {"stream": s.model_dump(mode="json", exclude_none=True), "sync_mode": "incremental",
         "destination_sync_mode": "append_dedup", "cursor_field": ["updated_at"], "primary_key": [["id"]]}
        for s in discovered.streams if s.name in wanted
    ]})
