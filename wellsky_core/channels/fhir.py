"""The FHIR channel: the tenant's FHIR R4 API, searched by ``_lastUpdated`` and normalized to canonical records.

Which entities a tenant serves comes from its CapabilityStatement (products differ: personal care has no
CarePlan, hospice no ServiceRequest). Child resources ride along with their parent in the same Bundle page
(``_revinclude`` of an encounter's Conditions/Procedures/Observations and a practitioner's PractitionerRole,
``_include`` of a care plan's Goals), so an entity costs one request per page, never one per record.

References by identifier cross streams (US Core servers and Synthea data name a PractitionerRole's practitioner
by NPI, an Encounter's by ``Practitioner?identifier=…``). The channel keeps one :class:`IdentifierIndex` for the
sync, fed by every Practitioner and Organization it reads; an identifier it has not seen is looked up with one
``<Type>?identifier=a,b,…`` search per page when the server offers that parameter (asked once per sync, misses
remembered). A server that cannot ``_revinclude`` PractitionerRoles (they refer to the practitioner by
identifier, which a reverse include cannot follow) has its roles read once by plain search into a compact
index by practitioner key. What stays unresolved is null and flagged by the normalizer.
"""

from __future__ import annotations

import logging
import threading
from collections import ChainMap, Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ..errors import NormalizationError, RemoteError
from ..http.paging import NextLinkPaginator, page_limit
from ..normalize import fhir as fhir_norm
from ..normalize.fhir import JSON_OBJECT
from . import windows
from .base import Channel

if TYPE_CHECKING:
    import httpx

    from ..http.client import WellSkyClient

log = logging.getLogger(__name__)


