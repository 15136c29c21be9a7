"""Opt-in conformance run: the ``fhir_bulk`` channel against SMART's reference Bulk Data server.

Not part of CI (the server's sources cannot be downloaded there). Set it up and start it as
``bench/bulk-reference-server/README.md`` says, then:

    python bench/bulk_reference.py --root http://127.0.0.1:PORT [--alg ES384] [--group ID] [--level system]

It registers a fresh JWKS at ``/auth/register`` (the server's own registration), then runs the channel exactly as
the tap does: SMART discovery on the token-protected base (``<root>/<base64url({"secure":true})>/fhir``) finds
the token endpoint, the client authenticates with a private_key_jwt assertion, one ``$export`` serves every
stream the server has, the NDJSON files are streamed into the spool and normalized. Prints per stream the
records emitted and dead-lettered (with the reasons' field names), the export's transactionTime, then an
incremental run from that transactionTime. Exit 1 when nothing could be read.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from wellsky_core.channels import open_channel
from wellsky_core.config import WellSkyConfig
from wellsky_core.http.client import WellSkyClient
from wellsky_core.models import ENTITIES


def _b64(n: int, length: int | None = None) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(length or (n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def make_key(alg: str) -> tuple[str, str, dict[str, Any]]:
    """(private PEM, kid, public JWKS)."""
    kid = "wellsky-" + uuid.uuid4().hex[:10]
    if alg == "RS384":
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = key.public_key().public_numbers()
        jwk = {"kty": "RSA", "alg": alg, "kid": kid, "n": _b64(pub.n), "e": _b64(pub.e)}
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        pub = key.public_key().public_numbers()
        jwk = {"kty": "EC", "alg": alg, "kid": kid, "crv": "P-384", "x": _b64(pub.x, 48), "y": _b64(pub.y, 48)}
    jwk.update(use="sig", key_ops=["verify"])
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, kid, {"keys": [jwk]}


def run(root: str, alg: str, level: str, group: str | None, work: Path) -> int:
    pem, kid, jwks = make_key(alg)
    client_id = httpx.post(f"{root}/auth/register", data={"jwks": json.dumps(jwks)}, timeout=30).text.strip()
    secure = base64.urlsafe_b64encode(b'{"secure":true}').rstrip(b"=").decode()
    dead = work / "dead-letter.jsonl"
    settings = {
        "base_url": f"{root}/{secure}",
        "product": "home_health",  # the reference server has no GET /tenant; the product only names the dialect
        "auth_method": "oauth_private_key_jwt",
        "client_id": client_id,
        "private_key": pem,
        "private_key_id": kid,
        "jwt_algorithm": alg,
        "oauth_scopes": "system/*.read",
        "source": "fhir_bulk",
        "fhir_bulk_level": level,
        "fhir_bulk_group_id": group,
        "fhir_bulk_job_dir": str(work / "jobs"),
        "dead_letter_path": str(dead),
        "max_requests_per_second": 0,
        "timeout_seconds": 120,
    }
    config = WellSkyConfig.load(settings, env={})
    print(f"reference server {root}, {level} level{f' Group/{group}' if group else ''}, {alg}")
    with WellSkyClient(config) as client:
        channel = open_channel("fhir_bulk", config, client, "home_health")
        started = time.monotonic()
        emitted: dict[str, int] = {}
        for entity in ENTITIES:
            if channel.supports(entity):
                emitted[entity] = sum(1 for _ in channel.iter_records(entity, None))
        seconds = time.monotonic() - started
        point = next((channel.resume_point(e) for e in emitted), None)
        metrics = client.metrics.snapshot()
        channel.close()
        refused, reasons = _dead_letters(dead)
        print(f"  {'stream':<16}{'emitted':>9}{'refused':>9}  top refusal reasons")
        for entity in emitted:
            top = ", ".join(f"{r} x{n}" for r, n in reasons[entity].most_common(3))
            print(f"  {entity:<16}{emitted[entity]:>9}{refused[entity]:>9}  {top}")
        print(f"  updated_at taken from transactionTime (no meta.lastUpdated): {channel.undated}")
        print(f"  not exported by this server: {', '.join(e for e in ENTITIES if e not in emitted)}")
        print(
            f"  full export: {seconds:.1f} s, {metrics['requests']} requests, {metrics['retries']} retries, "
            f"transactionTime {point}"
        )
        if point is None:
            return 1
        channel = open_channel("fhir_bulk", config, client, "home_health")
        started = time.monotonic()
        again = {e: sum(1 for _ in channel.iter_records(e, point)) for e in emitted}
        channel.close()
        print(f"  incremental from transactionTime: {again} in {time.monotonic() - started:.1f} s")
    total = sum(emitted.values()) + sum(refused.values())
    return 0 if total else 1


def _dead_letters(path: Path) -> tuple[collections.Counter[str], dict[str, collections.Counter[str]]]:
    refused: collections.Counter[str] = collections.Counter()
    reasons: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            stream = entry.get("stream", "?")
            refused[stream] += 1
            reason = re.sub(r" \(record [^)]*\)", "", str(entry.get("reason", "")))
            reasons[stream][reason[:100]] += 1
    return refused, reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="reference server root printed by start.sh")
    parser.add_argument("--alg", choices=("RS384", "ES384"), default="ES384")
    parser.add_argument("--level", choices=("system", "patient", "group"), default="system")
    parser.add_argument("--group", help="Group id for --level group")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wellsky-bulk-ref-") as work:
        return run(args.root.rstrip("/"), args.alg, args.level, args.group, Path(work))


if __name__ == "__main__":
    sys.exit(main())
