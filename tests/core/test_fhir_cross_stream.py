"""References across streams (issue 26): the US Core examples in ``tests/fixtures/fhir/cross_stream.json``, one
Bundle per search of a different stream, resolved through the channel's :class:`IdentifierIndex` and the
roles read by search, never by a shared page. Expected values are written by hand from the fixture."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from wellsky_core.channels.fhir import _role_key, _roles_of, identifier_parent, normalize_page
from wellsky_core.normalize import fhir as fhir_norm

FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "fhir" / "cross_stream.json").read_text())
NPI = fhir_norm.SID_NPI


def page(name: str) -> list[tuple[str | None, dict[str, Any]]]:
    return [(e["search"]["mode"], e["resource"]) for e in FIXTURE[name]["entry"]]


def read(entity: str, resources: list[tuple[str | None, dict[str, Any]]],
         index: fhir_norm.IdentifierIndex) -> dict[str, dict[str, Any]]:
    for _, res in resources:
        index.add(res)  # what FhirChannel does with every page it reads
    records = normalize_page(entity, fhir_norm.ENTITY_TYPES[entity], resources, fhir_norm.DEFAULT_RULES,
                             _refuse, Counter(), index=index)
    return {r["id"]: r for r in records}


def _refuse(entity: str, exc: Exception, payload: Any, **context: Any) -> None:
    raise AssertionError(f"{entity} refused: {exc}")


def flags(record: dict[str, Any]) -> dict[str, str]:
    return {f["field"]: f["kind"] for f in record["data_quality"]}


def roles_by_practitioner() -> dict[tuple[str, ...], list[dict[str, Any]]]:
    roles: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for _, role in page("practitioner_roles"):
        key = _role_key(role, None)
        assert key is not None
        roles.setdefault(key, []).append(role)
    return roles


def test_role_keys_are_the_literal_id_or_the_identifier() -> None:
    assert set(roles_by_practitioner()) == {("identifier", NPI, "9941339100"), ("id", "not-on-this-page")}


def test_a_role_read_by_search_joins_its_practitioner_by_npi() -> None:
    resources = page("practitioners")
    resources += [("include", r) for r in _roles_of(resources, "Practitioner", roles_by_practitioner())]
    assert [r["id"] for _, r in resources if r["resourceType"] == "PractitionerRole"] == ["practitioner-role-1"]
    record = read("practitioners", resources, fhir_norm.IdentifierIndex())["practitioner-1"]
    assert record["npi"] == "9941339100"
    assert record["roles"] == ["doctor"] and record["specialties"] == ["General Practice"]
    assert record["data_quality"] == []


def test_encounter_participants_by_identifier_resolve_to_a_practitioner_read_in_another_stream() -> None:
    index = fhir_norm.IdentifierIndex()
    read("practitioners", page("practitioners"), index)
    records = read("encounters", page("encounters"), index)
    assert records["example-1-by-npi"]["practitioner_id"] == "practitioner-1"
    assert records["example-1-by-local-id"]["practitioner_id"] == "practitioner-1"
    assert "practitioner_id" not in flags(records["example-1-by-npi"])
    assert "practitioner_id" not in flags(records["example-1-by-local-id"])
    unknown = records["example-1-unknown-npi"]
    assert unknown["practitioner_id"] is None and flags(unknown)["practitioner_id"] == "unresolved_reference"
    enc = records["example-1-by-npi"]
    assert (enc["start"], enc["end"]) == ("2015-11-01T22:00:14Z", "2015-11-01T23:00:14Z")
    assert enc["status"] == "completed" and enc["encounter_class"] == "AMB" and enc["patient_id"] == "example"


def test_without_the_index_every_such_reference_is_null_and_flagged_never_guessed() -> None:
    records = read("encounters", page("encounters"), fhir_norm.IdentifierIndex())
    for record in records.values():
        assert record["practitioner_id"] is None
        assert flags(record)["practitioner_id"] == "unresolved_reference"


def test_organizations_are_indexed_by_each_identifier() -> None:
    index = fhir_norm.IdentifierIndex()
    read("practitioners", page("practitioners"), index)
    assert index.get("Organization", NPI, "1144221847") == "acme-lab"
    assert index.get("Organization", "urn:oid:2.16.840.1.113883.4.4", "12-3456789") == "acme-lab"
    assert index.get("Practitioner", "", "25456") == "practitioner-1"  # a reference without system
    assert index.get("Practitioner", NPI, "1144221847") is None  # types are kept apart


def test_the_index_is_bounded_and_says_so() -> None:
    index = fhir_norm.IdentifierIndex(limit=2)
    read("practitioners", page("practitioners"), index)
    assert index.full and len(index) == 2
    records = read("encounters", page("encounters"), index)
    assert records["example-1-unknown-npi"]["practitioner_id"] is None


def test_a_payer_given_only_by_reference_keeps_the_reference_id() -> None:
    record = read("coverage", page("coverage"), fhir_norm.IdentifierIndex())["coverage-by-org-reference"]
    assert record["payer_id"] == "acme-payer" and record["payer_name"] is None
    assert flags(record) == {"payer_name": "unresolved_reference", "order": "missing"}
    assert record["member_id"] == "AB9876" and record["status"] == "active"


def test_identifier_references_are_found_anywhere_in_a_resource() -> None:
    refs = {k for _, res in page("encounters") for k in fhir_norm.identifier_references(res)}
    assert refs == {("Practitioner", NPI, "9941339100"), ("Practitioner", NPI, "1234567893"),
                    ("Practitioner", "http://www.acme.org/practitioners", "25456")}
    assert fhir_norm.identifier_references(page("practitioner_roles")[0][1]) == [("Practitioner", NPI, "9941339100")]


def test_a_percent_encoded_conditional_reference_resolves_like_the_plain_one() -> None:
    """A conditional reference is a search URL: senders may encode `|`, `:` and `/` (%7C, %3A, %2F)."""
    index = fhir_norm.IdentifierIndex()
    read("practitioners", page("practitioners"), index)
    encounter = dict(page("encounters")[0][1], id="encoded")
    encoded = "Practitioner?identifier=http%3A%2F%2Fhl7.org%2Ffhir%2Fsid%2Fus-npi%7C9941339100&active=true"
    encounter["participant"] = [{"individual": {"reference": encoded}}]
    record = read("encounters", [("match", encounter)], index)["encoded"]
    assert record["practitioner_id"] == "practitioner-1" and "practitioner_id" not in flags(record)
    assert fhir_norm.identifier_references(encounter) == [("Practitioner", NPI, "9941339100")]
    role = {"practitioner": {"reference": encoded}}  # a bulk export's role, joined by this key
    assert identifier_parent(role) == f"Practitioner?identifier={NPI}|9941339100"


def test_an_absolute_reference_is_ours_only_under_the_servers_own_base() -> None:
    """``https://fhir.tenant.test/r4/Practitioner/7`` is Practitioner 7 when that is the configured FHIR base;
    the same path on another server names a resource there, so it is null + a flag, never our Practitioner 7."""
    base = "https://fhir.tenant.test/r4"
    own, other = f"{base}/Practitioner/7/_history/2", "https://other.example/r4/Practitioner/7"
    assert fhir_norm.literal_reference(own, base) == ("Practitioner", "7")
    assert fhir_norm.literal_reference("Practitioner/7", base) == ("Practitioner", "7")
    assert fhir_norm.literal_reference(other, base) == "absolute reference to another server"
    assert _role_key({"practitioner": {"reference": own}}, base) == ("id", "7")
    assert _role_key({"practitioner": {"reference": other}}, base) is None
    resolver = fhir_norm.Resolver(rules=fhir_norm.FhirRules(base=base))
    encounter = {
        "resourceType": "Encounter", "id": "e1", "status": "finished", "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
        "class": {"code": "HH"}, "subject": {"reference": "Patient/p1"},
    }
    mine = fhir_norm.encounter(
        {**encounter, "participant": [{"individual": {"reference": own}}]}, {}, resolver=resolver
    )
    assert mine["practitioner_id"] == "7" and "practitioner_id" not in flags(mine)
    foreign = fhir_norm.encounter(
        {**encounter, "participant": [{"individual": {"reference": other}}]}, {}, resolver=resolver
    )
    assert foreign["practitioner_id"] is None and flags(foreign)["practitioner_id"] == "unresolved_reference"


_KEYS = ("reference", "identifier", "type", "practitioner", "value", "system", "contained", "note")
_TEXTS = ("Practitioner", "Organization", "Practitioner?identifier=http://npi|1", "Organization/1",
          "Organization?identifier=x|2&active=true", "urn:npi", "42", "what?", "")
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(_TEXTS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(tree=st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=5))
def test_the_serialized_precheck_never_hides_a_reference_the_walk_finds(tree: dict[str, Any]) -> None:
    """identifier_references skips the walk when the serialized resource has no ``?`` and no identifier object:
    it must give exactly what walking every node gives, on any shape."""
    assert fhir_norm.identifier_references(tree) == fhir_norm.identifier_references_walk(tree)


def test_the_precheck_agrees_with_the_walk_on_every_fixture_resource() -> None:
    found = 0
    for name in ("practitioners", "practitioner_roles", "encounters", "coverage"):
        for _, res in page(name):
            refs = fhir_norm.identifier_references(res)
            assert refs == fhir_norm.identifier_references_walk(res)
            found += bool(refs)
    assert found >= 3  # the fixture has references by identifier: the check compared real finds, not just []
