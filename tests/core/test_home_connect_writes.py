"""Home Connect write-back (patients, EVV clock events, refused appointments) against the fact-sheet fake."""

from __future__ import annotations

import httpx
import pytest

from tests.core.home_connect_fake import FakeHomeConnect, patient
from wellsky_core.config import TargetConfig
from wellsky_core.connection import Connection
from wellsky_core.disclosure import public_message
from wellsky_core.errors import WriteOutcomeUnknown
from wellsky_core.http.client import WellSkyClient
from wellsky_core.products.personal_care import normalize as hc
from wellsky_core.products.personal_care.writer import APPOINTMENT_WRITES_REFUSED, HomeConnectWriter

NEW = {
    "first_name": "Rosa",
    "last_name": "Parkes",
    "birth_date": "1938-04-01",
    "gender": "female",
    "phone": "(303) 555-0142",
    "address": {"line1": "9 Elm St", "city": "Denver", "state": "CO", "postal_code": "80203"},
    "status": "active",
}


@pytest.fixture
def fake():
    f = FakeHomeConnect()
    f.data["patients"] = [patient(1)]
    return f


def writer_for(fake: FakeHomeConnect, key_hash_secret: bytes | None = None, **extra) -> HomeConnectWriter:
    cfg = TargetConfig.load(
        {"product": "personal_care", "client_id": "cid-123", "client_secret": "secret-xyz",
         "max_requests_per_second": 0, **extra},
        env={},
    )
    connection = Connection(cfg)
    connection._client = WellSkyClient(cfg, transport=fake.transport(), sleep=lambda s: None)
    return HomeConnectWriter(
        connection, appointment_writes=cfg.home_connect_appointment_writes, key_hash_secret=key_hash_secret
    )


def test_create_carries_the_agency_tag_and_a_rerun_creates_nothing(fake):
    writer = writer_for(fake)
    first = writer.write("patients", NEW)
    assert first.action == "created" and first.wellsky_id, first.reason
    [(_, _, _, body)] = [c for c in fake.log if c[0] == "POST" and c[1] == "/v1/patients/"]
    assert {"code": "agencyId", "display": "4505"} in body["meta"]["tag"], "agency learned from the tenant's records"
    assert body["telecom"] == [{"system": "phone", "value": "3035550142", "use": "mobile"}]
    assert body["birthDate"] == "1938-04-01" and body["name"] == [
        {"use": "official", "family": "Parkes", "given": ["Rosa"]}]
    again = writer_for(fake).write("patients", NEW)
    assert again.action == "unchanged" and again.wellsky_id == first.wellsky_id
    assert fake.calls["create"] == 1, "matched on last name, first name and birth date"


def test_audit_key_hash_is_keyed_like_the_record_writer(fake):
    """The audit's key_hash is an HMAC of the natural key under the run's secret: stable for one secret, different
    under another, and not a bare SHA-256 anyone could test a guessed name and birth date against."""
    import hashlib
    import hmac

    natural = "parkes|rosa|1938-04-01"
    first = writer_for(fake, key_hash_secret=b"tenant-a").write("patients", NEW)
    again = writer_for(fake, key_hash_secret=b"tenant-a").write("patients", NEW)
    other = writer_for(fake, key_hash_secret=b"tenant-b").write("patients", NEW)
    assert first.key_hash == again.key_hash == hmac.new(b"tenant-a", natural.encode(), hashlib.sha256).hexdigest()[:32]
    assert other.key_hash != first.key_hash
    assert not first.key_hash.startswith(hashlib.sha256(natural.encode()).hexdigest()[:16])
    derived = writer_for(fake).write("patients", NEW).key_hash
    assert derived and derived not in (first.key_hash, other.key_hash), "without a secret: one from the credentials"


def test_update_sends_only_the_changed_fields(fake):
    writer = writer_for(fake)
    read = hc.to_canonical("patients", {k: v for k, v in patient(1).items() if k != "_updated"},
                           __import__("datetime").datetime.now(__import__("datetime").UTC))
    assert writer.write("patients", read).action == "unchanged", "the tap's own record round-trips unchanged"
    changed = {**read, "phone": "720-555-0100"}
    result = writer.write("patients", changed)
    assert result.action == "updated"
    [(_, path, _, body)] = [c for c in fake.log if c[0] == "PUT"]
    assert path == "/v1/patients/1/"
    assert set(body) == {"resourceType", "telecom", "meta"}, "partial update: only the phone"


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("phone", "+1 303 555 0142", "10-digit"),
        ("phone", "0305550142", "10-digit"),
        ("last_name", "Par\x07kes", "control character"),
    ],
)
def test_strict_validation_before_sending(fake, field, value, why):
    result = writer_for(fake).write("patients", {**NEW, field: value})
    assert result.action == "rejected" and why in result.reason
    assert field in result.reason and value not in result.reason, "names the field, never echoes the value"
    assert not fake.api_calls(), "refused before any request"


