"""Native record shapes per WellSky product: logical record <-> the JSON a tenant's API really speaks.

Home health and hospice have no public REST specification, so their dialects are modeled (each product line
grew separately, so the same patient looks different on each). Personal care speaks the documented Home
Connect API instead (``wellsky_sandbox.homeconnect``). The table in ``docs/architecture.md`` and the examples in
``docs/sandbox-api.md`` describe the rules implemented here; the connector's normalizers are written
against those documents, never against this module.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

AGENCY_TZ = ZoneInfo("America/Chicago")
"""The agency's time zone (authorization date ranges are agency-local days)."""
MODELED_PRODUCTS = ("home_health", "hospice")
"""Products whose REST dialect is modeled here."""

TIMESTAMP_FIELDS = frozenset({"updated_at", "start", "end"})
DATE_FIELDS = frozenset(
    {
        "birth_date",
        "start_date",
        "end_date",
        "period_start",
        "period_end",
        "target_date",
        "recorded_on",
        "received_date",
        "accepted_date",
    }
)
ID_FIELDS = frozenset({"id", "patient_id", "practitioner_id", "appointment_id"})

DISCIPLINE_WORDS = {
    "SN": "Skilled Nursing",
    "PT": "Physical Therapy",
    "OT": "Occupational Therapy",
    "ST": "Speech Therapy",
    "MSW": "Social Work",
    "HHA": "Home Health Aide",
}

# logical field -> native field (snake case, before the product's key style is applied)
RENAMES: dict[str, dict[str, dict[str, str]]] = {
    "home_health": {
        "*": {"updated_at": "last_modified", "practitioner_id": "clinician_id"},
        "appointments": {"start": "scheduled_start", "end": "scheduled_end", "id": "visit_id"},
        "practitioners": {"id": "clinician_id"},
    },
    "hospice": {
        "*": {"updated_at": "modified_at", "practitioner_id": "staff_id"},
        "patients": {"mrn": "medical_record_number"},
        "appointments": {"start": "start_time", "end": "end_time"},
    },
}

GENDER = {
    "home_health": {"male": "M", "female": "F", "other": "O", "unknown": "U"},
    "hospice": {"male": "male", "female": "female", "other": "other", "unknown": "unknown"},
}
PATIENT_STATUS = {
    "home_health": {"pending": "Pending", "active": "Admitted", "discharged": "Discharged", "inactive": "Non-Admit"},
    "hospice": {"pending": "pending", "active": "active", "discharged": "discharged", "inactive": "inactive"},
}
APPOINTMENT_STATUS = {
    "home_health": {"scheduled": "Scheduled", "completed": "Completed", "cancelled": "Cancelled", "missed": "Missed"},
    "hospice": {"scheduled": "scheduled", "completed": "completed", "cancelled": "cancelled", "missed": "missed"},
}


