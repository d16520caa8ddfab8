"""Full-scan time of the simulated ksmd and of the real one, for the timing test and its benchmark.

The configurations are split by what sets their time.  In ``SLEEP_BOUND`` a
batch's work is under a quarter of a 4 ms tick by the model's costs (at most
about 200 unique pages, each an unstable-tree search in the steady state), so
on a CPU up to four times slower than the one the costs were measured on it
still ends inside its tick, and a full scan takes batches x (the sleep rounded
up to jiffies + one tick): the model predicts that on every machine.  In
``CPU_SENSITIVE`` the work per batch can cross ticks (or there is no sleep at
all), so the time follows this CPU's speed: the model predicts it with the
costs of this machine (``sysfs-emu calibrate``). The timing test calibrates
first and requires both; ``bench/bench_scan_time.py`` shows the error of the
reference profile and of the calibrated one side by side.
"""

from __future__ import annotations

import statistics

from sysfs_emu.kernel import Kernel
from sysfs_emu.ksmd import CostModel, Ksmd
from sysfs_emu.memory import Memory
from sysfs_emu.realksm.ksmd_clock import (  # noqa: F401  (the real side lives in the product)
    ksmd_schedstat,
    real_scan_intervals,
    real_scan_time,
    runqueue_wait,
)

PAGES = 4000
# (pages_to_scan, sleep_millisecs)
SLEEP_BOUND = [(100, 20), (200, 20), (100, 10), (100, 1)]
CPU_SENSITIVE = [(300, 20), (1000, 20), (5000, 20), (100000, 0)]


def sim_scan_time(pages: int, pages_to_scan: int, sleep_ms: int, scans: int = 6, cost: CostModel | None = None) -> float:
    """The simulated ksmd's median full-scan time over ``scans`` scans of ``pages`` unique pages
    (with ``cost``, default the reference profile)."""
    kernel = Kernel()
    memory = Memory()
    ksmd = Ksmd(kernel, memory, cost=cost)
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