def test_missing_birth_date_is_refused_for_writes(fake):
    result = writer_for(fake).write("patients", {k: v for k, v in NEW.items() if k != "birth_date"})
    assert result.action == "rejected" and "birth_date" in result.reason


def test_unknown_id_is_refused(fake):
    result = writer_for(fake).write("patients", {**NEW, "id": "424242"})
    assert result.action == "rejected" and result.code == "unknown_id"


def test_clock_in_and_out_are_idempotent(fake):
    writer = writer_for(fake)
    event = {"appointment_id": "500@2026-08-17T14:00:00Z", "clock_in": "2026-08-17T14:03:00Z",
             "clock_out": "2026-08-17T18:00:00Z", "latitude": 39.7, "longitude": -104.9, "comment": "all good"}
    first = writer.write("evv_clock", event)
    assert first.action == "created" and first.wellsky_id
    clock_in = next(c for c in fake.log if c[1] == "/v1/encounter/500/clockin/")
    assert clock_in[3] == {"resourceType": "Encounter", "period": {"start": "2026-08-17T14:03:00+00:00"},
                           "position": {"latitude": 39.7, "longitude": -104.9}}
    again = writer.write("evv_clock", event)
    assert again.action == "unchanged" and again.wellsky_id == first.wellsky_id
    assert fake.calls["clockin"] == 1 and fake.calls["clockout"] == 1


def test_clock_out_before_clock_in_is_refused(fake):
    result = writer_for(fake).write(
        "evv_clock", {"appointment_id": "500", "clock_in": "2026-08-17T14:00:00Z", "clock_out": "2026-08-17T13:00:00Z"}
    )
    assert result.action == "rejected" and "clock_out" in result.reason
    assert fake.calls["clockin"] == 0


def test_appointments_are_refused_as_a_stream_unless_the_tenant_has_them(fake):
    writer = writer_for(fake)
    assert writer.refusal("appointments") == APPOINTMENT_WRITES_REFUSED
    assert "appointments" not in writer.writable
    assert writer_for(fake, home_connect_appointment_writes=True).refusal("appointments") is None


def test_the_name_search_pages_with_the_loop_guard(fake):
    """A server that ignores ``_page`` answers page 0 forever: the writer's lookup stops with page_loop."""
    namesake = [{"use": "official", "family": "Parkes", "given": ["Rosa"]}]
    fake.data["patients"] = [patient(i, name=namesake) for i in range(1, 151)]
    fake.ignore_page = True
    result = writer_for(fake).write("patients", NEW)
    assert (result.action, result.code) == ("rejected", "page_loop")
    searches = [c for c in fake.log if c[1] == "/v1/patients/_search/" and c[3].get("last_name") == "Parkes"]
    assert len(searches) == 2, "the repeated page is caught on its first repeat"


def test_ids_from_the_input_are_validated_before_they_reach_a_path(fake):
    writer = writer_for(fake)
    result = writer.write("patients", {**NEW, "id": "../subscriptions"})
    assert result.action == "rejected" and result.code == "validation_error" and "id" in result.reason
    assert not [c for c in fake.log if "subscriptions" in c[1]], "nothing was sent to another path"


def test_home_connect_writes_carry_their_idempotency_key_for_the_audit(fake):
    """Home Connect honours no Idempotency-Key header, but the audit still names each intended write: the same
    record sent again has the same key, another record (or another change) another key; none is sent."""
    writer = writer_for(fake)
    first, again = writer.write("patients", NEW), writer.write("patients", NEW)
    other = writer.write("patients", {**NEW, "phone": "(303) 555-0199"})
    assert first.idempotency_key and first.idempotency_key.startswith("wsk1-")
    assert again.idempotency_key == first.idempotency_key != other.idempotency_key
    event = {"appointment_id": "500", "clock_in": "2026-08-17T14:03:00Z"}
    clock = writer.write("evv_clock", event)
    assert clock.idempotency_key and clock.idempotency_key == writer.write("evv_clock", event).idempotency_key
    refused = writer.write("evv_clock", {"appointment_id": "500", "clock_in": "not a time"})
    assert refused.action == "rejected" and refused.idempotency_key
    assert not any("idempotency-key" in {k.lower() for k in h} for h in fake.headers), "never sent"


