"""The Home Connect channel, dialect and token flow against a fake written from the fact sheet (fast, no sandbox)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.core.home_connect_fake import (
    NOW,
    FakeHomeConnect,
    care_log,
    channel_for,
    config,
    patient,
    practitioner,
    shift,
)
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import NormalizationError, RemoteError
from wellsky_core.http.auth import ClientCredentialsAuth, build_auth
from wellsky_core.products.personal_care import normalize as hc
from wellsky_core.products.personal_care.channel import months, search_path
from wellsky_core.products.personal_care.schedule_memo import records_of


def test_null_settings_from_singer_sdk_get_the_product_defaults():
    """singer-sdk and Meltano pass unset keys as null; the product still decides auth and rate."""
    cfg = WellSkyConfig.load(
        {"product": "personal_care", "client_id": "c", "client_secret": "s", "auth_method": None,
         "max_requests_per_second": None, "base_url": None},
        env={},
    )
    assert (cfg.auth_method, cfg.max_requests_per_second, cfg.base_url) == (
        "oauth_client_credentials", 100, "https://connect.clearcareonline.com")
    other = WellSkyConfig.load({"username": "u", "password": "p", "auth_method": None}, env={})
    assert (other.auth_method, other.max_requests_per_second) == ("session", 50)


@pytest.fixture
def fake():
    return FakeHomeConnect()


def test_short_config_defaults_to_production_host_and_apigee_token():
    cfg = config()
    assert cfg.base_url == "https://connect.clearcareonline.com"
    assert cfg.resolved_token_url() == "https://connect.clearcareonline.com/oauth/accesstoken"
    assert cfg.auth_method == "oauth_client_credentials"
    assert WellSkyConfig.load({"product": "personal_care", "client_id": "c", "client_secret": "s"},
                              env={}).max_requests_per_second == 100, "the vendor's budget"
    auth = build_auth(cfg)
    assert isinstance(auth, ClientCredentialsAuth) and auth.renew_margin_seconds == 300, "five minutes early"
    overridden = config(base_url="https://connect-sandbox.example.com", token_url="https://idp.example.com/tok")
    assert overridden.resolved_token_url() == "https://idp.example.com/tok"


def test_string_expires_in_is_honoured_and_bearer_is_sent(fake):
    fake.data["patients"] = [patient(1)]
    channel = channel_for(fake)
    list(channel.iter_records("patients", None))
    list(channel.iter_records("patients", None))
    assert fake.token_requests == 1, "the one-hour token is reused"
    auth = channel.client.auth
    lifetime_left = auth._renew_at - __import__("time").monotonic()
    assert 3599 - 300 - 5 < lifetime_left <= 3599 - 300, "renewed five minutes before the string expires_in"


def test_token_renewed_when_close_to_expiry(fake):
    fake.expires_in = "1"  # margin min(300, lifetime/2): renew after half a second
    fake.data["patients"] = [patient(1)]
    channel = channel_for(fake)
    list(channel.iter_records("patients", None))
    channel.client.auth._renew_at = 0  # as if the hour had passed
    list(channel.iter_records("patients", None))
    assert fake.token_requests == 2


def test_paths_keep_the_trailing_slash_except_locations():
    assert search_path("patients") == "/v1/patients/_search/"
    assert search_path("appointment") == "/v1/appointment/_search/"
    assert search_path("locations") == "/v1/locations/_search"
    assert search_path("locations", locations_slash=True) == "/v1/locations/_search/"


def test_paging_is_zero_based_and_stops_on_total_records(fake):
    fake.data["patients"] = [patient(i) for i in range(1, 251)]
    records = list(channel_for(fake).iter_records("patients", None))
    assert len(records) == 250 and len({r["id"] for r in records}) == 250
    pages = [(c[2]["_page"][0], c[2]["_count"][0]) for c in fake.api_calls("/v1/patients/_search/")]
    assert pages == [("0", "100"), ("1", "100"), ("2", "100")]


def test_exact_multiple_of_the_page_size_costs_no_extra_request(fake):
    fake.data["patients"] = [patient(i) for i in range(1, 201)]
    assert len(list(channel_for(fake).iter_records("patients", None))) == 200
    assert len(fake.api_calls("/v1/patients/_search/")) == 2, "totalRecords says the second page was the last"


def test_a_server_ignoring_page_is_stopped_by_the_loop_guard(fake):
    fake.data["patients"] = [patient(i) for i in range(1, 251)]
    fake.ignore_page = True
    with pytest.raises(RemoteError, match="ignores _page"):
        list(channel_for(fake).iter_records("patients", None))


def test_patients_map_status_codes_and_keep_the_raw_code(fake):
    fake.data["patients"] = [
        patient(1, status=80), patient(2, status=30, is_client=False), patient(3, status=90),
        patient(4, status=100), patient(5, status=80, birthDate=None, address=[{"use": "home", "city": "X"}]),
    ]
    by_id = {r["id"]: r for r in channel_for(fake).iter_records("patients", None)}
    assert [by_id[i]["status"] for i in "12345"] == ["active", "pending", "inactive", "discharged", "active"]
    # (the fake renders 100 Closed-Won with active=false: a client whose care has ended)
    assert [by_id[i]["status_code"] for i in "12345"] == ["80", "30", "90", "100", "80"]
    first = by_id["1"]
    assert (first["first_name"], first["last_name"], first["birth_date"]) == ("Given1", "Family1", "1941-02-03")
    assert first["phone"] == "7205550199", "mobile preferred over home"
    assert first["address"] == {"line1": "1 Main St", "line2": "Apt 2", "city": "Denver", "state": "CO",
                                "postal_code": "80202"}
    assert first["data_quality"] == []
    assert by_id["5"]["birth_date"] is None and by_id["5"]["address"] is None
    flagged = [f["field"] for f in by_id["5"]["data_quality"]]
    assert flagged == ["birth_date", "address"], "gaps are null and named, never dropped"


def test_client_status_table():
    assert hc.client_status("1", True, False) == "pending"
    assert hc.client_status("70", False, False) == "inactive", "a deactivated prospect"
    assert hc.client_status("80", True, True) == "active"
    assert hc.client_status("100", True, True) == "active", "Closed-Won is a client"
    assert hc.client_status("80", False, True) == "discharged"
    assert hc.client_status("90", True, True) == "inactive"
    assert hc.client_status(None, None, False) == "pending"
    assert hc.client_status(None, None, None) is None


def test_practitioners_are_caregivers_and_applicants(fake):
    fake.data["practitioners"] = [practitioner(1), practitioner(2, hired=False, status=20)]
    by_id = {r["id"]: r for r in channel_for(fake).iter_records("practitioners", None)}
    assert by_id["1"]["roles"] == ["caregiver"] and by_id["1"]["active"] is True
    assert by_id["2"]["roles"] == ["applicant"] and by_id["2"]["active"] is True, "the record's own flag"
    assert by_id["2"]["status_code"] == "20"
    assert by_id["1"]["specialties"] == ["profile_tag:45", "profile_tag:67"]


def test_updated_filter_sent_only_where_honoured(fake):
    fake.data["patients"] = [patient(1, updated="2026-06-01T00:00:00"), patient(2, updated="2026-08-10T00:00:00")]
    channel = channel_for(fake)
    since = datetime(2026, 8, 1, tzinfo=UTC)
    assert [r["id"] for r in channel.iter_records("patients", since)] == ["2"]
    body = fake.api_calls("/v1/patients/_search/")[-1][3]
    assert body == {"updated": "ge2026-07-31T23:55:00"}, "bookmark minus the clock-skew overlap, naive UTC"
    fake.data["locations"] = [{"resourceType": "Location", "id": 7, "name": "Denver office", "status": "active"}]
    list(channel.iter_records("locations", since))
    assert fake.api_calls("/v1/locations/_search")[-1][3] == {}, "no updated filter where the API ignores it"


def test_records_without_a_change_time_are_stamped_with_the_observation_time(fake):
    fake.data["patients"] = [patient(1)]
    [record] = channel_for(fake).iter_records("patients", None)
    assert record["updated_at"] == "2026-08-15T12:00:00Z"
    fake.data["patients"] = [patient(2, meta={"lastUpdated": "2026-08-01T09:30:00+00:00", "tag": []})]
    [record] = channel_for(fake).iter_records("patients", None)
    assert record["updated_at"] == "2026-08-01T09:30:00Z"


def shifts_fixture(fake: FakeHomeConnect) -> None:
    fake.data["patients"] = [patient(1), patient(2), patient(3, status=20, is_client=False)]
    fake.data["appointment"] = [
        # a weekly recurring shift: every occurrence carries the original id (§3)
        shift(500, 1, 77, "2026-07-06T14:00:00+00:00", "2026-07-06T18:00:00+00:00", "COMPLETED"),
        shift(500, 1, 77, "2026-07-13T14:00:00+00:00", "2026-07-13T18:00:00+00:00", "COMPLETED"),
        shift(500, 1, 77, "2026-08-17T14:00:00+00:00", "2026-08-17T18:00:00+00:00"),
        shift(501, 2, 78, "2026-09-02T08:00:00+00:00", "2026-09-02T10:00:00+00:00", "CANCELLED"),
    ]


def test_recurring_shifts_are_distinct_occurrences_with_stable_keys(fake):
    shifts_fixture(fake)
    channel = channel_for(
        fake, home_connect_history_months=2, home_connect_future_months=1, home_connect_fanout_prospects=False
    )
    records = list(channel.iter_records("appointments", None))
    assert sorted(r["id"] for r in records) == [
        "500@2026-07-06T14:00:00Z", "500@2026-07-13T14:00:00Z", "500@2026-08-17T14:00:00Z",
        "501@2026-09-02T08:00:00Z",
    ]
    assert {r["series_id"] for r in records} == {"500", "501"}
    first = next(r for r in records if r["id"] == "500@2026-07-06T14:00:00Z")
    assert (first["patient_id"], first["practitioner_id"], first["status"]) == ("1", "77", "completed")
    assert first["tasks"] == [{"id": "11", "description": "Meal prep", "status": "not_complete"}]
    calls = fake.api_calls("/v1/appointment/_search/")
    asked = sorted((c[3]["clientId"], c[3]["monthNo"]) for c in calls)
    assert asked == sorted((c, m) for c in ("1", "2") for m in ("202606", "202607", "202608", "202609")), (
        "one search per client and month; the prospect is not asked"
    )


def test_caregiver_fan_out_costs_one_search_per_caregiver_and_month(fake):
    shifts_fixture(fake)
    fake.data["practitioners"] = [practitioner(77), practitioner(78), practitioner(80, hired=False, status=20)]
    channel = channel_for(
        fake, home_connect_history_months=2, home_connect_future_months=1, home_connect_shift_fanout="caregiver"
    )
    assert len(list(channel.iter_records("appointments", None))) == 4
    asked = {c[3]["caregiverId"] for c in fake.api_calls("/v1/appointment/_search/")}
    assert asked == {"77", "78"}, "applicants are not asked"
    assert len(fake.api_calls("/v1/appointment/_search/")) == 2 * 4


def test_change_memo_emits_only_changed_shifts_on_the_next_run(fake):
    shifts_fixture(fake)
    channel = channel_for(fake, home_connect_history_months=2, home_connect_future_months=1)
    channel.load_memo("appointments", None)
    assert len(list(channel.iter_records("appointments", None))) == 4
    memo = channel.dump_memo("appointments")
    assert len(records_of(memo)) == 4
    fake.data["appointment"][2]["caregiver"] = {"id": 79}  # a reassignment
    again = channel_for(fake, home_connect_history_months=2, home_connect_future_months=1)
    again.load_memo("appointments", memo)
    changed = list(again.iter_records("appointments", datetime(2026, 8, 15, tzinfo=UTC)))
    assert [r["id"] for r in changed] == ["500@2026-08-17T14:00:00Z"]
    assert changed[0]["practitioner_id"] == "79"


def test_care_logs_carry_clock_times_rates_and_task_logs(fake):
    fake.data["patients"] = [patient(1)]
    fake.data["encounter"] = [
        care_log(900, 1, 77, 500, "2026-08-03T14:02:00+00:00", "2026-08-03T18:01:00+00:00"),
        care_log(901, 1, 77, 500, "2026-08-10T14:00:00+00:00", None),
    ]
    fake.tasklogs["900"] = [{"id": 5, "title": "Meal", "description": "Lunch", "status": "COMPLETE",
                             "comment": "ate well", "recorded": "2026-08-03T15:00:00+00:00"}]
    channel = channel_for(fake, home_connect_history_months=1)
    by_id = {r["id"]: r for r in channel.iter_records("encounters", None)}
    done = by_id["900"]
    assert (done["start"], done["end"], done["status"], done["finalized"]) == (
        "2026-08-03T14:02:00Z", "2026-08-03T18:01:00Z", "completed", True)
    assert (done["patient_id"], done["practitioner_id"], done["appointment_id"]) == ("1", "77", "500")
    assert done["pay_rates"] == [{"id": "3", "amount": 18.5, "method": "Hourly"}]
    assert done["bill_rates"] == [{"id": "4", "amount": 32.0, "method": "Hourly"}]
    assert done["task_logs"] == [{"id": "5", "title": "Meal", "description": "Lunch", "status": "COMPLETE",
                                  "comment": "ate well", "recorded": "2026-08-03T15:00:00Z"}]
    assert by_id["901"]["status"] == "in_progress" and by_id["901"]["end"] is None
    [search] = fake.api_calls("/v1/encounter/_search/")
    assert search[3] == {"clientId": "1", "startDate": "20260701", "endDate": "20261031"}


def test_related_persons_and_locations(fake):
    fake.data["relatedperson"] = [{
        "resourceType": "RelatedPerson", "id": 40, "patient": {"reference": "Patient/1"},
        "name": [{"given": ["Ann"], "family": "Doe"}],
        "relationship": {"coding": [{"code": "DAU", "display": "Daughter"}]},
        "telecom": [{"system": "phone", "value": "3035550123", "use": "mobile"}],
        "emergencyContact": True, "primaryContact": False, "payer": False, "poa": True,
    }]
    fake.data["locations"] = [{"resourceType": "Location", "id": 7, "name": "Denver office", "status": "active"}]
    channel = channel_for(fake)
    [person] = channel.iter_records("related_persons", None)
    assert (person["patient_id"], person["relationship"], person["emergency_contact"], person["power_of_attorney"]) == (
        "1", "DAU", True, True)
    [location] = channel.iter_records("locations", None)
    assert (location["id"], location["name"], location["active"]) == ("7", "Denver office", True)


def test_streams_the_api_lacks_are_reported_with_a_reason(fake):
    channel = channel_for(fake)
    for entity in ("authorizations", "coverage", "referrals", "care_plans"):
        assert not channel.supports(entity)
        assert channel.unavailable_reason(entity)
    assert channel.unavailable_reason("patients") is None
    assert fake.log == [], "nothing was asked of the tenant"


def test_unusable_key_is_refused_and_named(fake):
    with pytest.raises(NormalizationError, match="start"):
        hc.to_canonical("appointments", {"id": "5", "client": {"id": 1}}, NOW)
    with pytest.raises(NormalizationError, match="id"):
        hc.to_canonical("patients", {"name": []}, NOW)


def test_months():
    assert months(datetime(2025, 11, 20).date(), datetime(2026, 2, 1).date()) == ["202511", "202512", "202601",
                                                                                   "202602"]


def test_unknown_route_gets_the_aws_style_403(fake):
    channel = channel_for(fake)
    with pytest.raises(RemoteError) as info:
        channel.client.post_read_json("/v1/Practitioner", {"_count": 1, "_page": 0}, {})
    assert info.value.status == 403
