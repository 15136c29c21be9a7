"""Every status and code mapping, value by value (issue 29 item 3): SIU events and SCH-25 filler statuses, ADT
events and PV1-41, and the FHIR status tables. The expected values are written out here by hand, from the
standards' definitions, not read from the tables under test, so swapping any two values (e.g. SIU complete and
cancelled) fails a test; each table's keys are also compared, so a code added without a test fails too."""

from __future__ import annotations

from typing import Any

import pytest

from wellsky_core.normalize import fhir as fhir_norm
from wellsky_core.normalize import hl7
from wellsky_core.normalize.hl7 import Unsupported, normalize_records

MSH = "MSH|^~\\&|SCHED|CLINIC|WELLSKY|AGENCY|20260301090000+0000||{type}|C1|P|2.5.1\r"
PID = "PID|1||W1^^^WELLSKY^PI||DOE^JANE||19400101|F{deceased}\r"


def siu(event: str, filler_status: str = "") -> dict[str, Any]:
    sch = "SCH|P1|F1|||||SN" + "|" * 18 + filler_status + "\r"
    message = (MSH.format(type=f"SIU^{event}^SIU_S12") + sch + "TQ1|1||||||20260302090000+0000|20260302100000+0000\r"
               + PID.format(deceased="") + "RGS|1\rAIS|1||G0299^SN visit^HCPCS\r")
    [(entity, record)] = normalize_records(message)
    assert entity == "appointments"
    return record


def adt(event: str, pv1_41: str = "", deceased: str = "") -> dict[str, Any]:
    pv1 = "PV1|1|O" + "|" * 39 + pv1_41 + "\r" if pv1_41 else ""
    message = MSH.format(type=f"ADT^{event}^ADT_A01") + PID.format(deceased=deceased) + pv1
    [(entity, record)] = normalize_records(message)
    assert entity == "patients"
    return record


def flagged(record: dict[str, Any], field: str = "status") -> str | None:
    return next((f["kind"] for f in record["data_quality"] if f["field"] == field), None)


# -- HL7 SIU ----------------------------------------------------------------------------------------------------
SIU_EVENT_STATUS = {  # v2.5.1 ch. 10.3, no SCH-25 in the message
    "S12": "scheduled",  # new appointment booking
    "S13": "scheduled",  # rescheduling
    "S14": "scheduled",  # modification
    "S15": "cancelled",  # cancellation
    "S16": "cancelled",  # discontinuation
    "S17": "cancelled",  # deletion
    "S18": None,  # addition of a service/resource: says nothing of the appointment's own status
    "S19": None,  # modification of a service/resource
    "S20": None,  # cancellation of a service/resource
    "S21": None,  # discontinuation of a service/resource
    "S22": None,  # deletion of a service/resource
    "S26": "missed",  # patient did not show up
}
SIU_NOT_APPOINTMENTS = ("S23", "S24", "S25")  # blocked / opened slots, a schedule query


@pytest.mark.parametrize(("event", "status"), SIU_EVENT_STATUS.items())
def test_siu_event_without_sch25(event: str, status: str | None) -> None:
    record = siu(event)
    assert record["status"] == status
    assert flagged(record) == (None if status else "missing")


def test_siu_event_table_covers_exactly_the_appointment_events() -> None:
    assert set(SIU_EVENT_STATUS) == hl7.APPOINTMENT_EVENTS
    for event in SIU_NOT_APPOINTMENTS:
        with pytest.raises(Unsupported):
            siu(event)


FILLER_STATUS = {  # HL7 table 0278 (filler status codes) -> canonical
    "Booked": "scheduled",
    "Pending": "scheduled",
    "Waitlist": "scheduled",
    "Overbook": "scheduled",
    "Started": "scheduled",
    "Complete": "completed",
    "Cancelled": "cancelled",
    "Deleted": "cancelled",
    "Blocked": "cancelled",
    "DC": "cancelled",
    "Noshow": "missed",
}


@pytest.mark.parametrize(("code", "status"), FILLER_STATUS.items())
def test_sch25_filler_status_on_a_booking_event(code: str, status: str) -> None:
    record = siu("S14", code)
    assert record["status"] == status and flagged(record) is None


def test_filler_status_table_is_fully_tested() -> None:
    assert set(hl7.FILLER_STATUS) == {c.lower() for c in FILLER_STATUS}