def test_a_deletion_record_is_refused_not_written(fake):
    """A tap's `_sdc_deleted_at` record reaching the target is refused in one line: target-wellsky never deletes."""
    from wellsky_core.errors import WriteRefused
    from wellsky_core.writes import validate_for_write

    with pytest.raises(WriteRefused, match="_sdc_deleted_at: the record is a deletion"):
        validate_for_write("patients", {**NEW, "_sdc_deleted_at": "2026-08-22T12:00:00Z"})
    result = writer_for(fake).write("patients", {**NEW, "_sdc_deleted_at": "2026-08-22T12:00:00Z"})
    assert result.action == "rejected" and result.code == "deletion_not_written"
    assert fake.calls["create"] == 0


def test_an_idempotency_key_names_one_intended_update_not_a_content(fake):
    """Phone A -> B -> A is three writes: the way back is another write than the way there, and not the create,
    so no key repeats; the same update sent again (a replayed batch) keeps its key."""
    writer = writer_for(fake)
    created = writer.write("patients", NEW)
    b = {**NEW, "phone": "(303) 555-0199"}
    to_b, back_to_a = writer.write("patients", b), writer.write("patients", NEW)
    assert [r.action for r in (created, to_b, back_to_a)] == ["created", "updated", "updated"]
    keys = [r.idempotency_key for r in (created, to_b, back_to_a)]
    assert len(set(keys)) == 3 and all(k and k.startswith("wsk1-") for k in keys)
    fake_again = FakeHomeConnect()
    fake_again.data["patients"] = [patient(1)]
    replay = writer_for(fake_again)
    assert replay.write("patients", NEW).idempotency_key == created.idempotency_key
    assert replay.write("patients", b).idempotency_key == to_b.idempotency_key, "a replay of the same change"


@pytest.mark.parametrize("answer", [b"<html>Saved</html>", b"{}", b"[]"], ids=["html", "no-id", "not-an-object"])
@pytest.mark.parametrize("write", ["patient", "clock_in"])
def test_a_write_answered_without_its_record_stops_and_says_it_may_have_been_applied(fake, answer, write):
    """Strict on write: a 2xx that is not the record (not JSON, no id) leaves the outcome unknown. The run stops
    on it with our words (never a 'created' with the id "None", never a JSONDecodeError)."""
    path = "/v1/patients/" if write == "patient" else "/v1/encounter/500/clockin/"
    real = fake._route

    def route(method: str, where: str, query, body):
        if (method, where) == ("POST", path):
            return httpx.Response(201, content=answer, headers={"content-type": "application/json"})
        return real(method, where, query, body)

    fake._route = route
    record = NEW if write == "patient" else {"appointment_id": "500", "clock_in": "2026-08-17T14:03:00Z"}
    with pytest.raises(WriteOutcomeUnknown) as caught:
        writer_for(fake).write("patients" if write == "patient" else "evv_clock", record)
    text = public_message(caught.value)
    assert f"POST {path}" in text and "may have been applied" in text, text
    assert ("name and birth date" if write == "patient" else "client and start time") in text


def test_a_native_payload_keeps_the_one_control_character_rule():
    """Home Connect's native payloads were checked with a copy of the rule that let DEL through, where every
    canonical write refused it: the two now ask the one rule (``writes.CONTROL_CHARACTERS``), code point by code
    point, and name the field without the value."""
    from wellsky_core.products.personal_care.write_rules import WriteInvalid, check_text
    from wellsky_core.writes import control_character_path

    for point in range(128):
        text = f"Par{chr(point)}kes"
        canonical = control_character_path({"last_name": text}) is not None
        try:
            check_text({"name": [{"family": text}]}, "patient")
            native = False
        except WriteInvalid as exc:
            native = True
            assert exc.field == "patient.name.0.family" and text not in str(exc)
        assert native == canonical, (point, native, canonical)
        assert canonical == ((point < 32 and chr(point) not in "\t\n\r") or point == 127), point
