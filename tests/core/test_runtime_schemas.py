"""The schemas a tap start reads from the package (``wellsky_core/runtime_schemas.json``) are the ones the models
build: a model changed without ``python -m wellsky_core.schemas --write`` fails here, not in a user's catalog."""

from __future__ import annotations

from wellsky_core import schemas
from wellsky_core.config import TapConfig, config_json_schema


def test_shipped_schemas_equal_what_the_models_build() -> None:
    assert schemas.RUNTIME_FILE.exists()
    for stream in schemas.STREAM_MODELS:
        assert schemas.stream_schema(stream) == schemas.build_stream_schema(stream), stream
    assert schemas.tap_config_schema() == config_json_schema(TapConfig)


def test_a_caller_changing_its_schema_leaves_the_next_one_intact() -> None:
    first = schemas.stream_schema("patients")
    first["properties"].clear()
    assert schemas.stream_schema("patients")["properties"]
