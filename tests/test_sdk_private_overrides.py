"""The singer-sdk private methods the tap and target override are listed, with the reason, in one place:
the table under "singer-sdk private methods we override" in docs/architecture.md. An SDK upgrade that
renames one, or a new override nobody documented, fails here instead of silently changing behaviour."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import singer_sdk

from tap_wellsky import stream as tap_stream
from tap_wellsky import tap as tap_module
from target_wellsky import sinks, target

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
ROW = re.compile(r"^\|\s*`(?P<cls>\w+)\.(?P<method>_\w+)`\s*\|(?P<why>[^|]+)\|", re.M)


def documented() -> dict[tuple[str, str], str]:
    text = DOC.read_text()
    section = text.split("### singer-sdk private methods we override", 1)[1].split("\n#", 1)[0]
    return {(m["cls"], m["method"]): m["why"].strip() for m in ROW.finditer(section)}


def overrides() -> set[tuple[str, str]]:
    """(class, method) for every single-underscore method a class of ours defines over a singer-sdk base."""
    found = set()
    for module in (tap_stream, tap_module, target, sinks):
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            sdk_bases = [b for b in cls.__mro__[1:] if b.__module__.startswith("singer_sdk")]
            for name, value in vars(cls).items():
                private = name.startswith("_") and not name.startswith("__") and inspect.isfunction(value)
                if private and any(hasattr(b, name) for b in sdk_bases):
                    found.add((cls.__name__, name))
    return found


def test_every_private_override_is_documented_with_a_reason():
    missing = overrides() - set(documented())
    assert not missing, f"document these singer-sdk private overrides in docs/architecture.md: {sorted(missing)}"
    assert all(len(why) > 15 for why in documented().values()), "each row says why"


def test_every_documented_override_still_exists_in_this_singer_sdk():
    stale = set(documented()) - overrides()
    version = getattr(singer_sdk, "__version__", "")
    assert not stale, f"singer-sdk {version} no longer has (or we no longer override): {sorted(stale)}"
