"""Target input past the depth and size bounds is refused with a reason and kept as received (issue 16 #6).

Before: a record nested 1,000 levels deep crashed the dead-letter write (orjson's encoder stops at 254 levels):
a traceback, exit 1, nothing dead-lettered. Now such lines (and lines deeper than orjson can even parse, and
oversized lines) are refused before anything else looks at them; the raw line goes to the dead letters, the
good records around it are written, and the run exits 3. Without a dead-letter file the run stops (exit 2) with
one line naming the input line and the setting.
"""

from __future__ import annotations

import json

import pytest

from tests.target.helpers import new_patients, singer_lines
from wellsky_core.jsonl import JsonlAppender

from .conftest import assert_no_traceback, run_target_cli


def _nested_line(patient: dict, levels: int) -> str:
    """A RECORD whose extra field nests ``levels`` objects deep (built as text: json.dumps would recurse)."""
    head = json.dumps({"type": "RECORD", "stream": "patients", "record": patient})[:-2]  # drop the closing "}}"
    return head + ', "x": ' + '{"a":' * levels + '"x"' + "}" * levels + "}}"


def _config(sb, tmp_path, **extra) -> dict:
    return {"base_url": sb.base_url, "username": sb.username, "password": sb.password, **extra}


HOSTILE = {
    "1,000 levels": lambda p: _nested_line(p, 1000),
    "3,000 levels": lambda p: '{"type":"RECORD","stream":"patients","record":' + "[" * 3000 + "]" * 3000 + "}",
    "2 MB line": lambda p: json.dumps({"type": "RECORD", "stream": "patients", "record": {**p, "x": "y" * 2_000_000}}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_line_is_dead_lettered_and_the_rest_lands(sandbox, tmp_path, case):
    good = new_patients(sandbox, 2, prefix="BOUND")
    lines = singer_lines("patients", good)
    bad = HOSTILE[case](good[0])
    lines.insert(2, bad)  # between the two good records
    dead = tmp_path / "dead.jsonl"
    cfg = _config(sandbox, tmp_path, dead_letter_path=str(dead), max_record_bytes=1_000_000)
    proc = run_target_cli(tmp_path, cfg, "\n".join(lines) + "\n")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert_no_traceback(proc.stderr, case)
    entries = JsonlAppender.read(dead)
    assert len(entries) == 1 and entries[0]["stage"] == "input"
    assert entries[0]["payload"].strip() == bad, "the line is kept exactly as received"
    assert entries[0]["context"]["input_line"] == 3
    assert "max_record" in entries[0]["reason"]
    mrns = {p["mrn"] for p in sandbox.truth("patients")}
    assert {p["mrn"] for p in good} <= mrns


def test_without_dead_letters_a_hostile_line_stops_the_run_with_one_line(sandbox, tmp_path):
    good = new_patients(sandbox, 1, prefix="BOUNDX")
    lines = [*singer_lines("patients", good), HOSTILE["1,000 levels"](good[0])]
    proc = run_target_cli(tmp_path, _config(sandbox, tmp_path, max_record_depth=16), "\n".join(lines) + "\n")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert_no_traceback(proc.stderr, "no dead letters")
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "input line 3" in errors[0] and "max_record_depth (16" in errors[0], errors
