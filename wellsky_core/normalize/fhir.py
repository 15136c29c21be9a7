"""FHIR R4 resources (JSON dicts) -> canonical records, as WellSky's FHIR face and certified US Core servers send them.

Two kinds of input meet here. WellSky's own FHIR face carries every canonical field: standard elements where
FHIR has a home for them and WellSky extensions where it has none (patient status and face-sheet coverage,
appointment payer and location, encounter note summary and finalized flag, authorization status and unit
rules...). Certified US Core servers and payers' Da Vinci PAS responses carry only standard elements, often by
reference (``Practitioner?identifier=…``, ``#contained``, an ``identifier``-only reference). Both are read
leniently: a record is refused only when its ``id`` or ``meta.lastUpdated`` is unusable; any other field
that cannot be mapped is null and named in the record's ``data_quality`` flags.

Nothing here names a tenant's namespace. WellSky extensions and code systems are recognised by their name on
any host (``…/StructureDefinition/encounter-finalized``, ``…/CodeSystem/discipline``); identifiers by the
tenant's configured systems (:class:`FhirRules`, setting ``fhir_identifier_systems``), the standard systems
(NPI, MBI), the v2-0203 identifier type (``MR`` = MRN, ``MA`` = Medicaid, ``MB`` = member number) and
WellSky's ``…/sid/<name>`` convention, in that order.

Child data of one canonical record arrives as separate resources (an encounter's Conditions, Procedures and
Observations, a care plan's Goals, a practitioner's PractitionerRoles); :class:`Resolver` finds them among
the page's resources, the parent's ``contained`` list, or by identifier. References across streams (an
Encounter's ``Practitioner?identifier=…|<npi>``, a PractitionerRole's NPI-only practitioner) resolve through
an :class:`IdentifierIndex` that outlives the page: server ids of the Practitioners and Organizations the sync
has read, by each of their identifiers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import unquote

import orjson

from wellsky_core.errors import NormalizationError, NotThisEntity
from wellsky_core.normalize.status import patient_status
from wellsky_core.normalize.validation import validated
from wellsky_core.quality import FlagKind, Flags

SID_MBI = "http://hl7.org/fhir/sid/us-mbi"
SID_NPI = "http://hl7.org/fhir/sid/us-npi"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
HCPCS = "urn:oid:2.16.840.1.113883.6.285"
HCPCS_SYSTEMS = frozenset(
    {HCPCS, "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"}
)
CPT = "http://www.ama-assn.org/go/cpt"
CPT_SYSTEMS = frozenset({CPT, "urn:oid:2.16.840.1.113883.6.12"})
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
CDC_RACE = "urn:oid:2.16.840.1.113883.6.238"
DISCIPLINES = frozenset({"SN", "PT", "OT", "ST", "MSW", "HHA"})

APPOINTMENT_STATUS = {
    "proposed": "scheduled",
    "pending": "scheduled",
    "booked": "scheduled",
    "arrived": "scheduled",
    "checked-in": "scheduled",
    "waitlist": "scheduled",
    "fulfilled": "completed",
    "cancelled": "cancelled",
    "entered-in-error": "cancelled",
    "noshow": "missed",
}
ENCOUNTER_STATUS = {
    "planned": "in_progress",
    "arrived": "in_progress",
    "triaged": "in_progress",
    "in-progress": "in_progress",
    "onleave": "in_progress",
    "finished": "completed",
    "cancelled": "cancelled",
    "entered-in-error": "cancelled",
}
CARE_PLAN_STATUS = {"draft": "draft", "active": "active", "on-hold": "active", "completed": "completed",
                    "revoked": "revoked", "entered-in-error": "revoked"}
ACTIVITY_STATUS = {
    "not-started": "not_started",
    "scheduled": "scheduled",
    "in-progress": "in_progress",
    "on-hold": "on_hold",
    "completed": "completed",
    "cancelled": "cancelled",
    "stopped": "stopped",
    "unknown": "unknown",
    "entered-in-error": "entered_in_error",
}
COVERAGE_STATUS = {"active": "active", "cancelled": "cancelled", "entered-in-error": "cancelled"}
REFERRAL_STATUS = {"draft": "received", "on-hold": "pending", "active": "accepted", "revoked": "declined",
                   "completed": "accepted"}
REFERRAL_PRIORITY = {"routine": "routine", "urgent": "urgent", "asap": "stat", "stat": "stat"}
GOAL_ACHIEVEMENT = {
    "in-progress": "in_progress",
    "improving": "in_progress",
    "worsening": "in_progress",
    "no-change": "in_progress",
    "sustaining": "in_progress",
    "achieved": "achieved",
    "not-achieved": "not_achieved",
    "no-progress": "not_achieved",
    "not-attainable": "not_achieved",
}
GOAL_LIFECYCLE = {
    "proposed": "proposed",
    "planned": "proposed",
    "accepted": "proposed",
    "active": "in_progress",
    "on-hold": "in_progress",
    "completed": "achieved",
    "cancelled": "not_achieved",
    "rejected": "not_achieved",
}
REVIEW_ACTION = {"A1": "active", "A2": "active", "A6": "active", "A3": "denied", "A4": "pending", "CT": "pending",
                 "D": "pending", "C": "denied"}
"""X12 306 review action codes (Da Vinci PAS reviewAction.code) -> authorization status."""
UNIT_CODES = {"visit": "visit", "visits": "visit", "vis": "visit", "h": "hour", "hr": "hour", "hour": "hour",
              "hours": "hour", "15min": "15min", "15 min": "15min", "unit": None}
VITAL_CODES = {
    "8310-5": "temperature_f",
    "8867-4": "pulse_bpm",
    "9279-1": "respiratory_rate",
    "8480-6": "bp_systolic",
    "8462-4": "bp_diastolic",
    "59408-5": "spo2_pct",
    "2708-6": "spo2_pct",
    "29463-7": "weight_lb",
}
INTEGER_VITALS = frozenset({"pulse_bpm", "respiratory_rate", "bp_systolic", "bp_diastolic", "spo2_pct"})
BP_PANEL = "85354-9"

ENTITY_TYPES: dict[str, str] = {
    "patients": "Patient",
    "practitioners": "Practitioner",
    "appointments": "Appointment",
    "encounters": "Encounter",
    "care_plans": "CarePlan",
    "authorizations": "ClaimResponse",
    "referrals": "ServiceRequest",
    "coverage": "Coverage",
}
"""The FHIR resource type that carries each canonical entity."""

IDENTIFIER_KINDS: dict[str, tuple[frozenset[str], tuple[str, ...], str | None]] = {
    # canonical identifier -> (v2-0203 type codes, standard systems, WellSky sid name)
    "mrn": (frozenset({"MR"}), (), "mrn"),
    "medicare_mbi": (frozenset({"MC"}), (SID_MBI,), None),
    "medicaid_id": (frozenset({"MA"}), (), "medicaid"),
    "member_id": (frozenset({"MB", "SN"}), (), "member-id"),
    "payer_id": (frozenset({"NIIP", "PAYERID"}), (), "payer-id"),
    "external_id": (frozenset(), (), "external-id"),
    "npi": (frozenset({"NPI"}), (SID_NPI,), None),
}




@dataclass(frozen=True)
class FhirRules:
    """Per-tenant reading rules: identifier systems (``fhir_identifier_systems``: canonical identifier -> system
    URLs) and the server's own base URL (``base``), under which an absolute reference is a local one."""

    systems: Mapping[str, Sequence[str]] = field(default_factory=dict)
    base: str | None = None


