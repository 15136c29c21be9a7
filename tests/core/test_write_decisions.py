"""The write engine's decisions, in process against a real sandbox: create / update / unchanged / refuse, the
keys it sends, authorization policy, the write ledger, and the race where another run created the record.

Fast enough to be the mutation-testing selection for ``writes.py`` and ``write_hashes.py`` (scripts/mutate).
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from wellsky_core.config import WellSkyConfig
from wellsky_core.connection import Connection
from wellsky_core.models import READ_ONLY_FIELDS
from wellsky_core.write_hashes import LEDGER_FORMAT, WriteHashLedger, keyed_hash
from wellsky_core.writes import RecordWriter, validate_for_write
from wellsky_sandbox.testing import SandboxServer

SERVICE_FOR = {"SN": "G0299", "PT": "G0151", "OT": "G0152", "ST": "G0153"}
_serial = itertools.count()


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    server = SandboxServer(scale=40, sftp_port=None, data_dir=tmp_path_factory.mktemp("tenant")).start()
    yield server
    server.cleanup()


def _writer(sb: SandboxServer, **kw: Any) -> RecordWriter:
    config = WellSkyConfig.load(
        {"base_url": sb.base_url, "username": sb.username, "password": sb.password, "max_requests_per_second": 0},
        env={},
    )
    return RecordWriter(Connection(config), **kw)


_templates: dict[str, dict[str, Any]] = {}


def _new_patient(sb: SandboxServer, **kw: Any) -> dict[str, Any]:
    if sb.base_url not in _templates:
        _templates[sb.base_url] = sb.truth("patients")[0]
    rec = {k: v for k, v in _templates[sb.base_url].items() if k not in ("id", "updated_at")}
    return {**rec, "mrn": f"DEC{next(_serial):05d}", **kw}


def _writes(sb: SandboxServer) -> list[dict[str, Any]]:
    return sb.audit()


def _bookable(sb: SandboxServer) -> tuple[dict, int, dict]:
    """The active visit authorization with the fewest units left (at least 1), its units left, and a booking
    that fits it; each call takes another authorization."""
    candidates = []
    for auth in sb.truth("authorizations"):
        left = auth["units_authorized"] - auth["units_used"]
        first = max(date.fromisoformat(auth["start_date"]), date(2026, 11, 1))
        if (
            auth["status"] == "active"
            and auth["unit_type"] == "visit"
            and auth["service_codes"][0] in SERVICE_FOR
            and left >= 1
            and first + timedelta(days=1) <= date.fromisoformat(auth["end_date"])
            and auth["id"] not in _taken
        ):
            candidates.append((left, auth, first + timedelta(days=1)))
    assert candidates, "no bookable authorization left in the sandbox"
    left, auth, day = min(candidates, key=lambda c: c[0])
    _taken.add(auth["id"])
    code = auth["service_codes"][0]
    return (
        auth,
        left,
        {
            "external_id": f"DECA{next(_serial):05d}",
            "patient_id": auth["patient_id"],
            "payer_id": auth["payer_id"],
            "status": "scheduled",
            "discipline": code,
            "service_code": SERVICE_FOR[code],
            "start": f"{day}T15:00:00Z",
            "end": f"{day}T16:00:00Z",
        },
    )


_taken: set[str] = set()


def _fill(writer: RecordWriter, booking: dict, n: int) -> list[Any]:
    return [writer.write("appointments", {**booking, "external_id": f"{booking['external_id']}-{i}"}) for i in range(n)]


def test_create_then_unchanged_then_update_with_keys(sb):
    writer = _writer(sb)
    patient = _new_patient(sb)
    before = len(_writes(sb))
    created = writer.write("patients", patient)
    assert created.action == "created" and created.wellsky_id and created.idempotency_key.startswith("wsk1-")
    assert created.key_hash and patient["mrn"] not in created.key_hash
    entries = _writes(sb)[before:]
    assert [(e["action"], e["idempotency_key"]) for e in entries] == [("created", created.idempotency_key)]

    again = _writer(sb).write("patients", patient)  # a new run: found by MRN, nothing to change
    assert (again.action, again.wellsky_id, again.idempotency_key) == ("unchanged", created.wellsky_id, None)
    assert len(_writes(sb)) == before + 1, "unchanged must not write"

    updated = _writer(sb).write("patients", {**patient, "phone": "555-0199"})
    assert updated.action == "updated" and updated.wellsky_id == created.wellsky_id
    assert updated.idempotency_key not in (None, created.idempotency_key)
    last = _writes(sb)[-1]
    assert (last["method"], last["action"], last["idempotency_key"]) == ("PUT", "updated", updated.idempotency_key)
    stored = next(p for p in sb.truth("patients") if p["id"] == created.wellsky_id)
    assert stored["phone"] == "555-0199" and stored["mrn"] == patient["mrn"]

    by_id = _writer(sb).write("patients", {**patient, "id": created.wellsky_id, "phone": "555-0199"})
    assert by_id.action == "unchanged" and by_id.wellsky_id == created.wellsky_id


def test_same_write_from_two_runs_has_the_same_key(sb):
    patient = _new_patient(sb)
    a = _writer(sb, dry_run=True).write("patients", patient)
    b = _writer(sb, dry_run=True).write("patients", dict(reversed(list(patient.items()))))
    assert a.action == b.action == "would_create"
    assert a.idempotency_key == b.idempotency_key and a.idempotency_key.startswith("wsk1-")
    other = _writer(sb, dry_run=True).write("patients", {**patient, "mrn": patient["mrn"] + "X"})
    assert other.idempotency_key != a.idempotency_key


def test_dry_run_decides_but_writes_nothing(sb):
    existing = sb.truth("patients")[1]
    before = len(_writes(sb))
    writer = _writer(sb, dry_run=True)
    assert writer.write("patients", _new_patient(sb)).action == "would_create"
    would = writer.write("patients", {**existing, "phone": "555-0142"})
    assert would.action == "would_update" and would.wellsky_id == existing["id"] and would.idempotency_key
    assert writer.write("patients", existing).action == "unchanged"
    assert len(_writes(sb)) == before


def test_invalid_records_are_refused_before_any_request(sb):
    before = len(_writes(sb))
    writer = _writer(sb)
    result = writer.write("patients", {**_new_patient(sb), "birth_date": "31/02/1950"})
    assert result.action == "rejected" and result.code == "validation_error"
    assert "birth_date" in result.reason and "31/02/1950" not in result.reason
    unknown = writer.write("patients", {**_new_patient(sb), "id": "HH-P999999"})
    assert (unknown.action, unknown.code, unknown.wellsky_id) == ("rejected", "unknown_id", "HH-P999999")
    assert "HH-P999999" in unknown.reason
    assert len(_writes(sb)) == before
    with pytest.raises(ValueError, match="not writable"):
        writer.write("encounters", {})


def test_validate_for_write_keeps_only_what_was_sent(sb):
    record = _new_patient(sb)
    # how the record was read (data_quality) and standard-only fields (deceased, race...) are never written
    never_written = READ_ONLY_FIELDS
    assert validate_for_write("patients", record) == {k: v for k, v in record.items() if k not in never_written}
    assert "id" not in validate_for_write("patients", record), "unset optional fields are not invented"
    with pytest.raises(Exception) as exc:
        validate_for_write("patients", {**record, "birth_date": "soon"})
    assert exc.value.code == "validation_error" and "birth_date" in str(exc.value) and "soon" not in str(exc.value)


def test_server_refusals_become_rejections_with_the_server_code(sb):
    writer = _writer(sb)
    sb.set_tenant(read_only=True)
    try:
        result = writer.write("patients", _new_patient(sb))
    finally:
        sb.set_tenant(read_only=False)
    assert (result.action, result.code) == ("rejected", "read_only_tenant")
    assert "403" in result.reason and "read-only" in result.reason, "the fix is ours, chosen by the allow-listed code"


def test_booking_reserves_units_and_refuses_beyond_them(sb):
    auth, left, booking = _bookable(sb)
    writer = _writer(sb)
    results = _fill(writer, booking, left + 1)
    assert [r.action for r in results] == ["created"] * left + ["rejected"]
    assert results[-1].code == "authorization_exceeded" and writer.authorization_units.reserved(auth["id"]) == left
    assert not [a for a in sb.truth("appointments") if a["external_id"] == f"{booking['external_id']}-{left}"]

    warned = _writer(sb, authorization_policy="warn").write(
        "appointments", {**booking, "external_id": "W" + booking["external_id"]}
    )
    assert warned.action == "rejected", "the tenant itself refuses the over-booking"
    assert warned.warnings and "authorization" in warned.warnings[0]
    off = _writer(sb, authorization_policy="off")
    sb.set_tenant(enforce_authorizations=False)
    try:
        booked = off.write("appointments", {**booking, "external_id": "O" + booking["external_id"]})
    finally:
        sb.set_tenant(enforce_authorizations=True)
    assert booked.action == "created" and not booked.warnings and off.authorization_units.reserved(auth["id"]) == 0


def test_a_refused_write_gives_its_units_back(sb):
    auth, _, booking = _bookable(sb)
    writer = _writer(sb)
    result = writer.write("appointments", {**booking, "practitioner_id": "HH-C999999"})  # the tenant refuses
    assert (result.action, result.code) == ("rejected", "unknown_practitioner")
    assert writer.authorization_units.reserved(auth["id"]) == 0


def test_moving_a_booking_uses_its_own_units(sb):
    """The authorization is full; moving one of its bookings needs no new unit, cancelling gives one back."""
    auth, left, booking = _bookable(sb)
    assert [r.action for r in _fill(_writer(sb), booking, left)] == ["created"] * left
    moved = {
        **booking,
        "external_id": f"{booking['external_id']}-0",
        "start": booking["start"].replace("15:00", "17:00"),
        "end": booking["end"].replace("16:00", "18:00"),
    }
    home = {"line1": "1 Main St", "line2": None, "city": "Austin", "state": "TX", "postal_code": "78701"}
    result = _writer(sb).write("appointments", moved)
    assert result.action == "updated", result.reason
    note_only = _writer(sb).write("appointments", {**moved, "location": home})
    assert note_only.action == "updated", note_only.reason
    cancelled = _writer(sb).write("appointments", {**moved, "location": home, "status": "cancelled"})
    assert cancelled.action == "updated", cancelled.reason
    stored = next(a for a in sb.truth("authorizations") if a["id"] == auth["id"])
    assert stored["units_authorized"] - stored["units_used"] == 1, "the cancellation released the unit"
    again = _writer(sb).write("appointments", {**moved, "location": home, "status": "cancelled"})
    assert again.action == "unchanged"


SECRET = b"tenant-key-hash-secret-for-tests"


def test_write_ledger_skips_known_records_without_a_request(sb, tmp_path):
    ledger = WriteHashLedger(tmp_path / "ledger.sqlite", SECRET)
    patient = _new_patient(sb)
    first = _writer(sb, write_hashes=ledger).write("patients", patient)
    assert first.action == "created"
    key = f"n:{patient['mrn']}"
    tenant = sb.base_url
    assert ledger.lookup(tenant, "patients", key) == (
        ledger.digest(validate_for_write("patients", patient)),
        first.wellsky_id,
    )
    requests_before = sb.stats()["data_requests"]
    again = _writer(sb, write_hashes=ledger).write("patients", patient)
    assert (again.action, again.wellsky_id) == ("unchanged", first.wellsky_id)
    assert "ledger" in again.reason and again.key_hash == first.key_hash
    assert sb.stats()["data_requests"] == requests_before, "the ledger answered: no request"
    changed = _writer(sb, write_hashes=ledger).write("patients", {**patient, "phone": "555-0177"})
    assert changed.action == "updated"
    assert ledger.lookup(tenant, "patients", key)[0] == ledger.digest(
        validate_for_write("patients", {**patient, "phone": "555-0177"})
    )
    rejected = _writer(sb, write_hashes=ledger).write("patients", {**_new_patient(sb), "id": "HH-P999998"})
    assert rejected.action == "rejected" and ledger.lookup(tenant, "patients", "i:HH-P999998") is None
    ledger.close()


def test_write_ledger_stores_hashes_only_and_survives_a_reopen(tmp_path: Path):
    path = tmp_path / "two" / "levels" / "ledger.sqlite"
    ledger = WriteHashLedger(path, SECRET)
    ledger.remember("t1", "patients", "n:MRN-42", "h1", "HH-P1")
    ledger.remember("t1", "patients", "n:MRN-42", "h2", "HH-P1")  # the latest write wins
    ledger.remember("t2", "patients", "n:MRN-42", "h3", None)
    ledger.remember("t1", "appointments", "n:MRN-42", "h4", "HH-V1")
    assert ledger.lookup("t1", "patients", "n:MRN-42") == ("h2", "HH-P1")
    assert ledger.lookup("t2", "patients", "n:MRN-42") == ("h3", None)
    assert ledger.lookup("t1", "appointments", "n:MRN-42") == ("h4", "HH-V1")
    assert ledger.lookup("t1", "patients", "n:MRN-43") is None
    worker = threading.Thread(target=ledger.remember, args=("t1", "patients", "n:MRN-44", "h5", "HH-P2"))
    worker.start()  # the target's writer threads share one ledger
    worker.join()
    assert ledger.lookup("t1", "patients", "n:MRN-44") == ("h5", "HH-P2")
    ledger.close()
    assert b"MRN-42" not in path.read_bytes()
    rows = sqlite3.connect(path).execute("SELECT key FROM writes").fetchall()
    assert len(rows) == 4 and all(len(r[0]) == 64 for r in rows)
    assert WriteHashLedger(path, SECRET).lookup("t1", "patients", "n:MRN-42") == ("h2", "HH-P1")
    assert WriteHashLedger(path, b"another tenant").lookup("t1", "patients", "n:MRN-42") is None, "keyed"
    digest = WriteHashLedger(path, SECRET).digest
    assert digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1}) != digest({"a": 2, "b": 2})


def test_write_ledger_natural_keys_are_keyed_hashes_a_guess_cannot_confirm(tmp_path: Path):
    """Issue 24: the ledger stored sha256("n:last|first|dob") beside the WellSky id; a guessed name and birth
    date could be confirmed by hashing it. Now HMAC-SHA256 with the tenant's secret; older files are emptied."""
    import hashlib

    path = tmp_path / "ledger.sqlite"
    natural = "n:okonkwo|jane|1950-03-04"
    old = sqlite3.connect(path)  # a ledger of the unkeyed format (user_version 0)
    old.execute("CREATE TABLE writes (tenant TEXT, stream TEXT, key TEXT, hash TEXT NOT NULL, wellsky_id TEXT, "
                "PRIMARY KEY (tenant, stream, key))")
    old.execute("INSERT INTO writes VALUES ('t', 'patients', ?, 'h', 'HH-P1')",
                (hashlib.sha256(natural.encode()).hexdigest(),))
    old.commit()
    old.close()
    ledger = WriteHashLedger(path, SECRET)
    ledger.remember("t", "patients", natural, ledger.digest({"last_name": "Okonkwo"}), "HH-P7")
    ledger.close()
    db = sqlite3.connect(path)
    rows = db.execute("SELECT key, hash FROM writes").fetchall()
    assert db.execute("PRAGMA user_version").fetchone()[0] == LEDGER_FORMAT
    guessed = hashlib.sha256(natural.encode()).hexdigest()
    assert rows == [(keyed_hash(SECRET, natural), keyed_hash(SECRET, '{"last_name":"Okonkwo"}'))]
    assert all(guessed not in r and hashlib.sha256(b'{"last_name":"Okonkwo"}').hexdigest() not in r for r in rows)
    assert (path.stat().st_mode & 0o777) == 0o600


