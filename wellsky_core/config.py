"""Connector configuration: one flat model shared by the tap, the target, Airbyte and Meltano.

The keys are exactly those of docs/architecture.md ("Configuration keys"). Secrets are ``SecretStr`` so they
never show in reprs, logs or exceptions. :meth:`WellSkyConfig.load` is the entry point: it fills missing keys
from ``WELLSKY_<KEY>`` environment variables, validates everything at once and raises one
:class:`~wellsky_core.errors.ConfigError` that lists every bad key with its fix, before any request is made.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import ssl
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from wellsky_core.channels import CHANNELS
from wellsky_core.errors import ConfigError, ConfigProblem
from wellsky_core.products import DIALECTS, PRODUCTS, Dialect

ENV_PREFIX = "WELLSKY_"

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

SourceName = Literal[tuple(CHANNELS)]  # type: ignore[valid-type]
"""A ``source`` value: the channel registry's names (``wellsky_core.channels.CHANNELS``)."""
ProductName = Literal[PRODUCTS]  # type: ignore[valid-type]
"""A ``product`` value: the dialect registry's names (``wellsky_core.products.DIALECTS``)."""
IdentifierKind = Literal["mrn", "medicare_mbi", "medicaid_id", "member_id", "payer_id", "external_id", "npi"]


def _by_product(text: Callable[[str, Dialect], Any], sep: str, before: str, after: str) -> str:
    """Per-product defaults in a setting's description, read from the dialects (a new product adds its own):
    ``before`` + the products' texts joined by ``sep`` + ``after``, or nothing when no product has one."""
    items = [t for p, d in DIALECTS.items() if (t := text(p, d))]
    return f"{before}{sep.join(items)}{after}" if items else ""


PRODUCT_LIST = f"{', '.join(PRODUCTS[:-1])} or {PRODUCTS[-1]}" if len(PRODUCTS) > 1 else PRODUCTS[0]
HOST_DEFAULTS = _by_product(lambda p, d: d.default_base_url and f"{p} default: {d.default_base_url}.", " ", " ", "")
AUTH_DEFAULTS = _by_product(
    lambda p, d: d.auth_methods and d.auth_methods[0] != "session" and f"{d.auth_methods[0]} for {p}",
    ", or ", ", or ", "",
)
TOKEN_DEFAULTS = _by_product(lambda p, d: d.token_path and f"{p}: https://{{host}}{d.token_path}", "; ", " (", ")")
RATE_DEFAULTS = _by_product(lambda p, d: d.rate_budget and f"{d.rate_budget:g} for {p}", ", or ", ", or ",
                            " (the vendor's budget)")

SDK_BUILTIN_KEYS = frozenset(
    {
        # Keys singer-sdk, Meltano and Airbyte add to a connector's config on their own; not ours to reject.
        "stream_maps",
        "stream_map_config",
        "flattening_enabled",
        "flattening_max_depth",
        "faker_config",
        "batch_config",
        "add_record_metadata",
        "load_method",
        "validate_records",
        "hard_delete",
        "batch_size_rows",
        "process_activate_version_messages",
        "default_target_schema",
    }
)


