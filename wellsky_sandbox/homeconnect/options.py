"""Sandbox switches of the Home Connect emulation: one per conflict in the fact sheet (section 7)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class Options:
    """Sandbox switches; defaults follow the better-sourced side of every conflict in the fact sheet (section 7)."""

    appointment_writes: bool = False  # POST/PUT/DELETE /v1/appointment/: unconfirmed by any source (REF L only)
    paging: str = "conn"  # "conn": _page 0-based, _count 20 everywhere; "ref": 1-based, REF's per-resource defaults
    ref_paths: bool = False  # also accept REF's POST /v1/locations/_search/ and POST /v1/organizations/_search/
    comparators_everywhere: bool = False  # REF: created/updated honoured on every search (CONN: three resources)
    active_only_quirk: bool = True  # production pitfall 3: {"active": ...} as the only filter returns nothing
    tasklog_id_string: bool = False  # MATRIX: taskLogId as a string (REF: integer)
    communication: str = "sync"  # practitioners: "sync" language.coding[] + preferred (SYNC, H); "ref": coding[]
    appointment_total: bool = False  # SVC reads `total` on appointment searches: add it next to totalRecords

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | None) -> Options:
        if not spec:
            return cls()
        items = dict(p.split("=", 1) for p in spec.split(",") if p.strip()) if isinstance(spec, str) else dict(spec)
        known = {f.name: f.type for f in fields(cls)}
        opts = cls()
        for key, value in items.items():
            key = key.strip()
            if key not in known:
                raise ValueError(f"unknown Home Connect option {key!r}; known: {', '.join(sorted(known))}")
            if key in ("paging", "communication"):
                allowed = ("conn", "ref") if key == "paging" else ("sync", "ref")
                if value not in allowed:
                    raise ValueError(f"Home Connect option {key} must be one of {', '.join(allowed)}")
                setattr(opts, key, value)
            else:
                opts.__setattr__(
                    key, value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
                )
        return opts
