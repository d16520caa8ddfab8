"""A process's resident and KSM numbers, counted in one pass over its regions' pages.

The memory model keeps each region's pages as a contiguous run of slots, so every
number /proc/PID shows (RSS, the ``ksm_stat`` counts, Pss) is a sum over array
slices, read here in a single pass instead of one gathered copy per number.
:func:`count_pages` is the one place these numbers are counted:
``Memory.process_pages`` and ``Memory.process_stats`` (``/proc/PID/ksm_stat``)
and :func:`numbers` (the live tree's files) all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sysfs_emu import procfs
from sysfs_emu.pagearrays import HUGE, HUGE_PAGES, PAGE_SIZE, RMAP, RMAP_ITEM_SIZE, ZERO, resident


def ksm_profit(merging: int, zero_pages: int, rmap_items: int) -> int:
    """Bytes KSM saves (merged entries and zero pages) less what its rmap items cost: general_profit's rule."""
    return (merging + zero_pages) * PAGE_SIZE - rmap_items * RMAP_ITEM_SIZE


@dataclass
class ProcessStats:
    """What /proc/PID/ksm_stat and /proc/PID/ksm_merging_pages report."""

    ksm_rmap_items: int
    ksm_zero_pages: int
    ksm_merging_pages: int
    ksm_process_profit: int
    ksm_merge_any: bool
    ksm_mergeable: bool

    def ksm_stat_text(self) -> str:
        """The exact text of /proc/PID/ksm_stat on Linux 6.18."""
        return (
            f"ksm_rmap_items {self.ksm_rmap_items}\n"
            f"ksm_zero_pages {self.ksm_zero_pages}\n"
            f"ksm_merging_pages {self.ksm_merging_pages}\n"
            f"ksm_process_profit {self.ksm_process_profit}\n"
            f"ksm_merge_any: {'yes' if self.ksm_merge_any else 'no'}\n"
            f"ksm_mergeable: {'yes' if self.ksm_mergeable else 'no'}\n"
        )


@dataclass(frozen=True)
class PageCounts:
    """Counts of a run of pages (a region, or all of a process's)."""

    resident: int = 0  # mapped, and not the KSM zero page (RSS)
    rmap_items: int = 0
    zero_pages: int = 0  # entries mapping the KSM zero page
    merging: int = 0  # rmap items on a KSM page still in the stable tree (ksm_merging_pages)
    merged: int = 0  # resident entries mapping a KSM page
    shared: int = 0  # ... of which map a KSM page that has other mappers
    merged_pss: float = 0.0  # the merged entries' shares of their KSM pages (1 / mappers each)
    huge: int = 0  # resident pages in transparent huge pages (AnonHugePages)

    def __add__(self, other: "PageCounts") -> "PageCounts":
        return PageCounts(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))

    def rollup(self) -> procfs.Rollup:
        """These pages as smaps sums them, in kB: all anonymous and dirty (a KSM page is dirty too)."""
        kb = PAGE_SIZE // 1024
        plain = self.resident - self.merged
        return procfs.Rollup(
            rss=self.resident * kb,
            pss=int((plain + self.merged_pss) * PAGE_SIZE) // 1024,
            shared_dirty=self.shared * kb,
            private_dirty=(self.resident - self.shared) * kb,
            ksm=self.merged * kb,
            anon_huge=self.huge * kb,
        )


@dataclass(frozen=True)
class ProcessPages(PageCounts):
    """One process's pages, counted by :func:`count_pages`, with each region's counts."""

    merge_any: bool = False
    mergeable: bool = False
    regions: tuple = ()  # (Region, PageCounts) of each region, in order

    def stats(self) -> ProcessStats:
        """The numbers of /proc/PID/ksm_stat."""
        return ProcessStats(
            ksm_rmap_items=self.rmap_items,
            ksm_zero_pages=self.zero_pages,
            ksm_merging_pages=self.merging,
            ksm_process_profit=ksm_profit(self.merging, self.zero_pages, self.rmap_items),
            ksm_merge_any=self.merge_any,
            ksm_mergeable=self.mergeable,
        )


def count_region(memory, region) -> PageCounts:
    """The page counts of one region of a :class:`sysfs_emu.memory.Memory`."""
    pages, alive, mapcount = memory.pages, memory.nodes.alive, memory.nodes.mapcount
    sl = slice(region.start, region.stop)
    flags, kpage, rnode = pages.flags[sl], pages.kpage[sl], pages.rnode[sl]
    here = resident(flags)
    is_merged = here & (kpage >= 0)
    mappers = np.maximum(mapcount[kpage[is_merged]], 1)
    return PageCounts(
        resident=int(here.sum()),
        rmap_items=int(((flags & RMAP) != 0).sum()),
        zero_pages=int(((flags & ZERO) != 0).sum()),
        merging=int(alive[rnode[rnode >= 0]].sum()),  # items of a vanished KSM page no longer count
        merged=int(is_merged.sum()),
        shared=int((mappers > 1).sum()),
        merged_pss=float((1.0 / mappers).sum()),
        huge=int(((flags & HUGE) != 0).sum()) if region.thp else 0,
    )


def count_pages(memory, proc) -> ProcessPages:
    """The page counts of process ``proc`` of a :class:`sysfs_emu.memory.Memory` (``Memory.process_pages``)."""
    regions = [memory.regions[rid] for rid in proc.regions]
    each = [count_region(memory, region) for region in regions]
    total = sum(each, PageCounts())
    return ProcessPages(**vars(total), merge_any=bool(proc.merge_any),
                        mergeable=any(r.mergeable for r in regions), regions=tuple(zip(regions, each)))


@dataclass(frozen=True)
class Numbers:
    """What /proc/PID shows about one process's memory."""

    rss_pages: int
    ksm_stat_text: str
    ksm_merging_pages: int
    rollup: procfs.Rollup
    vmas: tuple[procfs.Vma, ...] = ()  # its regions, as /proc/PID/smaps lists them


def vmas(pages: ProcessPages) -> tuple[procfs.Vma, ...]:
    """A process's regions as smaps lists them: laid out from ``procfs.MMAP_BASE`` in order, a thp region
    on a 2 MiB boundary."""
    out = []
    at = procfs.MMAP_BASE
    huge = HUGE_PAGES * PAGE_SIZE
    for region, counts in pages.regions:
        if region.thp:
            at = -(-at // huge) * huge
        out.append(procfs.Vma(at, region.npages * PAGE_SIZE, counts.rollup(), region.mergeable, region.thp))
        at += region.npages * PAGE_SIZE
    return tuple(out)


def numbers(memory, pid: int) -> Numbers:
    """The numbers of running process ``pid`` of a :class:`sysfs_emu.memory.Memory` for its /proc/PID files."""
    pages = memory.process_pages(pid)
    return Numbers(pages.resident, pages.stats().ksm_stat_text(), pages.merging, pages.rollup(), vmas(pages))
