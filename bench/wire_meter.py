"""Count requests where a tenant's rate limiter would: on the wire, stamped by the kernel as they arrive.

The sandbox's own meter (``wellsky_sandbox/wan.py::RateMeter``) counts a request when its event loop takes it.
On this 2-core machine that can be hundreds of ms after the request arrived (the loop is rendering pages), so a
backlog of requests that arrived evenly is counted in one second: it cannot tell a client that overran the
budget from a server that fell behind. This meter reads every packet on the loopback interface through a raw
``AF_PACKET`` socket with kernel receive timestamps (``SO_TIMESTAMPNS``): the time a request's first segment
reached the server's socket, whatever the server or this driver was doing then. It needs ``CAP_NET_RAW``
(root); without it the bench says so and keeps the sandbox's meter alone.

A request is a TCP segment to the sandbox's port whose payload starts with an HTTP method (HTTP/1.1 keep-alive:
one request per write, no pipelining from httpx); ``/_sandbox/`` control requests are the harness, not counted.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_HOST = 0  # delivered to this host (a loopback packet is also seen once as PACKET_OUTGOING)
METHODS = (b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS ")
SNAP = 256  # bytes of each packet kept: headers and the request line


class WireMeter:
    """Kernel arrival times of the requests to ``port`` on loopback while the meter runs."""

    def __init__(self, port: int, control_prefix: bytes = b"/_sandbox/") -> None:
        self.port = port
        self.control_prefix = control_prefix
        self.arrivals: list[float] = []
        self.drops = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @staticmethod
    def available() -> str | None:
        """None when raw capture works here, else why not."""
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
        except (PermissionError, OSError, AttributeError) as exc:
            return f"no raw packet capture ({type(exc).__name__}: needs root / CAP_NET_RAW on Linux)"
        return None

    def __enter__(self) -> WireMeter:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind(("lo", 0))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._read, name="wire-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # packets already stamped but not yet read by the thread
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            _, drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            self.drops += drops
            self._sock.close()

    def _read(self) -> None:
        assert self._sock is not None
        ancillary = socket.CMSG_SPACE(16)
        while not self._stop.is_set():
            try:
                data, anc, _, address = self._sock.recvmsg(SNAP, ancillary)
            except TimeoutError:
                continue
            if address[2] != PACKET_HOST:
                continue
            stamp = self._request_arrival(data, anc)
            if stamp is not None:
                self.arrivals.append(stamp)

    def _request_arrival(self, data: bytes, anc: list[tuple[int, int, bytes]]) -> float | None:
        """The kernel timestamp of a segment that starts a (non-control) request to our port, else None."""
        ip = data[14:]  # loopback frames carry a 14-byte (zeroed) Ethernet header
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
            return None
        tcp = ip[(ip[0] & 0x0F) * 4 :]
        if len(tcp) < 20 or struct.unpack("!H", tcp[2:4])[0] != self.port:
            return None
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if not payload.startswith(METHODS):
            return None
        if payload.split(b" ", 2)[1].startswith(self.control_prefix):
            return None
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanos = struct.unpack("qq", value[:16])
                return seconds + nanos / 1e9
        return None


def over_budget(arrivals: list[float], budget: int, window: float = 1.0) -> dict[str, Any]:
    """Requests that were the (budget+1)-th or later within any ``window`` seconds (sliding, so every
    alignment a tenant's counter could use), and the most requests any such window held."""
    times = sorted(arrivals)
    overruns = 0
    most = 0
    start = 0
    for end, stamp in enumerate(times):
        while stamp - times[start] >= window:
            start += 1
        held = end - start + 1
        most = max(most, held)
        if budget and held > budget:
            overruns += 1
    return {"requests": len(times), "overruns": overruns, "max_per_window": most}
