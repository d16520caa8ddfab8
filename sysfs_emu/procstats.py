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
from sysfs_emu.pagearrays import PAGE_SIZE, RMAP, RMAP_ITEM_SIZE, ZERO, resident


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
class ProcessPages:
    """One process's pages, counted by :func:`count_pages`."""

    resident: int  # mapped, and not the KSM zero page (RSS)
    rmap_items: int
    zero_pages: int  # entries mapping the KSM zero page
    merging: int  # rmap items on a KSM page still in the stable tree (ksm_merging_pages)
    merged: int  # resident entries mapping a KSM page
    shared: int  # ... of which map a KSM page that has other mappers
    merged_pss: float  # the merged entries' shares of their KSM pages (1 / mappers each)
    merge_any: bool
    mergeable: bool

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


def count_pages(memory, proc) -> ProcessPages:
    """The page counts of process ``proc`` of a :class:`sysfs_emu.memory.Memory` (``Memory.process_pages``)."""
    regions = [memory.regions[rid] for rid in proc.regions]
    pages, alive, mapcount = memory.pages, memory.nodes.alive, memory.nodes.mapcount
    rss = rmap = zero = merging = merged = shared = 0
    pss = 0.0
    for region in regions:
        sl = slice(region.start, region.stop)
        flags, kpage, rnode = pages.flags[sl], pages.kpage[sl], pages.rnode[sl]
        here = resident(flags)
        is_merged = here & (kpage >= 0)
        mappers = np.maximum(mapcount[kpage[is_merged]], 1)
        rss += int(here.sum())
        rmap += int(((flags & RMAP) != 0).sum())
        zero += int(((flags & ZERO) != 0).sum())
        merging += int(alive[rnode[rnode >= 0]].sum())  # items of a vanished KSM page no longer count
        merged += int(is_merged.sum())
        shared += int((mappers > 1).sum())
        pss += float((1.0 / mappers).sum())
    return ProcessPages(
        resident=rss,
        rmap_items=rmap,
        zero_pages=zero,
        merging=merging,
        merged=merged,
        shared=shared,
        merged_pss=pss,
        merge_any=bool(proc.merge_any),
        mergeable=any(r.mergeable for r in regions),
    )


@dataclass(frozen=True)
class Numbers:
    """What /proc/PID shows about one process's memory."""

    rss_pages: int
    ksm_stat_text: str
    ksm_merging_pages: int
    rollup: procfs.Rollup


def numbers(memory, pid: int) -> Numbers:
    """The numbers of running process ``pid`` of a :class:`sysfs_emu.memory.Memory` for its /proc/PID files."""
    pages = memory.process_pages(pid)
    kb = PAGE_SIZE // 1024
    plain = pages.resident - pages.merged
    rollup = procfs.Rollup(
        rss=pages.resident * kb,
        pss=int((plain + pages.merged_pss) * PAGE_SIZE) // 1024,
        private_dirty=plain * kb,
        shared_clean=pages.shared * kb,
        private_clean=(pages.merged - pages.shared) * kb,
        ksm=pages.merged * kb,
    )
    return Numbers(pages.resident, pages.stats().ksm_stat_text(), pages.merging, rollup)
