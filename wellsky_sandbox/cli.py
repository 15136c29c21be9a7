"""``wellsky-sandbox serve|generate``: run an emulated WellSky tenant from the command line."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from . import server_packages_problem
from .generator import PRODUCTS, scale_to_patients
from .store import Store


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wellsky-sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start a tenant on loopback and print its URL and demo credentials")
    gen = sub.add_parser("generate", help="only generate a tenant's data file (and report how long it took)")
    for p in (serve, gen):
        p.add_argument("--scale", default="S", help="XS, S (1k patients), M (5k), L (100k) or a patient count")
        p.add_argument("--product", default="home_health", choices=PRODUCTS)
        p.add_argument("--seed", type=int, default=42)
        p.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="where tenant.sqlite lives (default: .sandbox/<product>-<scale>-<seed>)",
        )
    serve.add_argument("--port", type=int, default=0, help="HTTP port (0 = pick a free one)")
    serve.add_argument("--sftp-port", type=int, default=0, help="SFTP port (0 = pick a free one)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--mfa", action="store_true", help="require TOTP/SMS/email MFA at login")
    serve.add_argument("--read-only", action="store_true", help="refuse writes with 403")
    serve.add_argument("--faults", default="", help='e.g. "error=0.1,429=0.05,reset=0.02,slow=0.02,expire_every=50"')
    serve.add_argument(
        "--homeconnect",
        default="",
        help='personal_care Home Connect options, e.g. "appointment_writes=1,paging=ref" (see docs/sandbox-api.md)',
    )
    serve.add_argument(
        "--latency",
        default="",
        help="delay every request this long (e.g. 150ms), without blocking concurrent requests; WAN-like runs",
    )
    serve.add_argument("--jitter", default=None, help="latency spread, uniform +-; default a fifth of --latency")
    serve.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        help="soft limit in requests/s: answered, overruns counted in /_sandbox/stats (default: the product's, "
        "100 for personal_care, else none)",
    )
    serve.add_argument(
        "--fhir-references",
        choices=("literal", "identifier"),
        default="literal",
        help="identifier: refer to practitioners by NPI (PractitionerRole.practitioner, Encounter/Appointment "
        "Practitioner?identifier=...) and offer no PractitionerRole _revinclude, as US Core servers do",
    )
    serve.add_argument("--ready-file", type=Path, help="also write the JSON line to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = server_packages_problem() if args.command == "serve" else None
    if problem:
        print(f"wellsky-sandbox: {problem}", file=sys.stderr)
        return 2
    try:
        patients = scale_to_patients(args.scale)
        if args.command == "serve":
            from .faults import FaultPlan
            from .wan import WanPlan

            FaultPlan.parse(args.faults)
            WanPlan.parse(args.latency, args.jitter)
            if args.rate_limit is not None and args.rate_limit < 0:
                raise ValueError("--rate-limit must be >= 0 requests/s (0: none)")
            if args.homeconnect:
                from .homeconnect import Options

                Options.parse(args.homeconnect)
    except ValueError as exc:
        print(f"wellsky-sandbox: {exc}", file=sys.stderr)
        return 2
    data_dir = args.data_dir or Path(".sandbox") / f"{args.product}-{args.scale}-{args.seed}"
    if args.command == "generate":
        started = time.perf_counter()
        store = Store(data_dir / "tenant.sqlite")
        try:
            counts = store.seed(args.product, patients, args.seed)
        except ValueError as exc:
            print(f"wellsky-sandbox: {exc}", file=sys.stderr)
            return 2
        print(
            json.dumps(
                {
                    "data_dir": str(data_dir),
                    "counts": counts,
                    "records": sum(counts.values()),
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
        )
        return 0
    from .server import SandboxServer

    server = SandboxServer(
        scale=patients,
        product=args.product,
        seed=args.seed,
        data_dir=data_dir,
        port=args.port,
        sftp_port=args.sftp_port,
        mfa=args.mfa,
        read_only=args.read_only,
        faults=args.faults or None,
        host=args.host,
        homeconnect=args.homeconnect or None,
        latency=args.latency or None,
        jitter=args.jitter,
        rate_limit=args.rate_limit,
        fhir_references=args.fhir_references,
    )
    try:
        server.start()
    except ValueError as exc:
        print(f"wellsky-sandbox: {exc}", file=sys.stderr)
        return 2
    assert server.tenant is not None
    counts = server.tenant.counts
    if hasattr(server.tenant, "homeconnect"):  # personal care: what its API serves, not the whole generated agency
        from .homeconnect import served_counts

        counts = served_counts(server.tenant)
    line = json.dumps({**server.credentials(), "mfa": args.mfa, "counts": counts, "data_dir": str(data_dir)})
    print(line, flush=True)
    if args.ready_file:
        args.ready_file.write_text(line + "\n")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
