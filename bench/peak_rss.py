"""A child process's own peak RSS, read from ``/proc/<pid>/status`` (``VmHWM``) while it runs.

``ru_maxrss`` from ``os.wait4`` is not the child's own: Linux folds the memory map the child had before
``exec`` into it, and that map is the parent's (``vfork``/``fork``), so a tap started from a 400 MB pytest
worker "peaked" at 400 MB although it never passed 80 MB (measured: a 500 MB parent makes ``python -c pass``
report 513 MB). ``VmHWM`` is the high-water mark of the current map only, and it never goes down, so the
last reading before the process exits is its peak (less any growth in the final poll interval).
"""

from __future__ import annotations

import os
import resource
import time


def vm_hwm_kb(pid: int) -> int | None:
    """The process's high-water RSS in kB, or None once it has exited (a zombie has no memory map)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def wait_with_peak(pid: int, timeout: float, poll: float = 0.01) -> tuple[int, resource.struct_rusage, float]:
    """Wait for ``pid``: (exit code, its rusage, its own peak RSS in MB); kill it after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    peak_kb = 0
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), usage, peak_kb / 1024
        peak_kb = max(peak_kb, vm_hwm_kb(pid) or 0)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            deadline = float("inf")  # reaped on the next turn
        time.sleep(poll)
