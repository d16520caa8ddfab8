"""The stable tree: KSM pages by content, chains of duplicates, and the counters they define.

Each content has at most one entry in ``memory.stable_of``: a stable node (a
KSM page) or, once ``max_page_sharing`` made more than one KSM page of it
necessary, a chain whose duplicates (``stable_node_dups``) each take up to
``max_page_sharing`` rmap items (mm/ksm.c's stable_node_chain). A node's
``count`` is its rmap items (rmap_hlist_len); its ``mapcount``, the page table
entries that map it, belongs to the memory model.

:class:`StableTree` owns ``pages_shared``, ``pages_sharing``,
``stable_node_chains`` and ``stable_node_dups``: they change only in its
helpers (:meth:`StableTree.append`, :meth:`StableTree.leave`,
:meth:`StableTree.merge`, :meth:`StableTree.remove_node` and the chain
helpers), as mm/ksm.c changes them only where rmap items join or leave a node.

Known simplification: a stale KSM page (all mappers gone) is pruned when its
own content is looked up, when one of its rmap items is removed, by chain
walks, run=2 and busy(); the kernel also prunes stale nodes any rb-tree walk
happens to pass, which depends on the tree's shape.
"""

from __future__ import annotations

import numpy as np

from sysfs_emu.ksmd.timing import msecs_to_jiffies
from sysfs_emu.pagearrays import NO_NODE


def chain_entry(cid: int) -> int:
    """The ``stable_of`` entry of chain ``cid`` (plain nodes are >= 0, NO_NODE is -1)."""
    return -cid - 2


