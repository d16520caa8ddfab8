"""NUMA nodes and ``merge_across_nodes`` 0: KSM merges only pages that lie on the same node.

With ``merge_across_nodes`` 0 on a host with more than one node, Linux keeps a
stable and an unstable tree per node, so identical pages on two nodes stay two
pages (or two KSM pages, one per node). The memory model keeps one tree keyed
by content id, so it gives each page of a region on node ``n > 0`` an id of
its own node instead: an *alias*, equal to the same content on the same node
and to nothing else. The page is still an empty page when its content is
(``Memory.is_empty``), and switching ``merge_across_nodes`` (which the kernel
only allows while nothing is merged) carries the pages' checksums over, so
they do not look changed. Node 0 keeps the plain ids.

Not verifiable here: the development machine has one node. What follows from
the kernel's rules is modelled (merging within a node only, counters per KSM
page as usual); where a KSM page is placed, migration between nodes and
``/proc`` per-node figures are not.
"""

from __future__ import annotations

import numpy as np

from sysfs_emu.pagearrays import checksum

NO_ALIAS = -1


class NodeContents:
    """The aliases of content ids on nodes other than 0, and the content each alias stands for."""

    def __init__(self) -> None:
        self._alias: dict[int, np.ndarray] = {}  # node -> content id -> alias id (NO_ALIAS: none yet)
        self._base = np.full(0, NO_ALIAS, dtype=np.int64)  # alias id -> content id
        self.empty_ids = np.zeros(1, dtype=np.int64)  # the ids that are empty pages: 0 and its aliases

    def on_node(self, contents: np.ndarray, node: int, new_ids) -> np.ndarray:
        """The ids ``contents`` (plain ids) have on ``node``; ``new_ids(n)`` gives fresh ids for new aliases."""
        if node == 0 or contents.size == 0:
            return contents
        table = self._alias.get(node, np.full(0, NO_ALIAS, dtype=np.int64))
        top = int(contents.max()) + 1
        if top > table.size:
            table = np.concatenate([table, np.full(max(top, table.size * 5 // 4) - table.size, NO_ALIAS, np.int64)])
        missing = np.unique(contents[table[contents] == NO_ALIAS])
        if missing.size:
            ids = np.asarray(new_ids(missing.size), dtype=np.int64)
            table[missing] = ids
            self._note_base(ids, missing)
        self._alias[node] = table
        return table[contents]

    def _note_base(self, ids: np.ndarray, contents: np.ndarray) -> None:
        top = int(ids.max()) + 1
        if top > self._base.size:
            self._base = np.concatenate([self._base, np.full(top - self._base.size, NO_ALIAS, np.int64)])
        self._base[ids] = contents
        if (contents == 0).any():
            self.empty_ids = np.union1d(self.empty_ids, ids[contents == 0])

    def plain(self, ids: np.ndarray) -> np.ndarray:
        """The plain content ids of ``ids`` (aliases or plain ids)."""
        if self._base.size == 0:
            return ids
        out = ids.copy()
        inside = ids < self._base.size
        base = self._base[ids[inside]]
        out[np.flatnonzero(inside)[base != NO_ALIAS]] = base[base != NO_ALIAS]
        return out

    def is_empty(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` are empty pages."""
        return ids == 0 if self.empty_ids.size == 1 else np.isin(ids, self.empty_ids)


class NodePlacement:
    """The memory model's NUMA placement (a part of :class:`sysfs_emu.memory.Memory`)."""

    numa_nodes: int  # the host's NUMA nodes
    split_nodes: bool  # merge_across_nodes 0 on several nodes: pages off node 0 have ids of their own
    node_contents: NodeContents

    def _on_node(self, contents: np.ndarray, node: int) -> np.ndarray:
        """The ids ``contents`` have on ``node`` (their own there when KSM merges within nodes only)."""
        return self.node_contents.on_node(contents, node, self.new_contents) if self.split_nodes else contents

    def is_empty(self, contents: np.ndarray) -> np.ndarray:
        """Which of the content ids ``contents`` are empty (all-zero) pages."""
        return self.node_contents.is_empty(contents)

    def follow_merge_across_nodes(self, merge_across_nodes: int) -> None:
        """Pages on different nodes merge unless ``merge_across_nodes`` is 0 on a host of several nodes.

        Called by ksmd before it scans; the kernel allows the switch only while
        nothing is merged, so only page contents (and their checksums) change.
        """
        split = not merge_across_nodes and self.numa_nodes > 1
        if split == self.split_nodes:
            return
        self.split_nodes = split
        p = self.pages
        for region in self.regions:
            if not region.alive or region.node == 0 or region.npages == 0:
                continue
            sl = slice(region.start, region.stop)
            old = p.content[sl].astype(np.int64)
            plain = self.node_contents.plain(old)
            new = self._on_node(plain, region.node)
            same = p.oldsum[sl] == checksum(old)
            p.content[sl] = new
            p.oldsum[sl] = np.where(same, checksum(new), p.oldsum[sl])
