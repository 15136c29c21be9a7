"""Home Connect code tables and time zones (issues 26 and 29): every status code mapped to the value the fact sheet
implies, asserted one by one from hand-written tables, and naive timestamps read as UTC whatever the machine's
zone (fact sheet §6: "stored and returned in UTC ... naive datetimes taken as UTC")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from wellsky_core.products.personal_care import normalize as hc

NOW = datetime(2026, 8, 15, 12, 0, tzinfo=UTC)

# -- client status (§3): code -> (canonical when active, canonical when deactivated) ----------------------------
CLIENT = {
    "1": ("pending", "inactive"),  # New Lead
    "10": ("pending", "inactive"),  # Initial Phone Call
    "20": ("pending", "inactive"),  # Assessment Scheduled
    "30": ("pending", "inactive"),  # Assessment Performed
    "40": ("pending", "inactive"),  # Wants to Meet Candidates
    "50": ("pending", "inactive"),  # Needs Contract
    "60": ("pending", "inactive"),  # Expecting Signature
    "70": ("pending", "inactive"),  # Ready to Schedule
    "80": ("active", "discharged"),  # Care Started
    "90": ("inactive", "inactive"),  # Closed-Lost: never a client
    "100": ("active", "discharged"),  # Closed-Won
}
CLIENT_LABELS = {
    "1": "New Lead", "10": "Initial Phone Call", "20": "Assessment Scheduled", "30": "Assessment Performed",
    "40": "Wants to Meet Candidates", "50": "Needs Contract", "60": "Expecting Signature", "70": "Ready to Schedule",
    "80": "Care Started", "90": "Closed-Lost", "100": "Closed-Won",
}
APPLICANT_LABELS = {
    "10": "New Applicant", "15": "Phone Screen", "18": "Interview Scheduled", "20": "Interview Completed",
    "25": "Conditional Offer", "30": "Skills", "40": "Background", "50": "References", "60": "Offer",
    "70": "Paperwork", "80": "Orientation", "90": "Not Hired", "100": "Hired", "110": "Application Completed",
}
SHIFT = {"SCHEDULED": "scheduled", "COMPLETED": "completed", "CANCELLED": "cancelled",
         "scheduled": "scheduled", "Completed": "completed", "cancelled": "cancelled"}
CARE_LOG = {"COMPLETE": "completed", "IN_PROGRESS": "in_progress", "complete": "completed",
            "in_progress": "in_progress"}
TASK = {"COMPLETE": "complete", "NOT_COMPLETE": "not_complete", "complete": "complete", "DONE": None}


def status_flags(rec: dict) -> list[str]:
    return [f["field"] for f in rec["data_quality"] if f["field"].startswith("status")]


def patient(code: str | None, active: bool, is_client: str | None = None) -> dict:
    tags = [{"code": "status", "display": code}] if code is not None else []
    if is_client is not None:
        tags.append({"code": "isClient", "display": is_client})
    return {"resourceType": "Patient", "id": "7", "active": active, "name": [{"family": "Doe", "given": ["Jo"]}],
            "meta": {"tag": tags}}


@pytest.mark.parametrize("code", sorted(CLIENT, key=int))
def test_every_client_status_code(code):
    assert hc.CLIENT_STATUS[code] == CLIENT_LABELS[code]
    when_active, when_deactivated = CLIENT[code]
    active = hc.to_canonical("patients", patient(code, True), NOW)
    gone = hc.to_canonical("patients", patient(code, False), NOW)
    assert (active["status"], active["status_code"]) == (when_active, code)
    assert (gone["status"], gone["status_code"]) == (when_deactivated, code)
    assert not status_flags(active) and not status_flags(gone)


def test_the_client_status_table_is_exactly_the_documented_one():
    assert hc.CLIENT_STATUS == CLIENT_LABELS
    assert hc.APPLICANT_STATUS == APPLICANT_LABELS


def test_client_without_a_code_and_unknown_codes():
    assert hc.to_canonical("patients", patient(None, True, "false"), NOW)["status"] == "pending"
    assert hc.to_canonical("patients", patient(None, False, "false"), NOW)["status"] == "inactive"
    assert hc.to_canonical("patients", patient(None, True), NOW)["status"] == "active"
    assert hc.to_canonical("patients", patient(None, False), NOW)["status"] == "discharged"
    odd = hc.to_canonical("patients", patient("85", True), NOW)
    assert odd["status"] == "active" and status_flags(odd) == ["status_code"]


@pytest.mark.parametrize("code", sorted(APPLICANT_LABELS, key=int))
def test_every_applicant_status_code(code):
    res = {"resourceType": "Practitioner", "id": "9", "active": True, "name": [{"family": "Roe", "given": ["Al"]}],
           "meta": {"tag": [{"code": "status", "display": code}]}}
    rec = hc.to_canonical("practitioners", res, NOW)
    assert rec["roles"] == (["caregiver"] if code == "100" else ["applicant"]), "only 100 Hired works shifts"
    assert rec["status_code"] == code and not status_flags(rec)
    hired_tag = {**res, "meta": {"tag": [{"code": "status", "display": code}, {"code": "isHired", "display": "true"}]}}
    assert hc.to_canonical("practitioners", hired_tag, NOW)["roles"] == ["caregiver"], "isHired wins over the code"


def shift(status: object) -> dict:
    return {"resourceType": "Appointment", "id": "500", "client": {"id": 1}, "caregiver": {"id": 77},
            "start": "2026-08-10T14:00:00+00:00", "end": "2026-08-10T18:00:00+00:00", "status": status,
            "tasks": [{"id": 11, "description": "Meal", "status": t} for t in TASK]}


@pytest.mark.parametrize(("raw", "expected"), sorted(SHIFT.items()))
def test_every_shift_status(raw, expected):
    rec = hc.to_canonical("appointments", shift(raw), NOW)
    assert rec["status"] == expected
    assert "status" not in [f["field"] for f in rec["data_quality"]]


def test_unknown_shift_status_is_flagged_and_task_statuses_are_mapped_one_by_one():
    rec = hc.to_canonical("appointments", shift("PENDING"), NOW)
    assert rec["status"] == "scheduled" and "status" in [f["field"] for f in rec["data_quality"]]
    assert [t["status"] for t in rec["tasks"]] == list(TASK.values())


def care_log(status: object, end: str | None = "2026-08-10T18:00:00+00:00") -> dict:
    return {"resourceType": "Encounter", "id": 900, "status": status, "subject": {"reference": "Patient/1"},
            "period": {"start": "2026-08-10T14:00:00+00:00", "end": end}}


@pytest.mark.parametrize(("raw", "expected"), sorted(CARE_LOG.items()))
def test_every_care_log_status(raw, expected):
    rec = hc.to_canonical("encounters", care_log(raw), NOW)
    assert (rec["status"], rec["finalized"]) == (expected, expected == "completed")


def test_unknown_care_log_status_is_flagged_and_read_from_the_clock_out():
    done = hc.to_canonical("encounters", care_log("VOID"), NOW)
    open_ = hc.to_canonical("encounters", care_log(None, end=None), NOW)
    assert done["status"] == "completed" and "status" in [f["field"] for f in done["data_quality"]]
    assert open_["status"] == "in_progress" and not open_["finalized"]


NAIVE = """
import json
from datetime import UTC, datetime
from wellsky_core.products.personal_care import normalize as hc
now = datetime(2026, 8, 15, 12, 0, tzinfo=UTC)
shift = hc.to_canonical("appointments", {"id": "500", "client": {"id": 1}, "status": "SCHEDULED",
    "start": "2026-08-10T14:00:00", "end": "2026-08-10T18:00:00", "meta": {"lastUpdated": "2026-08-09T23:30:00"}}, now)