@pytest.mark.parametrize("event", ["S15", "S16", "S17"])
def test_a_cancelling_event_wins_over_a_stale_sch25(event: str) -> None:
    assert siu(event, "Complete")["status"] == "cancelled"
    assert siu(event, "Booked")["status"] == "cancelled"


def test_no_show_event_wins_over_sch25_and_unknown_filler_status_is_flagged() -> None:
    assert siu("S26", "Booked")["status"] == "missed"
    odd = siu("S12", "Tentative-ish")
    assert odd["status"] == "scheduled" and flagged(odd) == "unmapped_code"
    assert siu("S19", "Complete")["status"] == "completed"  # a resource edit with SCH-25: SCH-25 says it


# -- HL7 ADT ----------------------------------------------------------------------------------------------------
ADT_EVENT_STATUS = {  # v2.5.1 ch. 3, no PV1-41
    "A01": "active",  # admit
    "A02": "active",  # transfer
    "A03": "discharged",  # discharge
    "A04": "active",  # register
    "A05": "pending",  # pre-admit
    "A06": "active",  # outpatient -> inpatient
    "A07": "active",  # inpatient -> outpatient
    "A08": None,  # update patient information
    "A11": "pending",  # cancel admit: back to referral
    "A13": "active",  # cancel discharge
    "A28": None,  # add person information
    "A31": None,  # update person information
}


@pytest.mark.parametrize(("event", "status"), ADT_EVENT_STATUS.items())
def test_adt_event_without_pv1_41(event: str, status: str | None) -> None:
    record = adt(event)
    assert record["status"] == status
    assert flagged(record) == (None if status else "missing")


def test_adt_event_table_is_fully_tested() -> None:
    implied = {e: s for e, s in ADT_EVENT_STATUS.items() if s}
    assert implied == hl7.EVENT_PATIENT_STATUS
    assert set(ADT_EVENT_STATUS) | {"A40", "A47"} == hl7.PATIENT_EVENTS


PV1_41 = {"P": "pending", "A": "active", "D": "discharged", "I": "inactive"}  # PV1-41 account status


@pytest.mark.parametrize(("code", "status"), PV1_41.items())
def test_pv1_41_account_status_wins_over_the_event(code: str, status: str) -> None:
    assert adt("A03" if code != "D" else "A01", code)["status"] == status


def test_pv1_41_table_is_fully_tested_and_an_unknown_code_is_flagged() -> None:
    assert hl7.PATIENT_STATUS == PV1_41
    assert flagged(adt("A08", "Q")) == "unmapped_code"


@pytest.mark.parametrize(
    ("event", "pv1_41", "status"),
    [("A08", "", "discharged"), ("A01", "", "discharged"), ("A08", "A", "active"), ("A03", "", "discharged")],
)
def test_a_deceased_patient_is_discharged_unless_the_source_states_a_status(
    event: str, pv1_41: str, status: str
) -> None:
    deceased = "|" * 21 + "Y"  # PID-30 patient death indicator
    record = adt(event, pv1_41, deceased)
    assert record["deceased"] is True and record["status"] == status


# -- FHIR -------------------------------------------------------------------------------------------------------
META = {"meta": {"lastUpdated": "2026-03-01T00:00:00Z"}}
APPOINTMENT = {  # R4 AppointmentStatus
    "proposed": "scheduled", "pending": "scheduled", "booked": "scheduled", "arrived": "scheduled",
    "checked-in": "scheduled", "waitlist": "scheduled", "fulfilled": "completed", "cancelled": "cancelled",
    "entered-in-error": "cancelled", "noshow": "missed",
}
ENCOUNTER = {  # R4 EncounterStatus
    "planned": "in_progress", "arrived": "in_progress", "triaged": "in_progress", "in-progress": "in_progress",
    "onleave": "in_progress", "finished": "completed", "cancelled": "cancelled", "entered-in-error": "cancelled",
}
CARE_PLAN = {  # R4 RequestStatus
    "draft": "draft", "active": "active", "on-hold": "active", "completed": "completed", "revoked": "revoked",
    "entered-in-error": "revoked",
}
COVERAGE = {"active": "active", "cancelled": "cancelled", "entered-in-error": "cancelled"}  # FinancialResourceStatus
REVIEW_ACTION = {  # X12 306 action codes in Da Vinci PAS reviewAction.code
    "A1": "active", "A2": "active", "A6": "active", "A3": "denied", "A4": "pending", "CT": "pending",
    "D": "pending", "C": "denied",
}
REFERRAL = {"draft": "received", "on-hold": "pending", "active": "accepted", "revoked": "declined",
            "completed": "accepted"}


