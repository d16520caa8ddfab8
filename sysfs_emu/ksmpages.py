"""The memory model's operations for ksmd: KSM pages, the zero page, rmap items (a part of
:class:`sysfs_emu.memory.Memory`).

ksmd (sysfs_emu.ksmd) owns the tree logic; these are the changes to memory it
makes, kept here so that the running totals (``ksm_pages``, ``ksm_mapped``,
``zero_pages``, ``rmap_items``) change only inside the memory model.
"""

from __future__ import annotations

import numpy as np

from sysfs_emu.pagearrays import NO_NODE, NOT_AN_ITEM, ONE_EACH, RMAP, SEQ, UNSTABLE, ZERO


class KsmPages:
    """ksmd's operations on :class:`sysfs_emu.memory.Memory`."""

    ksm_pages: int
    ksm_mapped: int
    zero_pages: int
    rmap_items: int
    huge_pages: int
    residency: int  # bumped whenever a page starts or stops counting in a process's RSS

    def new_ksm_pages(self, contents: np.ndarray) -> np.ndarray:
        """Stable nodes for new KSM pages of ``contents`` (no rmap item, no mapping yet); returns their ids."""
        nodes = self.nodes
        n = contents.size
        start = nodes.size
        nodes.reserve(start + n, factor=1.5)
        nodes.size = start + n
        sl = slice(start, start + n)
        nodes.content[sl] = contents
        nodes.cm[sl] = 0  # no rmap item, no mapping
        nodes.chain[sl] = NO_NODE
        nodes.alive[sl] = True
        return np.arange(start, start + n, dtype=np.int32)

    def map_ksm_page(self, slot: int, node: int) -> None:
        """The entry of ``slot`` now maps KSM page ``node``; its own page is freed (replace_page())."""
        if self.huge_pages:
            self.split_huge(slot)
        self.pages.kpage[slot] = node
        mapcount = self.nodes.mapcount
        if mapcount[node] == 0:
            self.ksm_pages += 1
        mapcount[node] += 1
        self.ksm_mapped += 1

    def merge_pages(self, slots: np.ndarray, node_ids: np.ndarray, nodes=None, per_node=1, packed=None) -> np.ndarray:
        """Pages ``slots`` merge into KSM pages ``node_ids``: each entry maps its KSM page and its rmap item hangs off it.

        ``nodes`` are the distinct KSM pages among ``node_ids`` and ``per_node``
        how many of ``slots`` each takes (by default ``node_ids`` are distinct,
        one each); ``packed`` is ``self.nodes.cm[nodes]`` when the caller has
        read it already. The item count and the mapcount of a KSM page share
        one int64, so both change in one write. Returns the number of rmap
        items each of ``nodes`` had before.
        """
        p = self.pages
        if self.huge_pages:
            self.split_huge(slots)  # the caller made sure no page here is empty: none goes to the zero page
        p.kpage[slots] = node_ids
        p.rnode[slots] = node_ids
        if nodes is None:
            nodes = node_ids
        if packed is None:
            packed = self.nodes.cm[nodes]
        self.nodes.cm[nodes] = packed + per_node * ONE_EACH
        halves = packed.view(np.int32)
        self.ksm_pages += int(np.count_nonzero(halves[1::2] == 0))
        self.ksm_mapped += slots.size
        return halves[0::2]

    def map_zero_pages(self, slots) -> None:
        """The entries of ``slots`` (an array or one slot) now map the shared zero page: their own pages are freed."""
        self.pages.flags[slots] |= ZERO
        self.zero_pages += int(np.size(slots))
        self.residency += 1

    def new_rmap_items(self, window: slice, mask: np.ndarray) -> int:
        """ksmd's first visit of the pages ``mask`` selects in ``window``: an rmap item each, no checksum yet."""
        n = int(np.count_nonzero(mask))
        if n:
            p = self.pages
            flags = p.flags[window]
            flags[mask] = (flags[mask] | RMAP) & ~(UNSTABLE | SEQ)
            p.oldsum[window][mask] = 0
            p.age[window][mask] = 0
            p.skips[window][mask] = 0
            p.rnode[window][mask] = NO_NODE
            self.rmap_items += n
        return n

    def free_rmap_items(self, slots) -> None:
        """Free the rmap items of ``slots`` (an array or one slot; already out of both trees)."""
        self.pages.flags[slots] &= NOT_AN_ITEM
        self.rmap_items -= int(np.size(slots))

    def has_rmap_items(self, pid: int) -> bool:
        return bool((self.pages.flags[self.process_slots(pid)] & RMAP).any())

    def leave_ksm(self, pid: int) -> None:
        """ksmd dropped the process from its list; an exited one is forgotten (its slots reused)."""
        proc = self.processes.get(pid)
        if proc is None:
            return
        proc.in_ksm = False
        if not proc.alive:
            self.release_process(pid)