log = hc.to_canonical("encounters", {"id": 900, "status": "COMPLETE", "subject": {"reference": "Patient/1"},
    "period": {"start": "2026-01-10T14:00:00", "end": "2026-01-10T18:00:00"}}, now,
    task_logs=hc.task_logs({"entry": [{"id": 5, "title": "Meal", "recorded": "2026-01-10T15:00:00"}]}))
print(json.dumps([shift["start"], shift["end"], shift["updated_at"], log["start"], log["end"],
                  log["task_logs"][0]["recorded"]]))
"""


@pytest.mark.parametrize("zone", ["America/Chicago", "Asia/Kolkata"])
def test_naive_timestamps_are_utc_whatever_the_machine_zone(zone, tmp_path):
    env = {**os.environ, "TZ": zone}
    out = subprocess.run([sys.executable, "-c", NAIVE], capture_output=True, text=True, env=env, timeout=60,
                         cwd=os.getcwd())
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == [
        "2026-08-10T14:00:00Z", "2026-08-10T18:00:00Z", "2026-08-09T23:30:00Z",  # summer (CDT, -05:00 there)
        "2026-01-10T14:00:00Z", "2026-01-10T18:00:00Z", "2026-01-10T15:00:00Z",  # winter (CST, -06:00 there)
    ]
    probe = subprocess.run([sys.executable, "-c", "import time; print(time.timezone)"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert probe.stdout.strip() != "0", "the subprocess really runs in a non-UTC zone"
