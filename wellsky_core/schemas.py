"""JSON schemas of the canonical records, generated from the pydantic models so the two never drift.

``schemas/<stream>.json`` are the published copies (what a warehouse team reads); the tap builds the same
dicts at runtime from the models. ``python -m wellsky_core.schemas --write`` regenerates the files and the
settings table of docs/configuration.md; ``--check`` (run by CI) fails when they differ from the models.

The schemas are Singer-friendly: no ``$ref``, nullable fields as ``"type": [X, "null"]``, timestamps as
``format: date-time`` and dates as ``format: date``.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from pathlib import Path
from typing import Any

from .models import ENTITIES, WRITABLE, CanonicalModel, WebhookEvent

STREAM_MODELS: dict[str, type[CanonicalModel]] = {
    **{name: spec.model for name, spec in ENTITIES.items()},
    "webhook_events": WebhookEvent,
}
"""Every stream the tap can emit: the canonical entities plus the webhook event log."""

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
_DROP = {"title", "default"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "properties":
            out[key] = {name: _inline(prop, defs) for name, prop in value.items()}
        else:
            out[key] = _inline(value, defs)
    options = out.pop("anyOf", None)
    if options is not None:
        non_null = [o for o in options if o.get("type") != "null"]
        nullable = len(non_null) != len(options)
        if len(non_null) == 1:
            inner = dict(non_null[0])
            if nullable and "type" in inner:
                inner["type"] = [inner["type"], "null"] if isinstance(inner["type"], str) else [*inner["type"], "null"]
            if nullable and "enum" in inner:
                inner["enum"] = [*inner["enum"], None]
            out = {**inner, **out}
        else:
            out["anyOf"] = options
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


RUNTIME_FILE = Path(__file__).with_name("runtime_schemas.json")
"""What every tap start needs, as built from the models and shipped in the package: the streams' schemas and
the tap's config schema. Building them with pydantic was ~10% of a no-change incremental's CPU (issue 27);
``--check`` keeps the file equal to the models, and without the file they are built as before."""


@functools.cache
def _runtime() -> dict[str, Any]:
    try:
        return json.loads(RUNTIME_FILE.read_bytes())
    except FileNotFoundError:
        return {}


def stream_schema(stream: str) -> dict[str, Any]:
    """The Singer/JSON schema of one stream's canonical records (a fresh dict: callers may change it)."""
    shipped = _runtime().get("streams", {}).get(stream)
    return copy.deepcopy(shipped) if shipped is not None else build_stream_schema(stream)


def tap_config_schema() -> dict[str, Any]:
    """``config_json_schema(TapConfig)``: the tap's settings (shipped, else built)."""
    shipped = _runtime().get("tap_config")
    if shipped is not None:
        return copy.deepcopy(shipped)
    from .config import TapConfig, config_json_schema

    return config_json_schema(TapConfig)


def render_runtime() -> str:
    from .config import TapConfig, config_json_schema

    return json.dumps(
        {
            "streams": {stream: build_stream_schema(stream) for stream in STREAM_MODELS},
            "tap_config": config_json_schema(TapConfig),
        },
        indent=1,
    ) + "\n"


def build_stream_schema(stream: str) -> dict[str, Any]:
    """The Singer/JSON schema of one stream's canonical records, from its model."""
    model = STREAM_MODELS[stream]
    raw = model.model_json_schema(mode="serialization")
    schema = _inline(raw, raw.get("$defs", {}))
    schema.pop("description", None)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "description": (model.__doc__ or stream).strip().splitlines()[0],
        **schema,
    }


WRITE_DIR = SCHEMA_DIR / "write"
"""The write contract: what target-wellsky accepts, published apart from what the tap emits."""


def write_schema(stream: str) -> dict[str, Any]:
    """The JSON schema of a record target-wellsky accepts for a writable stream.

    The tap's schemas require ``id`` and ``updated_at`` (every record read from WellSky has them); a record to
    be written may have neither yet. The target matches it on ``id``, else on the natural key."""
    from .writes import WRITE_MODELS  # the models the target validates with: one definition of the contract

    model = WRITE_MODELS[stream]
    raw = model.model_json_schema(mode="validation")
    schema = _inline(raw, raw.get("$defs", {}))
    schema.pop("description", None)
    schema.pop("title", None)
    from .models import READ_ONLY_FIELDS

    for name, prop in schema.get("properties", {}).items():
        if name in READ_ONLY_FIELDS:  # what the tap emits is accepted as is, so a round trip needs no mapping
            prop["description"] = f"{prop.get('description', '')} Read-only: accepted and ignored on write.".strip()
    natural = ENTITIES[stream].match_field
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "description": (
            f"What target-wellsky accepts on the {stream} stream. `id` (the WellSky id) and `updated_at` are optional; "
            f"the target updates the record with that id, else the one whose `{natural}` matches, else creates one. "
            f"Send `{natural}` so a re-run or a replayed batch creates nothing twice."
        ),
        **schema,
    }


