"""Full-scan time of the simulated ksmd and of the real one, for the timing test and its benchmark.

The configurations are split by what sets their time.  In ``SLEEP_BOUND`` a
batch's work is under a quarter of a 4 ms tick by the model's costs (at most
about 200 unique pages, each an unstable-tree search in the steady state), so
on a CPU up to four times slower than the one the costs were measured on it
still ends inside its tick, and a full scan takes batches x (the sleep rounded
up to jiffies + one tick): the model predicts that on every machine, and the
test requires it.  In ``CPU_SENSITIVE`` the work per batch can cross ticks (or
there is no sleep at all), so the time follows this CPU's speed: those are
compared by ``bench/bench_scan_time.py``, not by a test.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from sysfs_emu.kernel import Kernel
from sysfs_emu.ksmd import Ksmd
from sysfs_emu.memory import Memory
from tests import realksm
from tests.fidelity_workload import read_counter

PAGES = 4000
# (pages_to_scan, sleep_millisecs)
SLEEP_BOUND = [(100, 20), (200, 20), (100, 10), (100, 1)]
CPU_SENSITIVE = [(300, 20), (1000, 20), (5000, 20), (100000, 0)]


def sim_scan_time(pages: int, pages_to_scan: int, sleep_ms: int, scans: int = 6) -> float:
    """The simulated ksmd's median full-scan time over ``scans`` scans of ``pages`` unique pages."""
    kernel = Kernel()
    memory = Memory()
    ksmd = Ksmd(kernel, memory)
    for name, value in (("smart_scan", 0), ("pages_to_scan", pages_to_scan), ("sleep_millisecs", sleep_ms), ("run", 1)):
        kernel.write_attr(name, str(value))
    memory.add_region(1, memory.new_contents(pages))
    ksmd.advance(3600, until_full_scans=3)
    times = []
    for n in range(4, 4 + scans):
        before = ksmd.clock
        ksmd.advance(3600, until_full_scans=n)
        times.append(ksmd.clock - before)
    return statistics.median(times)


def ksmd_schedstat() -> Path | None:
    """/proc/PID/schedstat of the ksmd kernel thread, None when there is none."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text() == "ksmd\n" and (comm.parent / "schedstat").exists():
                return comm.parent / "schedstat"
        except OSError:
            continue
    return None


def runqueue_wait(schedstat: Path | None) -> float:
    """Seconds a thread has waited for a CPU (schedstat's second field); 0 when unknown."""
    if schedstat is None:
        return 0.0
    try:
        return int(schedstat.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def real_scan_intervals(scans: int, timeout: float = 60.0) -> list[float]:
    """Seconds between consecutive full-scan ends of the running real ksmd, less the time it
    waited for a CPU meanwhile: other load on a shared machine delays ksmd's wake-ups, which
    the model (an unloaded machine) does not have, and the kernel counts that delay."""
    schedstat = ksmd_schedstat()
    deadline = time.monotonic() + timeout
    last = read_counter("full_scans")
    stamps: list[tuple[float, float]] = []
    while len(stamps) <= scans:
        now = read_counter("full_scans")
        if now != last:
            stamps.append((time.monotonic(), runqueue_wait(schedstat)))
            last = now
        if time.monotonic() > deadline:
            raise TimeoutError("real ksmd scans too slowly")
        time.sleep(0.0005)
    return [(b[0] - a[0]) - (b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]


def real_scan_time(pts: int, sleep_ms: int) -> float:
    """The real ksmd's median full-scan time over a few scans (inside realksm.real_ksm())."""
    realksm.write("pages_to_scan", pts)
    realksm.write("sleep_millisecs", sleep_ms)
    realksm.write("run", 1)
    try:
        intervals = real_scan_intervals(8, timeout=30)
    finally:
        realksm.write("run", 0)
    return statistics.median(intervals[1:])
