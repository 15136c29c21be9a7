"""What the target actually sends: idempotency keys on the wire, and no request for a booking it refuses.

Unit tests of the key function and of the authorization ledger cannot see a target that sends another key
than the one computed, or a sandbox that refuses an over-booking the client let through. These tests watch the
wire through a loopback proxy (``proxy.py``) and the tenant's own audit log.
"""

from __future__ import annotations

import json
import subprocess
from datetime import date, timedelta

from tests.target.helpers import bookable_appointments, new_patients, singer_lines
from wellsky_core.deadletter import DeadLetter

from .conftest import FAST_RETRIES, TARGET_CMD, child_env, run_target_cli, write_json
from .proxy import Exchange, WireProxy

SERVICE_FOR = {"SN": "G0299", "PT": "G0151", "OT": "G0152", "ST": "G0153"}


def _config(base_url: str, sb, tmp_path, **extra) -> dict:
    return {
        "base_url": base_url,
        "username": sb.username,
        "password": sb.password,
        "max_requests_per_second": 0,
        "dead_letter_path": str(tmp_path / "dead.jsonl"),
        "audit_log_path": str(tmp_path / "audit.jsonl"),
        **FAST_RETRIES,
        **extra,
    }


def _server_writes(sb, key: str) -> list[str]:
    """The tenant's audit actions for one idempotency key (created / updated / replayed / rejected)."""
    return [e["action"] for e in sb.audit() if e["idempotency_key"] == key]


def test_retry_after_a_lost_answer_carries_the_same_key_and_is_replayed(small_tenant, tmp_path):
    """The server commits the create, the answer is lost; the retry must be recognised as the same write."""
    sb = small_tenant
    patient = new_patients(sb, 1, prefix="WIRE")[0]
    appointment = bookable_appointments(sb, 1, prefix="WIREAPPT")[0]
    lost: set[str] = set()

    def lose_first_answer(exchange: Exchange) -> bool:
        if exchange.method == "POST" and exchange.status == 201 and exchange.path not in lost:
            lost.add(exchange.path)
            return True
        return False

    lines = singer_lines("patients", [patient]) + singer_lines("appointments", [appointment])
    with WireProxy(sb.base_url, drop=lose_first_answer).running() as proxy:
        proc = run_target_cli(tmp_path, _config(proxy.base_url, sb, tmp_path), "\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in ("/patients", "/appointments"):
        sent = proxy.writes(path)
        assert [(e.status, e.dropped, e.replayed) for e in sent] == [(201, True, False), (201, False, True)], path
        key = sent[0].idempotency_key
        assert key and sent[1].idempotency_key == key, f"{path}: the retry must carry the first attempt's key"
        assert sent[1].body == sent[0].body
        assert _server_writes(sb, key) == ["created", "replayed"], path
    assert [p["mrn"] for p in sb.truth("patients") if p["mrn"] == patient["mrn"]] == [patient["mrn"]]
    assert [a for a in sb.truth("appointments") if a["external_id"] == appointment["external_id"]]


def test_two_runs_racing_on_one_record_send_one_key(small_tenant, tmp_path):
    """Two targets look the record up (absent), then both create it: the key makes the second a replay.

    The proxy holds both creates until both have arrived, so the race happens on every run.
    """
    sb = small_tenant
    singer_input = tmp_path / "input.jsonl"
    singer_input.write_text("\n".join(singer_lines("patients", new_patients(sb, 1, prefix="RACE"))) + "\n")
    with WireProxy(sb.base_url).running() as proxy:
        proxy.hold = ("POST /patients", 2)
        procs = []
        for tag in ("a", "b"):
            (tmp_path / tag).mkdir()
            cfg = write_json(tmp_path / f"{tag}.json", _config(proxy.base_url, sb, tmp_path / tag))
            with singer_input.open() as stdin:
                procs.append(
                    subprocess.Popen(
                        [*TARGET_CMD, "--config", str(cfg)],
                        stdin=stdin,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        env=child_env(),
                    )
                )
        outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outputs]
    sent = proxy.writes("/patients")
    assert len(sent) == 2 and all(e.method == "POST" for e in sent)
    assert sent[0].idempotency_key == sent[1].idempotency_key, "the same intended write must carry the same key"
    assert sorted(e.replayed for e in sent) == [False, True], "one creates, the other is answered as a replay"
    assert _server_writes(sb, sent[0].idempotency_key) == ["created", "replayed"]
    assert sum(1 for p in sb.truth("patients") if p["mrn"] == "RACE000000") == 1


