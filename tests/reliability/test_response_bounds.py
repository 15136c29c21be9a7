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


def _trickled_head(where: str) -> Route:
    """The answer's status line and headers arrive one byte every 0.5 s (the body never comes): each read gets
    a byte well within ``timeout_seconds``, so only a deadline on the whole answer stops it."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-padding: " + b"p" * 400 + b"\r\n"
        b"content-length: 2\r\n\r\n{}"
    )

    def route(h: Reply, method: str, path: str, body: bytes) -> bool:
        if path != where:
            return False
        h.close_connection = True
        try:
            for byte in head:
                if h.stopping.is_set():
                    return True
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass
        return True

    return route


@pytest.mark.parametrize("where", ["/patients", "/sessions"], ids=["page", "login"])
def test_a_head_trickled_a_byte_at_a_time_is_cut_at_the_request_deadline(tmp_path, where):
    """``request_deadline_seconds`` was checked while a body streamed, not while the status line and headers
    arrived: headers trickled a byte at a time were bounded only per read by ``timeout_seconds`` (a 450-byte
    head at a byte per 0.5 s held each attempt ~4 minutes). The deadline now holds at the socket, head too."""
    with HostileServer(_trickled_head(where)) as srv:
        cfg = config(srv.base_url, timeout_seconds=5, request_deadline_seconds=3, max_retries=1)
        code, err, seconds, _ = _run(tmp_path, cfg)
    assert code == 2, err[-2000:]
    assert_no_traceback(err, "trickled head")
    assert "request_deadline_seconds (3 s)" in err, err[-1500:]
    if where == "/sessions":  # the operator is pointed at the sign-in, not at the request it was made for
        assert "the sign-in (POST)" in err and "/sessions" in err, err[-1500:]
    assert seconds < 40, f"took {seconds:.0f} s"  # two attempts of ~3 s plus start-up
    print(f"FIGURES head a byte per 0.5 s ({where}): stopped after {seconds:.1f} s (2 attempts, deadline 3 s)")


def _login(flood: bool, chunked: bool = False) -> Route:
    """The login answers 201 with a body that never ends (``flood``) or drips a byte a second."""

    def route(h: Reply, method: str, path: str, body: bytes) -> bool:
        if method == "POST" and path == "/sessions":
            h.send_response(201)
            h.send_header("content-type", "application/json")
            h.send_header("set-cookie", "wsk_session=sess-flood; Path=/")
            if chunked:
                h.send_header("transfer-encoding", "chunked")
            else:
                h.send_header("content-length", str(10**12 if flood else 10_000))
            h.end_headers()
            chunk = CHUNK if flood else b" "
            try:
                while not h.stopping.is_set():
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    h.wfile.flush()
                    if not flood:
                        time.sleep(1.0)
            except OSError:
                pass
            return True
        return False

    return route


@pytest.mark.parametrize(
    ("flood", "chunked"), [(True, False), (True, True), (False, False)], ids=["declared", "chunked", "drip"]
)
def test_a_login_answer_that_never_ends_stops_the_run_in_one_line(tmp_path, flood, chunked):
    """The login, MFA and token answers were read whole by httpx itself, outside max_response_bytes and the
    request deadline: a look-alike answering the login with an endless body drove the tap's memory up until it
    was killed, and one dripping a byte a second held it forever. A login answer is a few hundred bytes: past
    ``AUTH_ANSWER_BYTES`` or the deadline, the run stops with one line naming the endpoint's setting."""
    with HostileServer(_login(flood, chunked)) as srv:
        cfg = config(srv.base_url, timeout_seconds=5, request_deadline_seconds=3)
        code, err, seconds, peak_mb = _run(tmp_path, cfg)
    assert code == 2, err[-2000:]
    assert_no_traceback(err, "login")
    assert "login answer" in err and "base_url" in err, err[-1500:]
    assert "Pw-hostile-9f3KqZ" not in err and "sess-flood" not in err
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB"
    assert seconds < 40, f"took {seconds:.0f} s"
    kind = "flood" if flood else "drip"
    print(f"FIGURES login answer ({kind}): stopped after {seconds:.1f} s, peak {peak_mb:.0f} MB")


def test_an_endless_smart_configuration_is_cut_at_max_response_bytes(tmp_path):
    """Status documents read through ``client.stream`` (SMART discovery, bulk status, error pages) were read with
    ``response.read()``, whole: an endless discovery document took the tap's memory as a login answer did."""

    def route(h: Reply, method: str, path: str, body: bytes) -> bool:
        if path.endswith("/.well-known/smart-configuration"):
            h.trickle(lambda: iter(lambda: CHUNK, None), 0.0, chunked=True)
            return True
        return False

    with HostileServer(route) as srv:
        code, err, seconds, peak_mb = _run(tmp_path, config(srv.base_url, source="fhir_bulk",
                                                            max_response_bytes=5_000_000))
    assert code == 2, err[-2000:]
    assert_no_traceback(err, "smart")
    assert "max_response_bytes (5,000,000 bytes)" in err, err[-1500:]
    assert peak_mb < 400 and seconds < 40, (peak_mb, seconds)


