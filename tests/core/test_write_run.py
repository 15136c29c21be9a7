"""``wellsky_core/write_run.py`` on its own, in-process with a scripted writer (seconds): input bounds, grouping
by natural key, accounting in input order (audit, dead letters, counts), the first fatal problem raised only
after everything sent was accounted, the summary and closing."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from wellsky_core.config import TargetConfig
from wellsky_core.errors import LineOverBounds, SingerInputError, WriteAborted, WriteRefused
from wellsky_core.models import ENTITIES, WRITABLE
from wellsky_core.write_run import WriteRun, parse_input_line
from wellsky_core.writes import WriteResult

LOG = logging.getLogger("test-write-run")
MATCH = ENTITIES["patients"].match_field  # the natural key records are grouped by


def parse(line: str, *, max_bytes: int = 1000, max_depth: int = 5) -> dict[str, Any]:
    return parse_input_line(line, 7, max_bytes=max_bytes, max_depth=max_depth, protocol="Singer")


# -- input lines ----------------------------------------------------------------------------------------------
def test_a_line_within_bounds_is_one_object() -> None:
    assert parse('{"type": "RECORD", "record": {"a": [1, {"b": 2}]}}') == {
        "type": "RECORD",
        "record": {"a": [1, {"b": 2}]},
    }


def test_a_line_longer_than_max_record_bytes_is_refused_unparsed() -> None:
    line = '{"a": "' + "x" * 100 + '"}'
    assert parse(line, max_bytes=len(line)) == {"a": "x" * 100}  # exactly at the limit: read
    with pytest.raises(LineOverBounds, match=r"longer than max_record_bytes \(1,000 characters\)"):
        parse('{"a": "' + "x" * 1000 + '"}')


def test_depth_counts_containers_and_refuses_only_past_the_limit() -> None:
    at_limit = '{"a": {"b": [{"c": [1]}]}}'  # 5 containers deep
    assert parse(at_limit, max_depth=5)["a"]["b"][0]["c"] == [1]
    with pytest.raises(LineOverBounds, match=r"deeper than max_record_depth \(4 levels\)"):
        parse(at_limit, max_depth=4)
    wide = json.dumps({f"k{i}": {"v": [i]} for i in range(50)})  # many braces, shallow: read
    assert len(parse(wide, max_depth=3)) == 50
    braces_in_text = json.dumps({"a": "{{{{{{[[[[[[[["})
    assert parse(braces_in_text, max_depth=1) == {"a": "{{{{{{[[[[[[[["}


def test_a_line_too_deep_for_the_json_parser_is_kept_not_fatal() -> None:
    deep = '{"a":' * 3000 + "1" + "}" * 3000
    with pytest.raises(LineOverBounds, match="max_record_depth"):
        parse(deep, max_bytes=10**6, max_depth=100)
    with pytest.raises(SingerInputError, match="input line 7 is not valid JSON"):  # not an object message
        parse("[" * 3000 + "]" * 3000, max_bytes=10**6, max_depth=100)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"type": "RECORD", "record": {"mrn": "SECRET-MRN"', "input line 7 is not valid JSON"),
        ('["SECRET-MRN"]', "input line 7 is JSON but not an object; expected a Singer message"),
        ('"SECRET-MRN"', "input line 7 is JSON but not an object"),
    ],
)
def test_an_unreadable_line_names_the_line_never_its_content(line: str, message: str) -> None:
    with pytest.raises(SingerInputError) as err:
        parse(line)
    assert message in str(err.value) and "SECRET-MRN" not in str(err.value)
    assert "every line must be one Singer message" in str(err.value) or "expected a Singer message" in str(err.value)


def test_the_protocol_is_named_in_the_error() -> None:
    with pytest.raises(SingerInputError, match="one Airbyte message"):
        parse_input_line("nope", 3, max_bytes=100, max_depth=5, protocol="Airbyte")


# -- a run with a scripted writer ---------------------------------------------------------------------------
class ScriptedWriter:
    """Answers each record by its ``script`` field: an action, ``abort`` (WriteAborted), ``boom`` (a crash)."""

    writable = ("patients", "appointments")
    write_hashes = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.primed: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def prime(self, stream: str, records: list[dict[str, Any]]) -> None:
        self.primed.append((stream, len(records)))

    def write(self, stream: str, record: dict[str, Any]) -> WriteResult:
        assert stream in self.writable, f"written to stream {stream!r}"
        with self.lock:
            self.calls.append((record.get(MATCH) or "-", record["n"]))
            self.threads.add(threading.current_thread().name.rsplit("_", 1)[0])
        script = record.get("script", "created")
        result = WriteResult(
            stream,
            "failed" if script in ("abort", "boom") else script,
            wellsky_id=f"w{record['n']}",
            idempotency_key=f"k{record['n']}",
            key_hash=f"h{record['n']}",
            reason="refused by the tenant" if script == "rejected" else None,
            code="duplicate_mrn" if script == "rejected" else None,
        )
        if script == "abort":
            raise WriteAborted(result, RuntimeError("tenant down"))
        if script == "boom":
            raise KeyError("bug")
        return result


def make_run(tmp_path: Path, *, dead_letters: bool = True, **extra: Any) -> tuple[WriteRun, ScriptedWriter]:
    settings = TargetConfig.load(
        {
            "base_url": "https://tenant.example.test",
            "username": "u",
            "password": "p",
            "audit_log_path": str(tmp_path / "audit.jsonl"),
            "dead_letter_path": str(tmp_path / "dead.jsonl") if dead_letters else None,
            "write_concurrency": 4,
            **extra,
        },
        env={},
    )
    run = WriteRun(settings, LOG)
    writer = ScriptedWriter()
    run.__dict__["writer"] = writer  # the cached writer: no connection, no tenant
    return run, writer


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def items(*specs: tuple[str | None, str]) -> list[tuple[int, dict[str, Any]]]:
    """(natural key or None, script) per input line, numbered from 1."""
    out = []
    for n, (key, script) in enumerate(specs, 1):
        record: dict[str, Any] = {"n": n, "script": script}
        if key:
            record[MATCH] = key
        out.append((n, record))
    return out


def test_records_sharing_a_natural_key_are_written_in_input_order_and_accounted_in_input_order(tmp_path):
    run, writer = make_run(tmp_path)
    batch = items(
        ("A", "created"),
        ("B", "created"),
        ("A", "updated"),
        (None, "created"),
        ("A", "unchanged"),
        ("B", "updated"),
        (None, "replayed"),
    )
    run.write_batch("patients", batch)
    run.close()
    assert [n for key, n in writer.calls if key == "A"] == [1, 3, 5]
    assert [n for key, n in writer.calls if key == "B"] == [2, 6]
    assert sorted(n for _, n in writer.calls) == [1, 2, 3, 4, 5, 6, 7]  # each record written once
    assert writer.primed == [("patients", 7)]
    audit = lines(tmp_path / "audit.jsonl")
    # group by group, in the order each group first appears, each in input order: whatever order the workers
    # finished in
    assert [a["input_line"] for a in audit] == [1, 3, 5, 2, 6, 4, 7]
    assert audit[1] == {
        **audit[1],
        "stream": "patients",
        "action": "updated",
        "wellsky_id": "w3",
        "idempotency_key": "k3",
        "key_hash": "h3",
        "code": None,
    }
    assert run.results == {
        "patients:created": 3,
        "patients:updated": 2,
        "patients:unchanged": 1,
        "patients:replayed": 1,
    }
    assert run.rejected == 0 and lines(tmp_path / "dead.jsonl") == []


def test_an_empty_batch_does_nothing(tmp_path: Path) -> None:
    run, writer = make_run(tmp_path)
    run.write_batch("patients", [])
    assert writer.primed == [] and writer.calls == [] and not (tmp_path / "audit.jsonl").exists()


def test_a_refusal_is_dead_lettered_with_its_line_and_the_run_goes_on(tmp_path: Path, caplog) -> None:
    run, _ = make_run(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        run.write_batch("patients", items(("A", "created"), ("B", "rejected"), ("C", "created")))
    run.close()
    (dead,) = lines(tmp_path / "dead.jsonl")
    assert dead["stage"] == "write" and dead["stream"] == "patients" and dead["reason"] == "refused by the tenant"
    assert dead["context"] == {"input_line": 2, "code": "duplicate_mrn"} and dead["payload"]["n"] == 2
    assert run.rejected_by_code == {"duplicate_mrn": 1} and run.rejected == 1 and run.results["patients:created"] == 2
    assert "input line 2: patients record refused: refused by the tenant" in caplog.text
    assert [a["action"] for a in lines(tmp_path / "audit.jsonl")] == ["created", "rejected", "created"]


def test_a_refusal_without_dead_letters_stops_the_run_after_accounting_every_write(tmp_path: Path) -> None:
    run, writer = make_run(tmp_path, dead_letters=False, write_concurrency=1)
    with pytest.raises(WriteRefused) as err:
        run.write_batch("patients", items(("A", "created"), ("B", "rejected"), ("C", "created"), ("D", "created")))
    run.close()
    assert err.value.code == "duplicate_mrn"
    assert "input line 2: refused by the tenant (set dead_letter_path" in str(err.value)
    audit = [(a["input_line"], a["action"]) for a in lines(tmp_path / "audit.jsonl")]
    assert audit[:2] == [(1, "created"), (2, "rejected")]
    assert len(writer.calls) == len(audit)  # everything sent is in the audit, nothing more
    assert (4, "created") not in audit or len(audit) == 4


def test_account_raises_or_returns_a_refusal_without_dead_letters(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, dead_letters=False)
    refused = WriteResult("patients", "rejected", reason="no", code=None)
    with pytest.raises(WriteRefused) as err:
        run.account("patients", 3, {"n": 3}, refused)
    assert err.value.code == "rejected" and run.rejected_by_code == {"error": 1}
    problem = run.account("patients", 4, {"n": 4}, refused, raise_on_refusal=False)
    assert isinstance(problem, WriteRefused) and "input line 4: no" in str(problem)
    assert run.account("patients", 5, {"n": 5}, WriteResult("patients", "created")) is None
    assert run.results == {"patients:rejected": 2, "patients:created": 1}


def test_an_aborted_write_is_audited_as_failed_and_raised_after_the_others(tmp_path: Path) -> None:
    run, writer = make_run(tmp_path, write_concurrency=1)
    with pytest.raises(WriteAborted, match="tenant down"):
        run.write_batch("patients", items(("A", "created"), ("A", "abort"), ("A", "created"), ("B", "created")))
    run.close()
    audit = [(a["input_line"], a["action"], a["idempotency_key"]) for a in lines(tmp_path / "audit.jsonl")]
    assert audit[:2] == [(1, "created", "k1"), (2, "failed", "k2")]  # the failed write keeps its key
    assert (3, "created", "k3") not in audit, "a group stops at its first fatal error"
    assert [n for _, n in writer.calls] == [n for n, _, _ in audit]


def test_a_crash_in_the_writer_is_raised_and_what_was_done_is_kept(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, write_concurrency=1)
    with pytest.raises(KeyError, match="bug"):
        run.write_batch("patients", items(("A", "created"), ("A", "boom"), ("B", "created")))
    run.close()
    audit = [(a["input_line"], a["action"]) for a in lines(tmp_path / "audit.jsonl")]
    assert audit[0] == (1, "created") and (2, "failed") not in audit  # a crash has no result to audit


def test_a_signal_during_a_batch_still_accounts_what_the_workers_sent(tmp_path: Path, monkeypatch) -> None:
    from wellsky_core import write_run

    run, writer = make_run(tmp_path, write_concurrency=2)
    real_wait = write_run.wait
    calls = {"n": 0}

    def interrupted(futures: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            real_wait(futures)
            raise KeyboardInterrupt
        return real_wait(futures, *args, **kwargs)

    monkeypatch.setattr(write_run, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.write_batch("patients", items(("A", "created"), ("B", "created"), ("C", "created")))
    run.close()
    audit = sorted(a["input_line"] for a in lines(tmp_path / "audit.jsonl"))
    assert audit == sorted(n for _, n in writer.calls) and {1, 2} <= set(audit)
    assert len(audit) == len(set(audit)), "each write accounted exactly once"


def test_refused_input_lines_are_dead_lettered_as_received_or_fatal(tmp_path: Path, caplog) -> None:
    run, _ = make_run(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        run.refuse_input(9, "nested deeper than max_record_depth (5 levels)", '{"raw": 1')
    run.refuse_input(10, "too long", "x")
    run.close()
    dead = lines(tmp_path / "dead.jsonl")
    assert dead[0]["stage"] == "input" and dead[0]["stream"] is None and dead[0]["payload"] == '{"raw": 1'
    assert dead[0]["context"] == {"input_line": 9, "code": "input_bounds"}
    assert run.results == {"input:rejected": 2} and run.rejected_by_code == {"input_bounds": 2}
    assert run.rejected == 2 and "input line 9 refused: nested deeper" in caplog.text
    strict, _ = make_run(tmp_path / "strict", dead_letters=False)
    with pytest.raises(SingerInputError, match="input line 3 refused: too long; set dead_letter_path"):
        strict.refuse_input(3, "too long", "x")


def test_the_summary_lists_each_stream_skips_refusals_and_rejections(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path)
    run.write_batch("patients", items(("A", "created"), ("B", "created"), ("C", "rejected")))
    run.write_batch("appointments", items(("X", "updated")))
    run.ignored["care_plans"] += 2
    run.refused_streams["coverage"] += 3
    text = run.summary("target-wellsky", 12)
    run.close()
    assert text.startswith("target-wellsky summary (12 input lines, ")
    assert "  patients      created 2, rejected 1" in text
    assert "  appointments  updated 1" in text
    assert "  care_plans    skipped 2 (not writable)" in text
    assert "  coverage      refused 3 (stream not writable for this tenant" in text
    assert f"  rejected 4 ({{'duplicate_mrn': 1}}) -> dead letters in {tmp_path / 'dead.jsonl'}" in text
    assert text.index("patients") < text.index("appointments")  # the writer's stream order


def test_the_summary_of_a_dry_run_without_a_writer(tmp_path: Path) -> None:
    settings = TargetConfig.load(
        {"base_url": "https://t.example.test", "username": "u", "password": "p", "dry_run": True}, env={}
    )
    run = WriteRun(settings, LOG)
    run.results["patients:would_create"] += 1
    text = run.summary("destination-wellsky", 1)
    assert "summary (dry run: nothing written) (1 input lines" in text and "patients      would_create 1" in text
    assert "rejected" not in text
    run.close()


def test_writable_and_refusal_come_from_the_writer_with_defaults(tmp_path: Path) -> None:
    run, writer = make_run(tmp_path)
    assert run.writable == ("patients", "appointments") and run.refusal("patients") is None
    writer.refusal = lambda stream: f"{stream} is read-only here"  # type: ignore[attr-defined]
    assert run.refusal("coverage") == "coverage is read-only here"
    del ScriptedWriter.writable
    try:
        assert run.writable == WRITABLE
    finally:
        ScriptedWriter.writable = ("patients", "appointments")
    run.close()


def test_close_closes_what_was_opened_only(tmp_path: Path) -> None:
    run, writer = make_run(tmp_path)
    closed: list[str] = []
    writer.write_hashes = type("Ledger", (), {"close": lambda self: closed.append("ledger")})()
    run.__dict__["connection"] = type("Conn", (), {"close": lambda self: closed.append("connection")})()
    run.write_batch("patients", items(("A", "created")))
    run.close()
    assert closed == ["ledger", "connection"] and run.audit._fh is None and run.dead_letter._fh is None
    bare = WriteRun(run.settings, LOG)
    bare.close()  # nothing opened: no writer, no connection created
    assert "writer" not in bare.__dict__ and "connection" not in bare.__dict__


# -- details the mutation run showed untested ------------------------------------------------------------------
def test_a_writer_may_group_records_its_own_way(tmp_path: Path) -> None:
    run, writer = make_run(tmp_path, write_concurrency=1)
    writer.group_key = lambda stream, record, line: f"g{line % 2}"  # type: ignore[attr-defined]
    run.write_batch("patients", items(*[(None, "created")] * 7))
    run.close()
    assert [a["input_line"] for a in lines(tmp_path / "audit.jsonl")] == [1, 3, 5, 7, 2, 4, 6]


def test_every_group_is_written_with_one_worker_on_named_threads(tmp_path: Path) -> None:
    run, writer = make_run(tmp_path, write_concurrency=1)
    run.write_batch("appointments", items(("A", "created"), ("B", "created"), ("C", "updated")))
    run.close()
    assert sorted(n for _, n in writer.calls) == [1, 2, 3] and writer.threads == {"wsk-write"}
    assert [a["stream"] for a in lines(tmp_path / "audit.jsonl")] == ["appointments"] * 3


def test_refusals_are_counted_by_code_with_a_default_reason(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path)
    run.write_batch("patients", items(("A", "rejected"), ("B", "rejected")))
    run.account("patients", 3, {"n": 3}, WriteResult("patients", "rejected", code="validation_error"))
    run.close()
    assert run.rejected_by_code == {"duplicate_mrn": 2, "validation_error": 1}
    audit = lines(tmp_path / "audit.jsonl")
    assert [a["code"] for a in audit] == ["duplicate_mrn", "duplicate_mrn", "validation_error"]
    dead = lines(tmp_path / "dead.jsonl")
    assert [d["reason"] for d in dead] == ["refused by the tenant", "refused by the tenant", "rejected"]


def test_an_input_refusal_keeps_its_reason(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path)
    run.refuse_input(4, "too long", "x")
    run.close()
    assert lines(tmp_path / "dead.jsonl")[0]["reason"] == "too long"


def test_a_too_deep_line_with_leading_blanks_is_still_kept_not_fatal() -> None:
    deep = '  {"a":' * 1 + '{"a":' * 3000 + "1" + "}" * 3001
    with pytest.raises(LineOverBounds):
        parse(deep, max_bytes=10**6, max_depth=100)


def test_the_summary_follows_the_writers_streams_and_is_one_line_each(tmp_path: Path) -> None:
    import re

    run, writer = make_run(tmp_path)
    writer.writable = ("appointments", "patients")  # type: ignore[misc]
    run.write_batch("patients", items(("A", "created")))
    run.write_batch("appointments", items(("X", "updated")))
    text = run.summary("target-wellsky", 2)
    run.close()
    rows = text.splitlines()
    assert rows[1:] == ["  appointments  updated 1", "  patients      created 1"]
    seconds = float(re.search(r"input lines, ([0-9.]+)s\)", rows[0]).group(1))  # type: ignore[union-attr]
    assert 0 <= seconds < 60