class StableTree:
    """The stable tree over a :class:`sysfs_emu.memory.Memory`'s KSM pages, with its counters."""

    def __init__(self, memory, tunables) -> None:
        self.mem = memory
        self.tunables = tunables
        self.pages_shared = 0
        self.pages_sharing = 0
        self.stable_node_chains = 0
        self.stable_node_dups = 0
        # stable node chains: id -> dup node ids (head first), content, last prune (jiffies)
        self.chains: dict[int, list[int]] = {}
        self.chain_content: dict[int, int] = {}
        self.chain_prune: dict[int, int] = {}
        self._next_chain = 0

    # ---- nodes -----------------------------------------------------------------

    def is_stale(self, n: int) -> bool:
        """In the tree, but no page table entry maps the KSM page any more."""
        nodes = self.mem.nodes
        return bool(nodes.alive[n]) and nodes.mapcount[n] == 0

    def has_room(self, n: int, offset: int = 0) -> bool:
        """A node with rmap items that takes ``offset`` + 1 more within ``max_page_sharing``."""
        c = int(self.mem.nodes.count[n])
        return c > 0 and c + offset < self.tunables.max_page_sharing

    def remove_node(self, n: int) -> None:
        """remove_node_from_stable_tree(): the KSM page is gone; its rmap items leave the tree."""
        nodes = self.mem.nodes
        if not nodes.alive[n]:
            return
        c = int(nodes.count[n])
        if c > 0:
            self.pages_shared -= 1
            self.pages_sharing -= c - 1
        nodes.count[n] = 0
        nodes.alive[n] = False
        cid = int(nodes.chain[n])
        if cid >= 0:
            if n in self.chains.get(cid, ()):
                self.chains[cid].remove(n)
                self.stable_node_dups -= 1
            nodes.chain[n] = NO_NODE
        else:
            content = int(nodes.content[n])
            if self.mem.stable_of[content] == n:
                self.mem.stable_of[content] = NO_NODE

    def in_use(self) -> bool:
        """Pages are merged (or a KSM page is still mapped): what makes some tunables EBUSY."""
        nodes = self.mem.nodes
        live = nodes.alive[: nodes.size]
        return bool(self.pages_shared or (nodes.mapcount[: nodes.size][live] > 0).any())

    def remove_all(self) -> None:
        """remove_all_stable_nodes(): empty the tree."""
        nodes = self.mem.nodes
        nodes.alive[: nodes.size] = False
        nodes.count[: nodes.size] = 0
        nodes.chain[: nodes.size] = NO_NODE
        self.mem.stable_of[:] = NO_NODE
        self.chains.clear()
        self.chain_content.clear()
        self.chain_prune.clear()
        self.stable_node_chains = 0
        self.stable_node_dups = 0
        self.pages_shared = 0
        self.pages_sharing = 0

    # ---- rmap items joining and leaving nodes ------------------------------------

    def append(self, s: int, n: int) -> None:
        """stable_tree_append(): the rmap item of slot ``s`` hangs off node ``n``."""
        nodes = self.mem.nodes
        nodes.count[n] += 1
        self.mem.pages.rnode[s] = n
        if nodes.count[n] == 1:
            self.pages_shared += 1
        else:
            self.pages_sharing += 1

    def leave_one(self, n: int) -> None:
        """One rmap item left node ``n`` (already unhooked); a stale node goes with it."""
        nodes = self.mem.nodes
        if not nodes.alive[n]:
            return
        if nodes.mapcount[n] == 0:
            self.remove_node(n)
            return
        nodes.count[n] -= 1
        if nodes.count[n] > 0:
            self.pages_sharing -= 1
        else:
            self.pages_shared -= 1

    def leave(self, node_ids: np.ndarray) -> None:
        """Many rmap items left nodes ``node_ids`` (one entry per item, in any order)."""
        nodes = self.mem.nodes
        uniq, cnt = np.unique(node_ids, return_counts=True)
        alive = nodes.alive[uniq]
        uniq, cnt = uniq[alive], cnt[alive]
        stale = nodes.mapcount[uniq] == 0
        for n in uniq[stale]:
            self.remove_node(int(n))
        uniq, cnt = uniq[~stale], cnt[~stale]
        if uniq.size:
            new = nodes.count[uniq] - cnt
            nodes.count[uniq] = new
            emptied = new == 0
            self.pages_shared -= int(emptied.sum())
            self.pages_sharing -= int(cnt.sum() - emptied.sum())

    def merge(self, slots: np.ndarray, node_ids: np.ndarray, nodes=None, per_node=1, packed=None) -> None:
        """Pages ``slots`` merge into mapped KSM pages ``node_ids`` (see ``Memory.merge_pages``)."""
        before = self.mem.merge_pages(slots, node_ids, nodes, per_node, packed)
        newly_shared = int(np.count_nonzero(before == 0))
        self.pages_shared += newly_shared
        self.pages_sharing += slots.size - newly_shared

    def new_nodes(self, contents: np.ndarray) -> np.ndarray:
        """Stable nodes for new KSM pages of ``contents``, not yet in the tree; returns their ids."""
        return self.mem.new_ksm_pages(contents)

    def enter(self, contents, node_ids) -> None:
        """Plain nodes ``node_ids`` become the stable tree's entries for ``contents`` (arrays, or one of each)."""
        self.mem.stable_of[contents] = node_ids

    # ---- chains ------------------------------------------------------------------

    def make_chain(self, node: int, now: int) -> int:
        """stable_node_dup chain for the content of ``node``, with ``node`` its first duplicate."""
        cid = self._next_chain
        self._next_chain += 1
        content = int(self.mem.nodes.content[node])
        self.chains[cid] = [node]
        self.chain_content[cid] = content
        self.chain_prune[cid] = now
        self.mem.nodes.chain[node] = cid
        self.mem.stable_of[content] = chain_entry(cid)
        self.stable_node_chains += 1
        self.stable_node_dups += 1
        return cid

    def add_dups(self, cid: int, heads: list[int]) -> None:
        """New duplicates at the head of chain ``cid``, in the order given."""
        self.chains[cid][:0] = heads
        self.mem.nodes.chain[np.array(heads, dtype=np.int64)] = cid
        self.stable_node_dups += len(heads)

    def _free_chain(self, cid: int) -> None:
        content = self.chain_content.pop(cid)
        del self.chains[cid]
        del self.chain_prune[cid]
        self.stable_node_chains -= 1
        if self.mem.stable_of[content] == chain_entry(cid):
            self.mem.stable_of[content] = NO_NODE

    def prune_due(self, cid: int, now: int) -> bool:
        """Whether a chain walk at ``now`` prunes (and marks the chain pruned), as chain_prune() times it."""
        prune_jiffies = msecs_to_jiffies(self.tunables.stable_node_chains_prune_millisecs)
        if now < self.chain_prune[cid] + prune_jiffies:
            return False
        self.chain_prune[cid] = now
        return True

    def chain_dup(self, cid: int, prune: bool, now: int) -> int:
        """stable_node_dup(): the best duplicate of a chain, pruning stale ones; -1 if none."""
        prune = prune and self.prune_due(cid, now)
        chain = self.chains[cid]
        found, stale = self._walk(chain, prune)
        for dup in stale:
            self.remove_node(dup)
        if found < 0:
            self._free_chain(cid)
        elif len(chain) == 1:
            self._collapse(cid, found)
        elif chain[0] != found and self.has_room(found, 1):
            chain.remove(found)
            chain.insert(0, found)
        return found

    def _walk(self, chain: list[int], prune: bool) -> tuple[int, list[int]]:
        """The walk of stable_node_dup() over ``chain``, in numpy: (the dup it picks or -1, the stale dups it passes).

        In the kernel's order: stale dups are pruned as the walk passes them; the
        first live dup is the pick until one with room (for one more rmap item)
        replaces it; without ``prune`` the walk stops at the first live dup with
        room, with ``prune`` it goes on to the end and keeps the first dup of the
        most rmap items among those with room.
        """
        if prune:
            dups, stale, live, room = self._dup_states(chain)
            if room.any():
                return int(dups[np.argmax(np.where(room, self.mem.nodes.count[dups], -1))]), dups[stale].tolist()
            return (int(dups[np.argmax(live)]) if live.any() else -1), dups[stale].tolist()
        # Without pruning the walk usually stops early: look at growing pieces of a long chain.
        first_live, passed, start, size = -1, [], 0, 32
        while start < len(chain):
            dups, stale, live, room = self._dup_states(chain[start:start + size])
            if first_live < 0 and live.any():
                first_live = int(dups[np.argmax(live)])
            if room.any():
                stop = int(np.argmax(room))
                return int(dups[stop]), passed + dups[:stop][stale[:stop]].tolist()
            passed += dups[stale].tolist()
            start, size = start + size, size * 4
        return first_live, passed

    def _dup_states(self, dups: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The dups as an array, and which are stale, live, and live with room for one more rmap item."""
        nodes = self.mem.nodes
        arr = np.array(dups, dtype=np.intp)
        stale = nodes.alive[arr] & (nodes.mapcount[arr] == 0)
        count = nodes.count[arr]
        live = ~stale
        return arr, stale, live, live & (count > 0) & (count < self.tunables.max_page_sharing)

    def _collapse(self, cid: int, dup: int) -> None:
        """A single duplicate below the limit: the chain collapses into it."""
        content = self.chain_content[cid]
        self.chains[cid].clear()
        self._free_chain(cid)
        self.stable_node_dups -= 1
        self.mem.nodes.chain[dup] = NO_NODE
        self.mem.stable_of[content] = dup

    # ---- search and insert -------------------------------------------------------

    def search(self, content: int, now: int) -> int:
        """stable_tree_search(): the KSM page to merge with, or -1."""
        table = self.mem.stable_of
        while True:
            entry = int(table[content])
            if entry == NO_NODE:
                return -1
            if entry >= 0:
                if self.is_stale(entry):
                    self.remove_node(entry)
                    continue
                return entry if self.has_room(entry) else -1
            found = self.chain_dup(chain_entry(entry), prune=True, now=now)
            if found < 0:
                continue
            return found if self.has_room(found) else -1

    def insert(self, content: int, now: int) -> int:
        """stable_tree_insert(): a new KSM page for ``content``, chained if one exists."""
        table = self.mem.stable_of
        nodes = self.mem.nodes
        while True:
            entry = int(table[content])
            if entry == NO_NODE:
                node = int(self.new_nodes(np.array([content]))[0])
                table[content] = node
                return node
            if entry >= 0:
                if self.is_stale(entry):
                    self.remove_node(entry)
                    continue
                cid = self.make_chain(entry, now)
            else:
                cid = chain_entry(entry)
                if self.chain_dup(cid, prune=False, now=now) < 0:
                    continue
                entry = int(table[content])
                if entry >= 0:  # collapsed into a plain node
                    cid = self.make_chain(entry, now)
            node = int(self.new_nodes(np.array([content]))[0])
            nodes.chain[node] = cid
            self.chains[cid].insert(0, node)
            self.stable_node_dups += 1
            return node
