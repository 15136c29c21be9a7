"""The tap's streams: one small declaration per canonical entity (schemas and keys come from the core)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, ClassVar

from .stream import WellSkyStream


class PatientsStream(WellSkyStream):
    """Patients (personal care: clients) with identifiers, demographics and payers."""

    name = "patients"


class PractitionersStream(WellSkyStream):
    """Clinicians, hospice staff and caregivers with NPI, roles and disciplines."""

    name = "practitioners"


class AppointmentsStream(WellSkyStream):
    """Scheduled visits and shifts."""

    name = "appointments"


class EncountersStream(WellSkyStream):
    """Documented visits with diagnoses, procedures and vitals."""

    name = "encounters"


class CarePlansStream(WellSkyStream):
    """Plans of care with goals, interventions and outcomes."""

    name = "care_plans"


class AuthorizationsStream(WellSkyStream):
    """Payer prior authorizations: services, units authorized and used, date range."""

    name = "authorizations"


class ReferralsStream(WellSkyStream):
    """Incoming referrals."""

    name = "referrals"


class CoverageStream(WellSkyStream):
    """Insurance coverage per patient and payer."""

    name = "coverage"


class RelatedPersonsStream(WellSkyStream):
    """Clients' family, emergency and professional contacts (personal care / Home Connect)."""

    name = "related_persons"


class LocationsStream(WellSkyStream):
    """Agency offices and branches (personal care / Home Connect)."""

    name = "locations"


class EpisodesStream(WellSkyStream):
    """Certification periods (home health) and benefit periods (hospice); read through the portal."""

    name = "episodes"


class ClaimsStream(WellSkyStream):
    """RAP, end-of-episode and hospice claims with billing period, type of bill, payer and status (portal)."""

    name = "claims"


class UnbilledStream(WellSkyStream):
    """The Unbilled report as a dated snapshot per office, payer and aging bucket (portal)."""

    name = "unbilled"


STREAM_TYPES: list[type[WellSkyStream]] = [
    PatientsStream,
    PractitionersStream,
    AppointmentsStream,
    EncountersStream,
    CarePlansStream,
    AuthorizationsStream,
    ReferralsStream,
    CoverageStream,
    RelatedPersonsStream,
    LocationsStream,
    EpisodesStream,
    ClaimsStream,
    UnbilledStream,
]


class WebhookEventsStream(WellSkyStream):
    """Change events received by the webhook receiver, replayed in arrival order (bookmark: ``seq``).

    Only offered when ``webhook_events_path`` points at the receiver's event store.
    """

    name = "webhook_events"
    primary_keys: ClassVar[list[str]] = ["id"]
    replication_key = "seq"

    @property
    def is_sorted(self) -> bool:
        return True

    def get_records(self, context: dict | None) -> Iterable[dict[str, Any]]:
        from wellsky_core.webhooks import EventStore, iter_canonical_events

        since = self.get_starting_replication_key_value(context) or 0
        store = EventStore(self.wellsky_tap.settings.webhook_events_path or "")
        self.summary["source"] = "webhooks"
        project = self.selected_projection()
        try:
            skipped: Counter[str] = Counter()
            for event in iter_canonical_events(store, int(since), self.wellsky_tap.connection.product, skipped):
                self.summary["records"] += 1
                yield event if project is None else project(event)
            if skipped:
                self.summary["skipped"] = dict(skipped)
                self.logger.warning(
                    "webhook_events: %d stored event(s) skipped as unmappable (%s)",
                    sum(skipped.values()),
                    ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())),
                )
        finally:
            store.close()
