"""Native REST records of each WellSky product -> canonical records (and back, for writes).

The three product lines disagree on almost everything: key style, entity words (patient/client,
clinician/staff/caregiver, visit/shift), id types, timestamp and date formats, code lists. A ``Dialect`` holds
one product's conventions as data (``wellsky_core/products/<product>/dialect.py``); the two functions
``to_canonical`` and ``to_native`` interpret it. Adding a product means adding a dialect module, not code here.

Every record is validated by its pydantic model, so a malformed body raises ``NormalizationError`` naming
the entity and the field (never the value, which may be PHI).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from ..errors import NormalizationError
from ..products import DATE_FIELDS, ID_FIELDS, TIMESTAMP_FIELDS, Dialect, dialect
from ..quality import Flags
from .validation import validated

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


@functools.lru_cache(maxsize=4096)
def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


_NESTED = (dict, list)  # a tuple: isinstance checks it faster than a union, and this is the hot path


def _restyle(value: Any, fn: Callable[[str], str]) -> Any:
    """Rename every key of nested dicts; recursion only where there is nesting (this runs once per record)."""
    if isinstance(value, dict):
        return {fn(k): _restyle(v, fn) if isinstance(v, _NESTED) else v for k, v in value.items()}
    if isinstance(value, list):
        return [_restyle(v, fn) if isinstance(v, _NESTED) else v for v in value]
    return value


# -- native -> canonical --------------------------------------------------------------------------------
class _Bad(Exception):
    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason


def _ts(d: Dialect, value: Any, name: str) -> str | None:
    if value is None:
        return None
    if d.timestamps == "epoch":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Bad(name, "expected epoch seconds")
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if not isinstance(value, str):
        raise _Bad(name, "expected an ISO 8601 timestamp")
    if len(value) == 20 and value[-1] == "Z" and value[10] == "T":
        return value  # already canonical UTC spelling; the model still validates it
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Bad(name, "expected an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise _Bad(name, "timestamp has no UTC offset")
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _date(d: Dialect, value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Bad(name, "expected a date string")
    try:
        if d.dates == "mdy":
            return datetime.strptime(value, "%m/%d/%Y").date().isoformat()
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise _Bad(name, "expected MM/DD/YYYY" if d.dates == "mdy" else "expected YYYY-MM-DD") from None


def _id(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Bad(name, "expected a string or integer id")
    return str(value)


def _lookup(table: dict[str, str], value: Any, name: str) -> str:
    if value not in table:
        raise _Bad(name, f"unexpected code; expected one of {sorted(table)}")
    return table[value]


def _address(d: Dialect, rec: dict[str, Any], key: str) -> dict[str, Any] | None:
    """Pop the native address parts for ``key`` ("address" or "location") and build a canonical address."""
    if d.address_style == "nested":
        raw = rec.pop(key, None)
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise _Bad(key, "expected an object")
        return {"line1": raw.get("street"), "line2": raw.get("street2"), "city": raw.get("city"),
                "state": raw.get("state"), "postal_code": raw.get("zip")}
    if d.address_style == "flat":
        prefix = "" if key == "address" else f"{key}_"
        parts = {k: rec.pop(prefix + k, None) for k in ("address_line1", "address_line2", "city", "state",
                                                        "postal_code")}
        if rec.pop(key, None) is not None:
            raise _Bad(key, "unexpected nested address")
        if all(v is None for v in parts.values()):
            return None
        return {"line1": parts["address_line1"], "line2": parts["address_line2"], "city": parts["city"],
                "state": parts["state"], "postal_code": parts["postal_code"]}
    items = rec.get("addresses")
    if items is None:
        return None
    if not isinstance(items, list):
        raise _Bad("addresses", "expected a list")
    kind = "home" if key == "address" else "service"
    raw = next((a for a in items if isinstance(a, dict) and a.get("type") == kind), None)
    if raw is None:
        return None
    return {"line1": raw.get("line1"), "line2": raw.get("line2"), "city": raw.get("city"), "state": raw.get("state"),
            "postal_code": raw.get("zip")}


def _nested_list(d: Dialect, items: Any, name: str) -> Any:
    if not isinstance(items, list):
        return items
    out = []
    for item in items:
        if isinstance(item, dict):
            item = dict(item)
            for k in list(item):
                if k in DATE_FIELDS:
                    item[k] = _date(d, item[k], f"{name}.{k}")
                elif k == "discipline" and isinstance(item[k], str):
                    item[k] = d.discipline(item[k])
        out.append(item)
    return out


KEY_FIELDS = frozenset({"id", "updated_at"})
"""A native value of these that cannot be converted refuses the record; any other becomes null + a flag."""


def native_to_fields(
    d: Dialect, entity: str, native: dict[str, Any], flags: Flags | None = None
) -> dict[str, Any]:
    """Translate one native record into canonical field names and conventions (not yet validated).

    With ``flags``, a non-key value that cannot be converted becomes null and is flagged (lenient read);
    without, it raises.
    """
    rec = _restyle(native, _snake) if d.camel_case else dict(native)
    out: dict[str, Any] = {}

    def lenient(bad: _Bad, *fields: str) -> None:
        if flags is None:
            raise bad
        kind = "unmapped_code" if bad.reason.startswith("unexpected code") else "invalid"
        for name in fields:
            out[name] = None
            flags.add(name, kind, f"native {bad.field}: {bad.reason}")

    if entity in ("patients", "appointments"):
        key = "address" if entity == "patients" else "location"
        try:
            out[key] = _address(d, rec, key)
        except _Bad as bad:
            lenient(bad, key)
        rec.pop("addresses", None)
    if entity == "patients":
        if d.name_style == "nested":
            name = rec.pop("name", None) or {}
            if not isinstance(name, dict):
                lenient(_Bad("name", "expected an object {first, last}"), "first_name", "last_name")
            else:
                out["first_name"], out["last_name"] = name.get("first"), name.get("last")
        elif d.name_style == "flat_short":
            out["first_name"], out["last_name"] = rec.pop("first", None), rec.pop("last", None)
    renames = d.renames_for(entity)
    converters = _converters(d, entity)
    for nkey, value in rec.items():
        key = renames.get(nkey, nkey)
        convert = converters.get(key)
        if convert is None:
            out[key] = value
            continue
        try:
            out[key] = convert(value, nkey)
        except _Bad as bad:
            if key in KEY_FIELDS:
                raise
            lenient(bad, key)
    return out


Converter = Callable[[Any, str], Any]


_CONVERTERS: dict[tuple[str, str], dict[str, Converter]] = {}


def _converters(d: Dialect, entity: str) -> dict[str, Converter]:
    """Per (product, entity): canonical field -> how its native value becomes canonical (others pass as-is)."""
    cached = _CONVERTERS.get((d.product, entity))
    if cached is not None:
        return cached

    def disciplines(value: Any, name: str) -> Any:
        if not isinstance(value, list):
            return value
        return [d.discipline(v) if isinstance(v, str) else v for v in value]

    table: dict[str, Converter] = {
        **{f: functools.partial(_ts, d) for f in TIMESTAMP_FIELDS},
        **{f: functools.partial(_date, d) for f in DATE_FIELDS},
        **{f: _id for f in ID_FIELDS},
        "discipline": lambda value, name: d.discipline(value) if isinstance(value, str) else value,
        "disciplines": disciplines,
        **{f: functools.partial(_nested_list, d) for f in ("goals", "interventions", "outcomes")},
    }
    if entity == "patients":
        table["gender"] = functools.partial(_lookup, d.gender)
        table["status"] = functools.partial(_lookup, d.patient_status)
    elif entity == "appointments":
        table["status"] = functools.partial(_lookup, d.appointment_status)
    _CONVERTERS[(d.product, entity)] = table
    return table


def to_canonical(product: str, entity: str, native: Any) -> dict[str, Any]:
    """One native record -> one validated canonical record (JSON-ready dict)."""
    if not isinstance(native, dict):
        raise NormalizationError(entity, "$", "record is not a JSON object")
    d = dialect(product)
    try:
        flags = Flags()
        fields = native_to_fields(d, entity, native, flags)
    except _Bad as bad:
        label = ".".join(_camel(p) for p in bad.field.split(".")) if d.camel_case else bad.field
        raise NormalizationError(entity, label, bad.reason, record_id=_safe_id(native)) from None
    return validated(entity, fields, _safe_id(native), flags)


def _safe_id(native: dict[str, Any]) -> str | None:
    """A record id is not PHI and helps support find the record; nothing else of the record is quoted."""
    for key in ("id", "visitId", "clinicianId"):
        value = native.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)[:64]
    return None


# -- canonical -> native (writes) -----------------------------------------------------------------------
def to_native(product: str, entity: str, record: dict[str, Any]) -> dict[str, Any]:
    """A canonical record (fields present only) -> the product's native write body."""
    d = dialect(product)
    renames = d.reverse_renames(entity)
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key == "updated_at":
            continue
        if key in TIMESTAMP_FIELDS and value is not None:
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
            if d.timestamps == "epoch":
                value = int(dt.timestamp())
            elif d.timestamps == "iso_local":
                assert d.local_tz is not None
                value = dt.astimezone(d.local_tz).isoformat()
            else:
                value = dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        elif key in DATE_FIELDS and value is not None and d.dates == "mdy":
            y, m, dd = str(value).split("-")
            value = f"{m}/{dd}/{y}"
        elif key in ID_FIELDS and value is not None and d.integer_ids:
            value = int(value)
        elif key == "discipline" and value is not None:
            value = d.discipline_out(value)
        elif key == "gender" and entity == "patients":
            value = d.reverse_codes["gender"][value]
        elif key == "status" and entity == "patients":
            value = d.reverse_codes["patient_status"][value]
        elif key == "status" and entity == "appointments":
            value = d.reverse_codes["appointment_status"][value]
        elif key in ("address", "location"):
            out.update(_address_out(d, value, key))
            continue
        elif entity == "patients" and key in ("first_name", "last_name") and d.name_style != "flat_long":
            part = "first" if key == "first_name" else "last"
            target = out.setdefault("name", {}) if d.name_style == "nested" else out
            target[part] = value
            continue
        out[renames.get(key, key)] = value
    return _restyle(out, _camel) if d.camel_case else out


def _address_out(d: Dialect, addr: dict[str, Any] | None, key: str) -> dict[str, Any]:
    if d.address_style == "nested":
        if addr is None:
            return {key: None}
        return {key: {"street": addr["line1"], "street2": addr.get("line2"), "city": addr["city"],
                      "state": addr["state"], "zip": addr["postal_code"]}}
    if d.address_style == "flat":
        if addr is None:
            return {}
        prefix = "" if key == "address" else f"{key}_"
        return {f"{prefix}address_line1": addr["line1"], f"{prefix}address_line2": addr.get("line2"),
                f"{prefix}city": addr["city"], f"{prefix}state": addr["state"],
                f"{prefix}postal_code": addr["postal_code"]}
    if addr is None:
        return {"addresses": []}
    kind = "home" if key == "address" else "service"
    return {"addresses": [{"type": kind, "line1": addr["line1"], "line2": addr.get("line2"), "city": addr["city"],
                           "state": addr["state"], "zip": addr["postal_code"]}]}
