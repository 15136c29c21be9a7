"""A response body has a size limit and a request an overall deadline (issue 16 #8).

Before: a 1.5 GB body drove the tap's RSS to 1.6 GB, and a server sending one byte a second kept it hanging far
past ``timeout_seconds`` (which bounds each read, not the request). A hostile loopback server floods or trickles
the first page; the tap (a real subprocess) must stop quickly with one line naming the setting, exit 2.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from bench.peak_rss import wait_with_peak

from .conftest import assert_no_traceback, child_env, tap_args
from .hostile import HostileServer, Reply, Route, config

CHUNK = b"x" * 65536


def _flood(chunked: bool) -> Route:
    def route(h: Reply, method: str, path: str, body: bytes) -> bool:
        if path == "/patients":  # endless, as fast as the socket takes it
            h.trickle(lambda: iter(lambda: CHUNK, None), 0.0, chunked=chunked)
            return True
        return False

    return route


def _drip(h: Reply, method: str, path: str, body: bytes) -> bool:
    if path == "/patients":
        h.trickle(lambda: iter(lambda: b" ", None), 1.0, length=10_000)  # one byte a second
        return True
    return False


def _run(tmp_path, cfg: dict) -> tuple[int, str, float, float]:
    """Exit code, stderr, seconds and the tap's own peak RSS (``bench/peak_rss.py``: ``os.wait4``'s
    ``ru_maxrss`` carries this pytest worker's own size into its child)."""
    started = time.monotonic()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(tap_args(tmp_path, cfg), stdout=stdout, stderr=stderr, env=child_env())
        # a tap that never stops fails the test (killed after 120 s), not the suite
        proc.returncode, _, peak_mb = wait_with_peak(proc.pid, timeout=120)
    return proc.returncode, err.read_text(), time.monotonic() - started, peak_mb


@pytest.mark.parametrize("chunked", [False, True], ids=["declared-terabyte", "chunked-no-length"])
def test_an_endless_body_is_cut_at_max_response_bytes(tmp_path, chunked):
    """A declared size over the limit is refused before reading; an undeclared one is read up to the limit."""
    with HostileServer(_flood(chunked)) as srv:
        code, err, seconds, peak_mb = _run(tmp_path, config(srv.base_url, max_response_bytes=20_000_000))
    assert code == 2, err[-2000:]
    assert_no_traceback(err, "flood")
    assert "max_response_bytes (20,000,000 bytes)" in err
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB"
    print(
        f"FIGURES endless body ({'chunked' if chunked else 'declared'}): stopped after {seconds:.1f} s, "
        f"peak RSS {peak_mb:.0f} MB"
    )


def test_a_trickling_server_is_cut_at_the_request_deadline(tmp_path):
    with HostileServer(_drip) as srv:
        cfg = config(srv.base_url, timeout_seconds=5, request_deadline_seconds=3, max_retries=1)
        code, err, seconds, _ = _run(tmp_path, cfg)
    assert code == 2, err[-2000:]
    assert_no_traceback(err, "drip")
    assert "request_deadline_seconds (3 s)" in err
    assert seconds < 40, f"took {seconds:.0f} s"  # two attempts of ~3 s plus start-up; unbounded before
    print(f"FIGURES one byte/s: stopped after {seconds:.1f} s (2 attempts, deadline 3 s)")