CONFIG_DOC = SCHEMA_DIR.parent / "docs" / "configuration.md"
TABLE_START, TABLE_END = "<!-- settings:start -->", "<!-- settings:end -->"


def settings_table() -> str:
    """The configuration reference (docs/configuration.md), generated from the config models (it cannot drift):
    every key of the tap (and source-wellsky) and of the target, with who reads it."""
    from .config import TapConfig, TargetConfig, WellSkyConfig, secret_fields

    secrets = set(secret_fields(TargetConfig)) | set(secret_fields(TapConfig))
    fields = {**TapConfig.model_fields, **TargetConfig.model_fields}
    rows = ["| setting | default | used by | meaning |", "|---|---|---|---|"]
    for name, field in fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "" if default is None else f"`{json.dumps(default) if not isinstance(default, str) else default}`"
        secret = " (secret)" if name in secrets else ""
        used = "all" if name in WellSkyConfig.model_fields else "tap" if name in TapConfig.model_fields else "target"
        meaning = (field.description or "").replace("|", "/")
        choices = _literal_values(field.annotation)
        if choices:
            meaning += " One of: " + ", ".join(f"`{c}`" for c in choices) + "."
        rows.append(f"| `{name}`{secret} | {shown} | {used} | {meaning} |")
    return "\n".join(rows)


def _literal_values(annotation: Any) -> list[str]:
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    values: list[str] = []
    for arg in typing.get_args(annotation):
        values += _literal_values(arg)
    return values


def _doc_with_table(text: str) -> str:
    if TABLE_START not in text or TABLE_END not in text:
        raise SystemExit(f"{CONFIG_DOC} lost its {TABLE_START} ... {TABLE_END} markers; put them back")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_START}\n{settings_table()}\n{TABLE_END}{tail}"


def render(stream: str) -> str:
    return json.dumps(build_stream_schema(stream), indent=2, sort_keys=False) + "\n"


def generated_files() -> dict[Path, str]:
    """Every schema file this module owns: the tap's streams, then the write contract of the writable ones."""
    files = {SCHEMA_DIR / f"{stream}.json": render(stream) for stream in STREAM_MODELS}
    files[RUNTIME_FILE] = render_runtime()
    for stream in WRITABLE:
        files[WRITE_DIR / f"{stream}.json"] = json.dumps(write_schema(stream), indent=2) + "\n"
    for stream, schema in product_write_schemas().items():
        files[WRITE_DIR / f"{stream}.json"] = json.dumps(schema, indent=2) + "\n"
    return files


def product_write_schemas() -> dict[str, dict[str, Any]]:
    """Write contracts of streams only one product writes (Home Connect's ``evv_clock``), from its dialect."""
    import importlib

    from .products import DIALECTS

    out: dict[str, dict[str, Any]] = {}
    for dialect in DIALECTS.values():
        for stream, path in dialect.write_streams:
            module, _, name = path.partition(":")
            model = getattr(importlib.import_module(module), name)
            raw = model.model_json_schema(mode="validation")
            schema = _inline(raw, raw.get("$defs", {}))
            schema.pop("title", None)
            description = schema.pop("description", "") or stream
            out[stream] = {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "description": f"What target-wellsky accepts on the {stream} stream ({dialect.product}): "
                f"{description}",
                **schema,
            }
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse  # here: every tap start imports this module, only `python -m` parses arguments

    parser = argparse.ArgumentParser(prog="python -m wellsky_core.schemas", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate schemas/*.json from the models")
    mode.add_argument("--check", action="store_true", help="fail if schemas/*.json differ from the models")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated_files().items():
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(str(path.relative_to(SCHEMA_DIR.parent) if path != RUNTIME_FILE else path.name))
    current = CONFIG_DOC.read_text() if CONFIG_DOC.exists() else f"{TABLE_START}\n{TABLE_END}\n"
    wanted = _doc_with_table(current)
    if args.write and wanted != current:
        CONFIG_DOC.write_text(wanted)
    elif not args.write and wanted != current:
        stale.append("docs/configuration.md settings table")
    owned = set(generated_files())
    extra = sorted(str(p.relative_to(SCHEMA_DIR.parent)) for p in SCHEMA_DIR.rglob("*.json") if p not in owned)
    if stale or extra:
        print(
            f"generated files out of date: {', '.join(stale + extra)}; run `python -m wellsky_core.schemas --write` "
            "and commit the result",
            file=sys.stderr,
        )
        return 1
    if args.check:
        print(f"schemas/ matches the models ({len(STREAM_MODELS)} streams, write contract of "
              f"{len(WRITABLE) + len(product_write_schemas())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
