"""The Airbyte protocol side of ``source-wellsky``: its documents (spec, catalog) and input files (config,
catalog, state). The message side it shares with destination-wellsky is ``wellsky_core.airbyte``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airbyte_protocol.models import (
    AirbyteCatalog,
    AirbyteMessage,
    AirbyteStream,
    ConnectorSpecification,
    SyncMode,
    Type,
)

from wellsky_core.airbyte import (
    AirbyteLogHandler,
    Output,
    connection_check,
    describe_error,
    read_json,
    run_command,
)
from wellsky_core.config import TapConfig, airbyte_spec_schema, refuse_command_settings
from wellsky_core.discovery import discoverable_streams
from wellsky_core.errors import ConfigError
from wellsky_core.models import ENTITIES
from wellsky_core.schemas import stream_schema

from ..embedded import load_tap_config

log = logging.getLogger("source-wellsky")

DOCUMENTATION_URL = "https://github.com/wellsky-connector/tap-wellsky#readme"
SYNC_MODES = ["full_refresh", "incremental"]
# --- the protocol's documents ------------------------------------------------------------------------------


def connection_specification() -> dict[str, Any]:
    """The config JSON schema (generated from TapConfig; secrets carry ``airbyte_secret``; the settings that run
    programs only where the host allows them, see ``COMMAND_SETTINGS``)."""
    return airbyte_spec_schema(TapConfig, "WellSky Source Spec")


def spec_message() -> AirbyteMessage:
    spec = ConnectorSpecification(
        documentationUrl=DOCUMENTATION_URL,
        connectionSpecification=connection_specification(),
        supportsIncremental=True,
    )
    return AirbyteMessage(type=Type.SPEC, spec=spec)


def airbyte_stream(name: str) -> AirbyteStream:
    """One stream of the catalog, straight from the canonical entity definition."""
    spec = ENTITIES[name]
    return AirbyteStream(
        name=name,
        json_schema=stream_schema(name),
        supported_sync_modes=[SyncMode(mode) for mode in SYNC_MODES],
        source_defined_cursor=True,
        default_cursor_field=[spec.replication_key],
        source_defined_primary_key=[[key] for key in spec.primary_key],
        is_resumable=True,
    )


def catalog_message(config: TapConfig) -> AirbyteMessage:
    """The streams this configuration serves (``wellsky_core.discovery``, the same list as the Singer tap's)."""
    names = discoverable_streams(config)
    return AirbyteMessage(type=Type.CATALOG, catalog=AirbyteCatalog(streams=[airbyte_stream(n) for n in names]))


# --- config, catalog and state files -------------------------------------------------------------------------


def load_config(path: str, *, start_embedded: bool) -> TapConfig:
    """The validated config file (``embedded.load_tap_config``: the embedded sandbox when no base_url)."""
    raw = read_json(path, "config")
    if not isinstance(raw, dict):
        raise ConfigError("config", f"{path} must hold a JSON object of settings")
    refuse_command_settings(raw)
    return load_tap_config(raw, start_embedded=start_embedded)


class ConfiguredStream:
    """The part of a ConfiguredAirbyteStream a read needs."""

    def __init__(self, name: str, sync_mode: str) -> None:
        self.name = name
        self.sync_mode = sync_mode


def load_catalog(path: str) -> list[ConfiguredStream]:
    """The configured streams, in catalog order; unknown names and sync modes are config errors."""
    raw = read_json(path, "catalog")
    entries = raw.get("streams") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise ConfigError("catalog", f"{path} must be a ConfiguredAirbyteCatalog: an object with a `streams` list")
    streams: list[ConfiguredStream] = []
    unknown: list[str] = []
    for i, entry in enumerate(entries):
        stream = entry.get("stream") if isinstance(entry, dict) else None
        name = stream.get("name") if isinstance(stream, dict) else None
        if not isinstance(name, str):
            raise ConfigError("catalog", f"streams[{i}] has no stream.name; regenerate the catalog with discover")
        if name not in ENTITIES:
            unknown.append(name)
            continue
        mode = entry.get("sync_mode", "incremental")
        if mode not in SYNC_MODES:
            raise ConfigError("catalog", f"stream {name}: sync_mode must be one of {', '.join(SYNC_MODES)}")
        streams.append(ConfiguredStream(name, mode))
    if unknown:
        raise ConfigError(
            "catalog",
            f"names unknown stream(s) {', '.join(sorted(unknown))}; valid streams are {', '.join(ENTITIES)} "
            "(run discover for a fresh catalog)",
        )
    return streams


def load_state(path: str | None) -> dict[str, dict[str, Any]]:
    """Per-stream states from any state shape a platform may hand back, in the shared per-stream form.

    Accepted: the per-stream list (``[{"type": "STREAM", "stream": {...}}]``), a single STATE message or its
    ``state`` body, the legacy dict (``{"patients": {"updated_at": ...}}``, optionally wrapped in ``data``)
    and a Singer tap's ``{"bookmarks": ...}`` (memo and stamp included), so a pipeline can switch faces without a
    full resync. Shapes and values are then checked like the Singer tap's input state, stamp included.
    """
    if not path:
        return {}
    raw = read_json(path, "state")
    if isinstance(raw, dict) and raw.get("type") == "STATE" and "state" in raw:
        raw = raw["state"]
    if isinstance(raw, dict) and raw.get("type") in ("STREAM", "LEGACY", "GLOBAL"):
        raw = [raw]
    states: dict[str, dict[str, Any]] = {}
    if isinstance(raw, list):
        for item in raw:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "STREAM":
                body = item.get("stream") or {}
                name = (body.get("stream_descriptor") or {}).get("name")
                value = body.get("stream_state")
                if name and isinstance(value, dict) and value:
                    states[name] = _shared_form(value)
            elif kind == "LEGACY":
                states.update(_legacy_states(item.get("data") or {}))
            else:
                raise ConfigError(
                    "state",
                    f"holds a {kind or 'malformed'} state; this source writes per-stream (STREAM) state — pass "
                    "the state it emitted, or no --state for a full sync",
                )
        return states
    if isinstance(raw, dict):
        return _legacy_states(raw.get("data", raw) if "data" in raw and isinstance(raw["data"], dict) else raw)
    raise ConfigError("state", f"{path} must hold a JSON list of STREAM states or a legacy state object")


def _shared_form(value: Mapping[str, Any]) -> dict[str, Any]:
    """An older ``{"updated_at": ...}`` stream state in the shared form (``replication_key_value``)."""
    state = dict(value)
    if "replication_key_value" not in state and state.get("updated_at") is not None:
        state["replication_key"] = "updated_at"
        state["replication_key_value"] = str(state.pop("updated_at"))
    return state


def _legacy_states(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    if isinstance(data.get("singer_state"), dict):
        data = data["singer_state"]
    if isinstance(data.get("bookmarks"), dict):
        return {name: dict(b) for name, b in data["bookmarks"].items() if isinstance(b, dict)}
    return {name: _shared_form(value) for name, value in data.items() if isinstance(value, dict) and value}




__all__ = [
    "AirbyteLogHandler",
    "ConfiguredStream",
    "Output",
    "airbyte_stream",
    "catalog_message",
    "connection_check",
    "describe_error",
    "load_catalog",
    "load_config",
    "load_state",
    "read_json",
    "run_command",
    "spec_message",
]
