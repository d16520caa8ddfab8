"""ksmd itself: its parts put together, the engine interface the kernel model calls, and simulated time.

:class:`Ksmd` reads its tunables through :class:`Tunables` (a
:class:`sysfs_emu.kernel.Kernel` has them all) and answers the kernel model's
:class:`sysfs_emu.kernel.Engine` calls; whoever builds both plugs it in::

    kernel = Kernel()
    ksmd = Ksmd(kernel, memory)
    kernel.engine = ksmd

:meth:`Ksmd.advance` is ksm_scan_thread() on a simulated clock: wake, scan a
batch of ``pages_to_scan`` pages, sleep ``sleep_millisecs`` (see
:mod:`.timing`). Simplifications: after ``run`` goes 0->1 ksmd wakes at once;
runs of many batches are handled in one pass, because pages are processed in
the same order whatever the batch size, and within such a run chain prune
times use the time of its first batch and work is spread evenly over its full
batches.
"""

from __future__ import annotations

import logging
from typing import Protocol

from sysfs_emu.advisor import AdvisorKernel, ScanTimeAdvisor
from sysfs_emu.ksmd.reference import PageByPage
from sysfs_emu.ksmd.rmap import RmapItems
from sysfs_emu.ksmd.scan import MmList, ScanPass
from sysfs_emu.ksmd.stable import StableTree
from sysfs_emu.ksmd.timing import HZ, TICK, CostModel, batch_period, split_into_batches, wake_after
from sysfs_emu.ksmd.treepass import LOOKUP_CHUNK, TreePass
from sysfs_emu.ksmd.window import Window
from sysfs_emu.memory import Memory
from sysfs_emu.procstats import ksm_profit

log = logging.getLogger(__name__)

MAX_RUN_VISITS = 1_000_000
"""Visits handled in one pass at most: bounds the temporaries of a pass."""


class Tunables(AdvisorKernel, Protocol):
    """The sysfs knobs ksmd reads (the advisor also sets ``pages_to_scan``)."""

    run: int
    sleep_millisecs: int
    max_page_sharing: int
    use_zero_pages: int
    smart_scan: int
    stable_node_chains_prune_millisecs: int
    merge_across_nodes: int  # read on hosts of several NUMA nodes only