class NativeError(ValueError):
    """A native body the sandbox cannot accept; ``field`` names the offending key (native spelling)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


_CAMEL_RE = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(name: str) -> str:
    return _CAMEL_RE.sub("_", name).lower()


def _restyle(value: Any, style: Any) -> Any:
    if isinstance(value, dict):
        return {style(k): _restyle(v, style) for k, v in value.items()}
    if isinstance(value, list):
        return [_restyle(v, style) for v in value]
    return value


class Renderer:
    """Converts logical records to one product's native shape and back (for writes)."""

    def __init__(self, product: str) -> None:
        if product not in MODELED_PRODUCTS:
            raise ValueError(f"{product} has no modeled REST dialect (personal_care speaks Home Connect)")
        self.product = product
        self.camel = product == "home_health"

    # -- scalars --------------------------------------------------------------------------------------
    def ts_out(self, value: str | None) -> Any:
        if value is None:
            return None
        if self.product == "home_health":
            return value
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())

    def ts_in(self, value: Any, field: str) -> str:
        try:
            if self.product == "hospice":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TypeError
                dt = datetime.fromtimestamp(int(value), UTC)
            else:
                if not isinstance(value, str):
                    raise TypeError
                dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
                if dt.tzinfo is None:
                    raise NativeError(field, "timestamp needs a UTC offset, e.g. 2026-03-01T14:00:00Z")
        except (TypeError, ValueError) as exc:
            if isinstance(exc, NativeError):
                raise
            want = "epoch seconds (integer)" if self.product == "hospice" else "an ISO 8601 timestamp with offset"
            raise NativeError(field, f"expected {want}") from None
        return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def date_out(self, value: str | None) -> Any:
        return value

    def date_in(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise NativeError(field, "expected a date string")
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            raise NativeError(field, "expected a date as YYYY-MM-DD") from None

    def id_out(self, value: str | None) -> Any:
        return value

    def id_in(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            raise NativeError(field, "expected a non-empty string id")
        return value

    def discipline_out(self, code: str) -> str:
        if self.product == "hospice":
            return code.lower()
        return code

    def discipline_in(self, value: Any, field: str) -> str:
        lookup = {self.discipline_out(c): c for c in DISCIPLINE_WORDS}
        if value not in lookup:
            raise NativeError(field, f"unknown discipline {value!r}; expected one of {sorted(lookup)}")
        return lookup[value]

    # -- addresses ------------------------------------------------------------------------------------
    def address_out(self, addr: dict[str, Any] | None, nested_key: str) -> dict[str, Any]:
        if addr is None:
            return {nested_key: None}
        if self.product == "home_health":
            return {
                nested_key: {
                    "street": addr["line1"],
                    "street2": addr.get("line2"),
                    "city": addr["city"],
                    "state": addr["state"],
                    "zip": addr["postal_code"],
                }
            }
        prefix = "" if nested_key == "address" else f"{nested_key}_"
        return {
            f"{prefix}address_line1": addr["line1"],
            f"{prefix}address_line2": addr.get("line2"),
            f"{prefix}city": addr["city"],
            f"{prefix}state": addr["state"],
            f"{prefix}postal_code": addr["postal_code"],
        }

    def address_in(self, native: dict[str, Any], nested_key: str) -> dict[str, Any] | None:
        """Pop the native address keys from ``native`` and return the logical address (or None)."""
        if self.product == "home_health":
            raw = native.pop(nested_key, None)
            if raw is None:
                return None
            if not isinstance(raw, dict):
                raise NativeError(nested_key, "expected an object with street, city, state, zip")
            mapping = {"street": "line1", "street2": "line2", "city": "city", "state": "state", "zip": "postal_code"}
        else:
            prefix = "" if nested_key == "address" else f"{nested_key}_"
            keys = ("address_line1", "address_line2", "city", "state", "postal_code")
            raw = {k: native.pop(prefix + k) for k in keys if prefix + k in native}
            if not raw:
                return None
            mapping = {
                "address_line1": "line1",
                "address_line2": "line2",
                "city": "city",
                "state": "state",
                "postal_code": "postal_code",
            }
        out: dict[str, Any] = {"line2": None}
        for k, v in raw.items():
            if k not in mapping:
                raise NativeError(f"{nested_key}.{k}", f"unknown address field; expected {sorted(mapping)}")
            out[mapping[k]] = v
        for required in ("line1", "city", "state", "postal_code"):
            if not isinstance(out.get(required), str) or not out[required]:
                raise NativeError(nested_key, f"address needs {required}")
        return out

    # -- records --------------------------------------------------------------------------------------
    def _renames(self, entity: str) -> dict[str, str]:
        table = RENAMES[self.product]
        return {**table["*"], **table.get(entity, {})}

    def render(self, entity: str, rec: dict[str, Any]) -> dict[str, Any]:
        """Logical record -> native JSON object of this product."""
        renames = self._renames(entity)
        out: dict[str, Any] = {}
        for key, value in rec.items():
            if key in TIMESTAMP_FIELDS:
                value = self.ts_out(value)
            elif key in DATE_FIELDS:
                value = self.date_out(value)
            elif key in ID_FIELDS:
                value = self.id_out(value)
            elif key == "discipline":
                value = self.discipline_out(value)
            elif key == "disciplines":
                value = [self.discipline_out(v) for v in value]
            elif entity == "patients" and key == "gender":
                value = GENDER[self.product][value]
            elif entity == "patients" and key == "status":
                value = PATIENT_STATUS[self.product][value]
            elif entity == "appointments" and key == "status":
                value = APPOINTMENT_STATUS[self.product][value]
            elif key in ("address", "location"):
                out.update(self.address_out(value, key))
                continue
            elif key in ("goals", "outcomes", "interventions"):
                value = [self._render_nested(v) for v in value]
            elif entity == "patients" and key in ("first_name", "last_name") and self.product == "home_health":
                out.setdefault("name", {})["first" if key == "first_name" else "last"] = value
                continue
            out[renames.get(key, key)] = value
        return _restyle(out, _camel) if self.camel else out

    def _render_nested(self, item: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in item.items():
            if k in DATE_FIELDS:
                v = self.date_out(v)
            elif k == "discipline":
                v = self.discipline_out(v)
            out[k] = v
        return out

    def parse(self, entity: str, native: Any) -> dict[str, Any]:
        """Native write body -> logical fields present in it (validated types, canonical values)."""
        if not isinstance(native, dict):
            raise NativeError("$", "request body must be a JSON object")
        body = _restyle(native, _snake) if self.camel else dict(native)
        reverse = {v: k for k, v in self._renames(entity).items()}
        out: dict[str, Any] = {}
        nested = "location" if entity == "appointments" else "address"
        addr_keys_present = any(k.startswith(("address", "location")) for k in body)
        if addr_keys_present:
            out[nested] = self.address_in(body, nested)
        if entity == "patients" and self.product == "home_health":
            name = body.pop("name", None)
            if name is not None and not isinstance(name, dict):
                raise NativeError("name", "expected an object {first, last}")
            name = name or {}
            for k, v in name.items():
                if k not in ("first", "last"):
                    raise NativeError(f"name.{k}", "unknown name part; expected first and last")
                out["first_name" if k == "first" else "last_name"] = v
        for nkey, value in body.items():
            key = reverse.get(nkey, nkey)
            label = _camel(nkey) if self.camel else nkey
            if value is None:
                out[key] = None
            elif key in TIMESTAMP_FIELDS:
                out[key] = self.ts_in(value, label)
            elif key in DATE_FIELDS:
                out[key] = self.date_in(value, label)
            elif key in ID_FIELDS:
                out[key] = self.id_in(value, label)
            elif key == "discipline":
                out[key] = self.discipline_in(value, label)
            elif entity == "patients" and key == "gender":
                out[key] = _reverse_lookup(GENDER[self.product], value, label)
            elif entity == "patients" and key == "status":
                out[key] = _reverse_lookup(PATIENT_STATUS[self.product], value, label)
            elif entity == "appointments" and key == "status":
                out[key] = _reverse_lookup(APPOINTMENT_STATUS[self.product], value, label)
            else:
                out[key] = value
        return out

    def native_field(self, entity: str, logical: str) -> str:
        """How this product spells a logical field in error messages and filters."""
        if entity == "patients" and logical in ("first_name", "last_name") and self.product == "home_health":
            return f"name.{'first' if logical == 'first_name' else 'last'}"
        name = self._renames(entity).get(logical, logical)
        return _camel(name) if self.camel else name


def _reverse_lookup(table: dict[str, str], value: Any, field: str) -> str:
    for logical, native in table.items():
        if native == value:
            return logical
    raise NativeError(field, f"unknown value {value!r}; expected one of {sorted(table.values())}")
