"""One tenant's request budget, shared by every process on this machine that sends to the tenant.

Why: ``max_requests_per_second`` is the tenant's budget (Home Connect asks for at most 100 requests/s), not a
process's. Two runs at once each paced at the whole budget: a scheduled incremental meeting a manual backfill,
a tap and a target of the same tenant, a ``check`` during a ``read``. Measured at scale M: 190 requests in one
tenant second and 329 requests over the budget. Each process now paces at ``budget / n``, where n counts the
processes sending to the tenant now.

How: a process that sends holds an exclusive ``flock`` on its own lease file in ``<state dir>/budget/<tenant>/``
and touches it while it sends. The kernel drops the lock when the process ends, however it ends (SIGKILL too),
so a lease whose lock can be taken is a dead process's and is removed. A live lease not touched for
:data:`ACTIVE_SECONDS` is an idle process's (a connection kept open between runs) and is not counted. A lease
holds a pid and a start time, nothing else.

Every change of n keeps every tenant second within the budget:

- a process that finds others sending when it starts (or resumes after an idle spell) sends nothing for
  ``RECHECK_SECONDS + SETTLE_SECONDS``: by then each other process has counted again (a count older than
  ``RECHECK_SECONDS`` is redone before a send) and has sent at its smaller share for a whole tenant second;
- a process that ended, or was killed, is still counted by the others for ``RECHECK_SECONDS + SETTLE_SECONDS``
  after its last send (its lease is touched at most ``RECHECK_SECONDS`` before each send, and once more when it
  closes), and an idle one for ``ACTIVE_SECONDS``: they take the larger share only once its last second is over;
- a process that starts right after one other ended (the next run of a schedule) continues that one's request
  window: the ended process wrote the times of its last slots into its lease when it closed, and the new one
  counts them as its own spent slots, so back-to-back runs neither wait nor overrun. After several ended
  processes, or a killed one (it wrote nothing), the new one waits until their last second is over.

Only processes that use the same state directory see each other. Runs on different machines (Airbyte's pods)
cannot: divide ``max_requests_per_second`` between them yourself (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

RECHECK_SECONDS = 0.25
"""How old a count may be before a send counts again (so a new process is seen within this long)."""
SETTLE_SECONDS = 1.1
"""A tenant second plus the pacing headroom's slack (1 / 0.95 s): how long a change of share waits."""
ACTIVE_SECONDS = 3.0
"""A lease not touched for this long is an idle process's: it is not counted until it sends again."""
log = logging.getLogger(__name__)

LEASE_SUFFIX = ".lease"
JOINING_SUFFIX = ".joining"
STALE_JOINING_SECONDS = 60.0
"""A joining file (created, then locked at once) still unlocked after this long was left by a crash."""


def lease_directory(state_dir: Path, base_url: str, identity: str | None) -> Path:
    """Where the processes sending to one tenant (its URL and the credential's user or client id) meet."""
    from ..private_files import account_slug

    return state_dir / "budget" / account_slug(base_url, identity)


