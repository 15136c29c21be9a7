"""Client-side request window: stay under a tenant's request limit instead of discovering it through 429s."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tenant_share import TenantShare


class RequestWindow:
    """At most ``limit`` requests in any ``window`` seconds; thread-safe, first come first served.

    Why a sliding window and not a token bucket: a bucket with a burst of 1 spaces every request ``1/rate``
    apart, so a sync's first second (login, then every stream's first page at once) trickles out at the
    steady rate although the tenant would take all of them. The window lets the first ``limit`` requests go at
    once and, after that, each request takes the slot that the request ``limit`` places before it freed
    ``window`` seconds earlier. Both shapes give the same worst case at the tenant: any ``limit + 1`` requests
    span at least ``window`` seconds, so no second the tenant counts can hold more than ``limit`` while the
    requests' delays on their way to it differ by less than ``window - 1`` seconds.

    A caller finding the window full *reserves* its slot (the moment it may send) and sleeps outside the lock,
    so concurrent callers are served in arrival order and nobody spins.

    A slot is freed by when its request *reached the wire*, not by when it was granted: the transport reports
    the moment the request's headers were written (:meth:`sent`, from httpcore's ``trace`` extension) and
    settles its thread's grants when a send ends (:meth:`settle`). Between the grant and the socket a thread
    can wait for the GIL a hundred ms on a busy 2-core machine; counted from the grant, the bench's socket
    meter saw 104 requests in one second at scale M (``bench/wire_meter.py``). Counted from the wire, each
    slot's sends are at least ``window`` apart on the wire whatever the delays, so no ``window`` seconds hold
    more than ``limit``.

    With a :class:`~wellsky_core.http.tenant_share.TenantShare`, the budget is the tenant's and this process
    takes ``1 / n`` of it while n processes send to the tenant: every slot's window is n times as long, and a
    process joining others waits for them to slow down first (``tenant_share.py`` says how long, and why).
    """

    def __init__(
        self,
        limit: int,
        window: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        share: TenantShare | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1 request per window")
        if window <= 0:
            raise ValueError("window must be > 0 seconds")
        self.limit = limit
        self.window = float(window)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._slots: deque[_Grant] = deque(maxlen=limit)  # the last ``limit`` grants, in grant order
        self._local = threading.local()  # each thread's grants not yet on the wire
        self.share = share
        self._divisor = 1  # the tenant share's divisor at the last grant

    @property
    def per_second(self) -> float:
        """Requests per second the window sustains now (``limit`` every ``window`` seconds, this process's share)."""
        return self.limit / (self.window * self._divisor)

    @classmethod
    def for_budget(
        cls,
        per_second: float | None,
        headroom: float,
        *,
        slices: int = 2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        share: TenantShare | None = None,
    ) -> RequestWindow | None:
        """The window keeping ``per_second`` with ``headroom`` (e.g. 0.95) of slack, or None for no budget.

        The budget is cut into ``slices`` windows: at 100 req/s and 2 slices, 50 requests per 0.526 s, i.e. 95
        per second on average, 100 within the first 0.53 s, and any 101 requests spanning at least 1.053 s on the
        wire (53 ms for requests that reach the tenant with different delays). One slice would send 100 at once;
        a tenant (or the sandbox) that counts requests after queueing them then sees two such bursts drift into
        one of its seconds more easily (measured: 1 overrun in 551 requests at scale M on the loaded test
        machine), so the default halves the burst and keeps most of the first-second gain.
        """
        if not per_second or per_second <= 0:
            return None
        if not 0 < headroom <= 1:
            raise ValueError("headroom must be in (0, 1]")
        if slices < 1:
            raise ValueError("slices must be >= 1")
        limit = max(1, math.floor(per_second / slices))
        return cls(limit, limit / (per_second * headroom), clock=clock, sleep=sleep, share=share)

    def acquire(self) -> float:
        """Take one slot, sleeping until it is free; returns the seconds waited."""
        self.settle()  # this thread's earlier sends are over: a thread sends one request at a time
        share = self.share
        divisor = share.divisor() if share is not None else 1
        inherited = share.inherited_slots() if share is not None else []
        with self._lock:
            now = self._clock()
            self._divisor = divisor
            if inherited:  # the process this one continues spent these slots (tenant_share.py)
                spent = [_Grant(at) for at in inherited]
                for grant in spent:
                    grant.sent.set()
                merged = sorted([*self._slots, *spent], key=lambda grant: grant.at)
                self._slots = deque(merged[-self.limit :], maxlen=self.limit)
            window = self.window * divisor
            prior = self._slots[0] if len(self._slots) == self.limit else None
            at = now if prior is None else max(now, prior.at + window)
            if share is not None:
                at = max(at, share.hold_until())
            grant = _Grant(at)
            self._slots.append(grant)  # maxlen drops the oldest: the one whose slot this is
        self._pending().append(grant)
        wait = max(0.0, at - now)
        if wait:
            self._sleep(wait)
        if prior is not None:  # the slot's previous request may have reached the wire later than it reserved
            while not prior.sent.wait(UNREPORTED_SEND_SECONDS):
                self._settle(prior, self._clock())  # a send that never reports (a bug elsewhere) must not hang us
            with self._lock:
                due = prior.at + window
            late = due - max(self._clock(), at)
            if late > 0:
                self._sleep(late)
                wait += late
        if share is not None:
            share.sending()
        return wait

    def close(self) -> None:
        """No more requests: a tenant share hands this window's last slots to whichever process comes next."""
        if self.share is not None:
            with self._lock:
                last = [grant.at for grant in self._slots]
            self.share.close(last)

    def sent(self) -> None:
        """The calling thread's oldest pending request has just been written to its connection."""
        pending = self._pending()
        if pending:
            self._settle(pending.pop(0), self._clock())

    def settle(self) -> None:
        """The calling thread's send ended (answered or failed): its grants not reported sent count as sent now,
        which is never earlier than they reached the wire, if they did."""
        pending = self._pending()
        now = self._clock()
        while pending:
            self._settle(pending.pop(0), now)

    def _pending(self) -> list[_Grant]:
        pending = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = []
        return pending

    def _settle(self, grant: _Grant, on_wire: float) -> None:
        with self._lock:
            grant.at = max(grant.at, on_wire)
        grant.sent.set()


UNREPORTED_SEND_SECONDS = 60.0
"""A grant whose send is neither reported nor settled within this long counts as sent then (never expected:
every send path settles its thread's grants when it ends)."""


class _Grant:
    """One granted slot: when it may go (then: when it went on the wire), and whether that is known yet."""

    __slots__ = ("at", "sent")

    def __init__(self, at: float) -> None:
        self.at = at
        self.sent = threading.Event()