def test_a_new_intended_write_gets_a_new_key(small_tenant, tmp_path):
    """Phone A -> B -> A in three runs: the third write is new (not the first one again) and must land."""
    sb = small_tenant
    patient = next(p for p in sb.truth("patients") if p.get("phone"))
    phones = ["555-0101", "555-0202", "555-0101"]
    assert patient["phone"] not in phones
    with WireProxy(sb.base_url).running() as proxy:
        for i, phone in enumerate(phones):
            record = {**patient, "phone": phone}
            proc = run_target_cli(
                tmp_path,
                _config(proxy.base_url, sb, tmp_path),
                "\n".join(singer_lines("patients", [record])) + "\n",
                tag=f"run{i}",
            )
            assert proc.returncode == 0, proc.stderr[-2000:]
            stored = next(p for p in sb.truth("patients") if p["id"] == patient["id"])
            assert stored["phone"] == phone, f"run {i + 1} reported success but the server keeps {stored['phone']}"
    sent = proxy.writes("/patients/")
    assert len(sent) == 3
    assert len({e.idempotency_key for e in sent}) == 3, "each intended write needs its own key"
    assert not any(e.replayed for e in sent)


def _visit_authorization(sb, low: int, high: int) -> dict:
    return next(
        a
        for a in sb.truth("authorizations")
        if a["status"] == "active"
        and a["unit_type"] == "visit"
        and a["service_codes"][0] in SERVICE_FOR
        and low <= a["units_authorized"] - a["units_used"] <= high
        and date.fromisoformat(a["end_date"]) >= max(date.fromisoformat(a["start_date"]), date(2026, 11, 1))
    )


def test_client_refuses_over_booking_that_the_server_would_accept(small_tenant, tmp_path):
    """With the tenant's own check off, only the target's ledger stands between the batch and an over-booking.

    More bookings than units left, written 8 at a time: exactly the units left are sent and booked; the rest
    are refused by the client (authorization_exceeded) and never reach the wire.
    """
    sb = small_tenant
    sb.set_tenant(enforce_authorizations=False)
    auth = _visit_authorization(sb, 3, 12)
    left = auth["units_authorized"] - auth["units_used"]
    code = auth["service_codes"][0]
    first_day = max(date.fromisoformat(auth["start_date"]), date(2026, 11, 1))
    days = (date.fromisoformat(auth["end_date"]) - first_day).days + 1
    appointments = []
    for i in range(left + 4):
        day = first_day + timedelta(days=i % days)
        appointments.append(
            {
                "external_id": f"OVER{i:03d}",
                "patient_id": auth["patient_id"],
                "payer_id": auth["payer_id"],
                "status": "scheduled",
                "discipline": code,
                "service_code": SERVICE_FOR[code],
                "start": f"{day}T{8 + i % 10:02d}:00:00Z",
                "end": f"{day}T{8 + i % 10:02d}:30:00Z",
            }
        )
    lines = "\n".join(singer_lines("appointments", appointments)) + "\n"
    with WireProxy(sb.base_url).running() as proxy:
        proc = run_target_cli(tmp_path, _config(proxy.base_url, sb, tmp_path, write_concurrency=8), lines)
    assert proc.returncode == 3, proc.stderr[-2000:]
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert sorted(e["action"] for e in audit) == ["created"] * left + ["rejected"] * 4
    assert {e["code"] for e in audit if e["action"] == "rejected"} == {"authorization_exceeded"}
    refused = {d["payload"]["external_id"] for d in DeadLetter.read(tmp_path / "dead.jsonl")}
    assert len(refused) == 4
    sent = proxy.writes("/appointments")
    assert len(sent) == left, f"{len(sent)} bookings sent for {left} units left"
    leaked = [x for x in refused for e in sent if x.encode() in e.body]
    assert not leaked, f"a request was sent for refused bookings {leaked}"
    booked = [a for a in sb.truth("appointments") if (a["external_id"] or "").startswith("OVER")]
    assert len(booked) == left
    stored = next(a for a in sb.truth("authorizations") if a["id"] == auth["id"])
    assert stored["units_used"] == auth["units_authorized"], "the tenant was over-booked"
