"""The vectorised tree pass: the stable, then the unstable tree for the private pages of a window.

For pages ``r`` (in scan order) whose checksum held, with contents ``cont``:

0. look both trees up at once (:func:`lookup`), finding which contents occur
   more than once in the pass, and which pages have a valid partner in this
   full scan's unstable tree;
1. a content seen once, with no KSM page and no partner: into the unstable tree;
2. a content seen once with a partner: a new KSM page for both;
3. a content seen once with a plain KSM page that has room: merge into it;
4. several pages of one content in the pass: :mod:`.groups`.

Everything else (chains, full KSM pages, contents the page-by-page path
touches in this window) is deferred to the page-by-page path.
"""

from __future__ import annotations

import numpy as np

from sysfs_emu.ksmd.groups import Groups
from sysfs_emu.ksmd.reference import Deferred
from sysfs_emu.ksmd.rmap import parity
from sysfs_emu.pagearrays import MAPPED, NO_NODE, SEQ, UNSTABLE

LOOKUP_CHUNK = 1 << 15
"""Pages per step of :func:`lookup`: the table lines one step touches stay in cache for its second look."""


def lookup(memory, ci: np.ndarray, chunk: int = LOOKUP_CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both trees' entries for contents ``ci`` (the stable node, the unstable tree slot as it was
    before this pass) and which pages share their content with another page of the pass.

    Each step marks the unstable table with ``-3 - position`` for its pages
    (restored by the caller): a later page that finds a mark has its
    content earlier in the pass, and a page that does not find its own
    mark right after writing it shares its content within the step.
    """
    ctab = memory.ctab
    table = memory.unstable_of
    k = ci.size
    st = np.empty(k, dtype=np.int32)
    old_u = np.empty(k, dtype=np.int32)
    dup = np.zeros(k, dtype=bool)
    for a in range(0, k, chunk):
        b = min(a + chunk, k)
        c = ci[a:b]
        both = ctab[c].view(np.int32)  # one random look-up fetches both trees' entries
        st[a:b] = both[0::2]
        u = both[1::2]
        seen = u <= -3
        if seen.any():
            earlier = -3 - u[seen]  # the last page before this step with the same content
            dup[a:b][seen] = True
            dup[earlier] = True
            u = u.copy()
            u[seen] = old_u[earlier]
        old_u[a:b] = u
        mark = np.arange(-3 - a, -3 - b, -1, dtype=np.int32)
        table[c] = mark
        found = table[c]
        clash = found != mark
        if clash.any():
            dup[a:b][clash] = True
            dup[-3 - found[clash]] = True  # the page of this step that wrote last
    return st, old_u, dup


class TreePass:
    """Steps 0-4 for the private pages of a window."""

    def __init__(self, memory, tunables, stable, rmap, lookup_chunk: int = LOOKUP_CHUNK) -> None:
        self.mem = memory
        self.tunables = tunables
        self.stable = stable
        self.rmap = rmap
        self.lookup_chunk = lookup_chunk
        self.groups = Groups(memory, tunables, stable, rmap)

    def run(self, r: np.ndarray, cont: np.ndarray, deferred: Deferred, scan) -> None:
        """Stable then unstable tree for pages ``r`` (scan order) with contents ``cont``."""
        scan.work.tree += r.size
        ci = cont.astype(np.intp)  # index once, not once per look-up
        st, old_u, dup = lookup(self.mem, ci, self.lookup_chunk)
        if deferred.contents:
            inseq = np.isin(cont, np.fromiter(deferred.contents, dtype=np.int64))
            single = ~dup & ~inseq
        else:
            inseq = np.zeros(r.size, dtype=bool)
            single = ~dup
        fresh = st == NO_NODE
        valid_u, gone_u = self._partners(old_u, fresh | ~single, cont, scan)
        # a page whose partner went away gives up for this scan: it is neither merged nor inserted
        self._insert_unstable(r, ci, old_u, single & fresh & ~valid_u & ~gone_u, scan)
        self._merge_pairs(r, cont, ci, old_u, single & fresh & valid_u, scan)
        self._merge_into_ksm_pages(r, st, single & (st >= 0), deferred, scan)
        deferred.visit(r[single & (st < NO_NODE)], after_checksum=True)  # chains: in order
        multi = ~single
        if multi.any():
            in_order = (inseq | gone_u)[multi]
            self.groups.run(r[multi], cont[multi], st[multi], old_u[multi], valid_u[multi], in_order, deferred, scan)

    def _partners(self, u: np.ndarray, wanted: np.ndarray, cont: np.ndarray, scan) -> tuple[np.ndarray, np.ndarray]:
        """Which pages have a valid unstable tree partner from earlier in this full scan, and
        which find their content's tree page gone (unmapped since it was inserted).

        Only where it decides anything (``wanted``): a page with a plain KSM
        page to try first, or in a chain, goes by the stable tree.
        """
        p = self.mem.pages
        valid_u = np.zeros(u.size, dtype=bool)
        gone_u = np.zeros(u.size, dtype=bool)
        has_u = np.flatnonzero((u >= 0) & wanted)
        if has_u.size:
            uu = u[has_u].astype(np.intp)
            uf = p.flags[uu]
            ours = ((uf & UNSTABLE) != 0) & ((uf & SEQ) == parity(scan.seqnr)) & (p.content[uu] == cont[has_u])
            mapped = (uf & MAPPED) != 0
            valid_u[has_u] = ours & mapped
            gone_u[has_u] = ours & ~mapped
        return valid_u, gone_u

    def _insert_unstable(self, r, ci, old_u, ins, scan) -> None:
        """1. Unique so far: into the unstable tree; every other content gets its entry back from the marks."""
        self.mem.unstable_of[ci] = np.where(ins, r, old_u)
        if ins.any():
            self.rmap.insert_unstable(r[ins], scan.seqnr)

    def _merge_pairs(self, r, cont, ci, old_u, two, scan) -> None:
        """2. A partner in the unstable tree: a new KSM page for both."""
        if not two.any():
            return
        a, b = old_u[two], r[two]
        new = self.stable.new_nodes(cont[two])
        self.stable.enter(ci[two], new)
        self.rmap.leave_unstable(a)
        self.stable.merge(np.concatenate([a, b]), np.concatenate([new, new]), new, 2)
        scan.work.merges += 2 * new.size

    def _merge_into_ksm_pages(self, r, st, plain, deferred: Deferred, scan) -> None:
        """3. A plain KSM page with room: merge into it (its count stays above 0: no new shared page)."""
        if not plain.any():
            return
        pr, pn = r[plain], st[plain].astype(np.intp)
        cm = self.mem.nodes.cm[pn]
        halves = cm.view(np.int32)
        cnt, mc = halves[0::2], halves[1::2]
        okay = self.mem.nodes.alive[pn] & (mc > 0) & (cnt > 0) & (cnt < self.tunables.max_page_sharing)
        if okay.any():
            slots = pr[okay]
            self.stable.merge(slots, pn[okay], packed=cm[okay])  # distinct KSM pages: one more item and mapping each
            scan.work.merges += slots.size
        deferred.visit(pr[~okay], after_checksum=True)
