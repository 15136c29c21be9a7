"""Talking to the Bulk Data server about one job: SMART discovery, kick-off, status polling and DELETE.

What each answer means (retry, re-login, fail) is the HTTP policy's (``http/policy.py``); this module adds only
what is particular to a bulk job: 202 is "in progress" (wait ``Retry-After``, capped, and poll again), 404/410
mean the job is gone (:class:`JobGone`: start it again), and a 5xx carrying an OperationOutcome without a
``transient`` issue means the job itself failed. Every status URL, whether just issued or read back from a job
file on resume, must be a trusted URL (``http/trust.py``) before it gets the access token.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from ...errors import ConfigError, RemoteError, WellSkyTransportError
from ...http.policy import is_retryable, needs_reauth, retry_after
from ...http.trust import describe, is_trusted

if TYPE_CHECKING:
    from ...config import WellSkyConfig
    from ...http.client import WellSkyClient

log = logging.getLogger(__name__)

MAX_POLL_WAIT_SECONDS = 120.0
"""Longest single wait between status polls (or file retries), whatever Retry-After says."""
_PERCENT = re.compile(r"\d{1,3}(?:\.\d+)?%")


class JobGone(Exception):
    """The server no longer knows the export job (expired or deleted): start it again."""


def json_or_none(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except (orjson.JSONDecodeError, httpx.ResponseNotRead):
        return None


def job_failed(response: httpx.Response) -> bool:
    """A 5xx with an OperationOutcome that is not ``transient`` means the job itself failed."""
    body = json_or_none(response)
    if not isinstance(body, Mapping) or body.get("resourceType") != "OperationOutcome":
        return False
    codes = {i.get("code") for i in body.get("issue") or [] if isinstance(i, Mapping)}
    return "transient" not in codes


def _percent(progress: str | None) -> str | None:
    """The percentage of an ``X-Progress`` header (server text is never logged as it is)."""
    found = _PERCENT.search(progress or "")
    return f"{found.group(0)} complete" if found else None


class BulkServer:
    """One tenant's Bulk Data endpoints, through the client (its rate limit, auth and metrics)."""

    def __init__(self, client: WellSkyClient, config: WellSkyConfig) -> None:
        self.client = client
        self.config = config

    # -- discovery ------------------------------------------------------------------------------------------
    def discover(self) -> dict[str, Any] | None:
        """SMART configuration (no credentials). With no ``token_url`` configured, a *trusted* advertised
        ``token_endpoint`` becomes the token URL; one on another origin is refused (it would get our secret)."""
        url = f"{self.config.fhir_base}/.well-known/smart-configuration"
        with self.client.stream("GET", url, authenticate=False) as response:
            self.client.read_body(response)
        if response.status_code != 200:
            log.info("no SMART configuration at %s (%s); using the configured token_url", url, response.status_code)
            return None
        smart = json_or_none(response)
        if not isinstance(smart, dict):
            log.warning("the SMART configuration at %s is not a JSON object; using the configured token_url", url)
            return None
        if self.config.auth_method == "oauth_private_key_jwt":
            algs = smart.get("token_endpoint_auth_signing_alg_values_supported")
            if isinstance(algs, list) and algs and self.config.jwt_algorithm not in algs:
                raise ConfigError(
                    "jwt_algorithm",
                    f"the server accepts {', '.join(map(str, algs))} for client assertions; set jwt_algorithm to one "
                    "of them (and register a matching key)",
                )
        auth = self.client.auth
        endpoint = smart.get("token_endpoint")
        if isinstance(endpoint, str) and endpoint and not self.config.token_url and hasattr(auth, "token_url"):
            if not is_trusted(endpoint, self.config):
                raise ConfigError(
                    "token_url",
                    f"the server's SMART configuration names a token endpoint on {describe(endpoint)}, another "
                    "origin than base_url; set token_url (or trusted_origins) to it if it is really your tenant's",
                )
            auth.token_url = endpoint
        return dict(smart)

    # -- kick-off -------------------------------------------------------------------------------------------
    def kickoff(self, kickoff: dict[str, Any]) -> str:
        """Start the export; returns its (trusted) status URL."""
        level = kickoff["level"]
        if level == "group":
            path = f"{self.config.fhir_base}/Group/{kickoff['group']}/$export"
        elif level == "patient":
            path = f"{self.config.fhir_base}/Patient/$export"
        else:
            path = f"{self.config.fhir_base}/$export"
        params: list[tuple[str, str]] = [
            ("_outputFormat", "application/fhir+ndjson"),
            ("_type", ",".join(kickoff["types"])),
        ]
        if kickoff["since"]:
            params.append(("_since", kickoff["since"]))
        params += [("_typeFilter", f) for f in kickoff["type_filter"]]
        headers = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
        response = self.client.request("GET", path, params=httpx.QueryParams(params), headers=headers, expected=(202,))
        location = response.headers.get("content-location")
        if not location:
            raise RemoteError(
                202,
                "no_content_location",
                f"the {level} $export kick-off answered 202 without Content-Location",
                url=path,
            )
        log.info(
            "bulk export started at %s level for %s (since %s)", level, ",".join(kickoff["types"]), kickoff["since"]
        )
        return str(self.trusted(location, what="the bulk status URL"))

    def trusted(self, link: str, *, what: str) -> httpx.URL:
        """A status or file URL that will carry the access token: the tenant's origin (or trusted) only."""
        return self.client.trusted_url(link, what=what, code="foreign_bulk_url")

    # -- polling --------------------------------------------------------------------------------------------
    def poll(self, status_url: str) -> dict[str, Any]:
        """Poll until the manifest, honouring ``Retry-After`` (capped) until ``fhir_bulk_poll_timeout_seconds``."""
        target = self.trusted(status_url, what="the bulk status URL")  # also when read back from a job file
        deadline = time.monotonic() + self.config.fhir_bulk_poll_timeout_seconds
        attempt = 0
        last_progress = None
        transient = 0
        while True:
            with self.client.stream("GET", target, headers={"Accept": "application/json"}) as response:
                self.client.read_body(response)
            status = response.status_code
            wait: float | None = None
            if status == 200:
                return self._manifest(response)
            if status == 202:
                progress = _percent(response.headers.get("x-progress"))
                if progress and progress != last_progress:
                    log.info("bulk export in progress: %s", progress)
                    last_progress = progress
                wait = retry_after(response)
                transient = 0
            elif status in (404, 410):
                raise JobGone(f"status URL answered {status}")
            elif needs_reauth(status):  # the auth flow already logged in again once
                raise RemoteError.from_response(response, fix="the bulk status URL refused the credentials")
            elif is_retryable(status) and not job_failed(response):
                transient += 1
                if transient > self.config.max_retries:
                    raise WellSkyTransportError(
                        "the bulk status URL kept failing; raise max_retries or check the server",
                        url=target,
                        status=status,
                        attempts=transient,
                    )
                wait = retry_after(response)
                self.client.metrics.add_retry(str(status))
            else:
                raise RemoteError.from_response(
                    response, fix="the bulk export failed on the server; start it again or check the server"
                )
            attempt += 1
            if wait is None:
                wait = min(30.0, 2.0 ** min(attempt, 5) / 2)
            wait = min(wait, MAX_POLL_WAIT_SECONDS)
            left = deadline - time.monotonic()
            if left <= 0:
                raise WellSkyTransportError(
                    f"the bulk export was not ready within fhir_bulk_poll_timeout_seconds="
                    f"{self.config.fhir_bulk_poll_timeout_seconds:g}; raise it (the job is kept and resumed next run)",
                    url=target,
                    status=status,
                    attempts=attempt,
                    reason="poll_timeout",
                )
            self.client.sleep(min(wait, left))

    @staticmethod
    def _manifest(response: httpx.Response) -> dict[str, Any]:
        manifest = json_or_none(response)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), list):
            raise RemoteError(200, "unexpected_shape", "the bulk status URL answered 200 without a manifest")
        log.info(
            "bulk export ready: %d file(s), %d error file(s), transactionTime %s",
            len(manifest["output"]),
            len(manifest.get("error") or []),
            manifest.get("transactionTime"),
        )
        return manifest

    # -- clean-up -------------------------------------------------------------------------------------------
    def delete(self, status_url: str) -> None:
        """DELETE the job so the server frees its files (failure to do so is logged, never fatal)."""
        try:
            target = self.trusted(status_url, what="the bulk status URL")
            with self.client.stream("DELETE", target) as response:
                self.client.read_body(response)
            if response.status_code not in (200, 202, 204, 404, 410):
                log.warning("the bulk job could not be deleted on the server (%s)", response.status_code)
        except (WellSkyTransportError, RemoteError) as exc:
            log.warning("the bulk job could not be deleted on the server: %s", exc)
