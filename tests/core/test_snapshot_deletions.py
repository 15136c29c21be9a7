"""The rules of deletions from complete views (``wellsky_core.snapshot_deletions``) that the CLI tests
(tests/tap/test_snapshot_deletions.py) cannot easily provoke: a dead-lettered row, a view that lost most records,
the same view twice, a key store that holds another generation, and the store's file modes."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wellsky_core.channels.base import Channel
from wellsky_core.config import WellSkyConfig
from wellsky_core.snapshot_deletions import SNAPSHOT_KEY, STATE_LIMIT, STORE_FILE, SnapshotDeletions

AS_OF = datetime(2026, 12, 1, tzinfo=UTC)


def config(tmp_path: Path) -> WellSkyConfig:
    return WellSkyConfig.load({"username": "u", "password": "p", "product": "home_health", "source": "export",
                               "state_dir": str(tmp_path / "state"),
                               "dead_letter_path": str(tmp_path / "dead.jsonl")}, env={})


def record(i: int) -> dict[str, Any]:
    return {"id": f"A{i}", "patient_id": f"P{i % 7}", "updated_at": "2026-11-30T00:00:00Z"}


def read(cfg: WellSkyConfig, state: dict[str, Any], ids: range, *, view_id: str = "v1",
         complete: bool = True) -> list[dict[str, Any]]:
    deletions = SnapshotDeletions(cfg, "appointments", state)
    view = deletions.view()
    for i in ids:
        view.see(record(i))
    if complete:
        view.complete(view_id, AS_OF)
    return list(deletions.finish(view))


class Rows(Channel):
    name = "unit"

    def supports(self, entity: str) -> bool:
        return True

    def iter_records(self, entity: str, since: Any) -> Iterator[dict[str, Any]]:
        yield from ()


def test_a_deletion_has_the_key_the_client_and_nulls(tmp_path):
    cfg, state = config(tmp_path), {}
    assert read(cfg, state, range(10)) == [], "a first view knows no deletion"
    gone = read(cfg, state, range(1, 10), view_id="v2")
    assert gone == [{"id": "A0", "patient_id": "P0", "data_quality": [], "updated_at": "2026-12-01T00:00:00Z",
                     "_sdc_deleted_at": "2026-12-01T00:00:00Z"}]
    assert read(cfg, state, range(1, 10), view_id="v3") == [], "emitted once"


def test_a_dead_lettered_row_makes_the_view_incomplete(tmp_path):
    cfg, state = config(tmp_path), {}
    read(cfg, state, range(10))
    deletions = SnapshotDeletions(cfg, "appointments", state)
    channel = Rows(config=cfg)
    channel.views["appointments"] = view = deletions.view()
    for i in range(1, 10):  # row 0 is broken: dead-lettered, so not seen
        view.see(record(i))
    channel.reject("appointments", "row has 3 cells, header has 4", ["x"], file="f.csv", row=2)
    view.complete("v2", AS_OF)
    assert list(deletions.finish(view)) == []
    assert "dead-lettered" in deletions.outcome
    channel.close()


def test_the_same_view_twice_and_a_view_missing_most_records_delete_nothing(tmp_path):
    cfg, state = config(tmp_path), {}
    read(cfg, state, range(40))
    assert read(cfg, state, range(20), view_id="v1") == [], "the view the last sync compared"
    assert read(cfg, state, range(15), view_id="v2") == [], "25 of 40 gone: not trusted"
    assert read(cfg, state, range(0), view_id="v3") == [], "an empty view is not trusted"
    assert state[SNAPSHOT_KEY]["count"] == 40, "and the known keys are kept for a later view"


def test_large_key_sets_live_in_a_private_store_the_state_names(tmp_path):
    cfg, state = config(tmp_path), {}
    read(cfg, state, range(STATE_LIMIT + 5))
    entry = state[SNAPSHOT_KEY]
    assert "keys" not in entry and entry["count"] == STATE_LIMIT + 5
    store = cfg.private_state_dir() / STORE_FILE
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    assert [r["id"] for r in read(cfg, state, range(1, STATE_LIMIT + 5), view_id="v2")] == ["A0"]

    stale = {SNAPSHOT_KEY: {**state[SNAPSHOT_KEY], "digest": "0" * 32}}  # another generation's digest
    assert read(cfg, stale, range(2, STATE_LIMIT + 5), view_id="v3") == []