def test_an_export_file_longer_than_its_listing_is_cut_there_not_spooled_to_the_disk(tmp_path):
    """A nightly export's body goes to a temporary file, checked against the listing's size once read: an endless
    one filled the disk before the check. The download now stops as soon as it is longer than listed."""
    served: list[int] = []
    with HostileServer(_export_route(served, 4096)) as srv:
        code, err, seconds, _ = _run(tmp_path, config(srv.base_url, source="export"))
    assert code != 0, err[-2000:]
    assert_no_traceback(err, "export")
    assert "size_mismatch" in err or "listing said 4096" in err, err[-1500:]
    assert sum(served) < 50 * 1024 * 1024, f"{sum(served):,} bytes served before the download stopped"
    assert seconds < 40, seconds


def _export_route(served: list[int], size: int | None) -> Route:
    """``GET /exports`` listing one full patients file (with ``size`` when given) whose body never ends."""

    def route(h: Reply, method: str, path: str, body: bytes) -> bool:
        if path == "/exports":
            item: dict = {"name": "patients_20261201T000000Z_1_full.csv",
                          "url": f"http://127.0.0.1:{h.server.server_address[1]}/files/patients.csv"}
            if size is not None:
                item["size"] = size
            h.send_json(200, [item])
            return True
        if path == "/files/patients.csv":
            def chunks():
                while True:
                    served.append(len(CHUNK))
                    yield CHUNK
            h.trickle(chunks, 0.0, chunked=True)
            return True
        return False

    return route


def test_an_export_file_whose_listing_gives_no_size_is_cut_at_max_export_file_bytes(tmp_path):
    """Without a size in the listing the download had no bound: an endless body filled the disk under TMPDIR (the
    test killed the tap after 120 s). It now stops at ``max_export_file_bytes``, in one line naming the setting."""
    served: list[int] = []
    with HostileServer(_export_route(served, None)) as srv:
        code, err, seconds, _ = _run(tmp_path, config(srv.base_url, source="export", max_export_file_bytes=2_000_000))
    assert code == 2, err[-2000:]
    assert_no_traceback(err, "export")
    assert "max_export_file_bytes (2,000,000 bytes)" in err, err[-1500:]
    assert sum(served) < 50 * 1024 * 1024, f"{sum(served):,} bytes served before the download stopped"
    assert seconds < 40, seconds


def test_an_export_file_listed_larger_than_max_export_file_bytes_is_not_downloaded(tmp_path):
    served: list[int] = []
    with HostileServer(_export_route(served, 10 * 1024**4)) as srv:  # a listed 10 TiB file
        code, err, _, _ = _run(tmp_path, config(srv.base_url, source="export"))
    assert code == 2, err[-2000:]
    assert_no_traceback(err, "export")
    assert "is listed at 10,995,116,277,760 bytes: over max_export_file_bytes (4,294,967,296 bytes)" in err, err[-1500:]
    assert served == [], f"{sum(served):,} bytes downloaded"


def test_an_export_file_sent_a_byte_at_a_time_is_cut_after_request_deadline_seconds(tmp_path):
    """Each byte came within ``timeout_seconds``, so the download of a listed 10,000-byte file at 5 bytes a second
    took over half an hour (the test killed the tap after 120 s). Past ``request_deadline_seconds`` a file download
    must average 16 KiB/s (``http/bodies.download_chunks``, shared with bulk files): one line naming the setting."""

    def route(h: Reply, method: str, path: str, body: bytes) -> bool:
        if path == "/exports":
            h.send_json(200, [{"name": "patients_20261201T000000Z_1_full.csv", "size": 10_000,
                               "url": f"http://127.0.0.1:{h.server.server_address[1]}/files/patients.csv"}])
            return True
        if path == "/files/patients.csv":
            h.trickle(lambda: iter(lambda: b"x", None), 0.2, length=10_000)
            return True
        return False

    with HostileServer(route) as srv:
        cfg = config(srv.base_url, source="export", timeout_seconds=5, request_deadline_seconds=2)
        code, err, seconds, _ = _run(tmp_path, cfg)
    assert code == 2, err[-2000:]
    assert_no_traceback(err, "export drip")
    assert "request_deadline_seconds (2 s)" in err and "16 KiB/s" in err, err[-1500:]
    assert seconds < 40, f"took {seconds:.0f} s"
    print(f"FIGURES export at 5 bytes/s: stopped after {seconds:.1f} s")
