"""Simulated memory: processes, regions and per-page state in flat numpy arrays.

A page's content is an integer id, not 4 KiB of bytes: equal ids are equal
pages, and content 0 is the empty (all-zero) page. Fresh ids come from
:meth:`Memory.new_contents`; small non-negative ids chosen by the caller work
too (the content tables grow to the largest id seen).

Every simulated page owns one slot in each per-page array (19 bytes in
all, plus 8 bytes per distinct content id; the arrays are in
:mod:`sysfs_emu.pagearrays`); a process's regions are contiguous runs of
slots, scanned in order. The
arrays hold both the page table view (is the page mapped, is it the KSM zero
page, which KSM page does it map) and ksmd's bookkeeping (the rmap item of the
page: whether it exists, its checksum at the last scan, its place in the
stable or unstable tree, its smart-scan age), because in the kernel the two
live side by side and a write to a merged page changes the first but not the
second until ksmd comes back to it.

KSM pages ("stable nodes") are also kept here in growable arrays, because they
are physical memory: a KSM page lives while at least one page table entry maps
it. ksmd (sysfs_emu.ksmd) owns the tree logic on top.

Who writes what: the running totals (``mapped_pages``, ``zero_pages``,
``ksm_mapped``, ``ksm_pages``, ``rmap_items``) change only inside the methods
here, and so do the page table fields (``content``, ``kpage``, the MAPPED and
ZERO bits, a KSM page's ``mapcount``). ksmd changes them through the
operations it needs (:meth:`Memory.break_ksm` here, the others in
:mod:`sysfs_emu.ksmpages`: ``merge_pages``, ``map_ksm_page``,
``map_zero_pages``, ``new_rmap_items``, ``free_rmap_items``,
``new_ksm_pages``, ``leave_ksm``) and writes its own
bookkeeping stored here directly: an rmap item's ``oldsum``, ``rnode``,
``age``, ``skips`` and UNSTABLE/SEQ bits, a KSM page's ``count``, ``chain`` and
``alive``, and the content tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sysfs_emu.errors import MemoryError_
from sysfs_emu.ksmpages import KsmPages
from sysfs_emu.memviews import ProcessViews
from sysfs_emu.numa import NodeContents, NodePlacement
from sysfs_emu.pagearrays import (
    HUGE_PAGES, LARGE, MAPPED, NO_NODE, NODE_ARRAYS, NODE_HALVES, PAGE_ARRAYS, ZERO, Growable,
    keep_temporaries_on_heap,
)
from sysfs_emu.pagearrays import PAGE_SIZE, RMAP_ITEM_SIZE, checksum  # noqa: F401  (named here for importers)
from sysfs_emu.thp import HugePages


@dataclass
class Region:
    """A run of pages of one process (one VMA)."""

    id: int
    pid: int
    start: int  # first slot in the per-page arrays
    npages: int
    mergeable: bool  # VM_MERGEABLE (madvise or prctl)
    alive: bool = True
    thp: bool = False  # backed by transparent huge pages (sysfs_emu.thp)
    node: int = 0  # the NUMA node its pages are on (sysfs_emu.numa)

    @property
    def stop(self) -> int:
        return self.start + self.npages


@dataclass
class Process:
    """A simulated process (an mm)."""

    pid: int
    regions: list[int] = field(default_factory=list)
    merge_any: bool = False  # prctl(PR_SET_MEMORY_MERGE)
    alive: bool = True
    in_ksm: bool = False  # has an mm slot on ksmd's list (MMF_VM_MERGEABLE)


class Memory(HugePages, KsmPages, NodePlacement, ProcessViews):
    """All simulated processes and their pages (ksmd's operations in :mod:`sysfs_emu.ksmpages`,
    huge pages in :mod:`sysfs_emu.thp`, NUMA placement in :mod:`sysfs_emu.numa`)."""

    def __init__(self, capacity: int = 0) -> None:
        if capacity >= LARGE:
            keep_temporaries_on_heap()
        self.pages = Growable(PAGE_ARRAYS, capacity)
        self.nodes = Growable(NODE_ARRAYS, capacity=16, halves=NODE_HALVES)  # node 0 always indexable (masked look-ups)
        self.regions: list[Region] = []
        self.processes: dict[int, Process] = {}
        self._free_ranges: list[tuple[int, int]] = []  # (start, npages) of released slots
        self._next_content = 1
        # Content tables, indexed by content id: the stable tree (node id, or
        # -(chain id) - 2 for a chain of duplicates) and the unstable tree
        # (slot), side by side in one int64 per content (``ctab``) so that
        # one random look-up fetches both; stable_of and unstable_of are views.
        self.ctab = np.full(0, -1, dtype=np.int64)
        self._set_table_views()
        # Running totals kept exact by every change.
        self.mapped_pages = 0  # entries mapping anything (zero page included)
        self.zero_pages = 0  # entries mapping the KSM zero page
        self.ksm_mapped = 0  # entries mapping a KSM page
        self.ksm_pages = 0  # KSM pages in memory (mapcount > 0)
        self.rmap_items = 0
        self.cow_ksm = 0  # entries that left a KSM page for a copy of their own on a write (/proc/vmstat cow_ksm)
        self.huge_pages = 0  # slots in transparent huge pages
        self.thp_splits = 0  # huge pages split by ksmd so far
        self.numa_nodes = 1  # the host's NUMA nodes
        self.split_nodes = False  # merge_across_nodes 0 on several nodes: pages off node 0 have ids of their own
        self.node_contents = NodeContents()
        # Bumped whenever a page starts or stops counting in some process's RSS (mapped, not the
        # zero page), so readers of every process's RSS can keep them until it moves.
        self.residency = 0
        self.listeners: list = []  # called with (event, pid) on process changes

    def trim(self) -> None:
        """Drop the room kept for growth: page arrays and content tables shrink to what is in use."""
        self.pages.shrink(self.pages.size)
        n = self._next_content
        if n < len(self.ctab):
            self.ctab = self.ctab[:n].copy()
            self._set_table_views()

    # ---- contents ----------------------------------------------------------

    def new_contents(self, n: int) -> np.ndarray:
        """``n`` fresh content ids, equal to no page so far."""
        ids = np.arange(self._next_content, self._next_content + n, dtype=np.int64)
        self._next_content += n
        self._grow_tables(self._next_content)
        return ids

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("stable_of", "unstable_of")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._set_table_views()

    def _set_table_views(self) -> None:
        halves = self.ctab.view(np.int32)
        self.stable_of = halves[0::2]
        self.unstable_of = halves[1::2]

    def _grow_tables(self, n: int) -> None:
        if n <= len(self.ctab):
            return
        new = max(n, int(len(self.ctab) * 1.25) + 16) if len(self.ctab) else n
        arr = np.full(new, -1, dtype=np.int64)  # NO_NODE in both halves
        arr[: len(self.ctab)] = self.ctab
        self.ctab = arr
        self._set_table_views()

    def _check_contents(self, contents) -> np.ndarray:
        arr = np.asarray(contents, dtype=np.int64).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= 2**31):
            raise MemoryError_("page contents must be ids from 0 to 2**31-1")
        if arr.size:
            top = int(arr.max()) + 1
            self._next_content = max(self._next_content, top)
            self._grow_tables(top)
        return arr

    # ---- processes and regions --------------------------------------------

    def _process(self, pid: int) -> Process:
        proc = self.processes.get(pid)
        if proc is None or not proc.alive:
            raise MemoryError_(f"no running process {pid}")
        return proc

    def add_process(self, pid: int) -> Process:
        proc = self.processes.get(pid)
        if proc is not None and proc.alive:
            return proc
        proc = Process(pid)
        self.processes[pid] = proc
        return proc

    def _alloc_slots(self, n: int, align: int = 1) -> int:
        """``n`` consecutive free slots, the first a multiple of ``align``."""
        for i, (start, size) in enumerate(self._free_ranges):
            first = -(-start // align) * align
            if first + n <= start + size:
                rest = [(start, first - start), (first + n, start + size - first - n)]
                self._free_ranges[i : i + 1] = [r for r in rest if r[1] > 0]
                return first
        start = -(-self.pages.size // align) * align
        if start > self.pages.size:
            self._free_ranges.append((self.pages.size, start - self.pages.size))
        if start + n >= LARGE:
            keep_temporaries_on_heap()
        self.pages.reserve(start + n)
        self.pages.size = start + n
        return start

    def add_region(self, pid: int, contents, mergeable: bool = True, mapped: bool = True, thp: bool = False,
                   node: int = 0) -> int:
        """Map a new region of ``len(contents)`` pages in ``pid``; returns its region id.

        ``mapped=False`` maps the pages lazily: they take no memory until
        :meth:`fault_in` or a write touches them. ``thp`` backs the region with
        transparent huge pages (:mod:`sysfs_emu.thp`); ``node`` is the NUMA
        node of its pages (:mod:`sysfs_emu.numa`).
        """
        arr = self._on_node(self._check_contents(contents), node)
        proc = self.add_process(pid)
        start = self._alloc_slots(arr.size, HUGE_PAGES if thp else 1)
        p = self.pages
        sl = slice(start, start + arr.size)
        p.content[sl] = arr
        p.oldsum[sl] = 0
        p.kpage[sl] = NO_NODE
        p.rnode[sl] = NO_NODE
        p.flags[sl] = 0
        p.age[sl] = 0
        p.skips[sl] = 0
        region = Region(len(self.regions), pid, start, arr.size, bool(mergeable or proc.merge_any), thp=bool(thp),
                        node=int(node))
        if mapped:
            self._fault(region, sl)
        self.regions.append(region)
        proc.regions.append(region.id)
        if region.mergeable:
            self._enter_ksm(proc)
        return region.id

    def region(self, region_id: int) -> Region:
        try:
            region = self.regions[region_id]
        except (IndexError, TypeError):
            raise MemoryError_(f"no region {region_id}") from None
        if not region.alive:
            raise MemoryError_(f"region {region_id} belongs to a process that exited")
        return region

    def set_process_mergeable(self, pid: int) -> None:
        """prctl(PR_SET_MEMORY_MERGE, 1): every region, present and future, is mergeable."""
        proc = self._process(pid)
        proc.merge_any = True
        for rid in proc.regions:
            self.regions[rid].mergeable = True
        self._enter_ksm(proc)

    def set_region_mergeable(self, region_id: int, mergeable: bool) -> None:
        """madvise(MADV_MERGEABLE) or madvise(MADV_UNMERGEABLE) on a region.

        Unmerging breaks the region's KSM pages and zero pages at once (each
        entry gets a copy of its own); the rmap items stay until ksmd passes
        them, and so does a KSM page's count of sharers (as unmerge_ksm_pages()).
        """
        region = self.region(region_id)
        if mergeable:
            region.mergeable = True
            self._enter_ksm(self.processes[region.pid])
        elif region.mergeable:
            # unmerge_ksm_pages() breaks each KSM page with an unsharing fault: cow_ksm counts it, as run=2's
            self.break_ksm(np.arange(region.start, region.stop), cow=True)
            region.mergeable = False

    def _enter_ksm(self, proc: Process) -> None:
        if not proc.in_ksm:
            proc.in_ksm = True
            self._notify("enter", proc.pid)

    def _notify(self, event: str, pid: int) -> None:
        for listener in self.listeners:
            listener(event, pid)

    def _slice(self, region_id: int, first: int, n: int) -> slice:
        region = self.region(region_id)
        if first < 0 or n < 0 or first + n > region.npages:
            raise MemoryError_(
                f"pages {first}..{first + n - 1} are outside region {region_id} of {region.npages} pages"
            )
        return slice(region.start + first, region.start + first + n)

    def break_ksm(self, idx: np.ndarray, cow: bool = False) -> None:
        """Drop the KSM page / zero page mappings of slots ``idx`` (they stay mapped or not): each gets its own copy.

        ``cow``: by a write fault (a write, or run=2's unsharing), which Linux counts in cow_ksm
        for KSM pages (not for the zero page, which is no KSM page); an exit is none.
        """
        p = self.pages
        zero = (p.flags[idx] & ZERO) != 0
        nz = int(zero.sum())
        if nz:
            p.flags[idx[zero]] &= ~ZERO
            self.zero_pages -= nz
            self.residency += 1
        kp = p.kpage[idx]
        ksm = kp >= 0
        if ksm.any():
            nodes = kp[ksm]
            p.kpage[idx[ksm]] = NO_NODE
            self.ksm_mapped -= nodes.size
            if cow:
                self.cow_ksm += int(nodes.size)
            self._drop_mappings(nodes)

    def _drop_mappings(self, nodes: np.ndarray) -> None:
        uniq, counts = np.unique(nodes, return_counts=True)
        mc = self.nodes.mapcount
        before = mc[uniq]
        mc[uniq] = before - counts
        self.ksm_pages -= int(((before > 0) & (mc[uniq] == 0)).sum())

    def write_pages(self, region_id: int, first: int, contents) -> None:
        """The process writes ``contents`` over pages ``first..``: COW breaks where merged."""
        arr = self._on_node(self._check_contents(contents), self.region(region_id).node)
        sl = self._slice(region_id, first, arr.size)
        idx = np.arange(sl.start, sl.stop)
        self.break_ksm(idx, cow=True)
        self._fault(self.regions[region_id], sl)
        self.pages.content[sl] = arr

    def fault_in(self, region_id: int, first: int = 0, n: int | None = None) -> None:
        """The process touches pages ``first..first+n-1``: lazily mapped pages take memory."""
        region = self.region(region_id)
        if n is None:
            n = region.npages - first
        self._fault(region, self._slice(region_id, first, n))

    def _fault(self, region: Region, sl: slice) -> None:
        """Pages ``sl`` of ``region`` are touched: those not mapped yet take memory (whole huge pages in a thp region)."""
        if sl.stop <= sl.start:
            return
        if region.thp:
            self._map_huge(region, sl.start, sl.stop)
        p = self.pages
        newly = int(((p.flags[sl] & MAPPED) == 0).sum())
        self.mapped_pages += newly
        self.residency += 1
        p.flags[sl] |= MAPPED

    def remove_process(self, pid: int) -> None:
        """The process exits: every page is unmapped; ksmd frees its rmap items later."""
        proc = self._process(pid)
        p = self.pages
        for rid in proc.regions:
            region = self.regions[rid]
            idx = np.arange(region.start, region.stop)
            self.break_ksm(idx)
            self._unmap_huge(idx)
            self.mapped_pages -= int(((p.flags[idx] & MAPPED) != 0).sum())
            self.residency += 1
            p.flags[idx] &= ~MAPPED
            region.alive = False
        proc.alive = False
        self._notify("exit", pid)
        if not proc.in_ksm:
            self.release_process(pid)

    def release_process(self, pid: int) -> None:
        """Forget an exited process whose rmap items are gone; its slots are reused."""
        proc = self.processes.get(pid)
        if proc is None or proc.alive:
            return
        for rid in proc.regions:
            region = self.regions[rid]
            if region.npages:
                self._free_ranges.append((region.start, region.npages))
                self.pages.flags[region.start : region.stop] = 0
                self.pages.rnode[region.start : region.stop] = NO_NODE
                self.pages.kpage[region.start : region.stop] = NO_NODE
        del self.processes[pid]

    def physical_pages(self) -> int:
        """Pages of RAM in use by all processes: a KSM page counts once, the zero page not at all."""
        return self.mapped_pages - self.zero_pages - self.ksm_mapped + self.ksm_pages

    def nbytes(self) -> int:
        """Bytes held by the per-page, per-node and per-content arrays."""
        return self.pages.nbytes() + self.nodes.nbytes() + self.ctab.nbytes
