"""Authorization units counted in the client: unit arithmetic, which authorization covers a booking, and the
run's ledger (earlier reservations count, moves get their own units back, failed writes give units back)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from wellsky_core.errors import AuthorizationRefused
from wellsky_core.scheduling import (
    AuthorizationUnitLedger,
    Reservation,
    covering_authorizations,
    current_charge,
    units_for,
)


def _at(hour: int, minute: int = 0, day: int = 10) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def _auth(aid: str = "A1", **kw) -> dict:
    return {
        "id": aid,
        "payer_id": "PAY1",
        "status": "active",
        "start_date": "2026-11-01",
        "end_date": "2026-11-30",
        "service_codes": ["SN"],
        "unit_type": "visit",
        "rounding": "nearest",
        "units_authorized": 10,
        "units_used": 7,
        **kw,
    }


def _appt(**kw) -> dict:
    return {
        "patient_id": "P1",
        "payer_id": "PAY1",
        "status": "scheduled",
        "discipline": "SN",
        "service_code": "G0299",
        "start": "2026-11-10T15:00:00Z",
        "end": "2026-11-10T16:00:00Z",
        **kw,
    }


@pytest.mark.parametrize(
    ("unit_type", "rounding", "minutes", "units"),
    [
        ("visit", "up", 500, 1),
        ("hour", "nearest", 90, 2),
        ("hour", "nearest", 89, 1),
        ("hour", "up", 61, 2),
        ("hour", "up", 60, 1),
        ("hour", "down", 119, 1),
        ("hour", "down", 120, 2),
        ("15min", "nearest", 22, 1),
        ("15min", "nearest", 23, 2),
        ("15min", "up", 16, 2),
        ("15min", "up", 45, 3),
        ("15min", "down", 44, 2),
        ("15min", "down", 45, 3),
    ],
)
def test_units_for_each_unit_type_and_rounding(unit_type, rounding, minutes, units):
    start = _at(9)
    end = datetime.fromtimestamp(start.timestamp() + minutes * 60, tz=UTC)
    assert units_for(unit_type, rounding, start, end) == units


def test_rounding_tolerates_float_noise_at_exact_boundaries():
    start = _at(9)
    end = datetime.fromtimestamp(start.timestamp() + 3600 + 1e-7, tz=UTC)  # 60 min plus float noise
    assert units_for("hour", "up", start, end) == 1
    end = datetime.fromtimestamp(start.timestamp() + 7200 - 1e-7, tz=UTC)
    assert units_for("hour", "down", start, end) == 2


def test_covering_refuses_with_the_precise_reason():
    with pytest.raises(AuthorizationRefused) as exc:
        covering_authorizations(_appt(payer_id="OTHER"), [_auth()])
    assert exc.value.code == "authorization_missing" and "payer OTHER" in str(exc.value)
    with pytest.raises(AuthorizationRefused) as exc:
        covering_authorizations(_appt(), [_auth(status="expired")])
    assert exc.value.code == "authorization_missing"
    with pytest.raises(AuthorizationRefused) as exc:
        covering_authorizations(_appt(start="2026-12-01T15:00:00Z", end="2026-12-01T16:00:00Z"), [_auth()])
    assert exc.value.code == "authorization_out_of_range" and "2026-12-01" in str(exc.value)
    with pytest.raises(AuthorizationRefused) as exc:
        covering_authorizations(_appt(discipline="PT", service_code="G0151"), [_auth()])
    assert exc.value.code == "service_not_authorized" and "G0151 (PT)" in str(exc.value)


def test_covering_uses_the_agency_day_and_inclusive_date_range():
    # 2026-12-01T03:00Z is still Nov 30 in Chicago: inside the range that ends on Nov 30
    late = _appt(start="2026-12-01T03:00:00Z", end="2026-12-01T04:00:00Z")
    assert [a["id"] for a in covering_authorizations(late, [_auth()])] == ["A1"]
    first_day = _appt(start="2026-11-01T15:00:00Z", end="2026-11-01T16:00:00Z")
    assert covering_authorizations(first_day, [_auth()])
    before = _appt(start="2026-11-01T04:00:00Z", end="2026-11-01T05:00:00Z")  # Oct 31 in Chicago
    with pytest.raises(AuthorizationRefused):
        covering_authorizations(before, [_auth()])


def test_covering_matches_service_code_or_discipline_and_sorts_by_end_date():
    auths = [
        _auth("LATE", end_date="2026-11-30", service_codes=["G0299"]),
        _auth("SOON", end_date="2026-11-20", service_codes=["SN"]),
        _auth("NOPE", service_codes=["PT"]),
        _auth("OTHERPAYER", payer_id="PAY2"),
    ]
    assert [a["id"] for a in covering_authorizations(_appt(), auths)] == ["SOON", "LATE"]


def test_current_charge_of_an_existing_booking():
    auths = [_auth(unit_type="hour")]
    assert current_charge(_appt(end="2026-11-10T17:00:00Z"), auths) == Reservation("A1", 2)
    assert current_charge(_appt(status="cancelled"), auths) is None
    assert current_charge(_appt(payer_id=None), auths) is None
    assert current_charge(_appt(payer_id="OTHER"), auths) is None
    assert current_charge(_appt(status="completed"), [_auth()]) == Reservation("A1", 1)


def test_ledger_counts_this_runs_earlier_reservations():
    ledger = AuthorizationUnitLedger()
    auths = [_auth(units_authorized=10, units_used=7)]
    assert [ledger.reserve(_appt(), auths) for _ in range(3)] == [Reservation("A1", 1)] * 3
    assert ledger.reserved("A1") == 3
    with pytest.raises(AuthorizationRefused) as exc:
        ledger.reserve(_appt(), auths)
    assert exc.value.code == "authorization_exceeded"
    assert str(exc.value).endswith(
        "needs 1 visit unit(s) but only 0 of 10 remain on authorization A1 (counting this run's bookings)"
    )
    assert ledger.reserved("A1") == 3, "a refusal reserves nothing"


def test_ledger_falls_through_to_the_next_covering_authorization():
    ledger = AuthorizationUnitLedger()
    auths = [_auth("SOON", end_date="2026-11-20", units_used=10), _auth("LATE", units_used=9)]
    assert ledger.reserve(_appt(), auths) == Reservation("LATE", 1)
    with pytest.raises(AuthorizationRefused) as exc:
        ledger.reserve(_appt(), auths)
    assert "authorization SOON" in str(exc.value), "the refusal names the first (soonest-ending) candidate"


def test_ledger_reports_what_remains_for_multi_unit_bookings():
    ledger = AuthorizationUnitLedger()
    auths = [_auth(unit_type="hour", units_authorized=10, units_used=8)]
    with pytest.raises(AuthorizationRefused) as exc:
        ledger.reserve(_appt(end="2026-11-10T18:00:00Z"), auths)
    assert "needs 3 hour unit(s) but only 2 of 10 remain" in str(exc.value)
    over = [_auth(units_authorized=5, units_used=7)]
    with pytest.raises(AuthorizationRefused) as exc:
        ledger.reserve(_appt(), over)
    assert "only 0 of 5 remain" in str(exc.value), "an over-used authorization reports 0 left, not a negative"


def test_ledger_checks_only_payer_bookings():
    ledger = AuthorizationUnitLedger()
    full = [_auth(units_used=10)]
    assert ledger.reserve(_appt(status="cancelled"), full) is None
    assert ledger.reserve(_appt(payer_id=None), full) is None
    assert ledger.reserve(_appt(payer_id=""), full) is None
    assert ledger.reserve(_appt(status="completed"), [_auth()]) == Reservation("A1", 1)


def test_a_moved_booking_gets_its_own_units_back():
    ledger = AuthorizationUnitLedger()
    auths = [_auth(unit_type="hour", units_authorized=10, units_used=10)]  # full, 2 of them held by this booking
    moved = ledger.reserve(_appt(end="2026-11-10T17:00:00Z"), auths, release=Reservation("A1", 2))
    assert moved == Reservation("A1", 0) and ledger.reserved("A1") == 0
    longer = ledger.reserve(
        _appt(end="2026-11-10T17:00:00Z"), [_auth(unit_type="hour", units_used=7)], release=Reservation("A1", 1)
    )
    assert longer == Reservation("A1", 1) and ledger.reserved("A1") == 1
    with pytest.raises(AuthorizationRefused):  # a release from another authorization is no credit here
        ledger.reserve(_appt(), [_auth(units_used=10)], release=Reservation("OTHER", 5))


def test_cancel_gives_units_back():
    ledger = AuthorizationUnitLedger()
    auths = [_auth(units_authorized=10, units_used=9)]
    reservation = ledger.reserve(_appt(), auths)
    ledger.cancel(reservation)
    ledger.cancel(None)
    assert ledger.reserved("A1") == 0
    assert ledger.reserve(_appt(), auths) == Reservation("A1", 1)


def test_concurrent_writers_never_share_the_last_unit():
    ledger = AuthorizationUnitLedger()
    auths = [_auth(units_authorized=10, units_used=5)]
    granted: list[Reservation] = []
    refused: list[str] = []
    start = threading.Barrier(16)

    def book() -> None:
        start.wait()
        try:
            granted.append(ledger.reserve(_appt(), auths))
        except AuthorizationRefused as exc:
            refused.append(exc.code)

    threads = [threading.Thread(target=book) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 5 and refused == ["authorization_exceeded"] * 11
    assert ledger.reserved("A1") == 5


def test_the_authorizations_rounding_rule_applies_and_defaults_to_nearest():
    ninety_one = _appt(end="2026-11-10T16:31:00Z")  # 91 minutes: 1.52 hours
    up = [_auth(unit_type="hour", rounding="up", units_authorized=10, units_used=8)]
    down = [_auth(unit_type="hour", rounding="down", units_authorized=10, units_used=8)]
    default = [{k: v for k, v in _auth(unit_type="hour", units_authorized=10, units_used=8).items() if k != "rounding"}]
    assert AuthorizationUnitLedger().reserve(ninety_one, up) == Reservation("A1", 2)
    assert AuthorizationUnitLedger().reserve(ninety_one, down) == Reservation("A1", 1)
    assert AuthorizationUnitLedger().reserve(ninety_one, default) == Reservation("A1", 2)
    assert current_charge(ninety_one, up) == Reservation("A1", 2)
    assert current_charge(ninety_one, down) == Reservation("A1", 1)
    assert current_charge(_appt(end="2026-11-10T16:29:00Z"), default) == Reservation("A1", 1)


def test_nothing_reserved_reads_as_zero():
    ledger = AuthorizationUnitLedger()
    assert ledger.reserved("never") == 0
    ledger.cancel(Reservation("never", 2))
    assert ledger.reserved("never") == -2
