"""The progress hook channels feed (issue 28): a total and an ETA wherever the plan is known."""

from __future__ import annotations

from wellsky_core.channels.base import Progress
from wellsky_core.products.personal_care.channel import months


def test_a_plan_reports_done_of_planned_and_an_eta_from_the_rate_so_far() -> None:
    plan = Progress(960, "client-months")
    assert plan.note(10.0) == ", 0/960 client-months (0%)"  # no ETA before a unit is done
    plan.advance(240)
    assert plan.note(60.0) == ", 240/960 client-months (25%), ETA 3m00s"
    plan.advance(720)
    assert plan.note(240.0) == ", 960/960 client-months (100%)"


def test_home_connect_plans_the_shift_fan_out_as_people_times_months(sandbox_factory, tmp_path) -> None:
    from wellsky_core.config import WellSkyConfig
    from wellsky_core.connection import Connection

    tenant = sandbox_factory(product="personal_care", scale=12)
    config = WellSkyConfig.load(
        {"product": "personal_care", "base_url": tenant.base_url, "client_id": tenant.client_id,
         "client_secret": tenant.client_secret, "max_requests_per_second": 0, "home_connect_history_months": 3},
        env={},
    )
    connection = Connection(config)
    try:
        channel = connection.channel("appointments")
        assert channel.progress_note("appointments", 1.0) == ""  # nothing planned before the read
        list(channel.iter_records("appointments", None))
        plan = channel.plans["appointments"]
        read = channel._plans["appointments"]  # a first read: every client in full, history to published future
        per_client = len(months(read.floor, read.last))
        assert plan.planned == len(channel.client_ids()) * per_client and plan.done == plan.planned
        assert plan.unit == "client-months"
    finally:
        connection.close()