DEFAULT_RULES = FhirRules()


# -- small shape-tolerant helpers -------------------------------------------------------------------------
JSON_OBJECT = (dict, Mapping)
"""What a JSON object is checked against: decoded JSON is plain dicts, which ``dict`` matches at C speed. Checked
against ``Mapping`` alone, every dict went through the ABC's ``__instancecheck__`` (1.2 million calls in a FHIR
sync of scale M, docs/benchmarks.md run 11)."""


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, JSON_OBJECT) else {}


def _list(value: Any) -> list[Any]:
    return value if type(value) is list or isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _codings(concept: Any) -> list[Mapping[str, Any]]:
    return [c for c in _list(_map(concept).get("coding")) if isinstance(c, JSON_OBJECT) and _str(c.get("code"))]


def _codes(concept: Any, system: str | frozenset[str] | None = None) -> list[str]:
    systems = {system} if isinstance(system, str) else system
    return [c["code"] for c in _codings(concept) if systems is None or c.get("system") in systems]


def _first_code(concept: Any, system: str | frozenset[str] | None = None) -> str | None:
    codes = _codes(concept, system)
    return codes[0] if codes else None


def _named(url: Any, kind: str, name: str) -> bool:
    """``url`` is WellSky's ``…/<kind>/<name>`` on any host (or the bare name)."""
    return isinstance(url, str) and (url == name or url.endswith(f"/{kind}/{name}"))


def _wellsky_codes(concept: Any, name: str) -> list[str]:
    return [c["code"] for c in _codings(concept) if _named(c.get("system"), "CodeSystem", name)]


def _coding_out(concept: Any) -> dict[str, Any] | None:
    codings = _codings(concept)
    if codings:
        c = codings[0]
        return {"system": _str(c.get("system")), "code": c["code"], "display": _str(c.get("display"))}
    text = _str(_map(concept).get("text"))
    return {"system": None, "code": None, "display": text} if text else None


def _text(concept: Any) -> str | None:
    concept = _map(concept)
    displays = [_str(c.get("display")) for c in _codings(concept) if c.get("display")]
    return _str(concept.get("text")) or (displays[0] if displays else None)


def _discipline(concepts: Iterable[Any]) -> str | None:
    """WellSky's discipline code (any host's ``…/CodeSystem/discipline``)."""
    for concept in concepts:
        for code in _wellsky_codes(concept, "discipline"):
            if code.upper() in DISCIPLINES:
                return code.upper()
    return None


def _service_code(concepts: Iterable[Any]) -> str | None:
    concepts = list(concepts)
    for systems in (HCPCS_SYSTEMS, CPT_SYSTEMS):
        for concept in concepts:
            found = _first_code(concept, systems)
            if found:
                return found
    return None


def _address(addr: Any) -> dict[str, Any] | None:
    addr = _map(addr)
    if not addr:
        return None
    lines = [x for x in _list(addr.get("line")) if isinstance(x, str) and x]
    if isinstance(addr.get("line"), str):
        lines = [addr["line"]]
    return {
        "line1": lines[0] if lines else None,
        "line2": lines[1] if len(lines) > 1 else None,
        "city": addr.get("city"),
        "state": addr.get("state"),
        "postal_code": addr.get("postalCode"),
    }


def _period(value: Any) -> tuple[Any, Any]:
    value = _map(value)
    return value.get("start"), value.get("end")


def _day(value: Any) -> Any:
    """A FHIR dateTime reduced to its calendar date (``2026-01-31T10:00:00Z`` -> ``2026-01-31``)."""
    return value[:10] if isinstance(value, str) and len(value) >= 10 else value


def _sub(extension: Mapping[str, Any], url: str, value_key: str | None = None) -> Any:
    for item in _list(extension.get("extension")):
        if isinstance(item, JSON_OBJECT) and (item.get("url") == url or str(item.get("url", "")).endswith("/" + url)):
            if value_key is not None:
                return item.get(value_key)
            return next((v for k, v in item.items() if k.startswith("value")), None)
    return None


# -- references --------------------------------------------------------------------------------------------
INDEXED_TYPES = frozenset({"Practitioner", "Organization"})
"""Resource types other streams refer to by identifier (NPI, payer ids): the ones :class:`IdentifierIndex` keeps."""


AMBIGUOUS = ""
"""Index value of an identifier without system that two resources share: never resolved."""


class IdentifierIndex:
    """``(type, identifier system, value)`` -> server id of every Practitioner and Organization a sync has read.

    Lives as long as the channel (one sync), so a reference by identifier in one stream resolves to a resource
    read in another. Compact by design: ids only, never resources, and only the few types other records point
    at by identifier (practitioners and payers number in the thousands even for a 100,000-patient tenant);
    past ``limit`` entries new ones are not kept and such references stay unresolved, null + flagged."""

    def __init__(self, limit: int = 2_000_000) -> None:
        self.limit = limit
        self._ids: dict[tuple[str, str, str], str] = {}
        self._absent: set[tuple[str, str, str]] = set()
        self.full = False

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, res: Mapping[str, Any]) -> None:
        kind, rid = res.get("resourceType"), res.get("id")
        if kind not in INDEXED_TYPES or not isinstance(rid, str) or not rid:
            return
        for ident in _list(res.get("identifier")):
            ident = _map(ident)
            value = _str(ident.get("value"))
            if value is None:
                continue
            key = (str(kind), str(ident.get("system") or ""), value)
            if key not in self._ids and len(self._ids) >= self.limit:
                self.full = True
                return
            self._ids[key] = rid
            self._absent.discard(key)
            anysystem = (str(kind), "", value)  # a reference without system matches any, unless two ids share it
            if key != anysystem:
                self._ids[anysystem] = rid if self._ids.get(anysystem, rid) == rid else AMBIGUOUS
                self._absent.discard(anysystem)

    def get(self, kind: str, system: str, value: str) -> str | None:
        rid = self._ids.get((kind, system, value))
        return None if rid == AMBIGUOUS else rid

    def known_absent(self, key: tuple[str, str, str]) -> bool:
        """The server was asked for this identifier and has no such resource (asked once per sync)."""
        return key in self._absent

    def mark_absent(self, key: tuple[str, str, str]) -> None:
        if key not in self._ids and len(self._absent) < self.limit:
            self._absent.add(key)


def literal_reference(ref: str, base: str | None = None) -> tuple[str, str] | str:
    """``(type, id)`` of a literal reference, or why it has none.

    Relative (``Practitioner/1``, ``.../_history/2`` dropped) or absolute under ``base``, the server's own base
    URL. An absolute URL on another server names a resource *there*: its id is not one of ours, so it is a
    reason, never a guess. With no ``base`` known (a fixture read without a tenant), an absolute URL is read by
    its last segments, as a server referring to itself does."""
    if "://" in ref and base is not None:
        own = base.rstrip("/") + "/"
        if not ref.startswith(own):
            return "absolute reference to another server"
        ref = ref[len(own) :]
    parts = ref.rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] and parts[-1]:
        return parts[-2], parts[-1]
    return "not a literal reference"


