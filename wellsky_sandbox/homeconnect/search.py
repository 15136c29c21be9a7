"""Search parameters: created/updated comparators, person filters, client/caregiver ids, appointment windows."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .shapes import (
    Invalid,
    tags_of,
)

if TYPE_CHECKING:
    from .people import PeopleRoutes

COMPARATORS = ("ge", "gt", "le", "lt", "eq")


class Comparator:
    """``ge2026-07-01T00:00:00``: one comparator per field (no ranges), naive times are UTC."""

    SQL = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "eq": "="}

    def __init__(self, op: str, when: datetime) -> None:
        self.op, self.when, self.sql = op, when, self.SQL[op]

    def __call__(self, value: datetime) -> bool:
        a, b = int(value.timestamp()), int(self.when.timestamp())
        return {"ge": a >= b, "gt": a > b, "le": a <= b, "lt": a < b, "eq": a == b}[self.op]


def comparator(value: Any, field: str) -> Comparator | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise Invalid(400, f"'{field}' takes one value such as \"ge2026-07-01T00:00:00\" (no lists or ranges).")
    op, rest = (value[:2], value[2:]) if value[:2] in COMPARATORS else ("eq", value)
    try:
        when = datetime.fromisoformat(rest.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(
            400,
            f"'{field}' must be a comparator (ge, gt, le, lt, eq) and a datetime "
            'YYYY-MM-DDTHH:MM:SS, e.g. "ge2026-07-01T00:00:00".',
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return Comparator(op, when)


def _truthy(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise Invalid(400, f'\'{field}\' must be "true" or "false".')


def people_filter(kind: str, key: str, value: Any, hc: PeopleRoutes) -> Callable[[dict[str, Any]], bool] | None:
    """A predicate for one documented patient/practitioner filter; unknown fields are ignored (as production)."""
    field, _, modifier = key.partition(":")
    text = str(value).lower()

    def match(candidate: str | None) -> bool:
        c = (candidate or "").lower()
        return text in c if modifier == "contains" else c == text

    if field in ("first_name", "given"):
        return lambda r: match(r["first_name"])
    if field in ("last_name", "family"):
        return lambda r: match(r["last_name"])
    if field == "active":
        want = _truthy(value, "active")
        return lambda r: hc.render_person(kind, r)["active"] == want
    if field == "gender":
        return lambda r: match(hc.render_person(kind, r).get("gender"))
    if field in ("city", "state"):
        return lambda r: any(match(a.get(field)) for a in hc.render_person(kind, r)["address"])
    if field in ("home_phone", "mobile_phone", "work_phone"):
        digits = re.sub(r"\D", "", text)
        return lambda r: any(t.get("value") == digits for t in hc.render_person(kind, r)["telecom"])
    if field == "is_hired" and kind == "practitioners":
        want = _truthy(value, "is_hired")
        return lambda r: hc.extras.caregiver_code(r)[1] == want
    if field == "tags" and kind == "practitioners":
        wanted = {t for t in text.split(",") if t}
        return lambda r: wanted <= set(tags_of(hc.render_person(kind, r)).get("profileTags", "").split(","))
    if field == "agency_id":
        return lambda r: text == hc.extras.agency_id
    return None


def person_ids(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """``clientId``/``caregiverId`` (strings or integers); at least one is required (fact sheet section 2)."""
    out = []
    for key in ("clientId", "caregiverId"):
        value = body.get(key)
        if value in (None, ""):
            out.append(None)
        elif isinstance(value, bool) or not re.fullmatch(r"\d+", str(value)):
            raise Invalid(422, f"'{key}' must be a numeric id.")
        else:
            out.append(str(value))
    if out == [None, None]:
        raise Invalid(400, "clientId or caregiverId is required.")
    return out[0], out[1]


def yyyymmdd(value: Any, field: str) -> date:
    text = str(value)
    if isinstance(value, bool) or not re.fullmatch(r"\d{8}", text):
        raise Invalid(422, f"'{field}' must be a date as YYYYMMDD.")
    try:
        return datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise Invalid(422, f"'{field}' is not a valid date.") from None


def appointment_window(body: dict[str, Any]) -> tuple[date, date]:
    """startDate (+additionalDays 1-6), weekNo (YYYYWW, ISO week) or monthNo (YYYYMM): exactly one is required."""
    given = [k for k in ("startDate", "weekNo", "monthNo") if body.get(k) not in (None, "")]
    if not given:
        raise Invalid(400, "One of startDate (YYYYMMDD), weekNo (YYYYWW) or monthNo (YYYYMM) is required.")
    if len(given) > 1:
        raise Invalid(400, f"Send only one of startDate, weekNo and monthNo (got {', '.join(given)}).")
    kind = given[0]
    text = str(body[kind])
    if kind == "startDate":
        start = yyyymmdd(body[kind], "startDate")
        extra = body.get("additionalDays")
        days = 0
        if extra not in (None, ""):
            if isinstance(extra, bool) or not re.fullmatch(r"\d+", str(extra)) or not 1 <= int(extra) <= 6:
                raise Invalid(422, "'additionalDays' must be from 1 to 6.")
            days = int(extra)
        return start, start + timedelta(days=days)
    if kind == "weekNo":
        if not re.fullmatch(r"\d{6}", text):
            raise Invalid(422, "'weekNo' must be YYYYWW.")
        try:
            monday = date.fromisocalendar(int(text[:4]), int(text[4:]), 1)
        except ValueError:
            raise Invalid(422, "'weekNo' is not a valid ISO week.") from None
        return monday, monday + timedelta(days=6)
    if not re.fullmatch(r"\d{6}", text) or not 1 <= int(text[4:]) <= 12:
        raise Invalid(422, "'monthNo' must be YYYYMM.")
    first = date(int(text[:4]), int(text[4:]), 1)
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, nxt - timedelta(days=1)
