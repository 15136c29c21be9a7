"""docs/architecture.md's table of rules is a contract: every row names its one home and a test proves it.

``PROOFS`` maps each row (by the start of its rule text) to the tests that fail when the rule is stated a second
time or its home is bypassed. A row without a proof, or a proof that names a test that does not exist, fails
here; the "stated once" checks that no other file makes live below.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
HERE = "tests/core/test_rules_table.py"

LAYERING = "tests/core/test_layering.py::"
POLICY = "tests/core/test_http_policy.py::"
BULK = "tests/channels/test_fhir_bulk.py::"
ONCE = f"{HERE}::"

PROOFS: dict[str, list[str]] = {
    "which products exist": [LAYERING + "test_no_module_outside_products_compares_with_a_product_name"],
    "which channel serves": [
        "tests/core/test_products.py::test_the_dialect_names_the_channel_for_api_and_portal",
        ONCE + "test_only_the_registry_names_channel_classes",
    ],
    "the vendor facts": [LAYERING + "test_no_tracked_file_cites_a_path_outside_the_repository"],
    "which sources exist": [
        ONCE + "test_channels_are_registered_once",
        "tests/core/test_channel_reject.py::test_every_registered_channel_declares_its_client_use",
    ],
    "a stream's keys": [ONCE + "test_stream_keys_come_from_entities"],
    "what identifies a write target": [ONCE + "test_defined_once"],
    "what an answer means": [POLICY + "test_retryable_statuses_and_retry_after_are_stated_only_in_the_policy"],
    "how long to wait": [POLICY + "test_retryable_statuses_and_retry_after_are_stated_only_in_the_policy"],
    "which URLs may receive credentials": [
        POLICY + "test_trust_is_one_function_of_the_configured_origins",
        BULK + "test_a_planted_job_file_never_sends_the_token_to_another_origin",
    ],
    "what an error from a server answer carries": [
        POLICY + "test_error_codes_are_allow_listed_and_the_body_is_kept_only_on_request"
    ],
    "following pages": [ONCE + "test_defined_once", ONCE + "test_page_sizes_come_from_page_limit"],
    "where bulk exports keep PHI": [BULK + "test_the_spool_and_job_file_are_private"],
    "refusing a bad input": [
        "tests/core/test_channel_reject.py::test_without_a_dead_letter_file_a_reason_stops_the_sync_naming_the_fix"
    ],
    "which characters text in a write may carry": [
        ONCE + "test_defined_once",
        "tests/core/test_home_connect_writes.py::test_a_native_payload_keeps_the_one_control_character_rule",
    ],
    "validating a canonical record": [ONCE + "test_defined_once"],
    "how much of an answer's body is read": [ONCE + "test_response_bodies_are_iterated_only_in_http_bodies"],
    "when a batch file's records count as delivered": [
        "tests/channels/test_hl7_late.py::test_late_hl7_is_sent_by_the_next_run_in_its_newest_version",
        "tests/channels/test_hl7_late.py::test_without_the_list_of_delivered_files_a_late_file_is_missed",
        "tests/reliability/test_kills.py::test_a_batch_channel_killed_three_times_loses_nothing",
    ],
    "how a memo packs bytes into the stream state": [ONCE + "test_defined_once"],
    "which remote error stops a write run": [
        ONCE + "test_both_writers_ask_the_policy_which_error_stops_a_write_run",
        "tests/reliability/test_server_text.py::test_a_write_answered_with_something_other_than_the_record_stops_in_one_clear_line",
        "tests/core/test_home_connect_writes.py::test_a_write_answered_without_its_record_stops_and_says_it_may_have_been_applied",
    ],
    "SFTP host-key pinning": [ONCE + "test_defined_once"],
    "exception classes": [ONCE + "test_every_core_error_is_defined_in_errors"],
    "a product's defaults": [LAYERING + "test_no_module_outside_products_compares_with_a_product_name"],
    "change detection without a server change time": [
        "tests/core/test_home_connect.py::test_change_memo_emits_only_changed_shifts_on_the_next_run"
    ],
    "reading a stream": [
        ONCE + "test_only_the_read_loop_reads_channels",
        "tests/faces/test_faces_agree.py::test_both_faces_discover_read_and_resume_alike",
    ],
    "which streams a configuration serves": [ONCE + "test_both_faces_use_the_one_discovery_and_state_check"],
    "the shape of a stream's state": [ONCE + "test_both_faces_use_the_one_discovery_and_state_check"],
    "the list of streams": [ONCE + "test_stream_keys_come_from_entities"],
    "how many streams are read at once": [
        "tests/airbyte/test_airbyte.py::"
        "test_streams_are_read_in_parallel_by_default_with_the_same_records_and_states_as_one_at_a_time",
        ONCE + "test_only_the_connection_asks_whether_a_channel_may_be_read_on_a_worker_thread",
        "tests/core/test_connection_channels.py::test_streams_opening_their_channel_at_once_share_one",
        ONCE + "test_both_faces_read_streams_on_the_one_pool",
    ],
    "how many requests a process may send to a tenant": [
        "tests/core/test_tenant_share.py::test_processes_coming_and_going_never_overrun_the_tenants_budget",
        "tests/reliability/test_concurrent_runs.py::"
        "test_a_tap_and_a_source_reading_one_tenant_at_once_stay_within_its_budget",
        ONCE + "test_only_the_client_paces_requests",
    ],
    "how the Home Connect schedule memo is stored": [
        "tests/core/test_home_connect_memo.py::test_records_round_trip_exactly_and_encode_the_same_whatever_the_order",
        "tests/core/test_home_connect_memo.py::test_a_damaged_memo_is_a_reconcile_named_in_one_line",
        ONCE + "test_defined_once",
    ],
    "when the tap writes STATE": [
        "tests/tap/test_home_connect_sync.py::test_an_unordered_stream_writes_its_state_once_when_it_completes",
        "tests/faces/test_faces_agree.py::test_both_faces_discover_read_and_resume_alike",
    ],
    "a record gone from a complete view": [
        "tests/core/test_snapshot_deletions.py::test_a_deletion_has_the_key_the_client_and_nulls",
        "tests/tap/test_snapshot_deletions.py::test_a_full_export_reports_every_deletion_once_on_both_faces",
        ONCE + "test_a_deletion_record_is_built_in_one_place",
    ],
}


def table_rows() -> list[str]:
    text = DOC.read_text()
    table = text[text.index("Rules and where they live"):]
    table = table[: table.index("\n\n", table.index("| rule |"))]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("|")]
    return [row for row in rows if row != "rule" and not row.startswith("---")]


def test_every_rule_in_the_table_names_a_proof() -> None:
    rows = table_rows()
    assert len(rows) >= 20
    unproven = [row for row in rows if not any(row.startswith(key) for key in PROOFS)]
    assert not unproven, f"rows without a proof in {HERE}: {unproven}"
    stale = [key for key in PROOFS if not any(row.startswith(key) for row in rows)]
    assert not stale, f"proofs for rows no longer in docs/architecture.md: {stale}"


def test_every_proof_is_a_test_that_exists() -> None:
    for tests in PROOFS.values():
        for node in tests:
            path, _, name = node.partition("::")
            tree = ast.parse((ROOT / path).read_text())
            names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in names, f"{node} does not exist"


def _code(*roots: str) -> dict[str, str]:
    out = subprocess.run(["git", "ls-files", *roots], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {p: (ROOT / p).read_text() for p in out.split() if p.endswith(".py") and (ROOT / p).exists()}


CONNECTOR = ("wellsky_core", "tap_wellsky", "target_wellsky")


@pytest.mark.parametrize(
    ("definition", "home"),
    [
        (r"^def match_key\(", "wellsky_core/writes.py"),
        (r"^class LoopGuard\b", "wellsky_core/http/paging.py"),
        (r"^def validated\(", "wellsky_core/normalize/validation.py"),
        (r"^def connect_sftp\(", "wellsky_core/channels/sftp.py"),
        (r"paramiko\.Transport\(", "wellsky_core/channels/sftp.py"),
        (r"^def encode_records\(", "wellsky_core/products/personal_care/schedule_memo.py"),
        (r"zlib\.compress", "wellsky_core/state_codec.py"),
        (r"x0e-\\x1f", "wellsky_core/writes.py"),  # the control-character class of writes
    ],
)
def test_defined_once(definition: str, home: str) -> None:
    pattern = re.compile(definition, re.M)
    homes = [path for path, text in _code(*CONNECTOR).items() if pattern.search(text)]
    assert homes == [home], f"{definition!r} stated in {homes}, its one home is {home}"


def test_a_deletion_record_is_built_in_one_place() -> None:
    """Only snapshot_deletions sets ``_sdc_deleted_at`` on a record (the writer only refuses one carrying it):
    every channel that knows a deletion goes through its one shape."""
    name = r"(?:DELETED_AT|[\"']_sdc_deleted_at[\"'])"
    setter = re.compile(rf"{name}\s*:|\[{name}\]\s*=")
    homes = sorted(p for p, text in _code(*CONNECTOR).items() if setter.search(text))
    assert homes == ["wellsky_core/snapshot_deletions.py"], homes


def test_channels_are_registered_once() -> None:
    """``module:Class`` names of channels stand in the registry and in the dialects that pick them, nowhere else."""
    pattern = re.compile(r'"wellsky_core\.[\w.]+:\w+Channel"')
    homes = [p for p, text in _code(*CONNECTOR).items() if pattern.search(text)]
    assert "wellsky_core/channels/__init__.py" in homes
    strays = [p for p in homes if p != "wellsky_core/channels/__init__.py" and not p.endswith("/dialect.py")]
    assert not strays, f"channel registrations outside the registry and the dialects: {strays}"


def test_only_the_registry_names_channel_classes() -> None:
    """Outside channels/ and products/, a channel class is reached through ``channel_class`` only."""
    pattern = re.compile(r"\b(?:KinnserPortalChannel|HomeConnectChannel|RestChannel|FhirChannel|FhirBulkChannel|"
                         r"Hl7SftpChannel|ExportChannel|PortalChannel)\b")
    offenders = [p for p, text in _code(*CONNECTOR).items()
                 if pattern.search(text) and not p.startswith(("wellsky_core/channels/", "wellsky_core/products/"))]
    assert not offenders, offenders


def test_stream_keys_come_from_entities() -> None:
    from tap_wellsky.streams import STREAM_TYPES
    from wellsky_core.models import ENTITIES

    assert list(STREAM_TYPES) == list(ENTITIES)
    for name, cls in STREAM_TYPES.items():
        assert cls.primary_keys == list(ENTITIES[name].primary_key)
        assert cls.replication_key == ENTITIES[name].replication_key
    stated = [p for p, text in _code("tap_wellsky").items() if re.search(r'name = "(patients|appointments)"', text)]
    assert not stated, f"stream names restated in {stated}"


def test_page_sizes_come_from_page_limit() -> None:
    """No request parameter is built from ``page_size`` by hand: paginators and ``page_limit`` decide it."""
    by_hand = re.compile(r"""["'](limit|_count|count|pageSize|_size)["']\s*[:,]\s*(str\()?self\.config\.page_size""")
    offenders = [p for p, text in _code(*CONNECTOR).items() if by_hand.search(text)]
    assert not offenders, f"page sizes decided outside http/paging.page_limit: {offenders}"


def test_every_core_error_is_defined_in_errors() -> None:
    from wellsky_core import errors

    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    import wellsky_core.connection
    import wellsky_core.read_loop  # noqa: F401

    classes = subclasses(errors.WellSkyError)
    # a face may join a core error with its framework's own (target's RecordBeforeSchema is also singer-sdk's
    # RecordsWithoutSchemaException, which the core may not import); the core's errors all live in errors.py
    strays = [f"{c.__module__}.{c.__name__}" for c in classes
              if c.__module__ != errors.__name__ and c.__module__.startswith("wellsky_core")]
    assert not strays, f"define these in wellsky_core/errors.py: {strays}"


def test_only_the_read_loop_reads_channels() -> None:
    callers = [p for p, text in _code(*CONNECTOR).items()
               if re.search(r"\.iter_records\(", text) and not p.startswith(("wellsky_core/channels/",
                                                                              "wellsky_core/products/"))]
    assert callers == ["wellsky_core/read_loop.py"], callers


def test_only_the_connection_asks_whether_a_channel_may_be_read_on_a_worker_thread() -> None:
    """Both faces split their streams by ``reads_in_any_thread``; ``Channel.thread_safe`` is read nowhere else."""
    code = _code(*CONNECTOR)
    # ``(?!`)``: a docstring's ``Channel.thread_safe`` names the attribute, it does not read it
    readers = [p for p, text in code.items() if re.search(r"\.thread_safe\b(?!`)", text)]
    assert readers == ["wellsky_core/connection.py"], readers
    assert "reads_in_any_thread" in code["tap_wellsky/stream.py"]
    assert "reads_in_any_thread" in code["tap_wellsky/airbyte/commands.py"]


def test_only_the_client_paces_requests() -> None:
    """One request window per client, sharing the tenant's budget: nothing else builds a window or a share (a
    second one would pace some requests apart from the rest, and its process would overrun the tenant)."""
    code = _code(*CONNECTOR)
    builders = sorted(p for p, text in code.items()
                      if re.search(r"\b(RequestWindow(\.for_budget)?|TenantShare)\(", text)
                      and not p.startswith(("wellsky_core/http/ratelimit.py", "wellsky_core/http/tenant_share.py")))
    assert builders == ["wellsky_core/http/client.py"], builders


def test_both_faces_read_streams_on_the_one_pool() -> None:
    """Neither face starts stream threads of its own: both call ``stream_workers.run_workers`` (the Airbyte face
    had copied the Singer face's pool, with its own way of stopping)."""
    code = _code("tap_wellsky")
    assert not [p for p, text in code.items() if "threading.Thread(" in text]
    assert "run_workers(" in code["tap_wellsky/parallel.py"]
    assert "run_workers(" in code["tap_wellsky/airbyte/commands.py"]


def test_both_faces_use_the_one_discovery_and_state_check() -> None:
    code = _code("tap_wellsky")
    singer = code["tap_wellsky/tap.py"]
    airbyte = code["tap_wellsky/airbyte/commands.py"] + code["tap_wellsky/airbyte/protocol.py"]
    for face in (singer, airbyte):
        assert "discoverable_streams" in face or "offered(" in face
        assert "check_ownership(" in face and "checked_state(" in face
        assert "StreamRead(" in face or face is singer
    assert "StreamRead(" in code["tap_wellsky/stream.py"]


PATH_TOKEN = re.compile(r"`([A-Za-z_][\w./-]*(?:\.(?:py|md|json|yml)|/))(?:::\w+)?`")
"""A file or folder named in backticks (``wellsky_core/http/policy.py``, ``products/kinnser/``, ``rest.py``)."""


def test_every_path_the_architecture_names_exists() -> None:
    """The map and the recipes name real files: a path as written, under ``wellsky_core/``, or (a name inside the
    map's tree, e.g. ``rest.py`` under ``channels/``) the end of a tracked path."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    folders = {f"{'/'.join(p.split('/')[:i])}/" for p in files for i in range(1, p.count("/") + 1)}
    known = set(files) | folders
    names = set(PATH_TOKEN.findall(DOC.read_text()))
    assert len(names) > 40

    def exists(name: str) -> bool:
        return (name in known or f"wellsky_core/{name}" in known
                or any(path.endswith(f"/{name}") for path in known))

    stale = sorted(name for name in names if not exists(name))
    assert not stale, f"docs/architecture.md names paths that do not exist: {stale}"


def test_both_writers_ask_the_policy_which_error_stops_a_write_run() -> None:
    """Each writer decides stop-or-dead-letter by ``write_run_stops`` and no writer reads a status for it itself."""
    writers = ["wellsky_core/writes.py", "wellsky_core/products/personal_care/writer.py"]
    code = _code(*CONNECTOR)
    for path in writers:
        assert "write_run_stops(exc)" in code[path], f"{path} does not ask policy.write_run_stops"
        assert "server_failed" not in code[path], f"{path} decides what stops a write run itself"
    homes = [p for p, text in code.items() if re.search(r"^def write_run_stops\(", text, re.M)]
    assert homes == ["wellsky_core/http/policy.py"], homes



def test_response_bodies_are_iterated_only_in_http_bodies() -> None:
    """A body iterated anywhere else has neither the size bound nor the pace rule (a trickling export once held a
    run for as long as its host liked): ``iter_bytes`` and its kin appear in ``http/bodies.py`` only."""
    pattern = re.compile(r"\.iter_(?:bytes|raw|text|lines)\(")
    homes = sorted(p for p, text in _code(*CONNECTOR).items() if pattern.search(text))
    assert homes == ["wellsky_core/http/bodies.py"], homes
