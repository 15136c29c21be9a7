"""Catalog selection applied to every record before it is emitted, on the SDK path and the fast path alike.

A property the user removed from the catalog schema, or marked ``selected: false``, must not appear in any
RECORD: the SCHEMA message already lacks it, and a downstream table (or a privacy review) trusts that. The
SDK prunes only ``selected: false`` properties and only on its own writer; with type conformance off it keeps
properties missing from the schema. So the tap projects records itself, and only when the catalog narrows the
stream: the projection is compiled once per sync from the schema and the selection mask, and is ``None`` (no
per-record cost) when the catalog keeps the full canonical schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Projector = Callable[[Any], Any]
Breadcrumb = tuple[str, ...]


def _is_object(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    return isinstance(schema.get("properties"), dict) and (kind == "object" or "object" in (kind or ()))


def compile_projection(
    full: Mapping[str, Any], selected: Mapping[str, Any], mask: Mapping[Breadcrumb, bool], at: Breadcrumb = ()
) -> Projector | None:
    """A function that keeps only what ``selected`` (the catalog's schema) and ``mask`` allow; None: keep all."""
    if _is_object(selected):
        full_props = full.get("properties") or {} if _is_object(full) else {}
        sub: dict[str, Projector | None] = {}
        for name, schema in selected["properties"].items():
            crumb = (*at, "properties", name)
            if mask.get(crumb, True) is False:
                continue
            sub[name] = compile_projection(full_props.get(name) or {}, schema, mask, crumb)
        if selected.get("additionalProperties") not in (None, False) and not at:
            return None if all(f is None for f in sub.values()) else _object(sub, keep_unknown=True)
        if set(sub) >= set(full_props) and all(f is None for f in sub.values()) and _is_object(full):
            return None
        return _object(sub, keep_unknown=False)
    items = selected.get("items")
    if isinstance(items, dict):
        inner = compile_projection(full.get("items") or {}, items, mask, at)
        if inner is not None:
            return lambda value: [inner(v) for v in value] if isinstance(value, list) else value
    return None


def _object(sub: dict[str, Projector | None], *, keep_unknown: bool) -> Projector:
    def project(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = {}
        for key, item in value.items():
            if key in sub:
                fn = sub[key]
                out[key] = fn(item) if fn is not None and item is not None else item
            elif keep_unknown:
                out[key] = item
        return out

    return project
