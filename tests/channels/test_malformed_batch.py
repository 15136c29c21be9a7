"""Malformed HL7 and CSV inputs are dead-lettered with a reason and their position; the rest is still read.

Bad inputs are dropped into the sandbox's real outbound folders (as a vendor would drop a broken file) and
read through the real SFTP server by the channels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from wellsky_core.channels.export import ExportChannel
from wellsky_core.channels.hl7_sftp import Hl7SftpChannel
from wellsky_core.config import WellSkyConfig
from wellsky_core.deadletter import DeadLetter
from wellsky_core.normalize.hl7 import split_messages
from wellsky_sandbox.exports import EXPORT_COLUMNS
from wellsky_sandbox.hl7 import feeds_for
from wellsky_sandbox.testing import SandboxServer

KEYS = ("base_url", "username", "password", "sftp_host", "sftp_port", "sftp_username", "sftp_password", "sftp_host_key")
Mutation = Callable[[list[str]], list[str]]


def _config(sandbox: SandboxServer, dead: Path) -> WellSkyConfig:
    creds = sandbox.credentials()
    return WellSkyConfig.load({k: creds[k] for k in KEYS} | {"dead_letter_path": str(dead)})


def _set(segment: str, name: str, index: int, value: str) -> Mutation:
    """Replace field ``index`` of the first ``segment`` (HL7 numbering; MSH counts its separator as MSH-1)."""

    def mutate(segs: list[str]) -> list[str]:
        out, done = [], False
        for seg in segs:
            if seg.startswith(segment + "|") and not done:
                parts = seg.split("|")
                pos = index - 1 if segment == "MSH" else index
                parts += [""] * (pos + 1 - len(parts))
                parts[pos] = value
                seg, done = "|".join(parts), True
            out.append(seg)
        return out

    mutate.__name__ = name
    return mutate


def _drop(segment: str) -> Mutation:
    return lambda segs: [s for s in segs if not s.startswith(segment + "|")]


HL7_CASES: dict[str, tuple[str, Mutation]] = {
    # name: (template kind, mutation) -- messages whose record cannot be identified or dated: dead-lettered
    "missing_msh": ("ADT", lambda segs: segs[1:]),  # first in the file: nothing before it to merge into
    "truncated_header": ("ADT", lambda segs: [segs[0][:18]]),
    "wrong_encoding_chars": ("ADT", lambda segs: [segs[0].replace("MSH|^~\\&|", "MSH|^^\\&|", 1), *segs[1:]]),
    "unsupported_version": ("ADT", _set("MSH", "v", 12, "3.0")),
    "missing_message_type": ("ADT", _set("MSH", "t", 9, "")),
    "timestamp_without_offset": ("ADT", _set("MSH", "ts", 7, "20260102030405")),
    "impossible_timestamp": ("ADT", _set("MSH", "ts", 7, "20261345250000+0000")),
    "missing_timestamp": ("ADT", _set("MSH", "ts", 7, "")),
    "bad_segment_id": (
        "ADT",
        lambda segs: [segs[0], *(("pid" + s[3:]) if s.startswith("PID|") else s for s in segs[1:])],
    ),
    "adt_without_pid": ("ADT", _drop("PID")),
    "pid_without_any_id": ("ADT", _set("PID", "id", 3, "X1^^^AGENCY^XX")),
    "siu_without_sch": ("SIU", _drop("SCH")),
    "siu_without_ids": ("SIU", lambda segs: _set("SCH", "f", 2, "")(_set("SCH", "p", 1, "")(segs))),
    "oru_without_ids": ("ORU", lambda segs: _set("OBR", "f", 3, "")(_set("PV1", "v", 19, "")(segs))),
}
FLAGGED: dict[str, tuple[str, Mutation, str]] = {
    # name: (template kind, mutation, canonical field flagged) -- lenient read: the record, that field null
    "bad_birth_date": ("ADT", _set("PID", "dob", 7, "19501345"), "birth_date"),
    "unknown_sex": ("ADT", _set("PID", "sex", 8, "Z"), "gender"),
    "unknown_account_status": ("ADT", _set("PV1", "st", 41, "Q"), "status"),
    "in1_order_not_number": ("ADT", _set("IN1", "order", 1, "first"), "coverage.0.order"),
    "unknown_filler_status": ("SIU", _set("SCH", "st", 25, "Maybe"), "status"),
    "siu_without_service_code": ("SIU", _drop("AIS"), "service_code"),
    "unknown_discipline": (
        "SIU",
        lambda segs: _set("SCH", "r", 7, "XX")(_set("ZSC", "d", 4, "XX")(_set("AIP", "d", 4, "XX^^WELLSKY")(segs))),
        "discipline",
    ),
    "unknown_result_status": ("ORU", _set("OBR", "st", 25, "Q"), "status"),
    "vital_not_a_number": ("ORU", _set("OBX", "v", 5, "abc"), "vitals."),
    "diagnosis_rank_not_number": ("ORU", _set("DG1", "r", 15, "first"), "diagnoses.0.rank"),
    "procedure_unknown_coding_system": ("ORU", _set("PR1", "c", 3, "G0299^^LOINC"), "procedures.0.system"),
}
SKIPPED: dict[str, tuple[str, Mutation]] = {
    "unsupported_message_type": ("ADT", _set("MSH", "t", 9, "MFN^M02^MFN_M01")),
}
TOLERATED: dict[str, tuple[str, Mutation]] = {
    "vendor_z_segment": ("ADT", lambda segs: [*segs, "ZXY|1|anything^goes", "ZXY|2|repeated"]),
    "repeated_in1": ("ADT", lambda segs: segs),
}


def _templates(messages: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for msg in messages:
        kind = msg.split("|")[8][:3]
        if kind == "ORU" and "OBX|1|NM|" not in msg:
            continue
        found.setdefault(kind, msg.rstrip("\r").split("\r"))
    return found


def test_malformed_hl7_messages_are_dead_lettered(sandbox: SandboxServer, tmp_path: Path) -> None:
    feeds = feeds_for(sandbox.tenant)
    feeds.refresh()
    good_files = sorted(feeds.hl7.dir.glob("*.hl7"))
    messages = [m for p in good_files for m in split_messages(p.read_text())]
    templates = _templates(messages)
    bad = [("\r".join(mutate(list(templates[kind]))) + "\r", name) for name, (kind, mutate) in HL7_CASES.items()]
    bad += [("\r".join(mutate(list(templates[kind]))) + "\r", name) for name, (kind, mutate) in SKIPPED.items()]
    ok = [("\r".join(mutate(list(templates[kind]))) + "\r", name) for name, (kind, mutate) in TOLERATED.items()]
    mixed = [item for pair in zip(bad, ok * len(bad), strict=False) for item in pair]
    body = "FHS|^~\\&|WELLSKY\rBHS|^~\\&|WELLSKY\r" + "".join(m for m, _ in mixed) + "BTS|1\rFTS|1\r"
    (feeds.hl7.dir / "29991231T000000Z-999999.hl7").write_text(body)
    # the same good content with \n and \r\n terminators is tolerated
    (feeds.hl7.dir / "29991231T000001Z-999999.hl7").write_text(good_files[0].read_text().replace("\r", "\n"))
    (feeds.hl7.dir / "29991231T000002Z-999999.hl7").write_text(good_files[0].read_text().replace("\r", "\r\n"))

    dead = tmp_path / "dead.jsonl"
    with Hl7SftpChannel(config=_config(sandbox, dead)) as channel:
        for entity in ("patients", "appointments", "encounters"):
            assert list(channel.iter_records(entity, None)) == sandbox.truth(entity), entity
    entries = DeadLetter.read(dead)
    assert len(HL7_CASES) >= 14 and len(entries) == len(HL7_CASES)
    assert dict(channel.skipped) == {"MFN^M02": 1}  # not an error: counted by type
    by_index = {e["context"]["message_index"]: e for e in entries}
    assert all(e["context"]["file"] == "29991231T000000Z-999999.hl7" for e in entries)
    expected_positions = [i for i, (_, name) in enumerate(mixed, start=1) if name in HL7_CASES]
    assert sorted(by_index) == expected_positions
    reasons = [e["reason"] for e in entries]
    assert len(set(reasons)) >= 12  # distinct, specific reasons
    truth_names = {r["last_name"] for r in sandbox.truth("patients")}
    assert not any(name in reason for reason in reasons for name in truth_names)  # no PHI in reasons


CSV_ROWS = {
    "too_few_cells": lambda row: row[:-2],
    "too_many_cells": lambda row: [*row, "extra"],
    "coverage_not_json": lambda row: _with(row, "coverage", "[{not json"),
    "bad_birth_date": lambda row: _with(row, "birth_date", "1950-13-01"),
    "unknown_status": lambda row: _with(row, "status", "alive"),
    "timestamp_without_offset": lambda row: _with(row, "updated_at", "2026-01-02T03:04:05"),
    "gender_not_canonical": lambda row: _with(row, "gender", "F"),
    "coverage_order_zero": lambda row: _with(
        row, "coverage", '[{"payer_id":"X","payer_name":"Y","member_id":"1","order":0}]'
    ),
}
HEADER = list(EXPORT_COLUMNS["patients"])


def _with(row: list[str], column: str, value: str) -> list[str]:
    out = list(row)
    out[HEADER.index(column)] = value
    return out


def test_malformed_csv_rows_and_files_are_dead_lettered(sandbox: SandboxServer, tmp_path: Path) -> None:
    import csv
    import io

    feeds = feeds_for(sandbox.tenant)
    feeds.refresh()
    source = next(feeds.exports.dir.glob("patients_*.csv")).read_text()
    rows = list(csv.reader(io.StringIO(source)))
    assert rows[0] == HEADER
    good = rows[1:4]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(HEADER)
    layout = []
    for name, mutate in CSV_ROWS.items():
        writer.writerow(good[0])
        writer.writerow(mutate(list(good[1])))
        layout += ["good", name]
    writer.writerow(good[2])
    (feeds.exports.dir / "patients_29991231T000000Z_9001.csv").write_text(buf.getvalue())
    file_cases = {
        "patients_29991231T000000Z_9002.csv": ",".join(h for h in HEADER if h != "last_name") + "\r\n",
        "patients_29991231T000000Z_9003.csv": ",".join([*HEADER, "shoe_size"]) + "\r\n",
        "patients_29991231T000000Z_9004.csv": "",
    }
    for name, text in file_cases.items():
        (feeds.exports.dir / name).write_text(text)
    unix = io.StringIO()
    csv.writer(unix, lineterminator="\n").writerows([HEADER, *good])  # \n line ends: tolerated
    (feeds.exports.dir / "patients_29991231T000000Z_9005.csv").write_text(unix.getvalue())
    (feeds.exports.dir / "patients_29991231T000000Z_9006.csv").write_bytes(
        (",".join(HEADER) + "\r\n").encode() + b"P1,\xff\xfe broken bytes\r\n"
    )

    dead = tmp_path / "dead.jsonl"
    with ExportChannel(config=_config(sandbox, dead)) as channel:
        assert list(channel.iter_records("patients", None)) == sandbox.truth("patients")
    entries = DeadLetter.read(dead)
    row_entries = [e for e in entries if e["context"]["file"].endswith("_9001.csv")]
    assert [e["context"]["row"] for e in row_entries] == [i + 2 for i, n in enumerate(layout) if n != "good"]
    assert all(e["stream"] == "patients" and e["reason"] for e in row_entries)
    file_entries = {e["context"]["file"][-8:-4]: e["reason"] for e in entries if e not in row_entries}
    assert "misses required column(s) ['last_name']" in file_entries["9002"]
    assert "unknown column(s) ['shoe_size']" in file_entries["9003"]
    assert "empty file" in file_entries["9004"]
    assert "9005" not in file_entries  # a well-formed file, read normally
    assert "UnicodeDecodeError" in file_entries["9006"]
    assert len(CSV_ROWS) + 4 >= 12 and len(entries) == len(CSV_ROWS) + 4


def test_an_export_row_missing_an_expected_value_is_read_with_a_flag(tmp_path: Path) -> None:
    """Lenient read: an empty first_name is null + a data-quality flag, not a refused row."""
    import csv
    import io

    from wellsky_core.config import WellSkyConfig

    source = io.StringIO()
    writer = csv.writer(source)
    writer.writerow(HEADER)
    values = {"id": "HH-P9", "first_name": "", "last_name": "Quill", "birth_date": "1950-01-02", "gender": "female",
              "status": "active", "coverage": "[]", "updated_at": "2026-01-02T03:04:05Z"}
    writer.writerow([values.get(column, "") for column in HEADER])
    cfg = WellSkyConfig.load(
        {"base_url": "http://127.0.0.1:9", "sftp_host": "127.0.0.1", "auth_method": "oauth_client_credentials",
         "client_id": "c", "client_secret": "s"},
        env={},
    )
    dead = DeadLetter(tmp_path / "dead.jsonl")
    channel = ExportChannel(config=cfg, via="sftp", dead_letter=dead)
    rows = list(channel._parse("patients", "patients-1.csv", io.BytesIO(source.getvalue().encode())))
    dead.close()
    assert len(rows) == 1 and DeadLetter.read(tmp_path / "dead.jsonl") == []
    record = rows[0][1]
    assert record["first_name"] is None and record["last_name"] == "Quill"
    missing = {"field": "first_name", "kind": "missing", "reason": "not provided by the source"}
    assert record["data_quality"] == [missing]


def test_hl7_messages_with_unmappable_fields_are_read_with_a_flag(sandbox: SandboxServer) -> None:
    """Lenient read: a bad non-key field is null and named in data_quality; the rest of the record is kept."""
    from wellsky_core.normalize.hl7 import normalize_message

    feeds = feeds_for(sandbox.tenant)
    feeds.refresh()
    messages = [m for p in sorted(feeds.hl7.dir.glob("*.hl7")) for m in split_messages(p.read_text())]
    templates = _templates(messages)
    for name, (kind, mutate, field) in FLAGGED.items():
        original = normalize_message("\r".join(templates[kind]) + "\r")[1]
        _, record = normalize_message("\r".join(mutate(list(templates[kind]))) + "\r")
        flagged = [f["field"] for f in record["data_quality"]]
        assert any(f.startswith(field) for f in flagged), (name, flagged)
        assert record["id"] == original["id"] and record["updated_at"] == original["updated_at"], name
        kept = [k for k in original if k not in ("data_quality", field.rstrip(".").split(".")[0])]
        assert {k: record[k] for k in kept} == {k: original[k] for k in kept}, name