def conditional_identifiers(ref: str) -> tuple[str, list[tuple[str, str]]]:
    """``Practitioner?identifier=system|value`` -> ``("Practitioner", [(system, value)])``. A conditional reference
    is a search URL, so its query may be percent-encoded (``%7C`` for ``|``, ``%3A``/``%2F`` in the system)."""
    kind, _, query = ref.partition("?")
    tokens = []
    for part in query.split("&"):
        name, _, val = part.partition("=")
        if unquote(name) == "identifier" and val:
            system, _, code = unquote(val).rpartition("|")
            tokens.append((system, code))
    return kind.rsplit("/", 1)[-1], tokens


def identifier_references(res: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(type, system, value)`` of the references by identifier to indexed types anywhere in ``res``: conditional
    (``Practitioner?identifier=system|value``), typed identifier-only, and a PractitionerRole's practitioner.

    Runs on every resource of every page. Most resources have no such reference, which their serialization
    shows at C speed: both kinds need a ``?`` (conditional) or an ``"identifier":{`` (an identifier object; a
    resource's own identifiers are a list). Only a resource with either is walked."""
    try:
        text = orjson.dumps(res)
    except TypeError:  # not plain JSON data (a Mapping that is no dict, a non-str key, a huge int): walk it
        return identifier_references_walk(res)
    if b"?" not in text and b'"identifier":{' not in text:
        return []
    return identifier_references_walk(res)


def identifier_references_walk(res: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """:func:`identifier_references` by walking every node (scalars skipped by exact type before any ABC check)."""
    found: list[tuple[str, str, str]] = []
    _visit(res, None, found)
    return list(dict.fromkeys(found))


def _visit(node: Any, key: str | None, found: list[tuple[str, str, str]]) -> None:
    """One node of :func:`identifier_references_walk` (a module function: a recursive closure is a reference
    cycle per call, left for the cyclic GC)."""
    if type(node) is not dict:
        if isinstance(node, list):
            for item in node:
                if type(item) not in _SCALARS:
                    _visit(item, key, found)
            return
        if not isinstance(node, JSON_OBJECT):
            return
    ref = node.get("reference")
    if isinstance(ref, str) and "?" in ref:
        kind, tokens = conditional_identifiers(ref)
        if kind in INDEXED_TYPES:
            found.extend((kind, system, code) for system, code in tokens)
    elif ref is None and isinstance(node.get("identifier"), JSON_OBJECT):
        kind = node.get("type") or ("Practitioner" if key == "practitioner" else None)
        ident = node["identifier"]
        if isinstance(kind, str) and kind in INDEXED_TYPES and _str(ident.get("value")):
            found.append((str(kind), str(ident.get("system") or ""), ident["value"]))
    for child_key, child in node.items():
        if type(child) in _SCALARS or child_key in ("identifier", "contained"):
            continue
        if isinstance(child, (dict, list, Mapping)):
            _visit(child, child_key, found)


_SCALARS = (str, int, float, bool, type(None))
"""JSON scalar types (exact): no reference can be inside one."""


class Resolver:
    """Finds the resources a record refers to: in the parent's ``contained``, in the page, by identifier among
    the page's resources, then (ids only) in the sync's :class:`IdentifierIndex`."""

    def __init__(
        self,
        resources: Iterable[Mapping[str, Any]] = (),
        rules: FhirRules = DEFAULT_RULES,
        index: IdentifierIndex | None = None,
    ) -> None:
        self.rules = rules
        self.index = index
        self.by_ref: dict[str, Mapping[str, Any]] = {}
        self.by_identifier: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        for res in resources:
            self.add(res)

    def _by_identifier(
        self, kind: str, system: str, value: str
    ) -> tuple[str | None, str | None, Mapping[str, Any] | None, str | None] | None:
        res = self.by_identifier.get((kind, system, value))
        if res is not None:
            return kind, str(res.get("id")), res, None
        rid = self.index.get(kind, system, value) if self.index is not None else None
        if rid is not None:
            return kind, rid, self.by_ref.get(f"{kind}/{rid}"), None
        return None

    def add(self, res: Mapping[str, Any]) -> None:
        kind, rid = res.get("resourceType"), res.get("id")
        if isinstance(kind, str) and isinstance(rid, str):
            self.by_ref[f"{kind}/{rid}"] = res
            for ident in _list(res.get("identifier")):
                ident = _map(ident)
                if _str(ident.get("value")):
                    self.by_identifier[(kind, str(ident.get("system") or ""), ident["value"])] = res

    def find(
        self, value: Any, kinds: Sequence[str], parent: Mapping[str, Any] | None = None
    ) -> tuple[str | None, str | None, Mapping[str, Any] | None, str | None]:
        """``(type, id, resource, problem)`` for a Reference; ``problem`` says why it could not be resolved."""
        value = _map(value)
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("#"):
            for res in _list(_map(parent).get("contained")):
                res = _map(res)
                if res.get("id") == ref[1:] and res.get("resourceType") in kinds:
                    return res["resourceType"], None, res, None
            return None, None, None, "contained resource not found"
        if isinstance(ref, str) and "?" in ref:  # conditional reference: Practitioner?identifier=system|value
            kind, tokens = conditional_identifiers(ref)
            if kind in kinds:
                for system, code in tokens:
                    hit = self._by_identifier(kind, system, code)
                    if hit is not None:
                        return hit
            return None, None, None, "conditional reference that no resource read in this sync matches"
        if isinstance(ref, str) and ref:
            target = literal_reference(ref, self.rules.base)
            if isinstance(target, tuple) and target[0] in kinds:
                kind, rid = target
                return kind, rid, self.by_ref.get(f"{kind}/{rid}"), None
            if target == "absolute reference to another server":
                return None, None, None, target
            if ref.startswith("urn:uuid:"):
                return None, None, None, "urn:uuid reference outside a Bundle"
            return None, None, None, f"reference is not to a {' or '.join(kinds)}"
        ident = _map(value.get("identifier"))
        if _str(ident.get("value")):
            typed = value.get("type")
            for kind in kinds:
                if isinstance(typed, str) and typed != kind:
                    continue
                hit = self._by_identifier(kind, str(ident.get("system") or ""), ident["value"])
                if hit is not None:
                    return hit
            return None, None, None, "identifier-only reference that no resource read in this sync matches"
        if value.get("display"):
            return None, None, None, "display-only reference"
        return None, None, None, "missing reference"


class _Reader:
    """Field access on one resource that names the canonical field in flags and errors, never the value."""

    def __init__(self, entity: str, resource: Mapping[str, Any], resolver: Resolver | None = None) -> None:
        if not isinstance(resource, JSON_OBJECT):
            raise NormalizationError(entity, "record", "resource is not a JSON object")
        self.entity = entity
        self.res = resource
        rid = resource.get("id")
        self.id = rid if isinstance(rid, str) and rid else None
        self.flags = Flags()
        self.resolver = resolver or Resolver()

    @property
    def rules(self) -> FhirRules:
        return self.resolver.rules

    def fail(self, field: str, reason: str) -> NoReturn:
        raise NormalizationError(self.entity, field, reason, record_id=self.id)

    def flag(self, field: str, kind: FlagKind, reason: str) -> None:
        self.flags.add(field, kind, reason)

    def key(self) -> str:
        if self.id is None:
            self.fail("id", f"missing {self.res.get('resourceType', 'resource')}.id")
        return self.id

    def updated_at(self) -> str:
        meta = _map(self.res.get("meta"))
        value = meta.get("lastUpdated")
        if not isinstance(value, str) or not value:
            self.fail("updated_at", "missing meta.lastUpdated")
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            self.fail("updated_at", "meta.lastUpdated is not a FHIR instant")
        if parsed.tzinfo is None:
            self.fail("updated_at", "meta.lastUpdated has no UTC offset")
        return value

    def exts(self, name: str, source: Mapping[str, Any] | None = None) -> list[Mapping[str, Any]]:
        holder = self.res if source is None else source
        return [
            i
            for i in _list(holder.get("extension"))
            if isinstance(i, JSON_OBJECT) and _named(i.get("url"), "StructureDefinition", name)
        ]

    def ext(self, name: str, value_key: str, field: str) -> Any:
        for item in self.exts(name):
            if value_key not in item:
                self.flag(field, "invalid", f"extension {name} has no {value_key}")
                return None
            return item[value_key]
        return None

    def mapped(self, value: Any, table: Mapping[str, str], field: str, element: str) -> str | None:
        if value is None:
            return None
        if value not in table:
            self.flag(field, "unmapped_code", f"{element} code has no canonical equivalent")
            return None
        return table[value]

    def identifier(self, identifiers: Any, kind: str) -> str | None:
        """The identifier of ``kind``: configured systems, standard systems, v2-0203 type, WellSky sid name."""
        idents = [i for i in _list(identifiers) if isinstance(i, JSON_OBJECT) and _str(i.get("value"))]
        types, standard, sid = IDENTIFIER_KINDS[kind]
        configured = tuple(self.rules.systems.get(kind, ()))
        for systems in (configured, standard):
            for ident in idents:
                if ident.get("system") in systems:
                    return str(ident["value"])
        for ident in idents:
            if set(_codes(ident.get("type"))) & types:
                return str(ident["value"])
        if sid:
            for ident in idents:
                if _named(ident.get("system"), "sid", sid):
                    return str(ident["value"])
        return None

    def ref(
        self, value: Any, kinds: str | Sequence[str], field: str, *, expected: bool = True
    ) -> tuple[str | None, Mapping[str, Any] | None]:
        """``(id, resource if returned)`` of a reference; an unusable one is null + a flag."""
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        if value is None:
            if expected:
                self.flag(field, "missing", f"no {kinds[0]} reference")
            return None, None
        _kind, rid, res, problem = self.resolver.find(value, kinds, self.res)
        if problem is not None:
            self.flag(field, "unresolved_reference", problem)
            return None, None
        return rid, res

    def practitioner(self, value: Any, field: str, *, expected: bool = False) -> str | None:
        """A Practitioner id from a Practitioner or PractitionerRole reference (the role's practitioner)."""
        if value is None:
            if expected:
                self.flag(field, "missing", "no Practitioner reference")
            return None
        kind, rid, res, problem = self.resolver.find(value, ("Practitioner", "PractitionerRole"), self.res)
        if problem is not None:
            self.flag(field, "unresolved_reference", problem)
            return None
        if kind == "PractitionerRole":
            if res is None:
                self.flag(field, "unresolved_reference", "PractitionerRole not returned: its Practitioner is unknown")
                return None
            return self.practitioner(res.get("practitioner"), field, expected=True)
        if rid is None and res is not None:  # contained practitioner: no server id to join on
            self.flag(field, "unresolved_reference", "contained Practitioner has no server id")
        return rid


def _done(r: _Reader, data: dict[str, Any]) -> dict[str, Any]:
    return validated(r.entity, data, r.id, r.flags)


# -- one function per entity ----------------------------------------------------------------------------------
def patient(res: Mapping[str, Any], resolver: Resolver | None = None) -> dict[str, Any]:
    r = _Reader("patients", res, resolver)
    rid, updated = r.key(), r.updated_at()
    names = [n for n in _list(res.get("name")) if isinstance(n, JSON_OBJECT)]
    if res.get("name") is not None and not names:
        r.flag("first_name", "invalid", "Patient.name is not a list of HumanName")
    name = next((n for n in names if n.get("use") == "official"), None) or (names[0] if names else {})
    given = [g for g in _list(name.get("given")) if isinstance(g, str)]
    phone = next(
        (
            t.get("value")
            for t in _list(res.get("telecom"))
            if isinstance(t, JSON_OBJECT) and t.get("system") == "phone"
        ),
        None,
    )
    addresses = [a for a in _list(res.get("address")) if isinstance(a, JSON_OBJECT)]
    home = next((a for a in addresses if a.get("use") == "home"), None)
    stated = r.ext("patient-status", "valueCode", "status")
    implied = ("active" if res["active"] else "inactive") if isinstance(res.get("active"), bool) else None
    coverage = [
        {
            "payer_id": _sub(e, "payer-id", "valueString"),
            "payer_name": _sub(e, "payer-name", "valueString"),
            "member_id": _sub(e, "member-id", "valueString"),
            "order": _sub(e, "order", "valuePositiveInt"),
        }
        for e in r.exts("patient-coverage")
    ]
    deceased, deceased_at = None, None
    if isinstance(res.get("deceasedBoolean"), bool):
        deceased = res["deceasedBoolean"]
    elif isinstance(res.get("deceasedDateTime"), str):
        deceased = True
        moment = res["deceasedDateTime"]
        if len(moment) > 10:
            deceased_at = moment
        else:
            r.flag("deceased_at", "invalid", "deceasedDateTime has no time of day")
    status = patient_status(stated, deceased, implied)
    race = _omb(res, "us-core-race")
    ethnicity = _omb(res, "us-core-ethnicity")
    data = {
        "id": rid,
        "mrn": r.identifier(res.get("identifier"), "mrn"),
        "medicare_mbi": r.identifier(res.get("identifier"), "medicare_mbi"),
        "medicaid_id": r.identifier(res.get("identifier"), "medicaid_id"),
        "first_name": given[0] if given else None,
        "last_name": name.get("family"),
        "birth_date": res.get("birthDate"),
        "gender": res.get("gender"),
        "phone": phone,
        "address": _address(home or (addresses[0] if addresses else None)),
        "status": status,
        "coverage": coverage,
        "deceased": deceased,
        "deceased_at": deceased_at,
        "race": race,
        "ethnicity": ethnicity,
        "updated_at": updated,
    }
    return _done(r, data)


def _omb(res: Mapping[str, Any], name: str) -> list[str]:
    """Codes of the US Core race/ethnicity extension (ombCategory first, then detailed)."""
    out: list[str] = []
    for ext in _list(res.get("extension")):
        if isinstance(ext, JSON_OBJECT) and ext.get("url") == US_CORE + name:
            for part in ("ombCategory", "detailed"):
                for item in _list(ext.get("extension")):
                    if isinstance(item, JSON_OBJECT) and item.get("url") == part:
                        code = _map(item.get("valueCoding")).get("code")
                        if isinstance(code, str) and code not in out:
                            out.append(code)
    return out


def practitioner(
    res: Mapping[str, Any],
    role: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    resolver: Resolver | None = None,
) -> dict[str, Any]:
    """A Practitioner plus its PractitionerRoles (roles as ``code``; disciplines and specialties as ``specialty``)."""
    r = _Reader("practitioners", res, resolver)
    rid, updated = r.key(), r.updated_at()
    roles_in = [role] if isinstance(role, JSON_OBJECT) else list(role or [])
    names = [n for n in _list(res.get("name")) if isinstance(n, JSON_OBJECT)]
    name = next((n for n in names if n.get("use") == "official"), None) or (names[0] if names else {})
    given = [g for g in _list(name.get("given")) if isinstance(g, str)]
    quals = [q for q in _list(res.get("qualification")) if isinstance(q, JSON_OBJECT)]
    qual_code = _map(quals[0].get("code")) if quals else {}
    credentials = _str(qual_code.get("text")) or _first_code(qual_code) or _text(qual_code)
    roles: list[str] = []
    disciplines: list[str] = []
    specialties: list[str] = []
    for pr in roles_in:
        for concept in _list(pr.get("code")):
            found = _wellsky_codes(concept, "practitioner-role") or ([_text(concept)] if _text(concept) else [])
            roles.extend(x for x in found if x not in roles)
        for concept in _list(pr.get("specialty")):
            coded = [c.upper() for c in _wellsky_codes(concept, "discipline") if c.upper() in DISCIPLINES]
            if coded:
                disciplines.extend(c for c in coded if c not in disciplines)
            elif _text(concept) and _text(concept) not in specialties:
                specialties.append(_text(concept))  # type: ignore[arg-type]
    npi = r.identifier(res.get("identifier"), "npi")
    data = {
        "id": rid,
        "npi": npi,
        "first_name": given[0] if given else None,
        "last_name": name.get("family"),
        "credentials": credentials,
        "roles": roles,
        "disciplines": disciplines,
        "specialties": specialties,
        "active": res.get("active", True) if isinstance(res.get("active", True), bool) else True,
        "updated_at": updated,
    }
    return _done(r, data)


def role_practitioner_id(role: Mapping[str, Any], resolver: Resolver) -> str | None:
    """The Practitioner a PractitionerRole belongs to: literal reference or identifier reference (e.g. NPI)."""
    _kind, rid, _res, problem = resolver.find(role.get("practitioner"), ("Practitioner",), role)
    return rid if problem is None else None


def _ref_type(reference: Mapping[str, Any], parent: Mapping[str, Any]) -> str | None:
    """The resource type a Reference points at (literal, contained, conditional or typed identifier)."""
    ref = reference.get("reference")
    if isinstance(ref, str) and ref.startswith("#"):
        contained = next((c for c in _list(parent.get("contained")) if _map(c).get("id") == ref[1:]), {})
        kind = _map(contained).get("resourceType")
        return kind if isinstance(kind, str) else None
    if isinstance(ref, str) and "?" in ref:
        return conditional_identifiers(ref)[0] or None
    if isinstance(ref, str) and "/" in ref:
        target = literal_reference(ref)
        return target[0] if isinstance(target, tuple) else None
    kind = reference.get("type")
    return kind if isinstance(kind, str) else None


def appointment(res: Mapping[str, Any], resolver: Resolver | None = None) -> dict[str, Any]:
    r = _Reader("appointments", res, resolver)
    rid, updated = r.key(), r.updated_at()
    patient_id = practitioner_id = location_name = None
    location: dict[str, Any] | None = None
    saw_patient = False
    for part in _list(res.get("participant")):
        actor = _map(_map(part).get("actor"))
        target = _ref_type(actor, res)
        if target == "Patient" and not saw_patient:
            saw_patient = True
            patient_id, _ = r.ref(actor, "Patient", "patient_id")
        elif target in ("Practitioner", "PractitionerRole") and practitioner_id is None:
            practitioner_id = r.practitioner(actor, "practitioner_id")
        elif target == "Location" and location_name is None:
            _, loc = r.ref(actor, "Location", "location", expected=False)
            location_name = _str(actor.get("display")) or (_str(loc.get("name")) if loc else None)
            if loc and location is None:
                location = _address(loc.get("address"))
    if not saw_patient:
        r.flag("patient_id", "missing", "no participant references a Patient")
    concepts = [*_list(res.get("serviceType")), *_list(res.get("serviceCategory"))]
    if isinstance(res.get("appointmentType"), JSON_OBJECT):
        concepts.append(res["appointmentType"])
    discipline = _discipline(concepts)
    if discipline is None and concepts:
        r.flag("discipline", "unmapped_code", "Appointment.serviceType carries no WellSky discipline code")
    service_code = _service_code(concepts)
    if service_code is None and concepts:
        r.flag("service_code", "unmapped_code", "Appointment.serviceType carries no HCPCS or CPT code")
    wellsky_location = r.ext("appointment-location", "valueAddress", "location")
    data = {
        "id": rid,
        "external_id": r.identifier(res.get("identifier"), "external_id"),
        "patient_id": patient_id,
        "practitioner_id": practitioner_id,
        "payer_id": r.ext("payer-id", "valueString", "payer_id"),
        "start": res.get("start"),
        "end": res.get("end"),
        "status": r.mapped(res.get("status"), APPOINTMENT_STATUS, "status", "Appointment.status"),
        "discipline": discipline,
        "service_code": service_code,
        "location": _address(wellsky_location) if wellsky_location is not None else location,
        "location_name": location_name,
        "updated_at": updated,
    }
    return _done(r, data)


def encounter(
    res: Mapping[str, Any],
    conditions: Mapping[str, Mapping[str, Any]],
    procedures: Iterable[Mapping[str, Any]] = (),
    observations: Iterable[Mapping[str, Any]] = (),
    resolver: Resolver | None = None,
) -> dict[str, Any]:
    """An Encounter with its Conditions (by reference, from ``Encounter.diagnosis``), Procedures and vitals.

    ``conditions`` maps ``"Condition/<id>"`` to the resource; a diagnosis whose Condition was not returned is
    left out and flagged ``diagnoses.<n>`` (the list is then known to be incomplete).
    """
    resolver = resolver or Resolver()
    for cond in conditions.values():
        if f"Condition/{cond.get('id')}" not in resolver.by_ref:
            resolver.add(cond)
    r = _Reader("encounters", res, resolver)
    rid, updated = r.key(), r.updated_at()
    diagnoses = _diagnoses(r, res)
    procs = _procedures(r, procedures)
    vitals: dict[str, Any] = {}
    for obs in observations:
        _vitals(r, obs, vitals)
    recorded = r.ext("encounter-vitals-recorded", "valueBoolean", "vitals")
    participants = [p for p in _list(res.get("participant")) if isinstance(p, JSON_OBJECT)]
    individual = next((p.get("individual") for p in participants if p.get("individual")), None)
    appointments = _list(res.get("appointment"))
    appointment_id = None
    if appointments:
        appointment_id, _ = r.ref(appointments[0], "Appointment", "appointment_id")
    start, end = _period(res.get("period"))
    klass = res.get("class")
    if isinstance(klass, list):  # R5 spelling: a list of CodeableConcepts
        klass = next(iter(_codings(klass[0] if klass else {})), {})
    types = _list(res.get("type"))
    service_type = res.get("serviceType")
    discipline = _discipline([service_type, *types])
    if discipline is None and (service_type or types):
        r.flag("discipline", "unmapped_code", "Encounter.serviceType carries no WellSky discipline code")
    patient_id, _ = r.ref(res.get("subject"), "Patient", "patient_id")
    data = {
        "id": rid,
        "patient_id": patient_id,
        "practitioner_id": r.practitioner(individual, "practitioner_id"),
        "appointment_id": appointment_id,
        "start": start,
        "end": end,
        "discipline": discipline,
        "status": r.mapped(res.get("status"), ENCOUNTER_STATUS, "status", "Encounter.status"),
        "encounter_class": _str(_map(klass).get("code")),
        "encounter_type": _coding_out(types[0]) if types else None,
        "diagnoses": diagnoses,
        "procedures": procs,
        "vitals": vitals if vitals or recorded else None,
        "note_summary": r.ext("encounter-note-summary", "valueString", "note_summary"),
        "finalized": r.ext("encounter-finalized", "valueBoolean", "finalized"),
        "updated_at": updated,
    }
    return _done(r, data)


def _diagnoses(r: _Reader, res: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``Encounter.diagnosis`` -> ICD-10-CM codes by rank; a Condition not returned is left out and flagged."""
    diagnoses: list[dict[str, Any]] = []
    for i, dx in enumerate(_list(res.get("diagnosis"))):
        dx = _map(dx)
        _, cond = r.ref(dx.get("condition"), "Condition", f"diagnoses.{i}")
        if cond is None:
            if f"diagnoses.{i}" not in {f["field"] for f in r.flags}:
                r.flag(f"diagnoses.{i}", "unresolved_reference", "the referenced Condition was not returned")
            continue
        code = _map(cond.get("code"))
        icd = next((c for c in _codings(code) if c.get("system") == ICD10CM), None)
        coding = icd or next(iter(_codings(code)), {})
        if coding and icd is None:
            r.flag(f"diagnoses.{len(diagnoses)}.code", "unmapped_code", "Condition.code has no ICD-10-CM coding")
        rank = dx.get("rank") if isinstance(dx.get("rank"), int) else len(diagnoses) + 1
        diagnoses.append({"code": coding.get("code") if icd else None,
                          "description": coding.get("display") or _str(code.get("text")), "rank": rank})
    return diagnoses


def _procedures(r: _Reader, procedures: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Procedures in WellSky's sequence order; a code that is neither HCPCS nor CPT is kept and flagged."""
    procs: list[dict[str, Any]] = []
    ordered = sorted(
        procedures,
        key=lambda p: _Reader("encounters", p).ext("procedure-sequence", "valuePositiveInt", "procedures") or 0,
    )
    for proc in ordered:
        coding = next(
            (c for c in _codings(proc.get("code")) if c.get("system") in HCPCS_SYSTEMS | CPT_SYSTEMS),
            None,
        )
        if coding is None:
            r.flag(f"procedures.{len(procs)}.system", "unmapped_code", "Procedure.code is neither HCPCS nor CPT")
            first = next(iter(_codings(proc.get("code"))), {})
            procs.append({"code": first.get("code"), "system": None, "description": _text(proc.get("code"))})
            continue
        system = "HCPCS" if coding.get("system") in HCPCS_SYSTEMS else "CPT"
        procs.append({"code": coding.get("code"), "system": system, "description": coding.get("display")})
    return procs


def _vitals(r: _Reader, obs: Mapping[str, Any], vitals: dict[str, Any]) -> None:
    """Vital signs from one Observation, including the components of a blood-pressure panel."""
    parts = [obs, *[c for c in _list(obs.get("component")) if isinstance(c, JSON_OBJECT)]]
    for part in parts:
        name = next((VITAL_CODES[c] for c in _codes(part.get("code"), LOINC) if c in VITAL_CODES), None)
        quantity = _map(part.get("valueQuantity"))
        if name is None or quantity.get("value") is None:
            continue
        value = quantity["value"]
        if not isinstance(value, int | float) or isinstance(value, bool):
            r.flag(f"vitals.{name}", "invalid", "valueQuantity.value is not a number")
            continue
        unit = str(quantity.get("code") or quantity.get("unit") or "")
        if name == "temperature_f" and unit in ("Cel", "C", "°C"):
            value = round(value * 9 / 5 + 32, 1)
        elif name == "weight_lb" and unit in ("kg",):
            value = round(value * 2.20462, 1)
        elif name == "weight_lb" and unit in ("g",):
            value = round(value / 453.59237, 1)
        if name in INTEGER_VITALS:
            if float(value) != int(value):
                r.flag(f"vitals.{name}", "invalid", "expected a whole number")
                continue
            value = int(value)
        vitals[name] = value


def _goal(goal: Mapping[str, Any]) -> dict[str, Any]:
    achievement = _first_code(goal.get("achievementStatus"))
    status = GOAL_ACHIEVEMENT.get(achievement or "") or GOAL_LIFECYCLE.get(str(goal.get("lifecycleStatus", "")))
    targets = [t for t in _list(goal.get("target")) if isinstance(t, JSON_OBJECT) and t.get("dueDate")]
    return {
        "description": _text(goal.get("description")),
        "status": status,
        "target_date": targets[0]["dueDate"] if targets else None,
    }


def care_plan(
    res: Mapping[str, Any], goals: Mapping[str, Mapping[str, Any]], resolver: Resolver | None = None
) -> dict[str, Any]:
    """A CarePlan with its Goals (returned with it, contained, or missing: then flagged ``goals.<n>``)."""
    resolver = resolver or Resolver()
    for goal in goals.values():
        if goal.get("resourceType") == "Goal" and f"Goal/{goal.get('id')}" not in resolver.by_ref:
            resolver.add(goal)
    r = _Reader("care_plans", res, resolver)
    rid, updated = r.key(), r.updated_at()
    goal_records = _care_plan_goals(r, res)
    activities, interventions = _activities(r, res)
    outcomes = [
        {
            "description": _sub(e, "description", "valueString"),
            "achieved": _sub(e, "achieved", "valueBoolean"),
            "recorded_on": _sub(e, "recorded-on", "valueDate"),
        }
        for e in r.exts("careplan-outcome")
    ]
    start, end = _period(res.get("period"))
    patient_id, _ = r.ref(res.get("subject"), "Patient", "patient_id")
    data = {
        "id": rid,
        "patient_id": patient_id,
        "status": r.mapped(res.get("status"), CARE_PLAN_STATUS, "status", "CarePlan.status"),
        "period_start": _day(start),
        "period_end": _day(end),
        "goals": goal_records,
        "interventions": interventions,
        "activities": activities,
        "outcomes": outcomes,
        "updated_at": updated,
    }
    return _done(r, data)


def _care_plan_goals(r: _Reader, res: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``CarePlan.goal`` -> goal records; a Goal not returned is left out and flagged ``goals.<n>``."""
    goal_records = []
    for i, ref in enumerate(_list(res.get("goal"))):
        _, goal = r.ref(ref, "Goal", f"goals.{i}")
        if goal is None:
            if f"goals.{i}" not in {f["field"] for f in r.flags}:
                r.flag(f"goals.{i}", "unresolved_reference", "the referenced Goal was not returned")
            continue
        goal_records.append(_goal(goal))
    return goal_records


def _activities(r: _Reader, res: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every activity as sent, the discipline-coded ones as WellSky interventions)."""
    interventions: list[dict[str, Any]] = []
    activities: list[dict[str, Any]] = []
    for i, activity in enumerate(_list(res.get("activity"))):
        activity = _map(activity)
        detail = _map(activity.get("detail"))
        reference = _map(activity.get("reference")).get("reference")
        status = detail.get("status")
        activities.append(
            {
                "description": _str(detail.get("description")) or _text(detail.get("code"))
                or _str(_map(activity.get("reference")).get("display")),
                "code": _coding_out(detail.get("code")) if detail.get("code") else None,
                "status": r.mapped(status, ACTIVITY_STATUS, f"activities.{i}.status", "CarePlan.activity.detail.status")
                if status is not None
                else None,
                "reference": reference if isinstance(reference, str) else None,
            }
        )
        if not detail:
            continue
        discipline = _discipline([detail.get("code")])
        if discipline is None:
            continue  # not a discipline-coded intervention; kept in activities
        interventions.append(
            {
                "description": _str(detail.get("description")) or _text(detail.get("code")),
                "discipline": discipline,
                "frequency": detail.get("scheduledString"),
            }
        )
    return activities, interventions


def _payer(r: _Reader, value: Any, field_prefix: str = "") -> tuple[str | None, str | None]:
    """Payer id and name from a reference with identifier/display, the resolved Organization's identifiers, else
    the referenced Organization's server id (``Organization/<id>``: the reference's id is known, so it is kept)."""
    value = _map(value)
    ident = _map(value.get("identifier"))
    payer_id = _str(ident.get("value"))
    name = _str(value.get("display"))
    org: Mapping[str, Any] | None = None
    org_id: str | None = None
    if value.get("reference"):
        _kind, org_id, org, problem = r.resolver.find(value, ("Organization",), r.res)
        if problem is not None and not (payer_id or name):
            r.flag(f"{field_prefix}payer_id", "unresolved_reference", problem)
    if org:
        payer_id = payer_id or r.identifier(org.get("identifier"), "payer_id") or next(
            (
                str(i["value"])
                for i in _list(org.get("identifier"))
                if isinstance(i, JSON_OBJECT) and _str(i.get("value"))
            ),
            None,
        )
        name = name or _str(org.get("name"))
    if payer_id is None and org_id is not None:
        payer_id = org_id  # no payer identifier anywhere: the Organization's server id is the payer's key
    if value.get("reference") and not org and not (payer_id and name):
        r.flag(f"{field_prefix}payer_id" if not payer_id else f"{field_prefix}payer_name", "unresolved_reference",
               "payer given by reference only and the Organization was not returned")
    return payer_id, name


def coverage(res: Mapping[str, Any], resolver: Resolver | None = None) -> dict[str, Any]:
    r = _Reader("coverage", res, resolver)
    rid, updated = r.key(), r.updated_at()
    payors = _list(res.get("payor"))
    payer_id, payer_name = _payer(r, payors[0] if payors else None)
    plan = next(
        (c for c in _list(res.get("class")) if isinstance(c, JSON_OBJECT) and "plan" in _codes(c.get("type"))),
        None,
    )
    start, end = _period(res.get("period"))
    member = _str(res.get("subscriberId")) or r.identifier(res.get("identifier"), "member_id")
    patient_id, _ = r.ref(res.get("beneficiary"), "Patient", "patient_id")
    order = res.get("order")
    data = {
        "id": rid,
        "patient_id": patient_id,
        "payer_id": payer_id,
        "payer_name": payer_name,
        "plan_name": (plan.get("name") or plan.get("value")) if plan else None,
        "member_id": member,
        "order": order if isinstance(order, int) else None,
        "period_start": _day(start),
        "period_end": _day(end),
        "status": r.mapped(res.get("status"), COVERAGE_STATUS, "status", "Coverage.status"),
        "updated_at": updated,
    }
    if order is not None and not isinstance(order, int):
        r.flag("order", "invalid", "Coverage.order is not a positive integer")
    return _done(r, data)


def _unit_type(quantity: Any) -> str | None:
    quantity = _map(quantity)
    for key in ("code", "unit"):
        value = quantity.get(key)
        if isinstance(value, str) and value.lower() in UNIT_CODES:
            return UNIT_CODES[value.lower()]
    return None


def authorization(res: Mapping[str, Any], resolver: Resolver | None = None) -> dict[str, Any]:
    """A ``use=preauthorization`` ClaimResponse: WellSky's shape or a Da Vinci PAS response.

    Units come from WellSky's header adjudication categories, else from the items (PAS
    ``itemAuthorizedDetail`` quantity, else ``addItem``/the requesting Claim's item quantity); the number is
    ``preAuthRef`` (else the PAS ``reviewAction.number``); status from WellSky's extension, else the PAS
    review action code (X12 306).
    """
    r = _Reader("authorizations", res, resolver)
    rid, updated = r.key(), r.updated_at()
    if res.get("use") != "preauthorization":
        raise NotThisEntity("authorizations", "use", "ClaimResponse.use is not preauthorization", record_id=rid)
    adjudicated = _adjudicated_items(r, res, _requested_items(r, res))
    added = _added_items(res)
    items = adjudicated.items + added.items
    for i, item in enumerate(items):
        if item["service_code"] is None:
            r.flag(f"items.{i}.service_code", "missing", "no productOrService code for the item")
    units = _unit_totals(r, _wellsky_units(res.get("adjudication")), items)
    insurer_id, insurer_name = _payer(r, res.get("insurer"))
    member = _insurance_member(r, res)
    start, end = _authorized_period(res, items)
    status = _authorization_status(r, adjudicated.review_codes)
    unit_types = adjudicated.unit_types + added.unit_types
    unit_type = r.ext("unit-type", "valueCode", "unit_type")
    if unit_type is None and unit_types and len(set(unit_types)) == 1:
        unit_type = unit_types[0]
    patient_id, _ = r.ref(res.get("patient"), "Patient", "patient_id")
    service_codes = [i["service_code"] for i in items if i["service_code"]]
    data = {
        "id": rid,
        "authorization_number": _authorization_number(res, adjudicated.review_numbers),
        "patient_id": patient_id,
        "payer_id": insurer_id,
        "payer_name": insurer_name,
        "member_id": member,
        "service_codes": list(dict.fromkeys(service_codes)),
        "items": items,
        "unit_type": unit_type,
        "rounding": r.ext("unit-rounding", "valueCode", "rounding") or "nearest",
        "units_authorized": units.get("authorized"),
        "units_used": units.get("used"),
        "start_date": _day(start),
        "end_date": _day(end),
        "status": status,
        "updated_at": updated,
    }
    return _done(r, data)


@dataclass
class _Items:
    """Authorization items read from one part of a ClaimResponse, with what they say about the whole."""

    items: list[dict[str, Any]] = field(default_factory=list)
    unit_types: list[str] = field(default_factory=list)
    review_numbers: list[str] = field(default_factory=list)
    review_codes: list[str] = field(default_factory=list)


def _wellsky_units(adjudications: Any) -> dict[str, Any]:
    """WellSky's ``authorization-units`` adjudication categories (``authorized``, ``used``) -> their values."""
    units: dict[str, Any] = {}
    for adj in _list(adjudications):
        code = next(iter(_wellsky_codes(_map(adj).get("category"), "authorization-units")), None)
        if code:
            units[code] = _map(adj).get("value")
    return units


def _requested_items(r: _Reader, res: Mapping[str, Any]) -> dict[Any, Mapping[str, Any]]:
    """The requesting Claim's items by sequence (PAS: what was asked for, when the response omits it)."""
    claim: Mapping[str, Any] | None = None
    if res.get("request"):
        _, _, claim, _ = r.resolver.find(res.get("request"), ("Claim",), res)
    return {i.get("sequence"): i for i in _list(_map(claim).get("item")) if isinstance(i, JSON_OBJECT)}


def _adjudicated_items(r: _Reader, res: Mapping[str, Any], requested: Mapping[Any, Mapping[str, Any]]) -> _Items:
    """``ClaimResponse.item``: PAS ``itemAuthorizedDetail`` (else the requested item) for code and quantity,
    ``itemPreAuthPeriod`` for dates, and the ``reviewAction`` numbers and codes of their adjudications."""
    out = _Items()
    for item in _list(res.get("item")):
        item = _map(item)
        detail = next((e for e in r.exts("extension-itemAuthorizedDetail", item)), None) or next(
            (e for e in _list(item.get("extension")) if isinstance(e, JSON_OBJECT)
             and str(e.get("url", "")).lower().endswith("itemauthorizeddetail")), None)
        asked = _map(requested.get(item.get("itemSequence")))
        product = (_sub(detail, "productOrServiceCode") if detail else None) or asked.get("productOrService")
        quantity = (_sub(detail, "quantity") if detail else None) or asked.get("quantity")
        period = next((e.get("valuePeriod") for e in _list(item.get("extension")) if isinstance(e, JSON_OBJECT)
                       and str(e.get("url", "")).lower().endswith("itempreauthperiod")), None)
        _review_actions(item, out)
        p_start, p_end = _period(period)
        unit = _unit_type(quantity)
        if unit:
            out.unit_types.append(unit)
        out.items.append(
            {
                "service_code": _first_code(product),
                "units_authorized": _map(quantity).get("value"),
                "units_used": None,
                "start_date": _day(p_start),
                "end_date": _day(p_end),
            }
        )
    return out


def _review_actions(item: Mapping[str, Any], out: _Items) -> None:
    """PAS ``reviewAction`` extensions of an item's adjudications: the review number and X12 306 code."""
    for adj in _list(item.get("adjudication")):
        for ext in _list(_map(adj).get("extension")):
            if isinstance(ext, JSON_OBJECT) and str(ext.get("url", "")).lower().endswith("reviewaction"):
                number = _sub(ext, "number")
                code = _first_code(_sub(ext, "code"))
                if isinstance(number, str):
                    out.review_numbers.append(number)
                if code:
                    out.review_codes.append(code)


def _added_items(res: Mapping[str, Any]) -> _Items:
    """``ClaimResponse.addItem`` (WellSky's items): code, quantity and WellSky's per-item unit categories."""
    out = _Items()
    for add in _list(res.get("addItem")):
        add = _map(add)
        add_units = _wellsky_units(add.get("adjudication"))
        unit = _unit_type(add.get("quantity"))
        if unit:
            out.unit_types.append(unit)
        out.items.append(
            {
                "service_code": _first_code(add.get("productOrService")),
                "units_authorized": add_units.get("authorized", _map(add.get("quantity")).get("value")),
                "units_used": add_units.get("used"),
                "start_date": None,
                "end_date": None,
            }
        )
    return out


def _unit_totals(r: _Reader, units: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """Header totals as whole numbers: WellSky's categories, else (authorized) the items' common quantity."""
    for code, field_name in (("authorized", "units_authorized"), ("used", "units_used")):
        value = units.get(code)
        if value is None:
            if field_name == "units_authorized":
                quantities = [i["units_authorized"] for i in items if isinstance(i["units_authorized"], int | float)]
                if len(quantities) == len(items) and len(set(quantities)) == 1 and quantities:
                    value = quantities[0]  # every item authorizes the same units: the header total
            if value is None:
                continue
        if not isinstance(value, int | float) or isinstance(value, bool) or float(value) != int(value):
            r.flag(field_name, "invalid", "expected a whole number of units")
            units[code] = None
            continue
        units[code] = int(value)
    return units


def _insurance_member(r: _Reader, res: Mapping[str, Any]) -> str | None:
    """The member id: ``insurance.coverage`` identifier, else the referenced Coverage's subscriber id."""
    member = None
    for ins in _list(res.get("insurance")):
        cov_ref = _map(_map(ins).get("coverage"))
        ident = _map(cov_ref.get("identifier"))
        member = _str(ident.get("value"))
        if member is None and cov_ref.get("reference"):
            _, _, cov, _ = r.resolver.find(cov_ref, ("Coverage",), res)
            if cov:
                member = _str(cov.get("subscriberId")) or r.identifier(cov.get("identifier"), "member_id")
        if member:
            break
    if member is None and res.get("insurance"):
        r.flag("member_id", "unresolved_reference", "insurance.coverage gives no member id and was not returned")
    return member


def _authorized_period(res: Mapping[str, Any], items: list[dict[str, Any]]) -> tuple[Any, Any]:
    """``preAuthPeriod``, else the span of the items' periods."""
    start, end = _period(res.get("preAuthPeriod"))
    if start is None and items:
        starts = [i["start_date"] for i in items if i["start_date"]]
        ends = [i["end_date"] for i in items if i["end_date"]]
        start, end = (min(starts) if starts else None), (max(ends) if ends else None)
    return start, end


def _authorization_number(res: Mapping[str, Any], review_numbers: list[str]) -> str | None:
    """``preAuthRef`` (R5: a list), else the first PAS review number."""
    pre_auth = res.get("preAuthRef")
    if isinstance(pre_auth, list):  # R5 spelling
        pre_auth = next((p for p in pre_auth if isinstance(p, str)), None)
    return _str(pre_auth) or (review_numbers[0] if review_numbers else None)


def _authorization_status(r: _Reader, review_codes: list[str]) -> str | None:
    """WellSky's ``authorization-status`` extension, else the first PAS review action code (X12 306)."""
    status = r.ext("authorization-status", "valueCode", "status")
    if status is None and review_codes:
        status = r.mapped(review_codes[0], REVIEW_ACTION, "status", "reviewAction.code")
    return status


def referral(res: Mapping[str, Any], resolver: Resolver | None = None) -> dict[str, Any]:
    r = _Reader("referrals", res, resolver)
    rid, updated = r.key(), r.updated_at()
    requester = _map(res.get("requester"))
    ident = _map(requester.get("identifier"))
    source_name = _str(requester.get("display"))
    source_npi = ident.get("value") if ident.get("system") == SID_NPI else None
    if requester.get("reference") and not (source_name and source_npi):
        _, _, who, _ = r.resolver.find(requester, ("Practitioner", "PractitionerRole", "Organization"), res)
        if who and who.get("resourceType") == "PractitionerRole":
            _, _, who, _ = r.resolver.find(who.get("practitioner"), ("Practitioner",), who)
        if who:
            source_npi = source_npi or r.identifier(who.get("identifier"), "npi")
            name = _map(next(iter(_list(who.get("name"))), {})) if isinstance(who.get("name"), list) else {}
            source_name = source_name or _str(who.get("name")) or " ".join(
                x for x in [*[g for g in _list(name.get("given")) if isinstance(g, str)], name.get("family")] if x
            ) or None
    reasons = [_text(c) or _first_code(c) for c in _list(res.get("reasonCode")) if isinstance(c, JSON_OBJECT)]
    priority = res.get("priority")
    data = {
        "id": rid,
        "patient_id": r.ref(res.get("subject"), "Patient", "patient_id")[0],
        "source_name": source_name,
        "source_npi": source_npi,
        "reason": reasons[0] if reasons else None,
        "priority": "routine" if priority is None else r.mapped(priority, REFERRAL_PRIORITY, "priority",
                                                                "ServiceRequest.priority"),
        "status": r.mapped(res.get("status"), REFERRAL_STATUS, "status", "ServiceRequest.status"),
        "received_date": _day(res.get("authoredOn")),
        "accepted_date": r.ext("referral-accepted-date", "valueDate", "accepted_date"),
        "updated_at": updated,
    }
    return _done(r, data)


SIMPLE: dict[str, Callable[..., dict[str, Any]]] = {
    "patients": patient,
    "appointments": appointment,
    "authorizations": authorization,
    "referrals": referral,
    "coverage": coverage,
}
"""Entities whose canonical record is one resource (plus what it references)."""
