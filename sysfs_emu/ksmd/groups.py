"""Step 4 of the tree pass: several pages of one content in one pass.

Pages are grouped by content. A group that fits (an existing plain KSM page
with room for all of them, or no KSM page yet and at most
``max_page_sharing`` pages with the partner) merges in bulk; a group that
fills KSM pages ``max_page_sharing`` at a time in a simple shape is laid out
by :meth:`Groups.pattern` exactly as page-by-page merging would; every other
group goes page by page, in order.
"""

from __future__ import annotations

import numpy as np

from sysfs_emu.ksmd.reference import Deferred
from sysfs_emu.ksmd.stable import chain_entry
from sysfs_emu.pagearrays import NO_NODE


class Groups:
    """Bulk merging of pages that share a content within one pass."""

    def __init__(self, memory, tunables, stable, rmap) -> None:
        self.mem = memory
        self.tunables = tunables
        self.stable = stable
        self.rmap = rmap

    def run(self, r, cont, st, old_u, valid_u, inseq, deferred: Deferred, scan) -> None:
        """Pages ``r`` with contents ``cont``, their stable entries ``st`` and unstable partners ``old_u``."""
        nodes = self.mem.nodes
        maxs = self.tunables.max_page_sharing
        order = np.argsort(cont, kind="stable")
        r, cont, st, old_u, valid_u, inseq = (x[order] for x in (r, cont, st, old_u, valid_u, inseq))
        starts = np.flatnonzero(np.r_[True, cont[1:] != cont[:-1]])
        sizes = np.diff(np.r_[starts, cont.size])
        gst = st[starts]
        gvalid = valid_u[starts]
        gseq = inseq[starts]
        slow = gseq.copy()
        # an existing plain KSM page with room for all
        has = gst >= 0
        gnode = np.where(has, gst, 0)
        room = (
            has
            & nodes.alive[gnode]
            & (nodes.mapcount[gnode] > 0)
            & (nodes.count[gnode] > 0)
            & (nodes.count[gnode] + sizes <= maxs)
        )
        total = sizes + gvalid.astype(np.int64)
        newok = (gst == NO_NODE) & (total <= maxs)
        slow |= ~(room | newok)
        gid = np.repeat(np.arange(starts.size), sizes)
        into = (room & ~slow)[gid]
        if into.any():
            self._merge_into(r[into], st[into].astype(np.int32), scan)
        gnew = newok & ~slow
        if gnew.any():
            self._new_pages(r, cont, old_u, starts, sizes, total, gvalid, gnew, gid, scan)
        for g in np.flatnonzero(slow):
            members = r[starts[g] : starts[g] + sizes[g]]
            u, u_valid = int(old_u[starts[g]]), bool(gvalid[g])
            if gseq[g] or not self.pattern(int(cont[starts[g]]), members, int(gst[g]), u, u_valid, scan):
                deferred.visit(members, after_checksum=True)

    def _merge_into(self, slots: np.ndarray, node_ids: np.ndarray, scan) -> None:
        """Merge pages into KSM pages that are mapped and have room for them all."""
        uniq, cnt = np.unique(node_ids, return_counts=True)
        self.stable.merge(slots, node_ids, uniq, cnt)
        scan.work.merges += slots.size

    def _new_pages(self, r, cont, old_u, starts, sizes, total, gvalid, gnew, gid, scan) -> None:
        """A new KSM page per group ``gnew``: its unstable partner (if any) and the pages of this pass."""
        new = self.stable.new_nodes(cont[starts[gnew]])
        self.stable.enter(cont[starts[gnew]], new)
        partners = old_u[starts[gnew]][gvalid[gnew]]
        if partners.size:
            self.rmap.leave_unstable(partners)
        members = r[gnew[gid]]
        slots = np.concatenate([partners, members])
        owners = np.concatenate([new[gvalid[gnew]], np.repeat(new, sizes[gnew])])
        tot = total[gnew].astype(np.int32)
        self.stable.merge(slots, owners, new, tot)
        scan.work.merges += int(tot.sum())

    def pattern(self, content: int, pages: np.ndarray, entry: int, u: int, u_valid: bool, scan) -> bool:
        """Many pages of one content in one pass, filling KSM pages ``max_page_sharing`` at a time.

        Handles a content with no KSM page yet, with one plain KSM page, or with
        a chain whose duplicates are all full but for its head, exactly as
        page-by-page merging would; returns False (nothing done) otherwise.
        """
        m = int(self.tunables.max_page_sharing)
        shape = self._shape(entry, pages.size, m, scan)
        if shape is None:
            return False
        fill_node, fill, chain_id = shape
        if fill:
            self._merge_into(pages[:fill], np.full(fill, fill_node, dtype=np.int32), scan)
        rest = pages[fill:]
        seqs = np.concatenate([[u], rest]) if u_valid and rest.size else rest
        if seqs.size == 0:
            return True
        nfull, tail = divmod(seqs.size, m)
        sizes = [m] * nfull + ([tail] if tail >= 2 else [])
        if u_valid and rest.size:
            self.rmap.leave_unstable(u)
        if sizes:
            self._full_pages(content, seqs, sizes, fill_node, chain_id, scan)
        if tail == 1:  # one page left over: it waits in the unstable tree
            leftover = int(seqs[-1])
            self.rmap.insert_unstable(leftover, scan.seqnr)
            self.mem.unstable_of[content] = leftover
        return True

    def _shape(self, entry: int, n: int, m: int, scan) -> tuple[int, int, int] | None:
        """(KSM page to fill first or -1, how many it takes, chain id or -1), or None if not a simple shape."""
        nodes = self.mem.nodes
        if entry >= 0:
            if not (nodes.alive[entry] and nodes.mapcount[entry] > 0 and nodes.count[entry] >= 1):
                return None
            return entry, max(0, min(n, m - int(nodes.count[entry]))), -1
        if entry == NO_NODE:
            return -1, 0, -1
        chain_id = chain_entry(entry)
        dups = self.stable.chains[chain_id]
        if len(dups) < 2:
            return None
        d = np.array(dups)
        if not (nodes.alive[d].all() and (nodes.mapcount[d] > 0).all() and (nodes.count[d[1:]] >= m).all()):
            return None
        fill_node, fill = -1, 0
        head = int(d[0])
        if nodes.count[head] < m:
            # the head duplicate is the only one with room: every look-up picks it
            if nodes.count[head] < 1:
                return None
            fill_node, fill = head, min(n, m - int(nodes.count[head]))
        self.stable.prune_due(chain_id, scan.now)
        return fill_node, fill, chain_id

    def _full_pages(self, content: int, seqs, sizes: list[int], fill_node: int, chain_id: int, scan) -> None:
        """New KSM pages of ``content`` taking ``sizes`` of pages ``seqs`` in order, chained as the kernel would."""
        counts = np.array(sizes, dtype=np.int32)
        new = self.stable.new_nodes(np.full(len(sizes), content, dtype=np.int64))
        merged = seqs[: int(counts.sum())]
        self.stable.merge(merged, np.repeat(new, counts), new, counts)
        scan.work.merges += merged.size
        heads = [int(x) for x in new[::-1]]
        if chain_id >= 0:
            self.stable.add_dups(chain_id, heads)
        elif fill_node >= 0:
            self.stable.add_dups(self.stable.make_chain(fill_node, scan.now), heads)
        elif len(heads) >= 2:
            self.stable.add_dups(self.stable.make_chain(heads[-1], scan.now), heads[:-1])
        else:
            self.stable.enter(content, heads[0])