def test_another_run_created_it_between_lookup_and_write(sb):
    """A batch scan (prime) said 'absent'; another run then created the record: the 409 turns into an update."""
    patients = [_new_patient(sb) for _ in range(200)]
    writer = _writer(sb)
    writer.prime("patients", patients)
    target = {**patients[7], "phone": "555-0123"}
    rival = _writer(sb).write("patients", patients[7])
    assert rival.action == "created"
    result = writer.write("patients", target)
    assert (result.action, result.wellsky_id) == ("updated", rival.wellsky_id), result.reason
    stored = next(p for p in sb.truth("patients") if p["id"] == rival.wellsky_id)
    assert stored["phone"] == "555-0123"
    assert sum(1 for p in sb.truth("patients") if p["mrn"] == patients[7]["mrn"]) == 1


def test_prime_answers_lookups_from_one_scan(sb):
    existing = sb.truth("patients")[:3]
    fresh = [_new_patient(sb) for _ in range(200)]
    writer = _writer(sb)
    writer.prime("patients", [*({**e, "id": None} for e in existing), *fresh])
    requests_before = sb.stats()["data_requests"]
    assert writer.write("patients", existing[0] | {"id": None}).action == "unchanged"
    assert sb.stats()["data_requests"] == requests_before, "a primed key needs no lookup"
    small = _writer(sb)
    small.prime("patients", fresh[:5])  # below the threshold: per-record lookups
    assert "patients" not in small._primed


