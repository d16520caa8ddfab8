"""rmap items and the unstable tree.

ksmd keeps an rmap item for every candidate page it has visited (the RMAP bit
and the item's fields in the memory model's per-page arrays). An item is in
the unstable tree (UNSTABLE, with the parity of the full scan that put it
there in SEQ, and its slot in ``memory.unstable_of``), hangs off a stable node
(``rnode``), or neither. The unstable tree is emptied at every new full scan:
an entry from an earlier scan has the other parity and no longer counts.

:class:`RmapItems` owns ``pages_unshared`` (items in the unstable tree),
changed only in its helpers, as mm/ksm.c changes it only in
unstable_tree_search_insert() and remove_rmap_item_from_tree().

Known simplification: the unstable tree is a table by content, not an rb-tree.
A tree page that went away during a scan stops only the searches for its own
content; the kernel's search gives up at any node on its path whose page is
gone, which depends on the tree's shape (a gone root stops every search).
"""

from __future__ import annotations

import numpy as np

from sysfs_emu.pagearrays import NO_NODE, RMAP, SEQ, UNSTABLE

OUT_OF_UNSTABLE_TREE = np.uint8(~(UNSTABLE | SEQ) & 0xFF)


def parity(seqnr: int) -> np.uint8:
    """The SEQ bit an unstable tree entry gets in full scan ``seqnr``."""
    return SEQ if seqnr & 1 else np.uint8(0)


class RmapItems:
    """Removing rmap items from the trees and freeing them; the unstable tree's count."""

    def __init__(self, memory, stable) -> None:
        self.mem = memory
        self.stable = stable
        self.pages_unshared = 0

    # ---- the unstable tree -------------------------------------------------------

    def insert_unstable(self, slots, seqnr: int) -> None:
        """Items ``slots`` (an array or one slot) enter the unstable tree of full scan ``seqnr``.

        The caller writes their slots into ``memory.unstable_of``.
        """
        self.mem.pages.flags[slots] |= UNSTABLE | parity(seqnr)
        self.pages_unshared += int(np.size(slots))

    def leave_unstable(self, slots) -> None:
        """Items ``slots`` (in the unstable tree) leave it, to be merged."""
        self.mem.pages.flags[slots] &= OUT_OF_UNSTABLE_TREE
        self.pages_unshared -= int(np.size(slots))

    def leave_unstable_in(self, flags: np.ndarray, mask: np.ndarray) -> None:
        """Items ``mask`` selects in the window ``flags`` (a view) leave any unstable tree, this scan's or older."""
        self.pages_unshared -= int(np.count_nonzero(mask & ((flags & UNSTABLE) != 0)))
        flags[mask] &= OUT_OF_UNSTABLE_TREE

    def unstable_partner(self, u: int, content: int, seqnr: int) -> bool:
        """Whether slot ``u`` is in this full scan's unstable tree with ``content``."""
        f = int(self.mem.pages.flags[u])
        return bool(f & UNSTABLE and bool(f & SEQ) == bool(seqnr & 1) and int(self.mem.pages.content[u]) == content)

    # ---- out of the trees, and freed -----------------------------------------------

    def unlink(self, idx: np.ndarray) -> None:
        """remove_rmap_item_from_tree() for many items (order does not matter)."""
        if idx.size == 0:
            return
        p = self.mem.pages
        f = p.flags[idx]
        un = (f & UNSTABLE) != 0
        if un.any():
            self.pages_unshared -= int(un.sum())
            p.flags[idx] = f & OUT_OF_UNSTABLE_TREE
        rn = p.rnode[idx]
        st = rn >= 0
        if st.any():
            p.rnode[idx[st]] = NO_NODE
            self.stable.leave(rn[st])

    def unlink_one(self, s: int) -> None:
        """remove_rmap_item_from_tree() for the item of slot ``s``."""
        p = self.mem.pages
        n = int(p.rnode[s])
        if n >= 0:
            p.rnode[s] = NO_NODE
            self.stable.leave_one(n)
        elif p.flags[s] & UNSTABLE:
            p.flags[s] &= OUT_OF_UNSTABLE_TREE
            self.pages_unshared -= 1

    def free(self, idx: np.ndarray) -> None:
        """Out of the trees and freed: the rmap items of slots ``idx`` (those that have one)."""
        p = self.mem.pages
        have = idx[(p.flags[idx] & RMAP) != 0]
        if have.size == 0:
            return
        self.unlink(have)
        self.mem.free_rmap_items(have)

    def free_unlinked(self, idx: np.ndarray) -> None:
        """Free items ``idx`` that hang off no stable node (their unstable tree entries go too)."""
        self.unlink(idx)
        self.mem.free_rmap_items(idx)

    def free_one(self, s: int) -> None:
        self.unlink_one(s)
        self.mem.free_rmap_items(s)

    def forget_unstable_tree(self) -> None:
        """run=2 freed every item: no unstable tree is left to count."""
        self.pages_unshared = 0