class Ksmd:
    """The simulated ksmd over a :class:`sysfs_emu.memory.Memory`, with ``tunables`` from the kernel model."""

    LOOKUP_CHUNK = LOOKUP_CHUNK
    """Pages per step of the tree pass's look-up (see :func:`.treepass.lookup`)."""

    def __init__(self, tunables: Tunables, memory: Memory, cost: CostModel | None = None, vectorise: bool = True) -> None:
        self.tunables = tunables
        self.mem = memory
        self.cost = cost or CostModel()
        self.stable = StableTree(memory, tunables)
        self.rmap = RmapItems(memory, self.stable)
        self.mm = MmList(memory, self.rmap)
        pages = PageByPage(memory, tunables, self.stable, self.rmap)
        tree_pass = TreePass(memory, tunables, self.stable, self.rmap, self.LOOKUP_CHUNK)
        self.window = Window(memory, tunables, self.rmap, tree_pass, pages, vectorise)
        self.advisor = ScanTimeAdvisor()  # advisor_mode scan-time
        memory.listeners.append(self.mm.on_memory_event)
        # simulated time
        self.clock = 0.0
        self.next_wake: float | None = None
        self.cpu_time = 0.0
        self._sleep_ms_used: int | None = None
        self._cpv = 1e-6  # recent CPU seconds per visit, to size runs of batches

    # ---- counters --------------------------------------------------------------

    @property
    def seqnr(self) -> int:
        """Full scans completed (``full_scans``)."""
        return self.mm.seqnr

    @property
    def pages_scanned(self) -> int:
        return self.window.pages_scanned

    @property
    def pages_skipped(self) -> int:
        return self.window.pages_skipped

    def counters(self) -> dict[str, int]:
        """The 11 read-only files of /sys/kernel/mm/ksm."""
        st = self.stable
        rmap = self.mem.rmap_items
        unshared = self.rmap.pages_unshared
        volatile = rmap - st.pages_shared - st.pages_sharing - unshared
        zero = self.mem.zero_pages
        return {
            "full_scans": self.seqnr,
            "general_profit": ksm_profit(st.pages_sharing, zero, rmap),
            "ksm_zero_pages": zero,
            "pages_scanned": self.pages_scanned,
            "pages_shared": st.pages_shared,
            "pages_sharing": st.pages_sharing,
            "pages_skipped": self.pages_skipped,
            "pages_unshared": unshared,
            "pages_volatile": max(volatile, 0),
            "stable_node_chains": st.stable_node_chains,
            "stable_node_dups": st.stable_node_dups,
        }

    # ---- what the kernel model calls ----------------------------------------------

    def busy(self) -> bool:
        """EBUSY for max_page_sharing / merge_across_nodes; otherwise drop every stable node."""
        if self.stable.in_use():
            return True
        self.stable.remove_all()
        return False

    def unmerge_all(self) -> None:
        """run=2: break every merge, free every rmap item and stable node, reset full_scans."""
        mem = self.mem
        for pid in list(self.mm.slots):
            idx = mem.process_slots(pid)
            if mem.processes[pid].alive:
                mem.break_ksm(idx, cow=True)  # break_ksm(): a private copy of every KSM / zero page
            self.rmap.free(idx)
        for pid in list(self.mm.slots):
            if not mem.processes[pid].alive:
                self.mm.remove_slot(pid)
        self.stable.remove_all()
        self.rmap.forget_unstable_tree()
        self.mm.rewind()

    def advisor_reset(self) -> None:
        self.advisor.reset()

    # ---- simulated time ---------------------------------------------------------

    def advance(
        self, seconds: float, until_full_scans: int | None = None, until_pages_scanned: int | None = None
    ) -> float:
        """Run ksmd for ``seconds`` of simulated time; returns the time actually advanced.

        With ``until_full_scans`` and/or ``until_pages_scanned`` it stops as soon
        as both counters have reached those values (at a batch boundary, where
        the real ksmd can be stopped).
        """
        start = self.clock
        end = start + seconds
        goal = _Goal(until_full_scans, until_pages_scanned)
        while True:
            if goal.reached(self):
                return self.clock - start
            t = self._next_batch(end)
            if t is None:
                self.clock = end
                return seconds
            stop = self._run_batches(t, end, goal)
            if stop is not None:
                self.clock = stop
                return self.clock - start

    def _next_batch(self, end: float) -> float | None:
        """When the next batch runs, or None if ksmd does not scan again before ``end``."""
        tun = self.tunables
        if not (tun.run == 1 and self.mm.slots):
            self.next_wake = None
            return None
        if self.next_wake is None:
            self.next_wake = self.clock  # run_store wakes ksmd at once
        elif self._sleep_ms_used != tun.sleep_millisecs and self.next_wake > self.clock:
            self.next_wake = self.clock  # a new sleep_millisecs cuts the sleep short
        t = self.next_wake
        if t > end:
            return None
        self._sleep_ms_used = tun.sleep_millisecs
        if self.mem.numa_nodes > 1:
            self.mem.follow_merge_across_nodes(tun.merge_across_nodes)
        if int(tun.pages_to_scan) == 0:  # ksmd wakes and sleeps without scanning: nothing changes
            self.next_wake = end + TICK
            return None
        return t

    def _budget(self, t: float, end: float, pts: int, goal: "_Goal") -> int:
        """Visits for the run of batches from ``t``: about half the batches until ``end`` at the recent cost."""
        period = batch_period(pts * self._cpv, self.tunables.sleep_millisecs, self.cost)
        nb = 1 if period <= 0 else max(1, int((end - t) / period * 0.5))
        nb = min(nb, max(1, MAX_RUN_VISITS // pts))
        budget = nb * pts
        if goal.pages_scanned is not None and self.pages_scanned < goal.pages_scanned:
            budget = min(budget, goal.pages_scanned - self.pages_scanned)
        return budget

    def _run_batches(self, t: float, end: float, goal: "_Goal") -> float | None:
        """A run of batches from ``t``; the clock to stop at if the goal was reached in it, else None."""
        tun = self.tunables
        pts = int(tun.pages_to_scan)
        budget = self._budget(t, end, pts, goal)
        unshared = self.rmap.pages_unshared
        whole = self.mm.at_head  # this run of batches starts a full scan
        if whole:
            self.advisor.start_scan(t, tun)
        scan = ScanPass(now=int(t * HZ), seqnr=self.mm.seqnr)
        splits = self.mem.thp_splits
        ended = self.mm.scan(budget, self.window, scan)
        work = scan.work
        work.splits = self.mem.thp_splits - splits
        secs = work.seconds(self.cost, max(unshared, work.tree // 2))  # the tree fills up as it goes
        batches = split_into_batches(secs, work.visits, pts, ended)
        if work.visits:
            self._cpv = max(secs / work.visits, 1e-8)
        self.cpu_time += secs + batches.count * self.cost.batch
        last_start = wake_after(t, batches.count - 1, batches.full, tun.sleep_millisecs, self.cost)
        self.next_wake = wake_after(last_start, 1, batches.last, tun.sleep_millisecs, self.cost)
        self.clock = t
        if not ended:
            return min(last_start + batches.last, end) if goal.reached(self) else None
        scan_end = last_start + batches.last + self.cost.batch
        self.advisor.on_full_scan(scan_end, self.cpu_time, tun)
        if goal.reached(self):
            return min(max(scan_end, self.clock), end)
        if whole and work.visits == 0 and work.skipped == 0 and tun.advisor_mode == "none":
            self._idle_scans(end, goal.full_scans)
        return None

    def _idle_scans(self, end: float, until_full_scans: int | None) -> None:
        """Nothing to visit: every batch is an empty full scan until something changes."""
        t = self.next_wake
        if t is None or t > end:
            return
        period = wake_after(t, 1, 0.0, self.tunables.sleep_millisecs, self.cost) - t
        n = int((end - t) / period) + 1
        if until_full_scans is not None:
            n = min(n, max(until_full_scans - self.seqnr, 0))
        if n <= 0:
            return
        self.mm.skip_empty_scans(n)
        self.cpu_time += n * self.cost.batch
        self.next_wake = t + n * period
        self.clock = t + (n - 1) * period


class _Goal:
    """Where :meth:`Ksmd.advance` may stop early: both counters reached (None: no goal for it)."""

    def __init__(self, full_scans: int | None, pages_scanned: int | None) -> None:
        self.full_scans = full_scans
        self.pages_scanned = pages_scanned

    def reached(self, ksmd: Ksmd) -> bool:
        if self.full_scans is None and self.pages_scanned is None:
            return False
        return (self.full_scans is None or ksmd.seqnr >= self.full_scans) and (
            self.pages_scanned is None or ksmd.pages_scanned >= self.pages_scanned
        )
