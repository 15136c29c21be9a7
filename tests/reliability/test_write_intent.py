"""An idempotency key names one intended write, not a content (issue 16 #1).

Before: an update's key hashed only the changed fields, so phone A -> B -> A (or a visit cancelled ->
scheduled -> cancelled) sent the first run's key again on the third run; the tenant replayed the first answer,
the target reported ``updated 1``, exited 0, and the server kept B (the visit stayed booked). Now an update's key
is bound to the version it was computed against, and the same update computed twice against one version (two
runs racing) still shares a key, so it is applied once. Real target subprocesses, a loopback wire proxy
(``proxy.py``) and the tenant's own audit log.
"""

from __future__ import annotations

import subprocess

from tests.target.helpers import bookable_appointments, singer_lines

from .conftest import FAST_RETRIES, TARGET_CMD, child_env, run_target_cli, write_json
from .proxy import WireProxy


def _config(base_url: str, sb, tmp_path, **extra) -> dict:
    return {
        "base_url": base_url,
        "username": sb.username,
        "password": sb.password,
        "max_requests_per_second": 0,
        "dead_letter_path": str(tmp_path / "dead.jsonl"),
        **FAST_RETRIES,
        **extra,
    }


def _server_actions(sb, key: str) -> list[str]:
    return [e["action"] for e in sb.audit() if e["idempotency_key"] == key]


def test_visit_cancelled_scheduled_cancelled_stays_cancelled(small_tenant, tmp_path):
    sb = small_tenant
    visit = bookable_appointments(sb, 1, prefix="ABA")[0]
    statuses = ["scheduled", "cancelled", "scheduled", "cancelled"]  # the first run books it
    with WireProxy(sb.base_url).running() as proxy:
        for i, status in enumerate(statuses):
            lines = singer_lines("appointments", [{**visit, "status": status}])
            proc = run_target_cli(tmp_path, _config(proxy.base_url, sb, tmp_path), "\n".join(lines) + "\n", f"r{i}")
            assert proc.returncode == 0, proc.stderr[-2000:]
            stored = next(a for a in sb.truth("appointments") if a["external_id"] == visit["external_id"])
            assert stored["status"] == status, f"run {i + 1} exited 0 but the server keeps {stored['status']}"
    sent = proxy.writes("/appointments")
    assert len(sent) == 4 and not any(e.replayed for e in sent)
    assert len({e.idempotency_key for e in sent}) == 4, "each intended write needs its own key"


def test_patient_phone_a_b_a_then_two_runs_racing_on_one_update(small_tenant, tmp_path):
    """A -> B -> A lands every time; then two runs computing the same update against one version share a key:
    one applies it, the other is a replay (concurrent-run safety is kept by the new keys)."""
    sb = small_tenant
    patient = next(p for p in sb.truth("patients") if p.get("phone"))
    with WireProxy(sb.base_url).running() as proxy:
        for i, phone in enumerate(["555-0101", "555-0202", "555-0101"]):
            lines = singer_lines("patients", [{**patient, "phone": phone}])
            proc = run_target_cli(tmp_path, _config(proxy.base_url, sb, tmp_path), "\n".join(lines) + "\n", f"p{i}")
            assert proc.returncode == 0, proc.stderr[-2000:]
            stored = next(p for p in sb.truth("patients") if p["id"] == patient["id"])
            assert stored["phone"] == phone, f"run {i + 1} exited 0 but the server keeps {stored['phone']}"
        assert len({e.idempotency_key for e in proxy.writes("/patients/")}) == 3

        racing_input = tmp_path / "race.jsonl"
        racing_input.write_text("\n".join(singer_lines("patients", [{**patient, "phone": "555-0303"}])) + "\n")
        proxy.hold = (f"PUT /patients/{patient['id']}", 2)
        procs = []
        for tag in ("a", "b"):
            cfg = write_json(tmp_path / f"race-{tag}.json", _config(proxy.base_url, sb, tmp_path / tag))
            (tmp_path / tag).mkdir()
            with racing_input.open() as stdin:
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
    raced = proxy.writes("/patients/")[3:]
    assert len(raced) == 2 and raced[0].idempotency_key == raced[1].idempotency_key
    assert sorted(e.replayed for e in raced) == [False, True]
    assert _server_actions(sb, raced[0].idempotency_key) == ["updated", "replayed"]
    assert next(p for p in sb.truth("patients") if p["id"] == patient["id"])["phone"] == "555-0303"
