"""Transparent huge pages in the memory model: a region backed by 2 MiB pages, and their split.

What Linux 6.18 does, measured on it (tests/test_fidelity.py compares):

- A region with ``thp`` is faulted in 2 MiB at a time: each whole, aligned
  2 MiB of it (``HUGE_PAGES`` slots from a multiple of ``HUGE_PAGES``: the
  memory model aligns such a region's slots) becomes one huge page the first
  time any of its pages is touched; a region's last partial 2 MiB is 4 KiB
  pages. ksmd visits, checksums and counts a huge page's 4 KiB parts one by one
  like any other pages; writing to one does not split it.
- A huge page is split when ksmd merges one of its pages, and only then
  (try_to_merge_one_page(): into a KSM page, into the zero page, or with
  another page of the unstable tree). The split maps every empty (all-zero)
  4 KiB part of it to the shared zero page, which frees it: it leaves the
  process's RSS and ksmd no longer scans it (and it is not a KSM zero page).
  Faults in a split huge page's range map 4 KiB pages.
- khugepaged, which collapses ranges of 4 KiB pages back into huge pages
  (every ``scan_sleep_millisecs``, copying pages out of KSM pages until ksmd
  splits them again), is not modelled; nor are the huge zero page and the
  shrinker that splits huge pages with many empty parts under memory pressure.

Which merges fail because of a huge page, and why, is ksmd's business
(sysfs_emu.ksmd.reference); this module keeps the pages' state: the HUGE and
SMALL flag bits, the ``huge_pages`` total and the ``thp_splits`` count.
"""

from __future__ import annotations

import numpy as np

from sysfs_emu.pagearrays import HUGE, HUGE_PAGES, HUGE_SHIFT, MAPPED, NOT_HUGE, SMALL, ZERO

_BLOCK = np.arange(HUGE_PAGES, dtype=np.int64)


def block_slots(blocks: np.ndarray) -> np.ndarray:
    """Every slot of huge-page blocks ``blocks`` (block ``b`` is slots ``b * HUGE_PAGES ..``), in order."""
    return ((np.asarray(blocks, dtype=np.int64) << HUGE_SHIFT)[:, None] + _BLOCK).ravel()


def whole_blocks(start: int, stop: int) -> np.ndarray:
    """The blocks lying wholly inside slots [start, stop)."""
    return np.arange(-(-start >> HUGE_SHIFT), stop >> HUGE_SHIFT, dtype=np.int64)


class HugePages:
    """The memory model's huge-page operations (a part of :class:`sysfs_emu.memory.Memory`)."""

    huge_pages: int  # slots in huge pages
    thp_splits: int  # huge pages split so far
    mapped_pages: int
    residency: int  # bumped whenever a page starts or stops counting in a process's RSS

    def _map_huge(self, region, first: int, stop: int) -> np.ndarray:
        """Fault in the whole blocks of ``region`` that pages [first, stop) touch and that were never
        mapped: they become huge pages. Returns their slots (now mapped)."""
        p = self.pages
        blocks = whole_blocks(region.start, region.stop)
        blocks = blocks[(blocks >= first >> HUGE_SHIFT) & (blocks <= (stop - 1) >> HUGE_SHIFT)]
        if blocks.size == 0:
            return blocks
        untouched = ((p.flags[block_slots(blocks)].reshape(-1, HUGE_PAGES) & (MAPPED | SMALL)) == 0).all(axis=1)
        idx = block_slots(blocks[untouched])
        if idx.size:
            p.flags[idx] |= MAPPED | HUGE
            self.mapped_pages += idx.size
            self.huge_pages += idx.size
        return idx

    def split_huge(self, slots) -> int:
        """split_huge_page() for the huge pages holding ``slots`` (an array or one slot); returns how many.

        Each empty 4 KiB part of a split huge page is mapped to the shared zero
        page, which frees it: it is no longer mapped in the model.
        """
        p = self.pages
        s = np.atleast_1d(np.asarray(slots, dtype=np.int64))
        s = s[(p.flags[s] & HUGE) != 0]
        if s.size == 0:
            return 0
        blocks = np.unique(s >> HUGE_SHIFT)
        idx = block_slots(blocks)
        flags = p.flags[idx]
        empty = idx[self.is_empty(p.content[idx]) & ((flags & (MAPPED | ZERO)) == MAPPED) & (p.kpage[idx] < 0)]
        p.flags[idx] = (flags & NOT_HUGE) | SMALL
        if empty.size:
            p.flags[empty] &= ~MAPPED
            self.mapped_pages -= empty.size
            self.residency += 1
        self.huge_pages -= idx.size
        self.thp_splits += blocks.size
        return int(blocks.size)

    def _unmap_huge(self, idx: np.ndarray) -> None:
        """Slots ``idx`` are unmapped (the process exits): their huge pages go."""
        p = self.pages
        huge = (p.flags[idx] & HUGE) != 0
        n = int(np.count_nonzero(huge))
        if n:
            p.flags[idx[huge]] &= NOT_HUGE
            self.huge_pages -= n


def same_block(a: int, b: int) -> bool:
    """Whether slots ``a`` and ``b`` lie in one huge-page block."""
    return a >> HUGE_SHIFT == b >> HUGE_SHIFT
