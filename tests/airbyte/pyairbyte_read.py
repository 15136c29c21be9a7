"""Run inside PyAirbyte's own virtualenv (scripts/warehouse-setup pyairbyte) by tests/airbyte/test_pyairbyte.py:
read source-wellsky into a local DuckDB cache, fully and then incrementally, and print what the cache holds.

    python pyairbyte_read.py <source-wellsky executable> <config.json> <cache dir> <full|incremental>
"""

import json
import os
import sys

os.environ.setdefault("AIRBYTE_OFFLINE_MODE", "1")  # no connector registry lookups: the executable is local
os.environ.setdefault("DO_NOT_TRACK", "1")

import airbyte as ab

executable, config_path, cache_dir, mode = sys.argv[1:5]
with open(config_path) as fh:
    config = json.load(fh)
source = ab.get_source(
    "source-wellsky",
    local_executable=executable,
    config=config,
    install_if_missing=False,
)
source.check()
source.select_all_streams()
cache = ab.new_local_cache("wellsky", cache_dir=cache_dir)
result = source.read(cache=cache, force_full_refresh=(mode == "full"))
summary = {name: [str(record["id"]) for record in cache[name]] for name in source.get_selected_streams()}
print("PYAIRBYTE-SUMMARY " + json.dumps({"mode": mode, "streams": summary, "read": len(result.streams)}))