def fhir_bundles(client: WellSkyClient, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Each searchset Bundle of a FHIR search, following its next links (trusted origins only)."""

    def resolve(link: str) -> httpx.URL:
        return client.trusted_url(link, what="a FHIR Bundle next link", code="foreign_next_link")

    return NextLinkPaginator(client.get_json, resolve, metrics=client.metrics).pages(path, params)

INCLUDES: dict[str, list[tuple[str, str, str]]] = {
    # entity -> [(search parameter, value, resource type it brings)]
    "practitioners": [("_revinclude", "PractitionerRole:practitioner", "PractitionerRole")],
    "encounters": [
        ("_revinclude", "Condition:encounter", "Condition"),
        ("_revinclude", "Procedure:encounter", "Procedure"),
        ("_revinclude", "Observation:encounter", "Observation"),
    ],
    "care_plans": [("_include", "CarePlan:goal", "Goal")],
}
"""Children each entity needs; the encounter's diagnoses, procedures and vitals are required for a full record."""


def fhir_instant(moment: datetime) -> str:
    """A FHIR instant in UTC; sub-second precision is kept so ``ge`` never drops a record at the boundary."""
    utc = moment.astimezone(UTC)
    if utc.microsecond:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


class FhirChannel(windows.WindowedChannel, Channel):
    """``GET <fhir_base>/<Type>?_lastUpdated=ge…&_sort=_lastUpdated&_count=…`` following Bundle ``next`` links
    (``fhir_base``: ``fhir_base_url``, default ``{base_url}/fhir``)."""

    name = "fhir"
    ordered = True

    client_use = "required"
    client: WellSkyClient

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._capability: dict[str, dict[str, Any]] | None = None
        self._capability_lock = threading.Lock()
        self.index = fhir_norm.IdentifierIndex()
        """Practitioners and Organizations read in this sync, by identifier (see the module docstring)."""
        self._roles: dict[tuple[str, ...], list[dict[str, Any]]] | None = None
        self._roles_lock = threading.Lock()

    # -- capability -----------------------------------------------------------------------------------------
    def capability(self) -> dict[str, dict[str, Any]]:
        """Resource type -> its CapabilityStatement entry (fetched once per channel: streams starting at once
        wait for the one request instead of each sending its own)."""
        with self._capability_lock:
            return self._fetch_capability()

    def _fetch_capability(self) -> dict[str, dict[str, Any]]:
        if self._capability is None:
            body = self.client.get_json(f"{self.config.fhir_base}/metadata")
            if not isinstance(body, JSON_OBJECT) or body.get("resourceType") != "CapabilityStatement":
                raise RemoteError(200, "unexpected_shape", "the FHIR base's /metadata is not a CapabilityStatement")
            resources: dict[str, dict[str, Any]] = {}
            for rest in body.get("rest") or []:
                if isinstance(rest, JSON_OBJECT) and rest.get("mode", "server") == "server":
                    for res in rest.get("resource") or []:
                        if isinstance(res, JSON_OBJECT) and isinstance(res.get("type"), str):
                            resources[res["type"]] = dict(res)
            self._capability = resources
        return self._capability

    def _searchable(self, resource_type: str) -> bool:
        entry = self.capability().get(resource_type)
        if entry is None:
            return False
        codes = {i.get("code") for i in entry.get("interaction") or [] if isinstance(i, JSON_OBJECT)}
        return not codes or "search-type" in codes

    @classmethod
    def offers(cls, entity: str, product: str | None) -> bool:
        return entity in fhir_norm.ENTITY_TYPES

    def supports(self, entity: str) -> bool:
        resource_type = fhir_norm.ENTITY_TYPES.get(entity)
        return resource_type is not None and self._searchable(resource_type)

    def _include_params(self, entity: str, resource_type: str) -> list[tuple[str, str]]:
        entry = self.capability()[resource_type]
        offered = {
            "_include": set(entry.get("searchInclude") or []),
            "_revinclude": set(entry.get("searchRevInclude") or []),
        }
        params = []
        for param, value, child in INCLUDES.get(entity, []):
            if value in offered[param]:
                params.append((param, value))
            elif entity == "practitioners":
                pass  # roles are then read by search (_roles_by_practitioner)
            elif child in self.capability():
                raise RemoteError(
                    200,
                    "include_not_supported",
                    f"the tenant's FHIR server exposes {child} but not {param}={value} on {resource_type}, so "
                    f"{entity} cannot be read completely over FHIR; use source=api for {entity}",
                )
        return params

    # -- records --------------------------------------------------------------------------------------------
    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        if not self.supports(entity):
            raise RemoteError(
                404,
                "not_supported",
                f"this {self.product} tenant does not expose {fhir_norm.ENTITY_TYPES.get(entity, entity)} over "
                f"FHIR (see /fhir/metadata); read {entity} with source=api",
            )
        return self.windowed(entity, since)  # _lastUpdated windows in parallel, emitted in order

    def _pages(self, entity: str, since: datetime | None, before: datetime | None) -> Iterator[list[dict[str, Any]]]:
        """Canonical pages (one per Bundle) of ``since <= _lastUpdated < before``."""
        resource_type = fhir_norm.ENTITY_TYPES[entity]
        params: list[tuple[str, str]] = [("_sort", "_lastUpdated"), ("_count", str(page_limit(self.config.page_size)))]
        if since is not None:
            params.append(("_lastUpdated", "ge" + fhir_instant(since)))
        if before is not None:
            params.append(("_lastUpdated", "lt" + fhir_instant(before)))
        params += self._include_params(entity, resource_type)
        floor = since.astimezone(UTC) if since is not None else None
        ceiling = before.astimezone(UTC) if before is not None else None
        roles = None
        if entity == "practitioners" and not any(p == "_revinclude" for p, _ in params):
            roles = self._roles_by_practitioner()
        # _include/_revinclude repeat, which a params mapping cannot express (and httpx replaces a path's query
        # when params are given), so the whole query is encoded into the path.
        for bundle in fhir_bundles(self.client, f"{self.config.fhir_base}/{resource_type}?{urlencode(params)}"):
            resources = list(_resources(bundle))
            if roles is not None:
                resources += [("include", role) for role in _roles_of(resources, resource_type, roles)]
            self.resolve_identifiers(resources)
            records = normalize_page(
                entity, resource_type, resources, self.rules, self.reject, self.skipped, index=self.index
            )
            if floor is not None or ceiling is not None:  # a server loose on _lastUpdated never doubles a record
                records = [r for r in records if _within(r["updated_at"], floor, ceiling)]
            yield records

    @property
    def rules(self) -> fhir_norm.FhirRules:
        return fhir_norm.FhirRules(dict(self.config.fhir_identifier_systems), base=self.config.fhir_base)

    # -- references across streams -----------------------------------------------------------------------------
    def _search_params(self, resource_type: str) -> set[str]:
        entry = self.capability().get(resource_type) or {}
        return {p.get("name") for p in entry.get("searchParam") or [] if isinstance(p, JSON_OBJECT)}

    def resolve_identifiers(self, resources: list[tuple[str | None, dict[str, Any]]]) -> None:
        """Index the page's Practitioners and Organizations, then look up (once per sync) the identifiers its
        references name that no resource read so far carries, when the server offers ``identifier`` search."""
        for _, res in resources:
            self.index.add(res)
        wanted: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for _, res in resources:
            for key in fhir_norm.identifier_references(res):
                if self.index.get(*key) is None and not self.index.known_absent(key) and key not in wanted[key[0]]:
                    wanted[key[0]].append(key)
        for kind, keys in wanted.items():
            if not keys or not self._searchable(kind) or "identifier" not in self._search_params(kind):
                continue
            for start in range(0, len(keys), IDENTIFIER_BATCH):
                batch = keys[start : start + IDENTIFIER_BATCH]
                tokens = ",".join(f"{system}|{value}" if system else value for _, system, value in batch)
                query = urlencode([("identifier", tokens), ("_count", str(page_limit(self.config.page_size)))])
                for bundle in fhir_bundles(self.client, f"{self.config.fhir_base}/{kind}?{query}"):
                    for _, res in _resources(bundle):
                        self.index.add(res)
                for key in batch:
                    self.index.mark_absent(key)  # ignored for the keys just found

    def _roles_by_practitioner(self) -> dict[tuple[str, ...], list[dict[str, Any]]]:
        """Every PractitionerRole (read once per sync by plain search), keyed by the practitioner it names:
        ``("id", id)`` or ``("identifier", system, value)``. Only the elements the mapping reads are kept."""
        with self._roles_lock:
            if self._roles is not None:
                return self._roles
            roles: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
            if self._searchable("PractitionerRole"):
                query = urlencode([("_count", str(page_limit(self.config.page_size)))])
                for bundle in fhir_bundles(self.client, f"{self.config.fhir_base}/PractitionerRole?{query}"):
                    for _, res in _resources(bundle):
                        key = _role_key(res, self.config.fhir_base)
                        if res.get("resourceType") == "PractitionerRole" and key is not None:
                            roles[key].append({k: res[k] for k in ROLE_ELEMENTS if k in res})
            self._roles = dict(roles)
            return self._roles


IDENTIFIER_BATCH = 50
"""Identifiers per ``identifier=a,b,…`` lookup (keeps the URL well under common 8 KB limits)."""
ROLE_ELEMENTS = ("resourceType", "id", "meta", "active", "practitioner", "code", "specialty")
"""What a PractitionerRole read by search keeps in memory: the elements the practitioner mapping reads."""


def _role_key(role: Mapping[str, Any], base: str | None) -> tuple[str, ...] | None:
    """The practitioner a role names: ``("id", id)`` for a literal reference (relative, or absolute under
    ``base``), ``("identifier", system, value)`` for an identifier or conditional one."""
    ref = role.get("practitioner")
    if not isinstance(ref, JSON_OBJECT):
        return None
    literal = ref.get("reference")
    if isinstance(literal, str) and "?" not in literal and "/" in literal:
        target = fhir_norm.literal_reference(literal, base)
        return ("id", target[1]) if isinstance(target, tuple) and target[0] == "Practitioner" else None
    keys = fhir_norm.identifier_references({"practitioner": ref})
    return ("identifier", keys[0][1], keys[0][2]) if keys else None


def _roles_of(
    resources: list[tuple[str | None, dict[str, Any]]],
    resource_type: str,
    roles: Mapping[tuple[str, ...], list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """The roles (read by search) of the page's practitioners, by id or by any of their identifiers."""
    out: dict[str, dict[str, Any]] = {}
    for _, res in resources:
        if res.get("resourceType") != resource_type:
            continue
        keys: list[tuple[str, ...]] = [("id", str(res.get("id")))]
        for ident in res.get("identifier") or []:
            if isinstance(ident, JSON_OBJECT) and isinstance(ident.get("value"), str):
                keys.append(("identifier", str(ident.get("system") or ""), ident["value"]))
        for key in keys:
            for role in roles.get(key, []):
                out.setdefault(str(role.get("id")), role)
    return list(out.values())


def _within(updated_at: str, floor: datetime | None, ceiling: datetime | None) -> bool:
    moment = datetime.fromisoformat(updated_at)
    return (floor is None or moment >= floor) and (ceiling is None or moment < ceiling)


def _resources(bundle: Mapping[str, Any]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    for entry in bundle.get("entry") or []:
        res = entry.get("resource") if isinstance(entry, JSON_OBJECT) else None
        if isinstance(res, JSON_OBJECT):
            yield (entry.get("search") or {}).get("mode"), dict(res)


def normalize_page(
    entity: str,
    resource_type: str,
    resources: Iterable[tuple[str | None, dict[str, Any]]],
    rules: fhir_norm.FhirRules,
    reject: Callable[..., None],
    skipped: Counter[str],
    *,
    index: fhir_norm.IdentifierIndex | None = None,
) -> list[dict[str, Any]]:
    """Resources of one page (``(search mode, resource)``) -> canonical records in (updated_at, id) order.

    Shared by paged search and bulk NDJSON: matches are the records, everything else is what they reference
    (children are joined by literal or identifier reference; a PractitionerRole to its Practitioner by either).
    """
    matches: list[dict[str, Any]] = []
    resolver = fhir_norm.Resolver(rules=rules, index=index)
    children: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    others: list[dict[str, Any]] = []
    for mode, res in resources:
        kind = res.get("resourceType")
        resolver.add(res)
        if mode == "match" or (mode is None and kind == resource_type):
            matches.append(res)
        else:
            others.append(res)
    for res in others:
        parent = _parent_ref(res, resolver)
        if parent:
            children[parent][str(res.get("resourceType"))].append(res)
    out = []
    for res in matches:
        ref = f"{resource_type}/{res.get('id')}"
        try:
            out.append(_normalize(entity, res, resolver, children[ref]))
        except fhir_norm.NotThisEntity as exc:
            skipped[f"{resource_type} ({exc.reason})"] += 1
        except NormalizationError as exc:
            reject(entity, exc, res)
    out.sort(key=lambda r: (r["updated_at"], r["id"]))
    return out


def normalize_one(
    entity: str,
    res: dict[str, Any],
    refs: Mapping[str, Mapping[str, Any]],
    kids: Mapping[str, list[dict[str, Any]]],
    rules: fhir_norm.FhirRules = fhir_norm.DEFAULT_RULES,
    index: fhir_norm.IdentifierIndex | None = None,
) -> dict[str, Any]:
    """One resource with its children, references looked up in ``refs`` (``"Type/id"`` -> resource, e.g. a
    bulk export's on-disk spool) and by identifier in ``index``. Raises NormalizationError, or NotThisEntity for
    a resource to skip."""
    resolver = fhir_norm.Resolver(rules=rules, index=index)
    resolver.by_ref = ChainMap({}, refs)  # type: ignore[assignment]
    return _normalize(entity, res, resolver, kids)


def _normalize(
    entity: str, res: dict[str, Any], resolver: fhir_norm.Resolver, kids: Mapping[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    if entity == "practitioners":
        return fhir_norm.practitioner(res, kids.get("PractitionerRole") or [], resolver)
    if entity == "encounters":
        conditions = {f"Condition/{c.get('id')}": c for c in kids.get("Condition") or []}
        return fhir_norm.encounter(
            res, conditions, kids.get("Procedure") or [], kids.get("Observation") or [], resolver
        )
    if entity == "care_plans":
        return fhir_norm.care_plan(res, {}, resolver)
    return fhir_norm.SIMPLE[entity](res, resolver)


def identifier_parent(res: Mapping[str, Any]) -> str | None:
    """The practitioner a child names by identifier only (a US Core PractitionerRole), as the key
    ``Practitioner?identifier=<system>|<value>``, for when no resolver can map it to an id yet (a bulk export
    spools files in any order); :func:`identifier_parent_keys` gives the practitioner's side of the match."""
    ref = res.get("practitioner")
    if not isinstance(ref, JSON_OBJECT):
        return None
    literal = ref.get("reference")
    kind, tokens = fhir_norm.conditional_identifiers(literal) if isinstance(literal, str) else ("", [])
    if kind == "Practitioner" and tokens:
        system, value = tokens[0]
    elif literal is None and isinstance(ref.get("identifier"), JSON_OBJECT):
        system, value = str(ref["identifier"].get("system") or ""), ref["identifier"].get("value")
    else:
        return None
    return f"Practitioner?identifier={system}|{value}" if isinstance(value, str) and value else None


def identifier_parent_keys(res: Mapping[str, Any]) -> list[str]:
    """Every key under which :func:`identifier_parent` may have filed this practitioner's children: each
    identifier with its system, and without one (a reference that names only the value)."""
    keys: list[str] = []
    for ident in res.get("identifier") or []:
        value = ident.get("value") if isinstance(ident, JSON_OBJECT) else None
        if isinstance(value, str) and value:
            for system in dict.fromkeys((str(ident.get("system") or ""), "")):
                keys.append(f"{res.get('resourceType')}?identifier={system}|{value}")
    return list(dict.fromkeys(keys))


def _parent_ref(res: Mapping[str, Any], resolver: fhir_norm.Resolver | None = None) -> str | None:
    """The record an included child belongs to (``Encounter/…`` or ``Practitioner/…``), by literal or
    identifier reference (identifier references need the page's ``resolver``)."""
    resolver = resolver or fhir_norm.Resolver()
    for key, kind in (("encounter", "Encounter"), ("practitioner", "Practitioner")):
        ref = res.get(key)
        if isinstance(ref, JSON_OBJECT):
            _, rid, _, problem = resolver.find(ref, (kind,), res)
            if problem is None and rid:
                return f"{kind}/{rid}"
    return None
