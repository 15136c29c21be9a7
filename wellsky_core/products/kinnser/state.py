"""The portal channel's own durable state: the last snapshot, and the offices a run has finished.

The portal shows no modification times, so incremental reads compare each run with the last snapshot: a
record keeps the time it was first seen in its current form as ``updated_at``, and only new or changed records
pass the tap's bookmark. A run is written office by office; a killed run resumes with the offices it had
finished (their records are kept here until the run completes) and reads only the rest. Schedule Deviation
windows already reconciled are remembered per office.

The file holds patient data (like any local spool): it is written with mode 0600.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ...private_files import UnsafePathError, write_private

VERSION = 1
RESUME_WITHIN = timedelta(hours=24)
"""An unfinished run older than this is started over (its offices may have changed since)."""


def fingerprint(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "updated_at"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


class PortalState:
    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.data: dict[str, Any] = {"version": VERSION, "snapshot": {}, "runs": {}, "deviation": {}}
        if self.path is not None and self.path.is_symlink():
            raise UnsafePathError(f"{self.path} is a symbolic link; point portal_state_path at a real file")
        if self.path is not None and self.path.exists():
            loaded = json.loads(self.path.read_text(encoding="utf-8") or "{}")
            if loaded.get("version") == VERSION:
                self.data.update(loaded)

    def save(self) -> None:
        if self.path is None:
            return
        # 0600, atomically, never through a symlink (the snapshot names patients)
        write_private(self.path, json.dumps(self.data, separators=(",", ":")))

    # -- runs -------------------------------------------------------------------------------------------
    def begin(self, group: str, now: datetime) -> dict[str, Any]:
        """The unfinished run of ``group`` to resume, or a new one started ``now``."""
        run = self.data["runs"].get(group)
        if run and not run.get("complete"):
            started = datetime.fromisoformat(run["started_at"].replace("Z", "+00:00"))
            if now - started <= RESUME_WITHIN:
                return run  # type: ignore[no-any-return]
        run = {"started_at": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "offices": {}, "complete": False}
        self.data["runs"][group] = run
        self.save()
        return run

    def office_done(self, run: dict[str, Any], office: str, records: dict[str, list[dict[str, Any]]]) -> None:
        run["offices"][office] = records
        self.save()

    def finish(self, run: dict[str, Any], entities: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
        """All offices read: stamp ``updated_at`` by snapshot comparison, store the snapshot, close the run."""
        observed = run["started_at"]
        out: dict[str, list[dict[str, Any]]] = {}
        for entity in entities:
            previous = self.data["snapshot"].get(entity, {})
            current: dict[str, list[str]] = {}
            records: dict[str, dict[str, Any]] = {}
            for office_records in run["offices"].values():
                for rec in office_records.get(entity, []):
                    records[rec["id"]] = rec
            for rid, rec in records.items():
                digest = fingerprint(rec)
                seen = previous.get(rid)
                rec["updated_at"] = seen[1] if seen and seen[0] == digest else observed
                current[rid] = [digest, rec["updated_at"]]
            self.data["snapshot"][entity] = current
            out[entity] = sorted(records.values(), key=lambda r: (r["updated_at"], r["id"]))
        run["offices"] = {}
        run["complete"] = True
        self.save()
        return out

    # -- Schedule Deviation windows ---------------------------------------------------------------------
    def deviation_done_until(self, office: str) -> str | None:
        return self.data["deviation"].get(office)  # type: ignore[no-any-return]

    def deviation_window_done(self, office: str, until: str) -> None:
        self.data["deviation"][office] = until
        self.save()