def test_a_truncated_answer_to_a_lookup_by_id_is_fetched_again(sb):
    """Found by the no-leak suite: a cut-off body on ``GET /patients/{id}`` crashed the write with a traceback."""
    existing = sb.truth("patients")[5:15]
    sb.set_faults("malformed=0.5,seed=3")
    try:
        results = [_writer(sb, dry_run=True).write("patients", {**p, "phone": "555-0100"}) for p in existing]
        injected = sb.stats()["faults"].get("malformed", 0)
    finally:
        sb.set_faults(None)
    assert [r.action for r in results] == ["would_update"] * len(existing)
    assert injected >= 3


def test_match_key_prefers_the_natural_key_then_the_id():
    from wellsky_core.writes import match_key

    assert match_key("patients", {"mrn": "M1", "id": "HH-P1"}) == "n:M1"
    assert match_key("appointments", {"external_id": None, "id": "HH-V1"}) == "i:HH-V1"
    assert match_key("appointments", {"id": ""}) is None and match_key("patients", {}) is None


def test_prime_threshold_and_the_write_hash_ledger_pre_filter(sb, tmp_path):
    """Exactly 200 keys are worth one scan; records the ledger already settles are not counted or scanned for."""
    fresh = [_new_patient(sb) for _ in range(200)]
    writer = _writer(sb)
    writer.prime("patients", fresh)
    assert "patients" in writer._primed and len(writer._primed["patients"][0]) == 200
    ledger = WriteHashLedger(tmp_path / "ledger.sqlite", SECRET)
    settled = fresh[0]
    ledger.remember(
        sb.base_url, "patients", f"n:{settled['mrn']}", ledger.digest(validate_for_write("patients", settled)), "X"
    )
    with_ledger = _writer(sb, write_hashes=ledger)
    with_ledger.prime("patients", fresh)
    assert "patients" not in with_ledger._primed, "199 keys left after the ledger's pre-filter: below the threshold"
    with_ledger.prime("patients", [*fresh, _new_patient(sb)])
    keys = with_ledger._primed["patients"][0]
    assert len(keys) == 200 and settled["mrn"] not in keys
    ledger.close()


def test_an_address_sent_without_line2_is_unchanged_on_the_next_run(sb):
    """A nested object compares on the fields the write sets: the stored ``line2: null`` is no change."""
    _, _, booking = _bookable(sb)
    booking = {**booking, "location": {"line1": "12 Elm St", "city": "Wichita", "state": "KS", "postal_code": "67202"}}
    first = _writer(sb).write("appointments", booking)
    assert first.action == "created"
    again = _writer(sb).write("appointments", booking)
    assert again.action == "unchanged", "a re-run of the same visit must not write"
    moved = _writer(sb).write("appointments", {**booking, "location": {**booking["location"], "line1": "14 Elm St"}})
    assert moved.action == "updated"
