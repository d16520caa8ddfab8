"""The vectorised scan: ksmd's visits of a run of consecutive pages as one pass over array slices.

Pages are processed in the same order whatever the batch size, so a run of
many batches over one region is one pass. A window of consecutive slots goes
through these steps, in this order, each as a whole:

1. free the stale rmap items (page unmapped or now the zero page) the scan passes;
2. give candidates seen for the first time an rmap item;
3. smart scan: age the pages that do not merge and skip them on schedule;
4. count the visits (``pages_scanned``);
5. pages already merged: nothing to do if listed on their KSM page, else in order;
6. private pages: out of the unstable tree, checksum, zero page, then the
   tree pass (:mod:`.treepass`) for those whose checksum held.

Whatever depends on other pages of the window in a way numpy cannot express
is queued for the page-by-page path (:class:`.reference.Deferred`) and runs in
scan order after the bulk work.
"""

from __future__ import annotations

import numpy as np

from sysfs_emu.ksmd.huge import IN_ORDER, huge_blocks, slow_blocks
from sysfs_emu.ksmd.reference import Deferred, PageByPage
from sysfs_emu.memory import checksum
from sysfs_emu.pagearrays import HUGE, HUGE_SHIFT, MAPPED, RMAP, SEQ, UNSTABLE, ZERO

MIN_WINDOW = 4096
"""Slots a window looks at, at least (mostly skipped or unmapped pages: look further at once)."""

# smart scan: how many scans a page that failed to merge at ``age`` skips
SKIP_AGE = np.array([1 if a <= 3 else 2 if a <= 5 else 4 if a <= 8 else 8 for a in range(256)], dtype=np.uint8)
SKIP_FROM_AGE = 3
"""Smart scan skips a page only once it failed to merge this many times."""