def appointment(status: str) -> dict[str, Any]:
    return fhir_norm.appointment({"resourceType": "Appointment", "id": "a", **META, "status": status,
                                  "participant": [{"actor": {"reference": "Patient/p"}}]})


def encounter(status: str) -> dict[str, Any]:
    return fhir_norm.encounter({"resourceType": "Encounter", "id": "e", **META, "status": status,
                                "subject": {"reference": "Patient/p"}}, {})


def care_plan(status: str) -> dict[str, Any]:
    return fhir_norm.care_plan({"resourceType": "CarePlan", "id": "c", **META, "status": status,
                                "subject": {"reference": "Patient/p"}}, {})


def coverage(status: str) -> dict[str, Any]:
    return fhir_norm.coverage({"resourceType": "Coverage", "id": "v", **META, "status": status,
                               "beneficiary": {"reference": "Patient/p"}})


def authorization(code: str) -> dict[str, Any]:
    review = {"url": "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/extension-reviewAction",
              "extension": [{"url": "code", "valueCodeableConcept": {"coding": [
                  {"system": "https://codesystem.x12.org/005010/306", "code": code}]}}]}
    return fhir_norm.authorization({
        "resourceType": "ClaimResponse", "id": "r", **META, "use": "preauthorization",
        "patient": {"reference": "Patient/p"},
        "item": [{"itemSequence": 1, "adjudication": [{"category": {"text": "submitted"}, "extension": [review]}]}],
    })


def referral(status: str) -> dict[str, Any]:
    return fhir_norm.referral({"resourceType": "ServiceRequest", "id": "s", **META, "status": status,
                               "subject": {"reference": "Patient/p"}})


CASES = [
    ("Appointment.status", appointment, APPOINTMENT, fhir_norm.APPOINTMENT_STATUS),
    ("Encounter.status", encounter, ENCOUNTER, fhir_norm.ENCOUNTER_STATUS),
    ("CarePlan.status", care_plan, CARE_PLAN, fhir_norm.CARE_PLAN_STATUS),
    ("Coverage.status", coverage, COVERAGE, fhir_norm.COVERAGE_STATUS),
    ("reviewAction.code", authorization, REVIEW_ACTION, fhir_norm.REVIEW_ACTION),
    ("ServiceRequest.status", referral, REFERRAL, fhir_norm.REFERRAL_STATUS),
]


@pytest.mark.parametrize(
    ("mapper", "code", "status"),
    [(mapper, code, status) for _, mapper, table, _ in CASES for code, status in table.items()],
    ids=[f"{name}={code}" for name, _, table, _ in CASES for code in table],
)
def test_fhir_status_code(mapper: Any, code: str, status: str) -> None:
    record = mapper(code)
    assert record["status"] == status and flagged(record) is None


@pytest.mark.parametrize(("name", "mapper", "table", "source"), CASES, ids=[c[0] for c in CASES])
def test_fhir_status_table_is_fully_tested_and_an_unknown_code_is_null_and_flagged(
    name: str, mapper: Any, table: dict[str, str], source: dict[str, str]
) -> None:
    assert source == table, name
    record = mapper("not-a-code")
    assert record["status"] is None and flagged(record) == "unmapped_code"


def patient(**elements: Any) -> dict[str, Any]:
    return fhir_norm.patient({"resourceType": "Patient", "id": "p", **META, **elements})


@pytest.mark.parametrize(
    ("elements", "status", "deceased"),
    [
        ({"active": True}, "active", None),
        ({"active": False}, "inactive", None),
        ({}, None, None),
        ({"deceasedBoolean": True}, "discharged", True),
        ({"active": True, "deceasedBoolean": True}, "discharged", True),
        ({"active": False, "deceasedDateTime": "2026-02-27T14:30:00-06:00"}, "discharged", True),
        ({"active": True, "deceasedBoolean": False}, "active", False),
        ({"deceasedBoolean": True, "extension": [
            {"url": "https://x.example/fhir/StructureDefinition/patient-status", "valueCode": "pending"}]},
         "pending", True),
    ],
)
def test_patient_active_and_deceased(elements: dict[str, Any], status: str | None, deceased: bool | None) -> None:
    record = patient(**elements)
    assert record["status"] == status and record["deceased"] is deceased
