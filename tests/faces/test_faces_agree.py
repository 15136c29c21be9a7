"""tap-wellsky and source-wellsky are two faces of one read loop: same discovery, same records, same state.

For each product and each source channel that product has (every pair the registries declare: ``PRODUCTS`` x
``CHANNELS`` where the product's channel offers a stream, so a new product or channel is compared without editing
this file): discovery lists the same streams; a full sync gives the same records; after the tenant changes
(``/_sandbox/advance``: updates, back-dated and late entries, new rows), an incremental from each face's own state
gives the same records, and the per-stream states carry the same keys. On the modeled REST, every changed record is
among them (the other channels' completeness against the truth: tests/channels, tests/tap).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from airbyte_protocol.models import AirbyteMessage, Type

from wellsky_core.channels import CHANNELS, channel_class
from wellsky_core.models import ENTITIES
from wellsky_core.products import PRODUCTS as PRODUCT_NAMES

SOURCE = str(Path(sys.executable).with_name("source-wellsky"))
TAP = [sys.executable, "-m", "tap_wellsky.tap"]

SCALES = {"personal_care": 25, "portal": 10}
"""Tenant sizes where 60 patients would be slow: Home Connect's fan-out (personal care's api), the browser walk."""


def _cases() -> list[Any]:
    """Every (product, source) pair whose channel offers a stream for that product."""
    cases = []
    for product in PRODUCT_NAMES:
        for source in CHANNELS:
            if not any(channel_class(source, product).offers(stream, product) for stream in ENTITIES):
                continue
            marks = [pytest.mark.browser, pytest.mark.timeout(1200)] if source == "portal" else []
            cases.append(pytest.param(product, source, marks=marks, id=f"{product}-{source}"))
    return cases


CASES = _cases()


def _config(sb: Any, source: str) -> dict[str, Any]:
    creds = sb.credentials()
    base = {"base_url": sb.base_url, "page_size": 40, "max_requests_per_second": 0, "source": source}
    if sb.product == "personal_care" and source == "api":
        # Home Connect: client credentials only; a reconcile every run: changes older than the re-read horizon are
        # then seen too (tests/tap/test_home_connect_no_loss.py covers the runs between reconciles)
        return {**base, "product": sb.product, "client_id": sb.client_id, "client_secret": sb.client_secret,
                "home_connect_reconcile_days": 0}
    if sb.product != "personal_care":
        base["product"] = sb.product
    # personal care's modeled surfaces (FHIR, exports, SFTP, its portal) take the sandbox's session login; the
    # product is then detected (GET /tenant), as a tenant reached without the product key is
    config = {**base, "username": creds["username"], "password": creds["password"]}
    if source == "hl7_sftp":
        config.update({k: v for k, v in creds.items() if k.startswith("sftp_")})
    if source == "portal":  # the generic portal signs in with a TOTP code; the Kinnser portal reads local times
        config.update({"totp_secret": creds["totp_secret"], "agency_timezone": "America/Chicago",
                       "portal_wait_seconds": 30})
    return config


def _face_config(config: dict[str, Any], tmp: Path, face: str) -> dict[str, Any]:
    """Each face its own portal resume file and bulk job directory: neither may reuse the other's work."""
    source = config["source"]
    if source == "portal":
        return {**config, "portal_state_path": str(tmp / f"{face}-portal.json")}
    if source == "fhir_bulk":
        return {**config, "fhir_bulk_job_dir": str(tmp / f"{face}-jobs")}
    return config