class Window:
    """Scans runs of consecutive slots, counting ``pages_scanned`` and ``pages_skipped``."""

    def __init__(self, memory, tunables, rmap, tree_pass, pages: PageByPage, vectorise: bool = True) -> None:
        self.mem = memory
        self.tunables = tunables
        self.rmap = rmap
        self.tree_pass = tree_pass
        self.pages = pages
        self.vectorise = vectorise
        self.pages_scanned = 0
        self.pages_skipped = 0

    def scan_range(self, start: int, stop: int, budget: int, scan) -> tuple[int, int]:
        """Scan slots [start, stop) until ``budget`` visits; returns (slot reached, visits)."""
        smart = bool(self.tunables.smart_scan)
        pos = start
        used = 0
        window = max(2 * budget, MIN_WINDOW)
        while pos < stop and used < budget:
            end = min(stop, pos + window)
            window *= 4  # mostly skipped or unmapped pages here: look further at once
            if self.mem.huge_pages and huge_blocks(self.mem, pos, end).size:
                pos, n = self._scan_huge(pos, end, budget - used, smart, scan)
            else:
                pos, n = self._bulk(pos, end, budget - used, smart, scan)
            used += n
        return pos, used

    def _bulk(self, pos: int, end: int, left: int, smart: bool, scan, exact: bool = False) -> tuple[int, int]:
        """Slots [pos, end) as one window, cut where ``left`` visits are reached; returns (slot reached, visits).

        ``exact`` sends its private pages to the page-by-page path.
        """
        p = self.mem.pages
        f = p.flags[pos:end]
        cand = (f & (MAPPED | ZERO)) == MAPPED
        kp = p.kpage[pos:end]
        if smart:
            may_skip = cand & (kp < 0) & (p.age[pos:end] >= SKIP_FROM_AGE) & (p.skips[pos:end] > 0) & ((f & RMAP) != 0)
            visit = cand & ~may_skip
        else:
            visit = cand
        cum = np.cumsum(visit, dtype=np.int64)
        if cum.size and cum[-1] >= left:
            cut = int(np.searchsorted(cum, left)) + 1
            end = pos + cut
            f, cand, kp, visit = f[:cut], cand[:cut], kp[:cut], visit[:cut]
        self._window(pos, end, f, cand, kp, visit, smart, scan, exact)
        return end, int(np.count_nonzero(visit))

    def _scan_huge(self, pos: int, end: int, left: int, smart: bool, scan) -> tuple[int, int]:
        """Slots [pos, end) holding huge pages: those :func:`.huge.slow_blocks` names one page at a time
        until they are split, or with their private pages in order, the rest in bulk, in scan order;
        returns (slot reached, visits)."""
        used = 0
        for block, kind in slow_blocks(self.mem, pos, end, self.vectorise):
            first, last = max(block << HUGE_SHIFT, pos), min((block + 1) << HUGE_SHIFT, end)
            if first > pos:
                pos, n = self._bulk(pos, first, left - used, smart, scan)
                used += n
                if used >= left:
                    return pos, used
            if kind == IN_ORDER:
                pos, n = self._bulk(pos, last, left - used, smart, scan, exact=True)
                used += n
            while pos < last and used < left and self.mem.pages.flags[pos] & HUGE:
                pos, n = self._bulk(pos, pos + 1, left - used, smart, scan, exact=True)
                used += n
            if used >= left:
                return pos, used
        if pos < end:
            pos, n = self._bulk(pos, end, left - used, smart, scan)
            used += n
        return pos, used

    def _window(self, pos, end, f, cand, kp, visit, smart, scan, exact=False) -> None:
        """Steps 1-6 for slots [pos, end); ``f`` and ``kp`` are views of their flags and KSM pages."""
        deferred = Deferred()
        self._free_stale_items(pos, f, cand, deferred)
        # Below, masks over the window [pos, end) and views of the page arrays stand for
        # index look-ups: pages in a window are consecutive, so this reads them in order.
        if cand.any():
            w = slice(pos, end)
            self.mem.new_rmap_items(w, cand & ((f & RMAP) == 0))
            if smart:
                self._smart_scan(pos, w, cand & (kp < 0), deferred, scan)
            nv = int(np.count_nonzero(visit))
            self.pages_scanned += nv
            scan.work.visits += nv
            if nv:
                self._merged_pages(pos, w, visit & (kp >= 0), kp, deferred, scan)
                self._private_pages(pos, w, f, visit & (kp < 0), deferred, scan, exact)
        deferred.run(self.pages, scan)

    def _free_stale_items(self, base: int, f, cand, deferred: Deferred) -> None:
        """1. Stale rmap items (page gone or now the zero page): freed as the scan passes."""
        stale = ((f & RMAP) != 0) & ~cand
        if not stale.any():
            return
        p = self.mem.pages
        sidx = np.flatnonzero(stale) + base
        on_node = p.rnode[sidx] >= 0
        for s in sidx[on_node]:
            deferred.free(s, self.mem.nodes.content[p.rnode[s]])
        self.rmap.free_unlinked(sidx[~on_node])

    def _smart_scan(self, base: int, w: slice, sm, deferred: Deferred, scan) -> None:
        """3. Age non-KSM candidates; those due to be skipped leave their trees and are not visited."""
        if not sm.any():
            return
        p = self.mem.pages
        age = p.age[w]
        skips = p.skips[w]
        old = sm & (age >= SKIP_FROM_AGE)
        reset = old & (skips == 0)
        skip = old & (skips > 0)
        reset_age = age[reset]
        age += sm & (age != 255)
        if reset_age.size:
            skips[reset] = SKIP_AGE[reset_age]
        if not skip.any():
            return
        kidx = np.flatnonzero(skip) + base
        p.skips[kidx] -= 1
        self.pages_skipped += kidx.size
        scan.work.skipped += kidx.size
        on_node = p.rnode[kidx] >= 0
        for s in kidx[on_node]:
            deferred.unlink(s, self.mem.nodes.content[p.rnode[s]])
        self.rmap.unlink(kidx[~on_node])

    def _merged_pages(self, base: int, w: slice, isk, kp, deferred: Deferred, scan) -> None:
        """5. Visits of pages mapping a KSM page: cheap when listed on it, else in order."""
        if not isk.any():
            return
        p = self.mem.pages
        kv = np.flatnonzero(isk)
        vk = kp[kv]
        listed = (p.rnode[w][kv] == vk) & self.mem.nodes.alive[vk]
        scan.work.ksm += int(listed.sum())
        for s in kv[~listed] + base:
            deferred.visit_page(s, p.content[s])

    def _private_pages(self, base: int, w: slice, f, priv, deferred: Deferred, scan, exact=False) -> None:
        """6. Visits of private pages: copy-on-write leftovers in order, the rest by checksum and trees."""
        p = self.mem.pages
        if exact or not self.vectorise:
            deferred.visit(np.flatnonzero(priv) + base)
            return
        has_node = p.rnode[w] >= 0
        cow = priv & has_node
        if cow.any():
            for s in np.flatnonzero(cow) + base:
                deferred.visit_page(s, p.content[s], self.mem.nodes.content[p.rnode[s]])
        rm = priv & ~has_node
        if not rm.any():
            return
        in_tree = rm & ((f & (UNSTABLE | SEQ)) != 0)
        if in_tree.any():
            self.rmap.leave_unstable_in(f, in_tree)
        r = np.flatnonzero(rm) + base
        cont = p.content[w][rm]
        cs = checksum(cont)
        changed = p.oldsum[w][rm] != cs
        if changed.any():
            p.oldsum[r[changed]] = cs[changed]
            scan.work.changed += int(changed.sum())
            keep = ~changed
            r, cont = r[keep], cont[keep]
        if self.tunables.use_zero_pages and r.size:
            z = self.mem.is_empty(cont)
            if z.any():
                self.mem.map_zero_pages(r[z])
                scan.work.changed += int(z.sum())
                r, cont = r[~z], cont[~z]
        if r.size:
            self.tree_pass.run(r, cont, deferred, scan)