class TenantShare:
    """This process's share of a tenant's budget: how many processes send to the tenant, counted with care."""

    def __init__(
        self,
        directory: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._n = 1
        self._counted_at = float("-inf")
        self._touched_at = float("-inf")
        self._hold_until = float("-inf")
        self._continued: set[str] = set()  # ended leases whose slots this one took over (not counted again)
        self._inherited: list[float] = []  # their slot times (clock), for the request window to take
        self._unshared = False  # the lease files cannot work here: paced alone, said once

    # -- what the request window asks ----------------------------------------------------------------------
    def divisor(self) -> int:
        """How many processes send to the tenant now, this one included: the budget's divisor.

        Asked before each request takes its slot; the first ask (and the first after an idle spell) joins."""
        with self._lock:
            if self._unshared:
                return 1
            now = self._clock()
            try:
                if self._fd is None or now - self._touched_at >= ACTIVE_SECONDS - RECHECK_SECONDS:
                    self._join(now)
                elif now - self._counted_at >= RECHECK_SECONDS:
                    self._n = len(self._scan()[0]) + 1
                    self._counted_at = now
            except OSError as exc:  # a state directory without flock (some network or FUSE file systems), full...
                self._give_up(exc)
                return 1
            return self._n

    def _give_up(self, exc: OSError) -> None:
        """Pace alone from now on (as before the budget was shared), and say so once: never fail a run for it."""
        self._unshared = True
        self._hold_until = float("-inf")
        log.warning(
            "the request budget cannot be shared with other processes here (%s in the state directory's budget/ "
            "folder): this process paces as if it were alone; do not run two syncs of this tenant at once, or set "
            "state_dir to a local directory", type(exc).__name__,
        )

    def hold_until(self) -> float:
        """The clock time before which this process must not send (its joining wait; in the past otherwise)."""
        with self._lock:
            return self._hold_until

    def inherited_slots(self) -> list[float]:
        """The slot times (clock) of the one process this one continues, once: the window counts them as spent."""
        with self._lock:
            slots, self._inherited = self._inherited, []
            return slots

    def sending(self) -> None:
        """A request is about to go: the lease shows it (at most every RECHECK_SECONDS)."""
        with self._lock:
            now = self._clock()
            if self._fd is not None and not self._unshared and now - self._touched_at >= RECHECK_SECONDS:
                try:
                    self._touch(now)
                except OSError as exc:
                    self._give_up(exc)

    def close(self, last_slots: Sequence[float] = ()) -> None:
        """Leave, writing the times (clock) of the window's last slots into the lease for a successor. The lease
        is unlocked, not removed: the others count it until this process's last second is over, then remove it."""
        with self._lock:
            fd, self._fd, self._path = self._fd, None, None
            if fd is None:
                return
            try:
                now, wall = self._clock(), self._wall()
                record = {"pid": os.getpid(), "ended": True, "last_slots": [wall - (now - at) for at in last_slots]}
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(record).encode(), 0)
                os.utime(fd, (wall, wall))
            except OSError:
                pass  # a lease without its slots is a killed process's to the others: they wait, they never overrun
            finally:
                os.close(fd)

    # -- the lease -----------------------------------------------------------------------------------------
    def _join(self, now: float) -> None:
        if self._fd is None:
            self._fd, self._path = self._take_lease()
        self._touch(now)
        others, ended = self._scan(counting_ended=False)
        self._n, self._counted_at = len(others) + 1, now
        if others:  # live processes: they slow down within RECHECK_SECONDS, and their last second must pass
            self._hold_until = now + RECHECK_SECONDS + SETTLE_SECONDS
            return
        slots = [_slots_of(path) for path, _ in ended]
        if len(ended) == 1 and slots[0] is not None:  # the next run of a schedule: continue its window
            wall = self._wall()
            self._inherited = [now - (wall - at) for at in slots[0]]
            self._continued.add(ended[0][0].name)
        elif ended:  # several, or one killed: wait until the last of their seconds is over
            self._hold_until = now + max(RECHECK_SECONDS + SETTLE_SECONDS - age for _, age in ended)

    def _take_lease(self) -> tuple[int, Path]:
        from ..private_files import private_dir

        directory = private_dir(self.directory)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        joining = directory / (name + JOINING_SUFFIX)
        fd = os.open(joining, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else has it open yet: never blocks
            started = datetime.now(UTC).isoformat(timespec="seconds")
            os.write(fd, json.dumps({"pid": os.getpid(), "started": started}).encode())
            lease = directory / (name + LEASE_SUFFIX)
            os.rename(joining, lease)  # already locked when it appears under its counted name
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                joining.unlink()
            raise
        return fd, lease

    def _touch(self, now: float) -> None:
        assert self._fd is not None
        wall = self._wall()
        os.utime(self._fd, (wall, wall))  # the others judge a lease's age by this clock (tests give a fake one)
        self._touched_at = now

    def _scan(self, *, counting_ended: bool = True) -> tuple[list[Path], list[tuple[Path, float]]]:
        """(other live leases touched within ACTIVE_SECONDS, ended ones touched within RECHECK_SECONDS +
        SETTLE_SECONDS with their age). With ``counting_ended`` the ended ones count as live (a running process
        takes the larger share only once their last second is over), except those this one continues. Older
        ended leases are removed on the way."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return [], []
        own = self._path.name if self._path is not None else None
        wall = self._wall()
        live: list[Path] = []
        ended: list[tuple[Path, float]] = []
        for name in names:
            if name == own or not name.endswith((LEASE_SUFFIX, JOINING_SUFFIX)):
                continue
            path = self.directory / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # removed meanwhile
            try:
                age = wall - os.fstat(fd).st_mtime
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if name.endswith(LEASE_SUFFIX) and age < ACTIVE_SECONDS:
                        live.append(path)
                    continue
                if name.endswith(JOINING_SUFFIX):
                    if age > STALE_JOINING_SECONDS:  # its maker died between creating and locking it
                        path.unlink(missing_ok=True)
                elif age >= RECHECK_SECONDS + SETTLE_SECONDS:
                    path.unlink(missing_ok=True)
                    self._continued.discard(name)
                elif counting_ended:
                    if name not in self._continued:
                        live.append(path)
                else:
                    ended.append((path, age))
            finally:
                os.close(fd)
        return live, ended


def _slots_of(path: Path) -> list[float] | None:
    """The wall times of an ended process's last slots, or None when it wrote none (it was killed)."""
    try:
        record = json.loads(path.read_bytes())
        slots = record["last_slots"] if record.get("ended") else None
        return [float(at) for at in slots] if isinstance(slots, list) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
