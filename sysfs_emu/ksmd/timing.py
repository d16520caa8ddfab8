"""ksmd's clock and CPU cost: jiffies at HZ=250, the batch period, and what a batch's work costs.

Everything here is pure (no state, no memory model), so it can be checked on
its own.

A batch costs CPU time from :class:`CostModel` (measured on the real kernel),
then ksmd sleeps ``msecs_to_jiffies(sleep_millisecs)`` jiffies at HZ=250 on a
timer that fires one tick after that (the timer wheel rounds up), so a batch
period is ``(floor(work / tick) + jiffies + 1)`` ticks, or just the work when
``sleep_millisecs`` is 0. A full scan of N candidate pages takes
``N // pages_to_scan + 1`` batches: the batch that finds the end of the list
stops early, and when ``pages_to_scan`` divides N it is an empty one.
Measured on Linux 6.18 (4000 unchanging pages): pages_to_scan 100 with
sleep_millisecs 20 -> 41 x 6 ticks = 984 ms (real 988 ms), with 10 ms -> 41 x 4
ticks = 656 ms (real 656 ms), 1000 pages with 20 ms -> 4 x 7 + 6 ticks = 136 ms
(real 136 ms), sleep 0 -> 18.7 ms of work (real 18.2 ms).

The timing is that of an unloaded machine, with the per-page costs of a cost
profile (sysfs_emu.costs): the reference one, measured on the development
machine, or this machine's (``sysfs-emu calibrate``). Pages in huge pages are
costed as 4 KiB pages (Linux 6.18 visits them faster: 0.9 against 1.3 us for a
first visit on the development machine); each split has a cost of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

HZ = 250
TICK = 1.0 / HZ
_ROUNDING = 1e-6  # a float product meant to land on a tick lands on it, not just below

REFERENCE_TREE_LOG2 = 12
"""``CostModel.tree_base`` was measured with 2**12 = 4096 pages in the unstable tree."""


def msecs_to_jiffies(ms: int) -> int:
    """Linux's rounding (up) of milliseconds to jiffies at HZ=250."""
    return -(-int(ms) * HZ // 1000)


REFERENCE_COSTS = "reference profile (Linux 6.18, the development machine)"
"""Where the default per-page costs come from, as outputs name it."""


@dataclass
class CostModel:
    """CPU time ksmd spends, in seconds; by default the reference profile, measured on Linux 6.18.

    ``origin`` says where the figures come from, in the words every output that shows
    simulated time or ksmd CPU prints after "costs: " (sysfs_emu.costs loads and writes profiles).
    """

    ksm_page: float = 0.37e-6  # visit of a page already merged
    skipped: float = 0.30e-6  # page passed over by smart scan
    checksum: float = 1.0e-6  # visit whose checksum changed (or zero page merge)
    tree_base: float = 4.7e-6  # tree search + insert with 4096 pages in the unstable tree
    tree_per_level: float = 0.75e-6  # each doubling of the unstable tree
    merge: float = 1.5e-6  # each page merged into a KSM page (write-protect, replace the mapping)
    # each transparent huge page split (split_huge_page()), as calibrate measures it: a huge page of
    # empty pages, whose 512 parts also go to the zero page (0.69-1.0 ms on the development machine)
    split: float = 700e-6
    batch: float = 2e-6  # per wake-up
    origin: str = field(default=REFERENCE_COSTS, compare=False)

    def tree(self, unshared: int) -> float:
        """One tree search and insert with ``unshared`` pages in the unstable tree."""
        levels = math.log2(max(unshared, 2)) - REFERENCE_TREE_LOG2
        return max(self.checksum, self.tree_base + self.tree_per_level * levels)


@dataclass
class Work:
    """What one run of batches did, for the cost model."""

    visits: int = 0
    ksm: int = 0
    skipped: int = 0
    changed: int = 0
    tree: int = 0
    merges: int = 0
    splits: int = 0

    def seconds(self, cost: CostModel, unshared: int) -> float:
        """CPU seconds of this work with ``unshared`` pages in the unstable tree."""
        return (
            self.ksm * cost.ksm_page
            + self.skipped * cost.skipped
            + self.changed * cost.checksum
            + self.tree * cost.tree(unshared)
            + self.merges * cost.merge
            + self.splits * cost.split
        )


def wake_after(start: float, batches: int, work: float, sleep_ms: int, cost: CostModel) -> float:
    """When ksmd wakes again after ``batches`` batches of ``work`` CPU seconds each from ``start``."""
    if batches <= 0:
        return start
    jiffies = msecs_to_jiffies(sleep_ms)
    w = work + cost.batch
    if jiffies == 0:
        return start + batches * w
    # schedule_timeout(j) fires at the tick after jiffies + j (the timer wheel rounds up)
    first_tick = math.floor((start + w) * HZ + _ROUNDING)
    wake = (first_tick + jiffies + 1) * TICK
    if batches > 1:
        period = (math.floor(w * HZ + _ROUNDING) + jiffies + 1) * TICK
        wake += (batches - 1) * period
    return wake


def batch_period(work: float, sleep_ms: int, cost: CostModel) -> float:
    """Time from one wake-up to the next for batches of ``work`` CPU seconds (a period after the first)."""
    return wake_after(1.0, 2, work, sleep_ms, cost) - wake_after(1.0, 1, work, sleep_ms, cost)


@dataclass(frozen=True)
class Batches:
    """A run of batches as ksmd's clock sees it: how many, and the CPU work of each."""

    count: int
    full: float  # work of each batch that visited pages_to_scan pages
    last: float  # work of the last batch (the one that found the end of a full scan, or a full one)


def split_into_batches(seconds: float, visits: int, pages_to_scan: int, ended: bool) -> Batches:
    """Spread ``seconds`` of work over the batches that made ``visits`` visits.

    Full batches carry ``pages_to_scan`` visits each; when the run ``ended``
    a full scan, one more batch found the end of the list with the rest.
    """
    count = visits // pages_to_scan + 1 if ended else max(1, -(-visits // pages_to_scan))
    full = count - 1 if ended else count
    w_full = seconds * pages_to_scan / visits if visits else 0.0
    w_last = max(seconds - full * w_full, 0.0) if ended else w_full
    return Batches(count, w_full, w_last)