def is_loopback_host(host: str) -> bool:
    """Loopback is the only place plain http is acceptable (the local sandbox, a tunnel on this machine)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_base32(secret: str) -> str:
    """Normalize a TOTP secret as authenticator apps show it (spaces, lower case) and prove it decodes."""
    cleaned = secret.replace(" ", "").replace("-", "").upper()
    if not cleaned:
        raise ValueError("is empty; paste the base32 secret shown when MFA was enrolled")
    try:
        base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError):
        raise ValueError(
            "is not valid base32 (letters A-Z and digits 2-7); copy the secret from the MFA enrollment "
            "screen, not the 6-digit code"
        ) from None
    return cleaned


DEFAULT_REQUESTS_PER_SECOND = 50.0

DEFAULT_WEBHOOK_CRITERIA = (
    "patient.created",
    "patient.name.changed",
    "patient.address.changed",
    "patient.telecom.changed",
    "patient.deactivated.changed",
    "prospect.status.changed",
    "practitioner.created",
    "practitioner.name.changed",
    "practitioner.address.changed",
    "practitioner.telecom.changed",
    "practitioner.deactivated.changed",
    "applicant.status.changed",
    "encounter.clockout.changed",
)
"""The documented criteria whose records the connector can fetch by id and normalize (fact sheet §5)."""


def with_product_defaults(data: Any) -> Any:
    """A Home Connect tenant needs only product, client_id and client_secret: host, auth and the vendor's
    100 requests/s budget are filled in (every one can still be set)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    named = data.get("product")
    product = DIALECTS.get(named) if isinstance(named, str) else None  # a bad value is reported by validation
    if product is not None and product.default_base_url and not data.get("base_url"):
        data["base_url"] = product.default_base_url
    if data.get("auth_method") in (None, ""):  # singer-sdk and Meltano pass unset keys as null
        data["auth_method"] = product.auth_methods[0] if product is not None and product.auth_methods else "session"
    if data.get("max_requests_per_second") in (None, ""):
        budget = product.rate_budget if product is not None else None
        data["max_requests_per_second"] = budget if budget is not None else DEFAULT_REQUESTS_PER_SECOND
    return data


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL (default ports left out)."""
    import httpx

    parsed = httpx.URL(url)
    return str(parsed.copy_with(path="/", query=None, fragment=None)).rstrip("/")


def _url_path(url: str) -> str:
    import httpx

    return httpx.URL(url).path


class WellSkyConfig(BaseModel):
    """Everything needed to reach one WellSky tenant. See docs/architecture.md for the meaning of each key."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, hide_input_in_errors=True)

    base_url: str | None = Field(
        default=None,
        description="Tenant API root, e.g. https://agency.wellsky.example/api. https:// is required except "
        f"for loopback hosts.{HOST_DEFAULTS} Empty otherwise: the tap starts the embedded sandbox.",
    )
    product: ProductName | None = Field(
        default=None,
        description=f"WellSky product line: {PRODUCT_LIST}; also the embedded sandbox's "
        "product (default home_health). Empty on a real tenant: detected with GET /tenant.",
    )
    auth_method: Literal["session", "oauth_client_credentials", "oauth_private_key_jwt"] | None = Field(
        default=None,
        description=f"How to authenticate. Empty: session{AUTH_DEFAULTS}.",
    )
    username: str | None = Field(default=None, description="Login for auth_method=session.")
    password: SecretStr | None = Field(default=None, description="Password for auth_method=session.")
    mfa_method: Literal["none", "totp", "sms", "email"] = Field(
        default="none", description="Second factor the tenant asks for at login."
    )
    totp_secret: SecretStr | None = Field(default=None, description="Base32 TOTP secret for mfa_method=totp.")
    mfa_code_source: Literal["command", "file", "sandbox_outbox"] = Field(
        default="command", description="Where SMS/email codes come from."
    )
    mfa_code_command: str | None = Field(
        default=None, description="Shell command that prints the 6-digit code (mfa_code_source=command)."
    )
    mfa_code_file: str | None = Field(
        default=None, description="File a fresh 6-digit code is written to (mfa_code_source=file)."
    )
    mfa_code_timeout_seconds: float = Field(default=120, gt=0, description="How long to wait for an MFA code.")
    client_id: str | None = Field(default=None, description="OAuth2 client id.")
    client_secret: SecretStr | None = Field(
        default=None, description="OAuth2 client secret (auth_method=oauth_client_credentials)."
    )
    private_key: SecretStr | None = Field(
        default=None,
        description="PEM private key signing the JWT assertion (auth_method=oauth_private_key_jwt).",
    )
    private_key_path: str | None = Field(
        default=None, description="Path to the PEM private key instead of private_key."
    )
    private_key_id: str | None = Field(default=None, description="kid of the registered public key.")
    jwt_algorithm: Literal["RS384", "ES384"] = Field(default="RS384", description="JWT assertion algorithm.")
    oauth_scopes: str | None = Field(
        default=None, description="Space-separated scopes, e.g. 'system/*.read system/*.write'."
    )
    token_url: str | None = Field(
        default=None,
        description="OAuth2 token endpoint; default {base_url}/oauth/token" + f"{TOKEN_DEFAULTS}.",
    )
    trusted_origins: list[str] = Field(
        default_factory=list,
        description="Other origins (https://host[:port]) that may receive credentials besides base_url and "
        "token_url: e.g. a SMART token endpoint or bulk file server on another host. Empty: only those two.",
    )
    save_error_bodies: bool = Field(
        default=False,
        description="Keep the raw body of each server error answer in a 0600 file in the private state "
        "directory (error messages then name the file). Off: server text is never stored or shown.",
    )
    timeout_seconds: float = Field(default=30, gt=0, description="Per-request timeout.")
    max_retries: int = Field(default=6, ge=0, le=50, description="Retries per request before giving up.")
    backoff_base_seconds: float = Field(default=0.5, ge=0, description="First retry backoff (doubles each retry).")
    backoff_max_seconds: float = Field(default=30, ge=0, description="Longest backoff between retries.")
    max_requests_per_second: float | None = Field(
        default=None,
        ge=0,
        description=f"Client-side rate limit; 0 disables it. Empty: 50{RATE_DEFAULTS}. It is the tenant's budget: "
        "processes on one machine sending to the same tenant (same base_url, user or client id, and state_dir) "
        "split it between them.",
    )
    max_response_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Largest response body read into memory (decoded); a larger one fails with a clear error "
        "instead of exhausting memory. Lower page_size if a legitimate page is larger.",
    )
    request_deadline_seconds: float = Field(
        default=300,
        gt=0,
        description="Overall time one request may take, headers and body, from when it is sent (a wait for the "
        "max_requests_per_second budget is not counted; timeout_seconds bounds each read); a server trickling its "
        "answer is cut off after this.",
    )
    page_size: int = Field(default=500, ge=1, le=1000, description="Records per page (1-1000).")
    max_windows_per_stream: int = Field(
        default=8,
        ge=1,
        le=32,
        description="REST and FHIR search: updated_at windows of one large stream read at once (within the "
        "max_requests_per_second budget), still emitted in order; 1 pages each stream serially.",
    )
    verify_tls: bool = Field(default=True, description="Verify the server certificate.")
    ca_bundle: str | None = Field(default=None, description="PEM CA bundle for a private CA.")
    start_date: datetime | None = Field(default=None, description="Earliest updated_at to sync.")
    source: SourceName = Field(default="api", description="Default channel for every stream.")
    stream_sources: dict[str, SourceName] = Field(
        default_factory=dict,
        description='Channel per stream, overriding source, e.g. {"encounters": "fhir"}.',
    )
    fhir_base_url: str | None = Field(
        default=None,
        description="FHIR R4 base for source=fhir and fhir_bulk, any path on base_url's host (e.g. "
        "https://agency.wellsky.example/r4/tenant-123); SMART discovery is read at "
        "<fhir_base_url>/.well-known/smart-configuration. Default: {base_url}/fhir.",
    )
    fhir_bulk_level: Literal["system", "patient", "group"] = Field(
        default="system",
        description="$export level for source=fhir_bulk: system ($export), patient (Patient/$export) or group "
        "(Group/{fhir_bulk_group_id}/$export; no practitioners at patient or group level).",
    )
    fhir_bulk_group_id: str | None = Field(default=None, description="Group id for fhir_bulk_level=group.")
    fhir_bulk_type_filter: list[str] = Field(
        default_factory=list,
        description='_typeFilter queries sent with the export, e.g. ["Encounter?_lastUpdated=ge2026-01-01"].',
    )
    fhir_bulk_full_export_days: int = Field(
        default=7, ge=0, le=366,
        description="fhir_bulk: every this many days one incremental sync runs a full export (no _since) instead "
        "of a _since one; a full export is a complete view, so records deleted since the last one are emitted with "
        "_sdc_deleted_at. 0: never (only a first sync or full refresh exports everything). Needs no start_date.",
    )
    fhir_bulk_poll_timeout_seconds: float = Field(
        default=3600, gt=0, description="Longest wait for a bulk export to finish (the job is resumed next run)."
    )
    fhir_bulk_parallel_downloads: int = Field(
        default=3, ge=1, le=16, description="NDJSON files of a bulk export downloaded at the same time."
    )
    fhir_bulk_job_dir: str | None = Field(
        default=None,
        description="Private directory (0700, files 0600) for bulk job resume state and the download spool; "
        "default <private state dir>/fhir-bulk.",
    )
    state_dir: str | None = Field(
        default=None,
        description="Private directory (0700, files 0600) for everything this connector keeps between runs: "
        "bulk spool and job, write ledger, audit, dead letters, data-quality reports, webhook queues, portal "
        "state. Default $XDG_STATE_HOME/tap-wellsky/<product>-<host> (one directory per tenant).",
    )
    fhir_identifier_systems: dict[IdentifierKind, list[str]] = Field(
        default_factory=dict,
        description="FHIR identifier system URLs per canonical identifier for this tenant, e.g. "
        '{"mrn": ["urn:oid:1.2.3.4"]}; without them MRN is the identifier of type MR (any system).',
    )
    hl7_timezone: str | None = Field(
        default=None,
        description="IANA time zone (e.g. America/Chicago) for HL7 timestamps sent without an offset; "
        "unset: such messages are refused.",
    )
    hl7_mrn_authorities: list[str] = Field(
        default_factory=list,
        description="HL7 PID-3 assigning authorities whose identifiers are the MRN (else identifier type MR).",
    )
    sftp_host: str | None = Field(default=None, description="SFTP host for the hl7_sftp and export channels.")
    sftp_port: int = Field(default=22, ge=1, le=65535, description="SFTP port.")
    sftp_username: str | None = Field(default=None, description="SFTP login.")
    sftp_password: SecretStr | None = Field(default=None, description="SFTP password.")
    sftp_private_key: SecretStr | None = Field(default=None, description="SFTP private key (PEM/OpenSSH).")
    sftp_host_key: str | None = Field(default=None, description="Expected SFTP host key ('ssh-ed25519 AAAA...').")
    sftp_known_hosts: str | None = Field(default=None, description="known_hosts file for the SFTP host.")
    sftp_hl7_dir: str = Field(default="/outbound/hl7", description="Remote directory of HL7 files.")
    sftp_export_dir: str = Field(default="/outbound/exports", description="Remote directory of export files.")
    max_export_file_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024 * 1024,
        description="Largest nightly export file downloaded over HTTP (GET /exports), spooled to a temporary file "
        "under TMPDIR: a file listed as larger is refused before its download, and one whose listing gives no size "
        "is cut here, so a runaway or endless download stops with a clear error instead of filling the disk. "
        "Raise it if the tenant's export files really are that large.",
    )
    sftp_after_read: Literal["keep", "archive", "delete"] = Field(
        default="keep",
        description="What to do with a remote HL7 file once its records were delivered: done by the run after the "
        "one that read it, when every HL7 stream's input state lists the file as delivered (a stopped or failed run "
        "removes nothing it read). keep or archive let a late HL7 record be checked against newer versions and "
        "sent; delete cannot, so such records are held back and reported.",
    )
    chromium_path: str = Field(default="/usr/bin/chromium", description="Chromium binary for the portal channel.")
    agency_timezone: str | None = Field(
        default=None,
        description="IANA time zone the agency's portal shows visit times in, e.g. America/Chicago (portal channel).",
    )
    portal_state_path: str | None = Field(
        default=None,
        description="JSON file where the portal channel keeps its last snapshot and finished offices (resume).",
    )
    portal_restart_every_pages: int = Field(
        default=250, ge=10, description="The portal channel restarts its browser after this many pages."
    )
    portal_wait_seconds: float = Field(
        default=60, gt=0, description="Longest wait for a portal spinner or client-rendered grid."
    )
    portal_tabs: int = Field(
        default=4,
        ge=1,
        le=8,
        description="Browser tabs of the one portal login that read patients of the same office at once (Kinnser).",
    )
    dead_letter_path: str | None = Field(
        default=None, description="JSONL file for records that could not be read or written."
    )
    webhook_events_path: str | None = Field(
        default=None,
        description="Event store of `python -m wellsky_core.webhooks serve`; enables the webhook_events stream.",
    )
    agency_id: str | None = Field(
        default=None,
        description="Home Connect (personal_care) agency id written as the agencyId meta.tag on writes and "
        "subscriptions; empty: learned from the agencyId tag of the tenant's own records.",
    )
    webhook_endpoint: str | None = Field(
        default=None,
        description="Home Connect: public https URL of the webhook receiver that subscriptions deliver to.",
    )
    webhook_header: SecretStr | None = Field(
        default=None,
        description="Home Connect: the header line every delivery carries (e.g. 'Authorization: Bearer <random>'); "
        "the receiver refuses deliveries without it.",
    )
    webhook_criteria: list[str] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_CRITERIA),
        description="Home Connect: subscription criteria to manage, e.g. patient.created, encounter.clockout.changed.",
    )
    home_connect_history_months: int = Field(
        default=12, ge=0, le=120,
        description="Home Connect: months of shifts and care logs the first sync reads when start_date is unset.",
    )
    home_connect_trailing_months: int = Field(
        default=2, ge=0, le=36,
        description="Home Connect: the re-read horizon. Later syncs re-read known clients' shifts and care logs "
        "from the first day of the month this many months before the last sync (where agencies edit: late "
        "clock-outs, addenda, back-dated cancellations, billing corrections) and emit only what changed; clients "
        "new to the sync are read in full. See docs/home-connect-incremental.md.",
    )
    home_connect_reconcile_days: int = Field(
        default=7, ge=0, le=31,
        description="Home Connect: every this many days one sync re-reads every client's whole schedule (history "
        "and future), catching changes older than the re-read horizon and deletions. 0: every sync.",
    )
    home_connect_future_months: int = Field(
        default=2, ge=0, le=24, description="Home Connect: months of scheduled shifts read ahead of today."
    )
    home_connect_shift_fanout: Literal["client", "caregiver"] = Field(
        default="client",
        description="Home Connect: read shifts per client (complete, one request per client and month) or per "
        "caregiver (far fewer requests, but shifts with no caregiver assigned are missed).",
    )
    home_connect_fanout_prospects: bool = Field(
        default=True,
        description="Home Connect: also read shifts and care logs of prospects and closed leads (complete). Off "
        "saves a request per lead and month where leads never have shifts.",
    )
    home_connect_concurrency: int = Field(
        default=8, ge=1, le=32,
        description="Home Connect: clients whose shifts and care logs are read in parallel (all requests share "
        "the max_requests_per_second budget).",
    )
    home_connect_task_logs: bool = Field(
        default=True,
        description="Home Connect: read each care log's task logs (one extra request per care log; the API "
        "has no bulk read).",
    )
    home_connect_first_page: Literal[0, 1] = Field(
        default=0,
        description="Home Connect: number of the first _page. 0 per the vendor Swagger audit; 1 per the older "
        "reference notes (a documented conflict).",
    )
    home_connect_locations_trailing_slash: bool = Field(
        default=False,
        description="Home Connect: search locations at /v1/locations/_search/ instead of the documented "
        "slash-less /v1/locations/_search (a documented conflict).",
    )

    # --- product defaults ---------------------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _product_defaults(cls, data: Any) -> Any:
        return with_product_defaults(data)

    # --- field validators -------------------------------------------------------------------------------

    @field_validator("base_url", "token_url", "fhir_base_url")
    @classmethod
    def _https_or_loopback(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        import httpx  # here, not at import: `--about` and discovery never need it (start-up time)

        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, TypeError):
            raise ValueError("is not a URL; use e.g. https://agency.wellsky.example/api") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http(s) URL such as https://agency.wellsky.example/api")
        if url.scheme == "http" and not is_loopback_host(url.host):
            raise ValueError(
                "uses plain http:// for a non-loopback host; use https:// (http is only allowed for "
                "localhost, 127.0.0.1 and ::1)"
            )
        if url.query or url.fragment:
            raise ValueError("must not carry a query string or fragment; give the API root only")
        return str(url).rstrip("/")

    @field_validator("trusted_origins", mode="before")
    @classmethod
    def _origins_list(cls, value: Any) -> Any:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("trusted_origins")
    @classmethod
    def _origins_shape(cls, value: list[str]) -> list[str]:
        return [cls._origin_only(item) for item in value]

    @classmethod
    def _origin_only(cls, item: str) -> str:
        checked = cls._https_or_loopback(item)
        import httpx

        url = httpx.URL(checked or "")
        if url.path not in ("", "/"):
            raise ValueError(f"{url.scheme}://{url.netloc.decode()}{url.path}: give an origin only (scheme://host[:port])")
        return f"{url.scheme}://{url.netloc.decode()}"

    @field_validator("agency_timezone")
    @classmethod
    def _iana_zone(cls, value: str | None) -> str | None:
        if not value:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not an IANA time zone name; use e.g. America/Chicago") from None
        return value

    @field_validator("totp_secret")
    @classmethod
    def _valid_base32(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        return SecretStr(_check_base32(value.get_secret_value()))

    @field_validator("webhook_criteria", mode="before")
    @classmethod
    def _criteria_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment / CLI spelling: comma-separated
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("oauth_scopes", mode="before")
    @classmethod
    def _scopes_as_string(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return " ".join(str(v) for v in value)
        return value

    @field_validator("stream_sources", "fhir_identifier_systems", mode="before")
    @classmethod
    def _stream_sources_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise ValueError('must be a JSON object such as {"encounters": "fhir"}') from None
        return value

    @field_validator("start_date")
    @classmethod
    def _start_date_not_ahead(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return value
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        if moment > datetime.now(UTC) + timedelta(days=1):  # a day's slack for time zones
            raise ValueError(f"is in the future ({moment.date()}): nothing would be read until then; use a past date")
        return value

    @field_validator("stream_sources")
    @classmethod
    def _stream_sources_known(cls, value: dict[str, str]) -> dict[str, str]:
        for stream in value:  # a misspelt stream was ignored: that stream silently kept `source`
            _require_stream(stream)
        return value

    @field_validator("fhir_bulk_type_filter", mode="before")
    @classmethod
    def _type_filter_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # environment and CLI spelling: a JSON array, or one filter
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    raise ValueError('must be a JSON array such as ["Encounter?_lastUpdated=ge2026-01-01"]') from None
            return [text]
        return value

    @field_validator("fhir_bulk_type_filter")
    @classmethod
    def _type_filter_shape(cls, value: list[str]) -> list[str]:
        for item in value:
            kind, sep, query = item.partition("?")
            if not sep or not kind.isalpha() or not query:
                raise ValueError(f"each filter must look like Type?param=value (got one without that shape: {kind!r})")
        return value

    @field_validator("hl7_timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if not value:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not an IANA time zone name such as America/Chicago") from None
        return value

    @field_validator("hl7_mrn_authorities", mode="before")
    @classmethod
    def _authorities_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("ca_bundle", "private_key_path", "mfa_code_file", "sftp_known_hosts", "fhir_bulk_job_dir")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    # --- cross-field rules --------------------------------------------------------------------------------

    @model_validator(mode="after")
    def _cross_fields(self) -> Self:
        problems = self.cross_field_problems()
        if problems:
            raise ValueError("; ".join(str(p) for p in problems))
        return self

    def cross_field_problems(self) -> list[ConfigProblem]:
        """Rules involving several keys; separate so :meth:`load` can report them with field errors."""
        problems: list[ConfigProblem] = []

        def need(field: str, why: str) -> None:
            if getattr(self, field, None) in (None, ""):
                problems.append(ConfigProblem(field, f"required {why}; set `{field}` or {ENV_PREFIX}{field.upper()}"))

        if self.auth_method == "session":
            need("username", "when auth_method=session")
            need("password", "when auth_method=session")
            if self.mfa_method == "totp":
                need("totp_secret", "when mfa_method=totp (the base32 secret from MFA enrollment)")
            elif self.mfa_method in ("sms", "email"):
                if self.mfa_code_source == "command":
                    need("mfa_code_command", f"when mfa_method={self.mfa_method} and mfa_code_source=command")
                elif self.mfa_code_source == "file":
                    need("mfa_code_file", f"when mfa_method={self.mfa_method} and mfa_code_source=file")
        else:
            need("client_id", f"when auth_method={self.auth_method}")
            if self.auth_method == "oauth_client_credentials":
                need("client_secret", "when auth_method=oauth_client_credentials")
            else:
                if self.private_key is None and not self.private_key_path:
                    problems.append(
                        ConfigProblem(
                            "private_key",
                            "required when auth_method=oauth_private_key_jwt; set `private_key` (PEM) or "
                            "`private_key_path`",
                        )
                    )
                else:
                    problem = self._private_key_problem()
                    if problem:
                        problems.append(problem)
                need(
                    "private_key_id",
                    "when auth_method=oauth_private_key_jwt (the kid the key was registered with)",
                )
        if self.fhir_base_url and self.base_url and _origin(self.fhir_base_url) != _origin(self.base_url):
            problems.append(
                ConfigProblem(
                    "fhir_base_url",
                    "must be on base_url's host (same scheme, host and port): the access token is only ever sent "
                    "to the tenant's own origin; give the FHIR path on that host, e.g. "
                    f"{_origin(self.base_url)}/r4/<tenant>",
                )
            )
        if "portal" in {self.source, *self.stream_sources.values()}:
            need("agency_timezone", "when a stream reads through source=portal (the portal shows visit times in "
                 "the agency's local time, e.g. America/Chicago)")
        if self.fhir_bulk_level == "group":
            need("fhir_bulk_group_id", "when fhir_bulk_level=group (the Group to export, e.g. from GET /fhir/Group)")
        product = DIALECTS.get(self.product or "")
        root = product.api_root if product is not None else None
        if root and self.base_url and _url_path(self.base_url).rstrip("/").endswith(root):
            problems.append(
                ConfigProblem(
                    "base_url",
                    f"give the {self.product} host root (e.g. {product.default_base_url}) without {root}; the "
                    f"connector adds {root}/ itself (a doubled {root}{root}/ breaks every call)",
                )
            )
        if product is not None and product.auth_methods and self.auth_method not in product.auth_methods:
            problems.append(
                ConfigProblem(
                    "auth_method",
                    f"{self.product} signs in with {' or '.join(product.auth_methods)} only; set auth_method="
                    f"{product.auth_methods[0]} or leave it unset",
                )
            )
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            problems.append(ConfigProblem("ca_bundle", "file does not exist; give the path of a PEM CA bundle"))
        if self.backoff_max_seconds < self.backoff_base_seconds:
            problems.append(
                ConfigProblem("backoff_max_seconds", "must be >= backoff_base_seconds; raise it or lower the base")
            )
        return problems

    def _private_key_problem(self) -> ConfigProblem | None:
        """Fail at config time, not at the first token request, when the key cannot sign."""
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        field = "private_key" if self.private_key is not None else "private_key_path"
        try:
            pem = self.private_key_pem()
        except OSError:
            return ConfigProblem("private_key_path", "cannot read the file; give the path of a PEM private key")
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            return ConfigProblem(field, "is not an unencrypted PEM private key (-----BEGIN PRIVATE KEY-----)")
        if self.jwt_algorithm == "RS384" and not isinstance(key, rsa.RSAPrivateKey):
            return ConfigProblem("jwt_algorithm", "RS384 needs an RSA key; set jwt_algorithm=ES384 for an EC key")
        if self.jwt_algorithm == "ES384" and not isinstance(key, ec.EllipticCurvePrivateKey):
            return ConfigProblem("jwt_algorithm", "ES384 needs an EC P-384 key; set jwt_algorithm=RS384 for RSA")
        return None

    # --- helpers --------------------------------------------------------------------------------------------

    def private_key_pem(self) -> bytes:
        """The signing key as PEM bytes, from ``private_key`` or ``private_key_path``."""
        if self.private_key is not None:
            key = self.private_key  # a plain str when built by model_construct in load()
            return (key.get_secret_value() if isinstance(key, SecretStr) else str(key)).encode()
        if self.private_key_path:
            return Path(self.private_key_path).expanduser().read_bytes()
        raise ConfigError("private_key", "set `private_key` (PEM) or `private_key_path`")

    def tls_verify(self) -> bool | ssl.SSLContext:
        """What httpx should verify the server with: a context for a private CA bundle, else verify_tls."""
        if self.ca_bundle and self.verify_tls:
            return ssl.create_default_context(cafile=self.ca_bundle)
        return self.verify_tls

    @property
    def fhir_base(self) -> str:
        """The FHIR base URL, no trailing slash: ``fhir_base_url``, else ``{base_url}/fhir`` (the one place
        that decides where the FHIR channels and SMART discovery go)."""
        if self.fhir_base_url:
            return self.fhir_base_url.rstrip("/")
        if not self.base_url:
            raise ConfigError("base_url", "set `base_url` (or `fhir_base_url`) to reach the tenant's FHIR API")
        return f"{self.base_url.rstrip('/')}/fhir"

    def resolved_token_url(self) -> str:
        """The OAuth2 token endpoint: ``token_url`` or ``{base_url}/oauth/token``."""
        if self.token_url:
            return self.token_url
        if not self.base_url:
            raise ConfigError("token_url", "set `token_url` or `base_url`")
        product = DIALECTS.get(self.product or "")
        if product is not None and product.token_path:  # at the host root, not under the API path
            import httpx

            origin = httpx.URL(self.base_url).copy_with(path="/", query=None)
            return str(origin).rstrip("/") + product.token_path
        return f"{self.base_url}/oauth/token"

    def secret_values(self) -> list[str]:
        """Every configured secret in clear, for the log redaction filter (never log this list)."""
        values: list[str] = []
        for name, field in type(self).model_fields.items():
            if _is_secret_annotation(field.annotation):
                value = getattr(self, name)
                if value is not None and value.get_secret_value():
                    values.append(value.get_secret_value())
        return values

    def private_state_dir(self) -> Path:
        """This tenant's private state directory (``state_dir`` or the per-tenant XDG default), created 0700."""
        from .private_files import private_dir

        return private_dir(self.private_state_path())

    def usable_state_dir(self) -> Path:
        """:meth:`private_state_dir`, or one ConfigError naming ``state_dir``: a run checks it before any work, so
        a directory it cannot create fails at once instead of after the sync, when the report is written."""
        from .private_files import UnsafePathError

        try:
            return self.private_state_dir()
        except UnsafePathError as exc:  # our own sentence: a symlink, not a directory, another user's
            raise ConfigError("state_dir", str(exc)) from None
        except OSError as exc:
            raise ConfigError(
                "state_dir", f"cannot create {self.private_state_path()} ({exc.strerror or type(exc).__name__}); "
                "point state_dir at a directory this user can write",
            ) from None

    def private_state_path(self) -> Path:
        """Where :meth:`private_state_dir` is, without creating it (for a use that may do without it)."""
        from .private_files import state_root, tenant_slug

        return Path(self.state_dir) if self.state_dir else state_root() / tenant_slug(self.product, self.base_url)

    def source_for(self, stream: str) -> str:
        """The channel a stream reads from: ``stream_sources[stream]`` or ``source``."""
        return self.stream_sources.get(stream, self.source)

    @classmethod
    def load(
        cls,
        mapping: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        ignore_keys: frozenset[str] = SDK_BUILTIN_KEYS,
    ) -> Self:
        """Validate a config mapping (plus ``WELLSKY_<KEY>`` environment fallbacks) or raise ConfigError.

        Keys in ``ignore_keys`` (settings singer-sdk/Meltano add on their own) are dropped silently; any
        other unknown key is an error naming the nearest valid key, so a typo never passes unnoticed.
        """
        environ = os.environ if env is None else env
        if mapping is not None and not isinstance(mapping, Mapping):  # a config file holding a list, a string
            raise ConfigError("config", f"must be a JSON object of settings, not a {type(mapping).__name__}")
        data: dict[str, Any] = {}
        for key, value in (mapping or {}).items():
            if key in ignore_keys:
                continue
            if value is None:
                continue
            data[key] = value
        for name in cls.model_fields:
            if name not in data:
                env_value = environ.get(f"{ENV_PREFIX}{name.upper()}")
                if env_value is not None and env_value != "":
                    data[name] = env_value
        data = with_product_defaults(data)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = _problems_from_validation(cls, exc, data)
            bad = {p.field for p in problems}
            valid_subset = {k: v for k, v in data.items() if k not in bad and k in cls.model_fields}
            try:  # with a bad product the cross-field rules would judge the wrong product's defaults: skip them
                partial = cls.model_construct(**valid_subset)
                if "product" not in bad:
                    problems += [p for p in partial.cross_field_problems() if p.field not in bad]
            except Exception:  # the partial model is best effort; field errors are already listed
                pass
            if not problems:  # a cross-field rule failed but could not be recomputed: report it as is
                problems = [
                    ConfigProblem("config", e["msg"].removeprefix("Value error, "))
                    for e in exc.errors(include_input=False, include_url=False)
                ]
            raise ConfigError.from_problems(problems) from None


class TapConfig(WellSkyConfig):
    """The tap's settings (and the Airbyte source's): everything the core needs plus the embedded sandbox."""

    sandbox: bool = Field(
        default=False,
        description="Use the embedded sandbox (synthetic data of `product`) even when base_url or credentials are "
        "set. Without base_url and credentials the embedded sandbox is used anyway.",
    )
    sandbox_scale: str | None = Field(
        default=None,
        description="Embedded sandbox size when base_url is unset (XS, S, M, L or a patient count; default S).",
    )
    sandbox_seed: int | None = Field(default=None, description="Embedded sandbox data seed (default 42).")
    sandbox_rate_limit: bool = Field(
        default=False,
        description="Embedded sandbox: emulate the vendor's request limit (the product's budget on the client, "
        "the soft limit on the sandbox). Off: a try-out runs at loopback speed; max_requests_per_second, when "
        "set, still applies.",
    )
    max_parallel_streams: int = Field(
        default=8,
        ge=1,
        le=32,
        description="Streams synced at once, all within the one max_requests_per_second budget (1: one stream "
        "at a time, as singer-sdk does; 8 keeps a 150 ms-away tenant's budget full).",
    )
    data_quality_report_path: str | None = Field(
        default=None,
        description="Where the data-quality JSON report of each sync is written (0600; its status and exit_code "
        "match the run's exit code). Default: data_quality.json in the tenant's private state directory.",
    )
    discover_all_streams: bool = Field(
        default=False,
        description="List every canonical stream in discovery, not only those the configured product and sources "
        "serve.",
    )
    quality_ignore: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Fields whose data-quality flags are expected, per stream, e.g. {"appointments": '
        '["service_code"]}: their flags are dropped from the records and not counted (nor against '
        "max_flagged_fraction). Fields a product's API never sends are expected already.",
    )
    accept_foreign_state: bool = Field(
        default=False,
        description="Use a state stamped for another product, host, agency or source instead of refusing it "
        "(only when you moved a tenant on purpose).",
    )
    max_flagged_fraction: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Fail the sync (exit 4) when a stream's share of records with data-quality flags exceeds "
        "this fraction (0-1); unset: flags are reported, never fatal.",
    )


    @field_validator("quality_ignore", mode="before")
    @classmethod
    def _quality_ignore_json(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment / CLI spelling
            try:
                return json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise ValueError('must be a JSON object such as {"appointments": ["service_code"]}') from None
        return value

    @field_validator("quality_ignore")
    @classmethod
    def _quality_ignore_known(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        import difflib  # only here and for misspellings: start-up does not pay for it

        from .models import ENTITIES

        for stream, fields in value.items():
            _require_stream(stream)
            known = list(ENTITIES[stream].model.model_fields)
            for path in fields:
                if path.split(".", 1)[0] not in known:
                    near = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
                    hint = f"did you mean `{near[0]}`?" if near else f"its fields are {', '.join(known)}"
                    raise ValueError(f"{stream}: no field {path!r}; {hint}")
        return value


def _require_stream(stream: str) -> None:
    """Refuse a setting's key that names no stream, with the nearest stream's name."""
    from .models import ENTITIES

    if stream not in ENTITIES:
        import difflib  # only for misspellings: start-up does not pay for it

        near = difflib.get_close_matches(stream, list(ENTITIES), n=1, cutoff=0.6)
        hint = f"did you mean `{near[0]}`?" if near else f"streams are {', '.join(ENTITIES)}"
        raise ValueError(f"names no stream {stream!r}; {hint}")


class TargetConfig(WellSkyConfig):
    """The target's settings: everything the core needs plus how writes are governed."""

    model_config = ConfigDict(defer_build=True)  # built when the target loads it, not at every tap start

    authorization_policy: Literal["enforce", "warn", "off"] = Field(
        default="enforce",
        description="enforce: refuse appointments the payer authorization does not cover; warn: write and "
        "log; off: do not check.",
    )
    dry_run: bool = Field(default=False, description="Validate and resolve every write but send nothing.")
    write_concurrency: int = Field(default=8, ge=1, le=64, description="Parallel writes.")
    audit_log_path: str | None = Field(default=None, description="JSONL audit log of every write.")
    write_ledger_path: str | None = Field(
        default=None,
        description="SQLite ledger of what earlier runs wrote: a record identical to its last successful write "
        "is skipped without asking WellSky (reverse-ETL diffing). Off: every record is compared with WellSky.",
    )
    strict: bool = Field(default=False, description="Unknown streams are errors instead of warnings.")
    home_connect_appointment_writes: bool = Field(
        default=False,
        description="Home Connect: the tenant exposes appointment (shift) writes. No source confirms them, so "
        "the appointments stream is refused up front unless this is set.",
    )
    audit_hash_secret: SecretStr | None = Field(
        default=None,
        description="Per-tenant secret keying the audit log's key_hash and the write ledger's hashes "
        "(HMAC-SHA256 of the natural key). Unset: a random one is kept next to the audit log "
        "(<audit_log_path>.key, 0600), else one derived from the tenant's credentials.",
    )
    max_record_bytes: int = Field(
        default=16_000_000,
        ge=1_000,
        description="Longest input line accepted; longer ones are refused (dead-lettered as received).",
    )
    max_record_depth: int = Field(
        default=32,
        ge=4,
        le=200,
        description="Deepest nesting accepted in an input line; deeper ones are refused (dead-lettered as received).",
    )


def _is_secret_annotation(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


def secret_fields(model: type[BaseModel]) -> list[str]:
    """Names of the SecretStr keys of a config model."""
    return [name for name, field in model.model_fields.items() if _is_secret_annotation(field.annotation)]


def _problems_from_validation(
    model: type[BaseModel], exc: ValidationError, data: Mapping[str, Any] | None = None
) -> list[ConfigProblem]:
    """Turn pydantic errors into (field, fix) without ever echoing the input value (it may be a secret).

    An enum value gets the nearest valid value (``personal-care`` -> did you mean `personal_care`?): the
    suggestion is one of the allowed values, never the input.
    """
    problems: list[ConfigProblem] = []
    valid = list(model.model_fields)
    for err in exc.errors(include_input=False, include_url=False):
        loc = err.get("loc") or ()
        if not loc:
            continue  # cross-field rule: recomputed by the caller with structure intact
        field = str(loc[0])
        if err["type"] == "extra_forbidden":
            import difflib  # only for a misspelt key

            near = difflib.get_close_matches(field, valid, n=1, cutoff=0.6)
            hint = f"did you mean `{near[0]}`?" if near else "remove it (see docs/architecture.md for valid keys)"
            problems.append(ConfigProblem(field, f"unknown setting; {hint}"))
            continue
        msg = err.get("msg", "invalid value")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "literal_error":
            msg = _enum_hint(msg, (data or {}).get(field) if len(loc) == 1 else None)
        if len(loc) > 1:
            msg = f"{'.'.join(str(p) for p in loc[1:])}: {msg}"
        problems.append(ConfigProblem(field, f"{msg}; fix `{field}` or {ENV_PREFIX}{field.upper()}"))
    return problems


COMMAND_SETTINGS = ("mfa_code_command", "chromium_path")
"""Settings that make the connector run a program of the config's choosing (a shell command, a browser binary).

Plain settings for the Singer tap and target (the operator writes their config). On the Airbyte faces, whoever
may edit a connection's config in a workspace is not necessarily allowed to run commands in the connector's
container: there they are offered and accepted only when :data:`ALLOW_COMMAND_SETTINGS_ENV` is set on the
connector's host (the ``WELLSKY_<KEY>`` environment variables, set by the host's operator, always work)."""
ALLOW_COMMAND_SETTINGS_ENV = "WELLSKY_ALLOW_COMMAND_SETTINGS"


def command_settings_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the connector's host lets an Airbyte config carry :data:`COMMAND_SETTINGS`."""
    value = (os.environ if environ is None else environ).get(ALLOW_COMMAND_SETTINGS_ENV, "")
    return value.strip().lower() in ("1", "true", "yes")


def airbyte_spec_schema(
    model: type[BaseModel], title: str, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The Airbyte ``connectionSpecification``: the config schema, without :data:`COMMAND_SETTINGS` unless the
    host allows them, nothing required (the environment may supply any key) and open to the platform's keys."""
    schema = config_json_schema(model)
    if not command_settings_allowed(environ):
        for name in COMMAND_SETTINGS:
            schema["properties"].pop(name, None)
    schema["title"] = title
    schema["required"] = []
    schema["additionalProperties"] = True  # the platform may add its own keys; load() still rejects typos
    return schema


def refuse_command_settings(raw: Mapping[str, Any], *, environ: Mapping[str, str] | None = None) -> None:
    """ConfigError when an Airbyte config carries a :data:`COMMAND_SETTINGS` key the host does not allow."""
    if command_settings_allowed(environ):
        return
    present = [name for name in COMMAND_SETTINGS if raw.get(name) not in (None, "")]
    if present:
        raise ConfigError(
            present[0],
            "runs a program on the connector's host, so an Airbyte config may not set it; remove it, or have "
            f"the host's operator set {ENV_PREFIX}{present[0].upper()} or {ALLOW_COMMAND_SETTINGS_ENV}=1 there",
        )


def _enum_hint(msg: str, given: Any) -> str:
    """pydantic's 'Input should be 'a' or 'b'' with the nearest allowed value named first."""
    import difflib
    allowed = re.findall(r"'([^']*)'", msg)
    if not isinstance(given, str) or not allowed:
        return msg
    folded = {value.casefold().replace("-", "_").replace(" ", "_"): value for value in allowed}
    guess = given.strip().casefold().replace("-", "_").replace(" ", "_")
    near = [folded[guess]] if guess in folded else difflib.get_close_matches(given, allowed, n=1, cutoff=0.5)
    return f"did you mean `{near[0]}`? ({msg})" if near else msg


def config_json_schema(model: type[BaseModel] = WellSkyConfig) -> dict[str, Any]:
    """A flat JSON schema of the config for the Singer, Airbyte and Meltano faces.

    Optional fields become ``"type": [X, "null"]`` (what Singer and Airbyte UIs understand), secrets
    carry ``"secret": true`` (Singer SDK / Meltano) and ``"airbyte_secret": true``. No key is required by
    the schema: every key may also come from the environment, and :meth:`WellSkyConfig.load` checks the
    combinations.
    """
    raw = model.model_json_schema()
    secrets = set(secret_fields(model))
    properties: dict[str, Any] = {}
    for name, prop in raw.get("properties", {}).items():
        prop = dict(prop)
        options = prop.pop("anyOf", None)
        if options:
            non_null = [o for o in options if o.get("type") != "null"]
            if len(non_null) == 1:
                inner = dict(non_null[0])
                if "type" in inner:
                    inner["type"] = [inner["type"], "null"]
                if "enum" in inner:
                    inner["enum"] = [*inner["enum"], None]
                prop = {**inner, **prop}
            else:
                prop["anyOf"] = options
        prop.pop("writeOnly", None)
        if name in secrets:
            prop["secret"] = True
            prop["airbyte_secret"] = True
            prop["writeOnly"] = True
            prop.pop("format", None)
        properties[name] = prop
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": raw.get("title", model.__name__),
        "type": "object",
        "properties": properties,
    }
