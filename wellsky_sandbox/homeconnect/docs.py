"""The personal_care (Home Connect) part of ``docs/sandbox-api.md``: sources, conflicts, routes, real examples."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ..store import Store
from .data import Extras
from .options import Options
from .shapes import Shapes
from .subscriptions import CRITERIA

FACTS = "`docs/facts/wellsky-home-connect.md`"

SOURCED = [
    (
        "Token `POST /oauth/accesstoken` at the host root, form or JSON, Apigee body (`token_type` "
        '"BearerToken", `expires_in` "3599" as a string, `issued_at` integer seconds, 32-hex token, no refresh '
        "token), ~1 h lifetime; requests send `Authorization: Bearer`",
        "§1",
        "H (CONN, OBS)",
    ),
    (
        "Resource names: lower case, plural except `appointment`, `encounter`, `relatedperson`, `chargeitem`, "
        "`medication`",
        "§2",
        "H (CONN)",
    ),
    ("Mandatory trailing slash; `POST /v1/locations/_search` is the one exception", "§2", "H (CONN)"),
    (
        "Unknown routes and missing slashes: 403 with the AWS API Gateway `Invalid key=value pair …` body "
        "(`Missing Authentication Token` when no Authorization header is sent)",
        "§7.1",
        "H (OBS)",
    ),
    (
        "Reads are `POST /v1/{res}/_search/` with a JSON body, `_count` (default 20, 1-100) and `_page` "
        '(0-based, counts pages) in the query; Bundle `{resourceType, id: "searchParams", type: "searchset", '
        "totalRecords, entry: [{resource}]}`; GET by id returns the bare resource",
        "§2",
        "H (CONN)",
    ),
    (
        "`created`/`updated` with one comparator (`ge gt le lt eq`) honoured on patients, practitioners, "
        "relatedperson; silently ignored elsewhere; no ranges",
        "§2",
        "H (CONN)",
    ),
    (
        "Appointment search needs `clientId` or `caregiverId` plus `startDate` (+`additionalDays` 1-6), "
        "`weekNo` (YYYYWW) or `monthNo` (YYYYMM)",
        "§2",
        "M (REF) / H (SVC, SYNC)",
    ),
    (
        "Appointment shape: `client{id}`, `caregiver{id}` without names, `+00:00` times, SCHEDULED/COMPLETED/"
        "CANCELLED, `position`, `scheduledItems`, `tasks`; recurring shifts share the first occurrence's id, "
        "GET by id answers the nearest occurrence",
        "§3",
        "M (REF), H (SVC parser)",
    ),
    (
        "Encounter (care log) search by `clientId`/`caregiverId` + `startDate`/`endDate` (YYYYMMDD); shape "
        "`subject`, `participant.Individual[]`, `appointment`, `period`, `rates.payRate/billRate`",
        "§2, §3",
        "M (REF, 36c3f0b)",
    ),
    (
        "`meta.tag` codes `agencyId`, `isClient`, `status` (client 1-100 / applicant 10-110), `isHired`, "
        "`profileTags` (comma-separated ids), `locationId`; every display is a string",
        "§3",
        "H/M (SVC, REF)",
    ),
    (
        "Patient/Practitioner create (`{resourceType, id}`), partial PUT, DELETE; validation of 10-digit phones "
        "(first digit 2-9, work `x`+1-6 digits), `YYYY-MM-DD` dates, control characters < 32 except tab/CR/LF",
        "§4, §6",
        "M (REF)",
    ),
    ("Encounter create with the flat body; 422 `'agencyId' is required.`", "§3, §1", "M (REF), H (DOCREF)"),
    (
        "Clock-in `POST /v1/encounter/{appointmentId}/clockin/` and clock-out `PUT /v1/encounter/{carelogId}/"
        "clockout/`, idempotent, reply shapes; clock-out on an appointment id is 404",
        "§4",
        "M-H (REF, MATRIX)",
    ),
    (
        "Task logs `GET`/`POST /v1/encounter/{id}/tasklog/` (list uses `total`, create answers "
        "`{success, taskLogId}`), `PUT …/tasklog/{id}/`; NOT_COMPLETE needs a comment",
        "§2, §3, §4",
        "M (REF)",
    ),
    (
        "RelatedPerson: GET by patient returns a Bundle, POST, `_search/` (`patient`, `name`, `phone`, "
        "created/updated), PUT, DELETE `/{patientId}/contacts/{contactId}/`; `relationship` is an object",
        "§2, §3",
        "H (SYNC) read, M (REF) rest",
    ),
    ("`GET /v1/organizations/`: one unpaged answer", "§2", "H (CONN)"),
    (
        "Subscriptions: `/v1/subscriptions/` CRUD + `_search/`, the criteria list, thin `{resourceType, id}` "
        "deliveries with the subscriber's `channel.header` strings",
        "§5",
        "M (REF), H (CONN `_search`)",
    ),
    ("Soft limit 100 req/s: answered, overruns counted in `/_sandbox/stats` → `homeconnect`", "§6", "H (CONN)"),
    (
        "`active` as the only patient filter returns nothing (production pitfall; option `active_only_quirk`)",
        "§7.3",
        "H (SYNC, SVC)",
    ),
]

MODELED = [
    'Error bodies `{"error": "<message>"}` for 400/404/422 (REF\'s bodies are illustrative only); which '
    "refusal is 400 (missing search parameters, bad paging, control characters, bad JSON) and which is 422 "
    "(a field's value) is the sandbox's choice.",
    '401 bodies for a missing, unknown or expired token use Apigee\'s `{"fault": {"faultstring", detail: '
    "{errorcode}}}` shape; the token is checked before the route (so an unknown `/v1/` path without a token is "
    "401, with a valid token 403).",
    "`meta.lastUpdated` on patients, practitioners and related persons (the three resources whose `updated` "
    "filter exists); no source shows where production exposes the timestamp.",
    "Create answers 201; PUT answers 200 `{resourceType, id}`; DELETE and clock-out answer `{success: true}`.",
    "Location and Organization fields (no source shows them); the empty `chargeitem`, `medication` and "
    "`admins` searches (documented routes, no data modeled).",
    "Subscription retries (3 attempts, 0.5 s doubling): no source documents retries, signatures or ordering.",
    "Appointment windows compare the UTC date of `start`; ISO weeks for `weekNo`.",
    "Canonical status rule (truth ↔ Home Connect): client codes 1-70 = pending (inactive once deactivated), "
    '90 = inactive, 80/100 = active (discharged once deactivated); `isClient` is "true" for active and '
    'discharged. Caregivers: `active` is canonical `active`; inactive ones are applicants (`isHired` "false") '
    "or deactivated hires.",
    "Recurring shifts: the canonical truth keeps one record per occurrence with its own id; Home Connect shows "
    "the series' first id for all of them, so match occurrences on (client, start).",
    "Canonical fields Home Connect does not carry (MRN, MBI, Medicaid id, coverage, diagnoses, vitals, "
    "authorizations, referrals, care plans) are not served on `/v1/`; they stay visible on `/fhir`, exports and "
    "the portal, which remain modeled surfaces.",
]

CONFLICTS = [
    (
        "Paging base and defaults",
        "CONN (H): `_page` 0-based, `_count` 20 everywhere",
        "REF/SVC (M/L): 1-based, `_count` 30 for encounter/relatedperson",
        "`paging=ref`",
    ),
    (
        "Locations and organizations paths",
        "CONN (H): `locations/_search` without slash; organizations GET only",
        "REF (M): `locations/_search/`, `organizations/_search/`",
        "`ref_paths=1`",
    ),
    (
        "Comparators",
        "CONN (H): only patients, practitioners, relatedperson",
        "REF (M): every search",
        "`comparators_everywhere=1`",
    ),
    (
        "Appointment writes",
        "CONN, STATUS: none documented",
        "REF 2026-02-04 additions (L)",
        "`appointment_writes=1` (off by default: 403 like any unknown route)",
    ),
    ("`taskLogId` type", "REF (M): integer", "MATRIX (M): string", "`tasklog_id_string=1`"),
    (
        "Practitioner `communication`",
        "SYNC (H): FHIR `language.coding[]` with `preferred`",
        "REF (M): `coding[]` directly",
        "`communication=ref`",
    ),
    (
        "Total field on appointment searches",
        "CONN, REF: `totalRecords` on every search Bundle",
        "SVC reads `total` (undocumented)",
        "`appointment_total=1` (adds `total`)",
    ),
    (
        "Not emulated: referralsource, DocumentReference, AdminTask, CarePlan activities, allergyintolerance",
        "CONN/DOCREF shapes",
        "REF (L) variants",
        "none: these routes answer 403 (no data modeled)",
    ),
    (
        "Token type",
        "OBS (H): body says `BearerToken`, `Bearer` is what works",
        "REF example (JWT, ms)",
        "none: only `Bearer` is accepted",
    ),
]


def _example_rows() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "tenant.sqlite")
        try:
            store.seed("personal_care", 30, 42)
            extras = Extras(store, 42)
            shapes = Shapes(extras, store)
            patient = next(store.iter_all("patients"))
            appointments = list(store.iter_all("appointments"))
            series = next((a for a in appointments if a.get("_series")), appointments[0])
            encounter = next(store.iter_all("encounters"))
            contact = next(extras.all("relatedperson"))
            return {
                "patient": shapes.patient(patient),
                "practitioner": shapes.practitioner(next(store.iter_all("practitioners"))),
                "appointment": shapes.appointment(series),
                "encounter": shapes.encounter(encounter),
                "tasklog": extras.children("tasklog", encounter["id"]),
                "relatedperson": {k: v for k, v in contact.items() if not k.startswith("_")},
                "location": extras.locations[0],
            }
        finally:
            store.close()


def render_section() -> str:
    ex = _example_rows()
    lines = [
        "## `personal_care`: WellSky Home Connect (documented API)\n",
        f"`--product personal_care` emulates the real Home Connect partner API described in {FACTS} (the fact",
        "sheet; § = its sections, H/M/L = its confidence). The old invented dialect (`/clients`, `/caregivers`,",
        "`/shifts`, MM/DD/YYYY dates, `/webhooks`) is gone: every path the real host does not have answers 403.",
        "Still served as sandbox surfaces: `/fhir` (modeled), the portal, exports, `/sessions`, `/tenant`,",
        "`/oauth/token` (SMART backend services for `/fhir`) and the `/_sandbox/*` control API. The emulation lives",
        "in `wellsky_sandbox/homeconnect/`.\n",
        "### Follows the documented API\n",
        "| behaviour | fact sheet | confidence (sources) |",
        "|---|---|---|",
        *[f"| {what} | {where} | {conf} |" for what, where, conf in SOURCED],
        "",
        "### Modeled (no source shows it)\n",
        *[f"- {m}" for m in MODELED],
        "",
        "### Conflicts: default and sandbox option\n",
        'Options: `wellsky-sandbox serve --product personal_care --homeconnect "paging=ref,ref_paths=1"`,',
        "`SandboxServer(homeconnect=...)`, or at run time `POST /_sandbox/homeconnect/options {...}`",
        f"(defaults: `{json.dumps(vars(Options()))}`).\n",
        "| conflict | default (better sourced) | other side | option |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in CONFLICTS],
        "",
        "### Routes\n",
        "| method and path | answer |",
        "|---|---|",
        "| `POST /oauth/accesstoken` | token (form or JSON `client_id`, `client_secret`; `grant_type` optional) |",
        "| `POST /v1/patients/_search/`, `GET /v1/patients/` | Bundle of Patient; filters `first_name`/`given`,"
        " `last_name`/`family` (`:contains`), `gender`, `active`, `city`, `state`, `home_phone`, `mobile_phone`,"
        " `work_phone`, `agency_id`, `created`, `updated`; unknown filters are ignored |",
        "| `GET/PUT/DELETE /v1/patients/{id}/`, `POST /v1/patients/` | Patient; writes need the `agencyId` tag "
        "on create |",
        "| `POST /v1/practitioners/_search/`, `GET /v1/practitioners/`, `…/{id}/`, `POST` | as patients, plus "
        "`is_hired`, `tags` |",
        "| `POST /v1/appointment/_search/`, `GET /v1/appointment/?…`, `GET /v1/appointment/{id}/` | shifts |",
        "| `POST /v1/encounter/_search/`, `GET/PUT/DELETE /v1/encounter/{id}/`, `POST /v1/encounter/` | care logs "
        "(PUT takes the create body's fields, each optional; DELETE removes one entered in error) |",
        "| `PUT /v1/encounter/{id}/task/{taskId}/` | a shift task's status (NOT_COMPLETE needs `comment`; fact "
        "sheet §4, REF M) |",
        "| `POST /v1/profileTags/`, `GET/PUT /v1/profileTags/{id}/` | caregiver profile tags; `GET` on the "
        "collection is 405 (CONN H). Seeded: skills (Dementia Care, Hoyer Lift, ...) and, modeled, one credential "
        "tag per caregiver (HHA, CNA or LPN: the API has no credential field) |",
        "| `POST /v1/encounter/{appointmentId}/clockin/`, `PUT /v1/encounter/{carelogId}/clockout/` | EVV |",
        "| `GET/POST /v1/encounter/{id}/tasklog/`, `PUT /v1/encounter/{id}/tasklog/{taskLogId}/` | shift notes |",
        "| `GET /v1/relatedperson/{patientId}/`, `POST /v1/relatedperson/`, `POST /v1/relatedperson/_search/`, "
        "`PUT /v1/relatedperson/{id}/`, `DELETE /v1/relatedperson/{patientId}/contacts/{id}/` | contacts |",
        "| `POST /v1/locations/_search` | Bundle of Location |",
        "| `GET /v1/organizations/` | one unpaged Bundle |",
        "| `POST /v1/chargeitem/_search/`, `/v1/medication/_search/`, `/v1/admins/_search/` | empty Bundles |",
        "| `POST/GET /v1/subscriptions/`, `POST /v1/subscriptions/_search/`, `GET/PUT/DELETE "
        "/v1/subscriptions/{id}/` | subscriptions |",
        "| `GET /_sandbox/homeconnect/deliveries?after=N`, `GET/POST /_sandbox/homeconnect/options`, "
        "`GET /_sandbox/homeconnect/locations` (open and closed offices) | control |",
        "",
        "Sandbox machinery on this product: `/_sandbox/truth/{entity}` stays canonical (no `_…` keys, one record per",
        "shift occurrence); `/_sandbox/advance` changes are visible through `updated=` and notify the matching",
        "subscriptions; on this product it also enters late visits (completed shifts up to 3 weeks back, most",
        "with a care log), deletes care logs entered in error (listed under `deleted` in its answer), closes an",
        "office now and then (a quarter of the days while three are open: gone from the location list), besides",
        "new clients with up to two years of history, cancellations and addenda in any month. Notified:",
        "patient/practitioner created, name/address/telecom/deactivated, prospect/applicant status;",
        "care logs closed → `encounter.clockout.changed`. Every `/v1/` write is in `/_sandbox/audit`;",
        "`/_sandbox/stats` adds `homeconnect: {requests, overruns, peak_per_second, limit_per_second, deliveries}`",
        "(the tenant's soft-limit meter, the same as `rate`: every request but the control API, the token too);",
        "faults (`/_sandbox/faults`) hit `/v1/` (not the token endpoint); `malformed` also truncates `_search`.",
        "",
        "Subscription criteria: " + ", ".join(f"`{c}`" for c in CRITERIA) + ". Deliveries are POSTed with the body",
        '`{"resourceType": "Patient", "id": 1000001}` and each `channel.header` string as a header.',
        "",
        "### Examples (seed 42)\n",
    ]
    titles = {
        "patient": "`GET /v1/patients/{id}/` (Patient)",
        "practitioner": "`GET /v1/practitioners/{id}/` (Practitioner)",
        "appointment": "`POST /v1/appointment/_search/` entry (a recurring shift: the series id)",
        "encounter": "`GET /v1/encounter/{id}/` (care log)",
        "tasklog": "`GET /v1/encounter/{id}/tasklog/` entries",
        "relatedperson": "`GET /v1/relatedperson/{patientId}/` entry",
        "location": "`POST /v1/locations/_search` entry",
    }
    for key, title in titles.items():
        lines.append(f"#### {title}\n")
        lines.append("```json\n" + json.dumps(ex[key], indent=2) + "\n```\n")
    return "\n".join(lines)
