"""A process's resident and KSM numbers in one pass over its regions' pages.

The memory model keeps each region's pages as a contiguous run of slots, so every
number /proc/PID shows (RSS, the ``ksm_stat`` counts, Pss) is a sum over array
slices, read here in a single pass instead of one gathered copy per number.  The
results equal ``SimProcess.rss_pages`` and ``SimProcess.ksm_stats()`` (a test keeps
them equal); when the model does not have the expected layout, :func:`numbers`
returns None and callers use those slower methods instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sysfs_emu import procfs


@dataclass(frozen=True)
class Numbers:
    """What /proc/PID shows about one process's memory."""

    rss_pages: int
    ksm_stat_text: str
    ksm_merging_pages: int
    rollup: procfs.Rollup


def numbers(memory, pid: int, page_size: int = 4096) -> Numbers | None:
    """The process's numbers, or None when the memory model is not laid out as expected."""
    try:
        from sysfs_emu.memory import MAPPED, RMAP, RMAP_ITEM_SIZE, ZERO, ProcessStats

        proc = memory.processes[pid]
        regions = [memory.regions[rid] for rid in proc.regions]
        pages = memory.pages
        mapcount = memory.nodes.mapcount
        alive = memory.nodes.alive
    except (AttributeError, ImportError, KeyError, IndexError):
        return None
    rss = rmap = zero = merging = plain = merged = shared = 0
    pss = 0.0
    for region in regions:
        flags = pages.flags[region.start:region.stop]
        kpage = pages.kpage[region.start:region.stop]
        resident = ((flags & MAPPED) != 0) & ((flags & ZERO) == 0)
        is_merged = resident & (kpage >= 0)
        counts = np.maximum(mapcount[kpage[is_merged]], 1)
        rss += int(resident.sum())
        rmap += int(((flags & RMAP) != 0).sum())
        zero += int(((flags & ZERO) != 0).sum())
        rnode = pages.rnode[region.start:region.stop]
        merging += int(alive[rnode[rnode >= 0]].sum())  # an item of a vanished KSM page no longer counts
        n_merged = int(is_merged.sum())
        merged += n_merged
        plain += int(resident.sum()) - n_merged
        shared += int((counts > 1).sum())
        pss += float((1.0 / counts).sum())
    stats = ProcessStats(
        ksm_rmap_items=rmap,
        ksm_zero_pages=zero,
        ksm_merging_pages=merging,
        ksm_process_profit=(merging + zero) * page_size - rmap * RMAP_ITEM_SIZE,
        ksm_merge_any=bool(proc.merge_any),
        ksm_mergeable=any(r.mergeable for r in regions),
    )
    kb = page_size // 1024
    rollup = procfs.Rollup(
        rss=rss * kb,
        pss=int((plain + pss) * page_size) // 1024,
        private_dirty=plain * kb,
        shared_clean=shared * kb,
        private_clean=(merged - shared) * kb,
        ksm=merged * kb,
    )
    return Numbers(rss, stats.ksm_stat_text(), merging, rollup)
