"""Where a WAN-like sync's wall time goes, counted rather than timed: round trips on each stream's critical path.

``python bench/critical_path.py --config tap.json`` runs tap-wellsky in this process with every request
recorded (send and answer times, thread) and prints, per stream, its requests, its windows and the longest
chain of dependent requests (the first page, then the pages of its longest window, one after another). On a
shared machine the wall time says more about the load than about the connector; the chain length times the
latency is the part of it the connector decides. Also printed: request round-trip times (median, p90) and
requests sent per 100 ms, which show whether the budget (not the chains) was the bound.
"""

from __future__ import annotations

import argparse
import atexit
import json
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from typing import Any
from urllib.parse import parse_qsl

import httpx

SENT: list[tuple[float, float, str, str, str]] = []
START = time.monotonic()
_send = httpx.Client.send


def _recording_send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
    sent = time.monotonic() - START
    try:
        return _send(self, request, **kwargs)
    finally:
        query = request.url.query.decode() if isinstance(request.url.query, bytes) else str(request.url.query)
        SENT.append((sent, time.monotonic() - START, threading.current_thread().name, request.url.path, query))


def report() -> None:
    if not SENT:
        return
    rows = sorted(SENT)
    chains: dict[str, Counter[str]] = defaultdict(Counter)
    for _, _, _, path, query in rows:
        # one window = the same query without its cursor; the first page and the unbounded window 1 share a key
        params = [(k, v) for k, v in parse_qsl(query) if k not in ("cursor", "_cursor")]
        chains[path][repr(params)] += 1
    print(f"{'path':<28}{'requests':>9}{'windows':>8}{'chain':>6}", file=sys.stderr)
    for path, windows in sorted(chains.items()):
        print(f"{path[-27:]:<28}{sum(windows.values()):>9}{len(windows):>8}{max(windows.values()):>6}", file=sys.stderr)
    trips = sorted(end - sent for sent, end, *_ in rows)
    first = rows[0][0]
    per_100ms = Counter(int((sent - first) * 10) for sent, *_ in rows)
    print(
        f"{len(rows)} requests from {first:.2f}s to {max(end for _, end, *_ in rows):.2f}s; round trip median "
        f"{statistics.median(trips):.3f}s, p90 {trips[int(len(trips) * 0.9)]:.3f}s",
        file=sys.stderr,
    )
    print("sent per 100 ms: " + " ".join(str(per_100ms[i]) for i in range(max(per_100ms) + 1)), file=sys.stderr)
    longest = max(chains, key=lambda path: max(chains[path].values()))
    summary = {
        "requests": len(rows),
        "longest_chain": max(chains[longest].values()),
        "longest_path": longest,
        "rtt_median_s": round(statistics.median(trips), 3),
    }
    print(f"critical_path: {json.dumps(summary)}", file=sys.stderr)  # read by bench/wan.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--state")
    args = parser.parse_args()
    httpx.Client.send = _recording_send  # type: ignore[method-assign]
    atexit.register(report)
    from tap_wellsky.tap import TapWellSky
    from wellsky_core.cli import tune_gc

    tune_gc()  # as the tap-wellsky command does: without it the collector alone took seconds of a FHIR M sync

    sys.argv = ["tap-wellsky", "--config", args.config, *(["--state", args.state] if args.state else [])]
    TapWellSky.cli()


if __name__ == "__main__":
    main()
