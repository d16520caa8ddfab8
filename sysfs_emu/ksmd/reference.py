"""The page-by-page path: cmp_and_merge_page() for one page at a time, in scan order.

This is the reference the vectorised path (:mod:`.window`, :mod:`.treepass`)
must equal: with ``Ksmd(vectorise=False)`` every private page goes this way,
and tests/test_ksmd.py compares the two on random workloads. The vectorised
path also hands it the pages whose outcome depends on others with the same
content in a way numpy cannot express (chains, full KSM pages, copy-on-write
leftovers): they are queued in a :class:`Deferred` and visited in slot order
once the window's bulk work is done.
"""

from __future__ import annotations

import numpy as np

from sysfs_emu.memory import checksum
from sysfs_emu.pagearrays import HUGE, MAPPED
from sysfs_emu.thp import same_block

VISIT, UNLINK, FREE = 0, 1, 2


class PageByPage:
    """ksmd's merge logic for one page at a time."""

    def __init__(self, memory, tunables, stable, rmap) -> None:
        self.mem = memory
        self.tunables = tunables
        self.stable = stable
        self.rmap = rmap

    def visit(self, s: int, scan, after_checksum: bool = False) -> None:
        """cmp_and_merge_page() for slot ``s`` in pass ``scan``; ``after_checksum``: its checksum was already found unchanged."""
        p = self.mem.pages
        if not after_checksum:
            k = int(p.kpage[s])
            if k >= 0:
                if int(p.rnode[s]) == k and self.mem.nodes.alive[k]:
                    return
                self.rmap.unlink_one(s)
                self.stable.append(s, k)  # a KSM page mapped here but not listed: list it
                return
            self.rmap.unlink_one(s)
            cs = int(checksum(np.array([p.content[s]]))[0])
            if int(p.oldsum[s]) != cs:
                p.oldsum[s] = cs
                scan.work.changed += 1
                return
        content = int(p.content[s])
        if self.tunables.use_zero_pages and self.mem.is_empty(np.array([content]))[0]:
            scan.work.changed += 1
            if not p.flags[s] & HUGE:
                self.mem.map_zero_pages(s)
                return
            self.mem.split_huge(s)  # the split maps the empty page to the shared zero page: this merge fails
        if not after_checksum:  # else the tree pass that handed it over counted it
            scan.work.tree += 1
        n = self.stable.search(content, scan.now)
        if n >= 0:
            if p.flags[s] & HUGE:
                self.mem.split_huge(s)
            if p.flags[s] & MAPPED:  # else the split took the page away (an empty one): the merge fails
                self.mem.map_ksm_page(s, n)
                self.stable.append(s, n)
                scan.work.merges += 1
            return
        self._unstable_tree(s, content, scan)

    def _unstable_tree(self, s: int, content: int, scan) -> None:
        """unstable_tree_search_insert(): merge with this scan's page of ``content``, or take its place."""
        p = self.mem.pages
        u = int(self.mem.unstable_of[content])
        if u >= 0 and u != s and self.rmap.unstable_partner(u, content, scan.seqnr):
            if not p.flags[u] & MAPPED:
                return  # the tree page went away: give up for this scan
            if not self._split_for_merge(s, u):
                return
            node = self.stable.insert(content, scan.now)
            self.rmap.leave_unstable(u)
            self.mem.map_ksm_page(u, node)
            self.mem.map_ksm_page(s, node)
            self.stable.append(u, node)
            self.stable.append(s, node)
            scan.work.merges += 2
            return
        self.rmap.insert_unstable(s, scan.seqnr)
        self.mem.unstable_of[content] = s

    def _split_for_merge(self, s: int, u: int) -> bool:
        """try_to_merge_two_pages()'s huge pages: split them; False when the merge fails.

        Page ``s`` is made a KSM page first, then ``u`` is merged into it; each
        is split out of its huge page on the way. Two pages of one huge page
        cannot be merged in one go (the split fails while both are held): the
        huge page is split and the merge waits for a later scan. A page the
        split mapped to the zero page (an empty one) is gone: the merge fails.
        """
        flags = self.mem.pages.flags
        if not flags[s] & MAPPED:
            return False  # taken away by the split of a failed zero page merge
        if flags[s] & HUGE:
            both = bool(flags[u] & HUGE) and same_block(s, u)
            self.mem.split_huge(s)
            if both or not flags[s] & MAPPED:
                return False
        if flags[u] & HUGE:
            self.mem.split_huge(u)
            return bool(flags[u] & MAPPED)
        return True


class Deferred:
    """Pages of a window left to the page-by-page path, and the contents they touch."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, bool]] = []  # (slot, VISIT/UNLINK/FREE, after_checksum)
        self.contents: set[int] = set()

    def visit(self, slots, after_checksum: bool = False) -> None:
        """Visit pages ``slots`` in order (their contents are this window's own: no note needed)."""
        for s in slots:
            self.steps.append((int(s), VISIT, after_checksum))

    def visit_page(self, s: int, *contents: int) -> None:
        """Visit page ``s`` in order; ``contents`` (its own, its KSM page's) are touched out of bulk order."""
        self.steps.append((int(s), VISIT, False))
        self.contents.update(int(c) for c in contents)

    def unlink(self, s: int, content: int) -> None:
        """Take the rmap item of ``s`` (on a KSM page of ``content``) out of its tree, in order."""
        self.steps.append((int(s), UNLINK, False))
        self.contents.add(int(content))

    def free(self, s: int, content: int) -> None:
        """Free the rmap item of ``s`` (on a KSM page of ``content``), in order."""
        self.steps.append((int(s), FREE, False))
        self.contents.add(int(content))

    def run(self, pages: PageByPage, scan) -> None:
        """Everything queued, in slot order (the order of the scan)."""
        if not self.steps:
            return
        self.steps.sort(key=lambda e: e[0])
        for s, kind, after in self.steps:
            if kind == VISIT:
                pages.visit(s, scan, after)
            elif kind == UNLINK:
                pages.rmap.unlink_one(s)
            else:
                pages.rmap.free_one(s)