def _write(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def _tap(tmp: Path, config: dict[str, Any], state: dict[str, Any] | None, tag: str) -> list[dict[str, Any]]:
    cmd = [*TAP, "--config", _write(tmp / f"{tag}-config.json", config)]
    if state is not None:
        cmd += ["--state", _write(tmp / f"{tag}-state.json", state)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _source(*args: str) -> list[AirbyteMessage]:
    proc = subprocess.run([SOURCE, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [AirbyteMessage.model_validate_json(line) for line in proc.stdout.splitlines()]


def _tap_records(msgs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for m in msgs:
        if m["type"] == "RECORD":
            out.setdefault(m["stream"], {})[str(m["record"]["id"])] = m["record"]
    return out


def _source_records(msgs: list[AirbyteMessage]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for m in msgs:
        if m.type == Type.RECORD:
            out.setdefault(m.record.stream, {})[str(m.record.data["id"])] = m.record.data
    return out


def _tap_state(msgs: list[dict[str, Any]]) -> dict[str, Any]:
    return [m["value"] for m in msgs if m["type"] == "STATE"][-1]


def _source_states(msgs: list[AirbyteMessage]) -> list[dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}
    for m in msgs:
        if m.type == Type.STATE:
            last[m.state.stream.stream_descriptor.name] = m.state.model_dump(mode="json", exclude_none=True)
    return list(last.values())


def test_every_product_and_source_is_compared() -> None:
    """The comparison covers every product and, per product, the api source and every other channel it has."""
    assert {product for product, _ in (c.values for c in CASES)} == set(PRODUCT_NAMES)
    for product in PRODUCT_NAMES:
        sources = {source for p, source in (c.values for c in CASES) if p == product}
        assert {"api", "fhir", "portal"} <= sources, (product, sources)


@pytest.mark.parametrize(("product", "source"), CASES)
def test_both_faces_discover_read_and_resume_alike(sandbox_factory, tmp_path: Path, product: str,
                                                   source: str) -> None:
    home_connect = product == "personal_care" and source == "api"
    scale = SCALES["portal"] if source == "portal" else SCALES["personal_care"] if home_connect else 60
    sb = sandbox_factory(product=product, scale=scale)
    config = _face_config(_config(sb, source), tmp_path, "singer")
    config_file = _write(tmp_path / "source-config.json", _face_config(_config(sb, source), tmp_path, "airbyte"))
    ordered = channel_class(source, product).ordered

    tap_catalog = json.loads(subprocess.run([*TAP, "--config", config_file, "--discover"], capture_output=True,
                                            text=True, check=True, timeout=120).stdout)
    [catalog_msg] = [m for m in _source("discover", "--config", config_file) if m.type == Type.CATALOG]
    tap_streams = [s["tap_stream_id"] for s in tap_catalog["streams"]]
    assert sorted(tap_streams) == sorted(s.name for s in catalog_msg.catalog.streams), "different discovery"

    configured = {
        "streams": [
            {"stream": s.model_dump(mode="json", exclude_none=True), "sync_mode": "incremental",
             "destination_sync_mode": "append", "cursor_field": ["updated_at"]}
            for s in catalog_msg.catalog.streams
        ]
    }
    catalog_file = _write(tmp_path / "catalog.json", configured)

    tap_first = _tap(tmp_path, config, None, "first")
    source_first = _source("read", "--config", config_file, "--catalog", catalog_file)
    # Home Connect records mostly carry no change time, and the Kinnser portal shows none: updated_at is when each
    # face observed them
    kinnser = source == "portal" and product != "personal_care"
    observed = {"updated_at", "_sdc_deleted_at"} if home_connect or kinnser else set()
    assert not _differences(_tap_records(tap_first), _source_records(source_first), observed), "full syncs differ"

    tap_state = _tap_state(tap_first)
    source_states = _source_states(source_first)
    for entry in source_states:  # the same per-stream state on both faces (cursor, memo, stamp)
        name = entry["stream"]["stream_descriptor"]["name"]
        mine = {k: v for k, v in tap_state["bookmarks"][name].items() if k != "progress_markers"}
        theirs = dict(entry["stream"]["stream_state"])
        assert set(mine) == set(theirs), f"{name}: the faces keep different state keys"
        mark, other = mine.pop("replication_key_value", None), theirs.pop("replication_key_value", None)
        assert _timeless(mine) == _timeless(theirs), f"{name}: the faces keep a different memo or stamp"
        # the same bookmark instant (singer-sdk may spell it +00:00); an unordered channel's bookmark is the moment
        # its own read happened (a bulk export's transactionTime, a file's time), not a record's
        if ordered and not observed and mark is not None:
            assert _instant(mark) == _instant(other), f"{name}: the faces end on different bookmarks"

    assert sb.advance(fraction=0.08)
    tap_again = _tap_records(_tap(tmp_path, config, tap_state, "again"))
    state_file = _write(tmp_path / "state.json", source_states)
    source_again = _source_records(_source("read", "--config", config_file, "--catalog", catalog_file,
                                           "--state", state_file))
    assert not _differences(tap_again, source_again, observed), "incrementals differ"
    if source != "api" or home_connect:
        # completeness against what Home Connect shows: tests/tap/test_home_connect_no_loss.py; the other channels
        # against the truth: tests/channels/, tests/core/test_fhir_channel.py, tests/tap/test_sources.py
        return
    for stream in tap_streams:
        changed = {str(r["id"]) for r in sb.truth(stream, updated_since=_bookmark(tap_state, stream))}
        emitted = {str(r.get("series_id") or r["id"]) for r in tap_again.get(stream, {}).values()}
        missing = changed - emitted
        assert not missing, f"{stream}: {len(missing)} changed record(s) not emitted"


def _timeless(state: dict[str, Any]) -> dict[str, Any]:
    """A state without the moments each face read at (a memo's ``read_at``, ``reconciled_at``; a complete view's
    name and time, e.g. the Home Connect locations list read at each face's own moment)."""
    memo = state.get("content_hashes")
    if isinstance(memo, dict):
        state = {**state, "content_hashes": {k: v for k, v in memo.items() if not k.endswith("_at")}}
    keys = state.get("snapshot_keys")
    if isinstance(keys, dict):
        state = {**state, "snapshot_keys": {k: v for k, v in keys.items() if k not in ("view", "view_at")}}
    return state


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _bookmark(state: dict[str, Any], stream: str) -> str | None:
    return state["bookmarks"].get(stream, {}).get("replication_key_value")


def _differences(
    tap: dict[str, dict[str, dict[str, Any]]], source: dict[str, dict[str, dict[str, Any]]], skip: set[str]
) -> list[str]:
    """Where the faces' records differ: ``stream id field`` (never the values: they are patient data)."""
    out = []
    for stream in sorted(set(tap) | set(source)):
        mine, theirs = tap.get(stream, {}), source.get(stream, {})
        out += [f"{stream} {rid} only on one face" for rid in sorted(set(mine) ^ set(theirs))]
        for rid in sorted(set(mine) & set(theirs)):
            a, b = mine[rid], theirs[rid]
            fields = (set(a) | set(b)) - skip
            out += [f"{stream} {rid} {field}" for field in sorted(fields) if a.get(field) != b.get(field)]
    return out[:20]
