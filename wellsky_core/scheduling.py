"""Payer-authorization checks before booking: does an appointment fit an authorization, counting this run?

Home-health and personal-care payers authorize a number of units (visits, hours or 15-minute units) of
given services over a date range. Booking beyond that is unpaid work, so the target checks *before* it
writes. The server's ``units_used`` does not yet include what this run has booked, so the ledger adds the
units reserved by earlier records of the batch (and releases them when a write fails).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from .errors import AuthorizationRefused

BOOKED_STATUSES = frozenset({"scheduled", "completed"})
AGENCY_TZ = ZoneInfo("America/Chicago")


def units_for(unit_type: str, rounding: str, start: datetime, end: datetime) -> int:
    """Units an appointment consumes: 1 per visit, or its duration in hours / 15-minute units, rounded."""
    if unit_type == "visit":
        return 1
    minutes = (end - start).total_seconds() / 60
    raw = minutes / (60 if unit_type == "hour" else 15)
    if rounding == "up":
        return math.ceil(raw - 1e-9)
    if rounding == "down":
        return math.floor(raw + 1e-9)
    return math.floor(raw + 0.5)


def _dt(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _d(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def covering_authorizations(appointment: dict[str, Any], authorizations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Active authorizations of the appointment's payer whose dates and services cover it (soonest ending first).

    Raises AuthorizationRefused with the precise reason when none does.
    """
    start = _dt(appointment["start"])
    day = start.astimezone(AGENCY_TZ).date()
    payer = appointment["payer_id"]
    active = [a for a in authorizations if a["payer_id"] == payer and a["status"] == "active"]
    if not active:
        raise AuthorizationRefused(
            f"no active authorization from payer {payer} for this patient", code="authorization_missing"
        )
    in_range = [a for a in active if _d(a["start_date"]) <= day <= _d(a["end_date"])]
    if not in_range:
        raise AuthorizationRefused(
            f"appointment date {day.isoformat()} is outside every authorized date range",
            code="authorization_out_of_range",
        )
    covering = [
        a
        for a in in_range
        if appointment["service_code"] in a["service_codes"] or appointment["discipline"] in a["service_codes"]
    ]
    if not covering:
        raise AuthorizationRefused(
            f"service {appointment['service_code']} ({appointment['discipline']}) is not authorized",
            code="service_not_authorized",
        )
    return sorted(covering, key=lambda a: str(a["end_date"]))


def current_charge(appointment: dict[str, Any], authorizations: list[dict[str, Any]]) -> Reservation | None:
    """Which authorization an existing booking most likely draws on, and how many units (None if none)."""
    if appointment.get("status") not in BOOKED_STATUSES or not appointment.get("payer_id"):
        return None
    try:
        auth = covering_authorizations(appointment, authorizations)[0]
    except AuthorizationRefused:
        return None
    units = units_for(
        auth["unit_type"], auth.get("rounding", "nearest"), _dt(appointment["start"]), _dt(appointment["end"])
    )
    return Reservation(auth["id"], units)


@dataclass(frozen=True)
class Reservation:
    authorization_id: str
    units: int


class AuthorizationUnitLedger:
    """Thread-safe: concurrent writers reserve units atomically, so two bookings never share the last unit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reserved: dict[str, int] = {}

    def reserve(
        self, appointment: dict[str, Any], authorizations: list[dict[str, Any]], *, release: Reservation | None = None
    ) -> Reservation | None:
        """Pick the authorization that covers ``appointment`` and reserve its units, or raise AuthorizationRefused.

        ``release`` is the existing booking being moved (its units come back first). Returns None when no
        check applies (not a booking, or no payer: private pay).
        """
        if appointment.get("status") not in BOOKED_STATUSES or not appointment.get("payer_id"):
            return None
        start, end = _dt(appointment["start"]), _dt(appointment["end"])
        covering = covering_authorizations(appointment, authorizations)
        with self._lock:
            shortest = None
            for auth in covering:
                units = units_for(auth["unit_type"], auth.get("rounding", "nearest"), start, end)
                credit = release.units if release and release.authorization_id == auth["id"] else 0
                left = auth["units_authorized"] - auth["units_used"] - self._reserved.get(auth["id"], 0) + credit
                if units <= left:
                    self._reserved[auth["id"]] = self._reserved.get(auth["id"], 0) + units - credit
                    return Reservation(auth["id"], units - credit)
                shortest = shortest or (auth, units, left)
        assert shortest is not None
        auth, units, left = shortest
        raise AuthorizationRefused(
            f"needs {units} {auth['unit_type']} unit(s) but only {max(left, 0)} of {auth['units_authorized']} remain "
            f"on authorization {auth['id']} (counting this run's bookings)",
            code="authorization_exceeded",
        )

    def cancel(self, reservation: Reservation | None) -> None:
        """Give back units of a write that did not happen."""
        if reservation is None:
            return
        with self._lock:
            self._reserved[reservation.authorization_id] = (
                self._reserved.get(reservation.authorization_id, 0) - reservation.units
            )

    def reserved(self, authorization_id: str) -> int:
        with self._lock:
            return self._reserved.get(authorization_id, 0)
