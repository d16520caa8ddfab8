"""The real ksmd's clock: its CPU time, its run-queue wait, and the time between full scans.

``/proc/PID/schedstat`` of the ksmd kernel thread holds the nanoseconds it ran
and the nanoseconds it waited for a CPU. Other load on a shared machine delays
ksmd's wake-ups (the wait), which a model of ksmd alone does not have, so the
full-scan times here leave the wait out; CPU time per scan is ksmd's own work,
whatever else runs.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from sysfs_emu.realksm import guard
from sysfs_emu.realksm.guard import RealKsmError, read_counter


def ksmd_schedstat() -> Path | None:
    """/proc/PID/schedstat of the ksmd kernel thread, None when there is none."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text() == "ksmd\n" and (comm.parent / "schedstat").exists():
                return comm.parent / "schedstat"
        except OSError:
            continue
    return None


BOOST_NICE = -20


@contextlib.contextmanager
def boosted():
    """ksmd at nice -20 meanwhile (then back to its own nice value): other load on the machine then
    rarely delays its batches, so what is measured is close to what an unloaded machine shows."""
    schedstat = ksmd_schedstat()
    pid = int(schedstat.parent.name) if schedstat else None
    if pid is None:
        yield
        return
    old = os.getpriority(os.PRIO_PROCESS, pid)
    os.setpriority(os.PRIO_PROCESS, pid, BOOST_NICE)
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, pid, old)


@dataclass(frozen=True)
class Sched:
    """ksmd's cumulative CPU time and run-queue wait, in seconds."""

    cpu: float
    wait: float


def sched(schedstat: Path | None) -> Sched:
    """ksmd's CPU time and run-queue wait so far (0 when unknown)."""
    if schedstat is None:
        return Sched(0.0, 0.0)
    try:
        ran, waited = schedstat.read_text().split()[:2]
        return Sched(int(ran) / 1e9, int(waited) / 1e9)
    except (OSError, ValueError):
        return Sched(0.0, 0.0)


def runqueue_wait(schedstat: Path | None) -> float:
    """Seconds ksmd has waited for a CPU (schedstat's second field); 0 when unknown."""
    return sched(schedstat).wait


def wait_full_scans(target: int, timeout: float = 30.0) -> None:
    """Wait until the real ksmd has completed ``target`` full scans."""
    deadline = time.monotonic() + timeout
    while read_counter("full_scans") < target:
        if time.monotonic() > deadline:
            raise RealKsmError(f"the real ksmd did not reach {target} full scans in {timeout:g} s")
        time.sleep(0.002)


@dataclass(frozen=True)
class ScanEnd:
    """The moment a full scan ended: the wall clock and ksmd's schedstat then."""

    wall: float
    sched: Sched


def scan_ends(scans: int, timeout: float = 60.0, poll: float = 0.0005) -> list[ScanEnd]:
    """The next ``scans + 1`` full-scan ends of the running real ksmd."""
    schedstat = ksmd_schedstat()
    deadline = time.monotonic() + timeout
    last = read_counter("full_scans")
    ends: list[ScanEnd] = []
    while len(ends) <= scans:
        now = read_counter("full_scans")
        if now != last:
            ends.append(ScanEnd(time.monotonic(), sched(schedstat)))
            last = now
        if time.monotonic() > deadline:
            raise RealKsmError("the real ksmd scans too slowly")
        time.sleep(poll)
    return ends


def real_scan_intervals(scans: int, timeout: float = 60.0) -> list[float]:
    """Seconds between consecutive full-scan ends of the running real ksmd, less the time it
    waited for a CPU meanwhile."""
    ends = scan_ends(scans, timeout)
    return [(b.wall - a.wall) - (b.sched.wait - a.sched.wait) for a, b in zip(ends, ends[1:])]


def real_scan_time(pts: int, sleep_ms: int, scans: int = 8) -> float:
    """The real ksmd's median full-scan time over a few scans (inside guard.real_ksm())."""
    guard.write("pages_to_scan", pts)
    guard.write("sleep_millisecs", sleep_ms)
    guard.write("run", 1)
    try:
        intervals = real_scan_intervals(scans, timeout=30)
    finally:
        guard.write("run", 0)
    return statistics.median(intervals[1:])
