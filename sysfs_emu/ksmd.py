"""A simulated ksmd: Linux 6.18's KSM scanner over :class:`sysfs_emu.memory.Memory`.

The observable rules of mm/ksm.c are reproduced, counter for counter:

* ksmd wakes, visits the next ``pages_to_scan`` candidate pages (mapped
  anonymous pages of mergeable regions, in the order processes became
  mergeable and pages lie in them), then sleeps ``sleep_millisecs``; a batch
  ends early at the end of a full scan.
* A page whose checksum changed since its previous visit is only remembered
  (merging needs two passes). Otherwise the stable tree is searched first, then
  the unstable tree, which is emptied at every new full scan; two equal
  unstable pages become a new KSM page.
* ``max_page_sharing`` caps the rmap items per KSM page; more sharers get new
  duplicates under a chain (``stable_node_chains``, ``stable_node_dups``),
  found and pruned as the kernel's chain walk does.
* ``use_zero_pages`` maps empty pages to the zero page (``ksm_zero_pages``).
* ``smart_scan`` ages pages that do not merge and skips them with the kernel's
  skip schedule (``pages_skipped``).
* An rmap item exists for every candidate page ksmd has visited and lives
  until the page stops being a candidate and the scan passes it again.

Work is vectorised: a run of many batches is handled as one pass over flat
arrays, because pages are processed in the same order whatever the batch
size; only pages whose outcome depends on others with the same content in a
way numpy cannot express (chains, full KSM pages, copy-on-write leftovers)
take the page-by-page path, in scan order.

Time: a batch costs CPU time from :class:`CostModel` (measured on the real
kernel), then ksmd sleeps ``msecs_to_jiffies(sleep_millisecs)`` jiffies at
HZ=250 on a timer that fires one tick after that (the timer wheel rounds
up), so a batch period is ``(floor(work / tick) + jiffies + 1)`` ticks, or
just the work when ``sleep_millisecs`` is 0. A full scan of N candidate pages
takes ``N // pages_to_scan + 1`` batches: the batch that finds the end of the
list stops early, and when ``pages_to_scan`` divides N it is an empty one.
Measured on Linux 6.18 (4000 unchanging pages): pages_to_scan 100 with
sleep_millisecs 20 -> 41 x 6 ticks = 984 ms (real 988 ms), with 10 ms -> 41 x 4
ticks = 656 ms (real 656 ms), 1000 pages with 20 ms -> 4 x 7 + 6 ticks = 136 ms
(real 136 ms), sleep 0 -> 18.7 ms of work (real 18.2 ms).

Known simplifications: a stale KSM page (all mappers gone) is pruned when its
own content is looked up, when one of its rmap items is removed, by chain
walks, run=2 and busy(); the kernel also prunes stale nodes any rb-tree walk
happens to pass, which depends on the tree's shape. merge_across_nodes=0 is
the same as 1 (one NUMA node). Within a run of batches handled in one pass,
chain prune times use the time of its first batch and work is spread evenly
over its full batches. The timing is that of an unloaded machine.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from sysfs_emu.advisor import ScanTimeAdvisor
from sysfs_emu.memory import (
    MAPPED,
    NO_NODE,
    ONE_EACH,
    PAGE_SIZE,
    RMAP,
    RMAP_ITEM_SIZE,
    SEQ,
    UNSTABLE,
    ZERO,
    Memory,
    checksum,
)

log = logging.getLogger(__name__)

HZ = 250
TICK = 1.0 / HZ
HEAD = -1  # the scan cursor sits on the list head: between full scans

# smart scan: how many scans a page that failed to merge at ``age`` skips
_SKIP_AGE = np.array([1 if a <= 3 else 2 if a <= 5 else 4 if a <= 8 else 8 for a in range(256)], dtype=np.uint8)
_CLEAR_UNSTABLE = np.uint8(~(UNSTABLE | SEQ) & 0xFF)
_CLEAR_ITEM = np.uint8(~(RMAP | UNSTABLE | SEQ) & 0xFF)


def msecs_to_jiffies(ms: int) -> int:
    """Linux's rounding (up) of milliseconds to jiffies at HZ=250."""
    return -(-int(ms) * HZ // 1000)


@dataclass
class CostModel:
    """CPU time ksmd spends, in seconds, measured on Linux 6.18 (see tests/test_fidelity.py)."""

    ksm_page: float = 0.37e-6  # visit of a page already merged
    skipped: float = 0.30e-6  # page passed over by smart scan
    checksum: float = 1.0e-6  # visit whose checksum changed (or zero page merge)
    tree_base: float = 4.7e-6  # tree search + insert with 4096 pages in the unstable tree
    tree_per_level: float = 0.75e-6  # each doubling of the unstable tree
    merge: float = 1.5e-6  # each page merged into a KSM page (write-protect, replace the mapping)
    batch: float = 2e-6  # per wake-up

    def tree(self, unshared: int) -> float:
        return max(self.checksum, self.tree_base + self.tree_per_level * (math.log2(max(unshared, 2)) - 12))


@dataclass
class _Work:
    """What one pass did, for the cost model."""

    visits: int = 0
    ksm: int = 0
    skipped: int = 0
    changed: int = 0
    tree: int = 0
    merges: int = 0

    def seconds(self, cost: CostModel, unshared: int) -> float:
        return (
            self.ksm * cost.ksm_page
            + self.skipped * cost.skipped
            + self.changed * cost.checksum
            + self.tree * cost.tree(unshared)
            + self.merges * cost.merge
        )


class Ksmd:
    """The KSM engine behind a :class:`sysfs_emu.kernel.Kernel` (``kernel.engine``)."""

    def __init__(self, kernel, memory: Memory, cost: CostModel | None = None, vectorise: bool = True) -> None:
        self.kernel = kernel
        self.mem = memory
        self.cost = cost or CostModel()
        self.vectorise = vectorise
        memory.listeners.append(self._on_memory_event)
        if hasattr(kernel, "engine"):
            kernel.engine = self
        memory.nodes.reserve(16)  # node 0 always indexable (masked look-ups)
        # mm list and scan cursor
        self.slots: list[int] = []
        self.cur = HEAD
        self.region_pos = 0  # index into the current process's region list
        self.page_pos = 0  # page offset inside that region
        self.seqnr = 0
        # global counters
        self.pages_scanned = 0
        self.pages_shared = 0
        self.pages_sharing = 0
        self.pages_unshared = 0
        self.pages_skipped = 0
        self.stable_node_chains = 0
        self.stable_node_dups = 0
        # stable node chains: id -> dup node ids (head first), content, prune time
        self.chains: dict[int, list[int]] = {}
        self.chain_content: dict[int, int] = {}
        self.chain_prune: dict[int, int] = {}
        self._next_chain = 0
        # simulated time
        self.clock = 0.0
        self.next_wake: float | None = None
        self._sleep_ms_used: int | None = None
        self.cpu_time = 0.0
        self._cpv = 1e-6  # recent CPU seconds per visit, to size runs of batches
        self._now_jiffies = 0
        self.advisor = ScanTimeAdvisor()  # advisor_mode scan-time

    # ---- engine interface ----------------------------------------------------

    def counters(self) -> dict[str, int]:
        rmap = self.mem.rmap_items
        volatile = rmap - self.pages_shared - self.pages_sharing - self.pages_unshared
        zero = self.mem.zero_pages
        return {
            "full_scans": self.seqnr,
            "general_profit": (self.pages_sharing + zero) * PAGE_SIZE - rmap * RMAP_ITEM_SIZE,
            "ksm_zero_pages": zero,
            "pages_scanned": self.pages_scanned,
            "pages_shared": self.pages_shared,
            "pages_sharing": self.pages_sharing,
            "pages_skipped": self.pages_skipped,
            "pages_unshared": self.pages_unshared,
            "pages_volatile": max(volatile, 0),
            "stable_node_chains": self.stable_node_chains,
            "stable_node_dups": self.stable_node_dups,
        }

    def busy(self) -> bool:
        """EBUSY for max_page_sharing / merge_across_nodes; otherwise drop every stable node."""
        nodes = self.mem.nodes
        live = nodes.alive[: nodes.size]
        if self.pages_shared or (nodes.mapcount[: nodes.size][live] > 0).any():
            return True
        self._remove_all_stable_nodes()
        return False

    def unmerge_all(self) -> None:
        """run=2: break every merge, free every rmap item and stable node, reset full_scans."""
        mem = self.mem
        for pid in list(self.slots):
            idx = mem.process_slots(pid)
            if mem.processes[pid].alive:
                mem.break_ksm(idx)  # break_ksm(): a private copy of every KSM / zero page
            self._drop_items(idx)
        for pid in list(self.slots):
            proc = mem.processes[pid]
            if not proc.alive:
                self._remove_slot(pid)
        self._remove_all_stable_nodes()
        self.pages_unshared = 0
        self.seqnr = 0
        self.cur = HEAD
        self.region_pos = self.page_pos = 0

    def advisor_reset(self) -> None:
        self.advisor.reset()

    # ---- memory events -------------------------------------------------------

    def _on_memory_event(self, event: str, pid: int) -> None:
        if event == "enter":
            if self.cur == HEAD:
                self.slots.append(pid)
            else:
                self.slots.insert(self.cur, pid)
                self.cur += 1
        elif event == "exit" and pid in self.slots:
            i = self.slots.index(pid)
            if i == self.cur:
                return  # ksmd notices at its next step in this mm
            has_items = bool((self.mem.pages.flags[self.mem.process_slots(pid)] & RMAP).any())
            del self.slots[i]
            if i < self.cur:
                self.cur -= 1
            if not has_items:
                self.mem.processes[pid].in_ksm = False
                self.mem.release_process(pid)
            else:
                self.slots.insert(self.cur + 1 if self.cur != HEAD else 0, pid)

    def _remove_slot(self, pid: int) -> None:
        i = self.slots.index(pid)
        del self.slots[i]
        if self.cur != HEAD and i < self.cur:
            self.cur -= 1
        proc = self.mem.processes.get(pid)
        if proc is not None:
            proc.in_ksm = False
            if not proc.alive:
                self.mem.release_process(pid)

    # ---- stable tree ---------------------------------------------------------

    def _new_nodes(self, contents: np.ndarray) -> np.ndarray:
        nodes = self.mem.nodes
        n = contents.size
        start = nodes.size
        nodes.reserve(start + n, factor=1.5)
        nodes.size = start + n
        sl = slice(start, start + n)
        nodes.content[sl] = contents
        nodes.count[sl] = 0
        nodes.mapcount[sl] = 0
        nodes.chain[sl] = NO_NODE
        nodes.alive[sl] = True
        return np.arange(start, start + n, dtype=np.int32)

    def _stale(self, n: int) -> bool:
        nodes = self.mem.nodes
        return bool(nodes.alive[n]) and nodes.mapcount[n] == 0

    def _candidate(self, n: int, offset: int = 0) -> bool:
        c = int(self.mem.nodes.count[n])
        return c > 0 and c + offset < self.kernel.max_page_sharing

    def _kill(self, n: int) -> None:
        """remove_node_from_stable_tree: the KSM page is gone; its rmap items leave the tree."""
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

    def _free_chain(self, cid: int) -> None:
        content = self.chain_content.pop(cid)
        del self.chains[cid]
        del self.chain_prune[cid]
        self.stable_node_chains -= 1
        if self.mem.stable_of[content] == -cid - 2:
            self.mem.stable_of[content] = NO_NODE

    def _chain_dup(self, cid: int, prune: bool) -> int:
        """stable_node_dup(): the best duplicate of a chain, pruning stale ones; -1 if none."""
        nodes = self.mem.nodes
        prune_jiffies = msecs_to_jiffies(self.kernel.stable_node_chains_prune_millisecs)
        if not prune or self._now_jiffies < self.chain_prune[cid] + prune_jiffies:
            prune = False
        else:
            self.chain_prune[cid] = self._now_jiffies
        chain = self.chains[cid]
        found = -1
        for dup in list(chain):
            if self._stale(dup):
                self._kill(dup)
                continue
            if found < 0 or (
                self._candidate(dup)
                and (not self._candidate(found) or nodes.count[dup] > nodes.count[found])
            ):
                found = dup
                if not prune and self._candidate(found):
                    break
        if found >= 0:
            if len(chain) == 1:
                # a single duplicate below the limit: the chain collapses into it
                content = self.chain_content[cid]
                chain.clear()
                self._free_chain(cid)
                self.stable_node_dups -= 1
                nodes.chain[found] = NO_NODE
                self.mem.stable_of[content] = found
            elif chain[0] != found and self._candidate(found, 1):
                chain.remove(found)
                chain.insert(0, found)
        else:
            self._free_chain(cid)
        return found

    def _stable_search(self, content: int) -> int:
        """stable_tree_search(): the KSM page to merge with, or -1."""
        table = self.mem.stable_of
        while True:
            entry = int(table[content])
            if entry == NO_NODE:
                return -1
            if entry >= 0:
                if self._stale(entry):
                    self._kill(entry)
                    continue
                return entry if self._candidate(entry) else -1
            found = self._chain_dup(-entry - 2, prune=True)
            if found < 0:
                continue
            return found if self._candidate(found) else -1

    def _stable_insert(self, content: int) -> int:
        """stable_tree_insert(): a new KSM page for ``content``, chained if one exists."""
        table = self.mem.stable_of
        nodes = self.mem.nodes
        while True:
            entry = int(table[content])
            if entry == NO_NODE:
                node = int(self._new_nodes(np.array([content]))[0])
                table[content] = node
                return node
            if entry >= 0:
                if self._stale(entry):
                    self._kill(entry)
                    continue
                cid = self._make_chain(entry)
            else:
                cid = -entry - 2
                if self._chain_dup(cid, prune=False) < 0:
                    continue
                entry = int(table[content])
                if entry >= 0:  # collapsed into a plain node
                    cid = self._make_chain(entry)
            node = int(self._new_nodes(np.array([content]))[0])
            nodes.chain[node] = cid
            self.chains[cid].insert(0, node)
            self.stable_node_dups += 1
            return node

    def _make_chain(self, node: int) -> int:
        cid = self._next_chain
        self._next_chain += 1
        content = int(self.mem.nodes.content[node])
        self.chains[cid] = [node]
        self.chain_content[cid] = content
        self.chain_prune[cid] = self._now_jiffies
        self.mem.nodes.chain[node] = cid
        self.mem.stable_of[content] = -cid - 2
        self.stable_node_chains += 1
        self.stable_node_dups += 1
        return cid

    def _remove_all_stable_nodes(self) -> None:
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

    # ---- rmap items ----------------------------------------------------------

    def _unlink(self, idx: np.ndarray) -> None:
        """remove_rmap_item_from_tree() for many items (order does not matter)."""
        if idx.size == 0:
            return
        p = self.mem.pages
        f = p.flags[idx]
        un = (f & UNSTABLE) != 0
        if un.any():
            self.pages_unshared -= int(un.sum())
            p.flags[idx] = f & _CLEAR_UNSTABLE
        rn = p.rnode[idx]
        st = rn >= 0
        if st.any():
            p.rnode[idx[st]] = NO_NODE
            self._leave_nodes(rn[st])

    def _leave_nodes(self, node_ids: np.ndarray) -> None:
        nodes = self.mem.nodes
        uniq, cnt = np.unique(node_ids, return_counts=True)
        alive = nodes.alive[uniq]
        uniq, cnt = uniq[alive], cnt[alive]
        stale = nodes.mapcount[uniq] == 0
        for n in uniq[stale]:
            self._kill(int(n))
        uniq, cnt = uniq[~stale], cnt[~stale]
        if uniq.size:
            new = nodes.count[uniq] - cnt
            nodes.count[uniq] = new
            emptied = new == 0
            self.pages_shared -= int(emptied.sum())
            self.pages_sharing -= int(cnt.sum() - emptied.sum())

    def _drop_items(self, idx: np.ndarray) -> None:
        """Free the rmap items of slots ``idx`` (those that have one)."""
        p = self.mem.pages
        have = idx[(p.flags[idx] & RMAP) != 0]
        if have.size == 0:
            return
        self._unlink(have)
        p.flags[have] &= _CLEAR_ITEM
        self.mem.rmap_items -= have.size

    def _unlink_one(self, s: int) -> None:
        p = self.mem.pages
        n = int(p.rnode[s])
        if n >= 0:
            p.rnode[s] = NO_NODE
            nodes = self.mem.nodes
            if not nodes.alive[n]:
                return
            if nodes.mapcount[n] == 0:
                self._kill(n)
                return
            nodes.count[n] -= 1
            if nodes.count[n] > 0:
                self.pages_sharing -= 1
            else:
                self.pages_shared -= 1
        elif p.flags[s] & UNSTABLE:
            p.flags[s] &= _CLEAR_UNSTABLE
            self.pages_unshared -= 1

    def _append(self, s: int, n: int) -> None:
        nodes = self.mem.nodes
        nodes.count[n] += 1
        self.mem.pages.rnode[s] = n
        if nodes.count[n] == 1:
            self.pages_shared += 1
        else:
            self.pages_sharing += 1

    def _map(self, s: int, n: int) -> None:
        """The page table entry of ``s`` now maps KSM page ``n``; its own page is freed."""
        mem = self.mem
        mem.pages.kpage[s] = n
        if mem.nodes.mapcount[n] == 0:
            mem.ksm_pages += 1
        mem.nodes.mapcount[n] += 1
        mem.ksm_mapped += 1

    # ---- one page, in order --------------------------------------------------

    def _visit_one(self, s: int, work: _Work, after_checksum: bool = False) -> None:
        """cmp_and_merge_page() for one page."""
        p = self.mem.pages
        if not after_checksum:
            k = int(p.kpage[s])
            if k >= 0:
                if int(p.rnode[s]) == k and self.mem.nodes.alive[k]:
                    return
                self._unlink_one(s)
                self._append(s, k)  # a KSM page mapped here but not listed: list it
                return
            self._unlink_one(s)
            cs = int(checksum(np.array([p.content[s]]))[0])
            if int(p.oldsum[s]) != cs:
                p.oldsum[s] = cs
                work.changed += 1
                return
        content = int(p.content[s])
        if self.kernel.use_zero_pages and content == 0:
            p.flags[s] |= ZERO
            self.mem.zero_pages += 1
            work.changed += 1
            return
        work.tree += 1
        n = self._stable_search(content)
        if n >= 0:
            self._map(s, n)
            self._append(s, n)
            work.merges += 1
            return
        u = int(self.mem.unstable_of[content])
        if u >= 0 and u != s and self._unstable_valid(u, content):
            if not p.flags[u] & MAPPED:
                return  # the tree page went away: give up for this scan
            node = self._stable_insert(content)
            p.flags[u] &= _CLEAR_UNSTABLE
            self.pages_unshared -= 1
            self._map(u, node)
            self._map(s, node)
            self._append(u, node)
            self._append(s, node)
            work.merges += 2
            return
        p.flags[s] |= UNSTABLE | (SEQ if self.seqnr & 1 else 0)
        self.pages_unshared += 1
        self.mem.unstable_of[content] = s

    def _unstable_valid(self, u: int, content: int) -> bool:
        p = self.mem.pages
        f = int(p.flags[u])
        return bool(
            f & UNSTABLE and bool(f & SEQ) == bool(self.seqnr & 1) and int(p.content[u]) == content
        )

    # ---- a run of pages of one region ---------------------------------------

    def _scan_range(self, start: int, stop: int, budget: int, work: _Work) -> tuple[int, int]:
        """Scan slots [start, stop) until ``budget`` visits; returns (slot reached, visits)."""
        p = self.mem.pages
        smart = bool(self.kernel.smart_scan)
        pos = start
        used = 0
        window = max(2 * budget, 4096)
        while pos < stop and used < budget:
            left = budget - used
            end = min(stop, pos + window)
            window *= 4  # mostly skipped or unmapped pages here: look further at once
            f = p.flags[pos:end]
            cand = (f & (MAPPED | ZERO)) == MAPPED
            kp = p.kpage[pos:end]
            if smart:
                may_skip = cand & (kp < 0) & (p.age[pos:end] >= 3) & (p.skips[pos:end] > 0) & ((f & RMAP) != 0)
                visit = cand & ~may_skip
            else:
                visit = cand
            cum = np.cumsum(visit, dtype=np.int64)
            if cum.size and cum[-1] >= left:
                cut = int(np.searchsorted(cum, left)) + 1
                end = pos + cut
                f, cand, kp, visit = f[:cut], cand[:cut], kp[:cut], visit[:cut]
            self._process(pos, end, f, cand, kp, visit, smart, work)
            used += int(np.count_nonzero(visit))
            pos = end
        return pos, used

    def _process(self, pos, end, f, cand, kp, visit, smart, work: _Work) -> None:
        mem = self.mem
        p = mem.pages
        base = pos
        seq: list[tuple[int, int, bool]] = []  # (slot, kind, after_checksum); kind 0 visit, 1 unlink, 2 free
        seq_contents: set[int] = set()
        nodes = mem.nodes

        # stale rmap items (page gone or now the zero page): freed as the scan passes
        stale = ((f & RMAP) != 0) & ~cand
        if stale.any():
            sidx = np.flatnonzero(stale) + base
            srn = p.rnode[sidx] >= 0
            for s in sidx[srn]:
                seq.append((int(s), 2, False))
                seq_contents.add(int(nodes.content[p.rnode[s]]))
            plain = sidx[~srn]
            self._unlink(plain)
            p.flags[plain] &= _CLEAR_ITEM
            mem.rmap_items -= plain.size

        # Below, masks over the window [pos, end) and views of the page arrays stand for
        # index look-ups: pages in a window are consecutive, so this reads them in order.
        if not cand.any():
            self._run_seq(seq, work)
            return
        w = slice(pos, end)
        # new rmap items for candidates seen for the first time
        fresh = cand & ((f & RMAP) == 0)
        nfresh = int(np.count_nonzero(fresh))
        if nfresh:
            f[fresh] = (f[fresh] | RMAP) & _CLEAR_UNSTABLE
            p.oldsum[w][fresh] = 0
            p.age[w][fresh] = 0
            p.skips[w][fresh] = 0
            p.rnode[w][fresh] = NO_NODE
            mem.rmap_items += nfresh
        # smart scan bookkeeping for non-KSM candidates
        if smart:
            sm = cand & (kp < 0)
            if sm.any():
                age = p.age[w]
                skips = p.skips[w]
                old = sm & (age >= 3)
                reset = old & (skips == 0)
                skip = old & (skips > 0)
                reset_age = age[reset]
                age += sm & (age != 255)
                if reset_age.size:
                    skips[reset] = _SKIP_AGE[reset_age]
                if skip.any():
                    kidx = np.flatnonzero(skip) + base
                    p.skips[kidx] -= 1
                    self.pages_skipped += kidx.size
                    work.skipped += kidx.size
                    krn = p.rnode[kidx] >= 0
                    for s in kidx[krn]:
                        seq.append((int(s), 1, False))
                        seq_contents.add(int(nodes.content[p.rnode[s]]))
                    self._unlink(kidx[~krn])
        nv = int(np.count_nonzero(visit))
        self.pages_scanned += nv
        work.visits += nv
        if nv == 0:
            self._run_seq(seq, work)
            return
        rn = p.rnode[w]
        isk = visit & (kp >= 0)
        if isk.any():
            kv = np.flatnonzero(isk)
            vk = kp[kv]
            ok = (rn[kv] == vk) & nodes.alive[vk]
            work.ksm += int(ok.sum())
            for s in kv[~ok] + base:
                seq.append((int(s), 0, False))
                seq_contents.add(int(p.content[s]))
        priv = visit & (kp < 0)
        if not self.vectorise:
            for s in np.flatnonzero(priv) + base:
                seq.append((int(s), 0, False))
            self._run_seq(seq, work)
            return
        has_node = rn >= 0
        cow = priv & has_node
        if cow.any():
            for s in np.flatnonzero(cow) + base:
                seq.append((int(s), 0, False))
                seq_contents.add(int(p.content[s]))
                seq_contents.add(int(nodes.content[p.rnode[s]]))
        rm = priv & ~has_node
        if rm.any():
            in_tree = rm & ((f & (UNSTABLE | SEQ)) != 0)
            if in_tree.any():
                self.pages_unshared -= int(np.count_nonzero(in_tree & ((f & UNSTABLE) != 0)))
                f[in_tree] &= _CLEAR_UNSTABLE
            r = np.flatnonzero(rm) + base
            cont = p.content[w][rm]
            cs = checksum(cont)
            changed = p.oldsum[w][rm] != cs
            if changed.any():
                p.oldsum[r[changed]] = cs[changed]
                work.changed += int(changed.sum())
                keep = ~changed
                r, cont = r[keep], cont[keep]
            if self.kernel.use_zero_pages and r.size:
                z = cont == 0
                if z.any():
                    p.flags[r[z]] |= ZERO
                    mem.zero_pages += int(z.sum())
                    work.changed += int(z.sum())
                    r, cont = r[~z], cont[~z]
            if r.size:
                self._tree_pass(r, cont, seq, seq_contents, work)
        self._run_seq(seq, work)

    def _tree_pass(self, r, cont, seq, seq_contents, work: _Work) -> None:
        """Stable then unstable tree for pages ``r`` (scan order) with contents ``cont``."""
        mem = self.mem
        p = mem.pages
        nodes = mem.nodes
        work.tree += r.size
        par = SEQ if self.seqnr & 1 else np.uint8(0)
        k = r.size
        ci = cont.astype(np.intp)  # index once, not once per look-up
        st, old_u, dup = self._lookup(ci)
        if seq_contents:
            sc = np.fromiter(seq_contents, dtype=np.int64)
            inseq = np.isin(cont, sc)
            single = ~dup & ~inseq
        else:
            inseq = np.zeros(k, dtype=bool)
            single = ~dup
        fresh = st == NO_NODE
        # valid unstable tree partner from earlier in this full scan (only where it decides anything:
        # a page with a plain KSM page to try first, or in a chain, goes by the stable tree)
        u = old_u
        valid_u = np.zeros(k, dtype=bool)
        has_u = np.flatnonzero((u >= 0) & (fresh | ~single))
        if has_u.size:
            uu = u[has_u].astype(np.intp)
            uf = p.flags[uu]
            valid_u[has_u] = (
                ((uf & (UNSTABLE | MAPPED)) == (UNSTABLE | MAPPED)) & ((uf & SEQ) == par) & (p.content[uu] == cont[has_u])
            )
        # 1. unique so far: insert in the unstable tree; every other content gets its entry back
        ins = single & fresh & ~valid_u
        mem.unstable_of[ci] = np.where(ins, r, old_u)
        if ins.any():
            ir = r[ins]
            p.flags[ir] |= UNSTABLE | par
            self.pages_unshared += ir.size
        # 2. a partner in the unstable tree: a new KSM page for both
        two = single & fresh & valid_u
        if two.any():
            a, b = u[two], r[two]
            new = self._new_nodes(cont[two])
            mem.stable_of[ci[two]] = new
            p.flags[a] &= _CLEAR_UNSTABLE
            self.pages_unshared -= a.size
            for x in (a, b):
                p.kpage[x] = new
                p.rnode[x] = new
            nodes.cm[new] = 2 * ONE_EACH
            mem.ksm_pages += new.size
            mem.ksm_mapped += 2 * new.size
            self.pages_shared += new.size
            self.pages_sharing += new.size
            work.merges += 2 * new.size
        # 3. a KSM page with room: merge into it (its count stays above 0: no new shared page)
        plain = single & (st >= 0)
        if plain.any():
            pr, pn = r[plain], st[plain].astype(np.intp)
            cm = nodes.cm[pn]
            halves = cm.view(np.int32)
            cnt, mc = halves[0::2], halves[1::2]
            okay = nodes.alive[pn] & (mc > 0) & (cnt > 0) & (cnt < self.kernel.max_page_sharing)
            if okay.any():
                slots, ids = pr[okay], pn[okay]
                p.kpage[slots] = ids
                p.rnode[slots] = ids
                nodes.cm[ids] = cm[okay] + ONE_EACH  # distinct KSM pages: one more item and mapping each
                mem.ksm_mapped += slots.size
                self.pages_sharing += slots.size
                work.merges += slots.size
            for s in pr[~okay]:
                seq.append((int(s), 0, True))
        for s in r[single & (st < NO_NODE)]:
            seq.append((int(s), 0, True))
        # 4. several pages of one content in this pass
        multi = ~single
        if multi.any():
            self._groups(r[multi], cont[multi], st[multi], old_u[multi], valid_u[multi], inseq[multi], seq, work)

    LOOKUP_CHUNK = 1 << 15
    """Pages per step of :meth:`_lookup`: the table lines one step touches stay in cache for its second look."""

    def _lookup(self, ci: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Both trees' entries for contents ``ci`` (the stable node, the unstable tree slot as it was
        before this pass) and which pages share their content with another page of the pass.

        Each step marks the unstable table with ``-3 - position`` for its pages
        (restored by the caller): a later page that finds a mark has its
        content earlier in the pass, and a page that does not find its own
        mark right after writing it shares its content within the step.
        """
        ctab = self.mem.ctab
        table = self.mem.unstable_of
        k = ci.size
        st = np.empty(k, dtype=np.int32)
        old_u = np.empty(k, dtype=np.int32)
        dup = np.zeros(k, dtype=bool)
        step = self.LOOKUP_CHUNK
        for a in range(0, k, step):
            b = min(a + step, k)
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

    def _merge_into(self, slots: np.ndarray, node_ids: np.ndarray, work: _Work) -> None:
        """Merge pages into KSM pages that are mapped and have room for them all."""
        mem = self.mem
        p = mem.pages
        nodes = mem.nodes
        p.kpage[slots] = node_ids
        p.rnode[slots] = node_ids
        uniq, cnt = np.unique(node_ids, return_counts=True)
        cm = nodes.cm[uniq]
        nodes.cm[uniq] = cm + cnt * ONE_EACH
        before = cm.view(np.int32)[0::2]
        mem.ksm_mapped += slots.size
        newly_shared = int((before == 0).sum())
        self.pages_shared += newly_shared
        self.pages_sharing += slots.size - newly_shared
        work.merges += slots.size

    def _groups(self, r, cont, st, old_u, valid_u, inseq, seq, work: _Work) -> None:
        """Pages sharing a content within one pass: simple cases in bulk, the rest in order."""
        mem = self.mem
        p = mem.pages
        nodes = mem.nodes
        maxs = self.kernel.max_page_sharing
        order = np.argsort(cont, kind="stable")
        r, cont, st, old_u, valid_u, inseq = (x[order] for x in (r, cont, st, old_u, valid_u, inseq))
        starts = np.flatnonzero(np.r_[True, cont[1:] != cont[:-1]])
        sizes = np.diff(np.r_[starts, cont.size])
        gst = st[starts]
        gvalid = valid_u[starts]
        gseq = inseq[starts]
        slow = gseq.copy()
        # existing plain KSM page with room for all
        has = gst >= 0
        gnode = np.where(has, gst, 0)
        room = (
            has
            & nodes.alive[gnode]
            & (nodes.mapcount[gnode] > 0)
            & (nodes.count[gnode] > 0)
            & (nodes.count[gnode] + sizes <= maxs)
        )
        fresh = gst == NO_NODE
        total = sizes + gvalid.astype(np.int64)
        newok = fresh & (total <= maxs)
        slow |= ~(room | newok)
        gid = np.repeat(np.arange(starts.size), sizes)
        # bulk: into an existing node
        sel = (room & ~slow)[gid]
        if sel.any():
            self._merge_into(r[sel], st[sel].astype(np.int32), work)
        # bulk: a new node from the unstable partner (if any) and the pages of this pass
        gnew = newok & ~slow
        if gnew.any():
            contents = cont[starts[gnew]]
            new = self._new_nodes(contents)
            mem.stable_of[contents] = new
            partners = old_u[starts[gnew]][gvalid[gnew]]
            if partners.size:
                p.flags[partners] &= _CLEAR_UNSTABLE
                self.pages_unshared -= partners.size
                pn = new[gvalid[gnew]]
                p.kpage[partners] = pn
                p.rnode[partners] = pn
            members = r[gnew[gid]]
            mnodes = np.repeat(new, sizes[gnew])
            p.kpage[members] = mnodes
            p.rnode[members] = mnodes
            tot = total[gnew].astype(np.int32)
            nodes.count[new] = tot
            nodes.mapcount[new] = tot
            mem.ksm_pages += new.size
            mem.ksm_mapped += int(tot.sum())
            self.pages_shared += new.size
            self.pages_sharing += int(tot.sum()) - new.size
            work.merges += int(tot.sum())
        for g in np.flatnonzero(slow):
            members = r[starts[g] : starts[g] + sizes[g]]
            if gseq[g] or not self._pattern(int(cont[starts[g]]), members, int(gst[g]), int(old_u[starts[g]]),
                                            bool(gvalid[g]), work):
                for s in members:
                    seq.append((int(s), 0, True))

    def _pattern(self, content: int, pages: np.ndarray, entry: int, u: int, u_valid: bool, work: _Work) -> bool:
        """Many pages of one content in one pass, filling KSM pages ``max_page_sharing`` at a time.

        Handles a content with no KSM page yet, with one plain KSM page, or with
        a chain whose duplicates are all full but for its head, exactly as
        page-by-page merging would; returns False (nothing done) otherwise.
        """
        mem = self.mem
        p = mem.pages
        nodes = mem.nodes
        m = int(self.kernel.max_page_sharing)
        fill_node, fill = -1, 0
        chain_id = -1
        if entry >= 0:
            if not (nodes.alive[entry] and nodes.mapcount[entry] > 0 and nodes.count[entry] >= 1):
                return False
            fill_node, fill = entry, max(0, min(pages.size, m - int(nodes.count[entry])))
        elif entry < NO_NODE:
            chain_id = -entry - 2
            dups = self.chains[chain_id]
            if len(dups) < 2:
                return False
            d = np.array(dups)
            if not (nodes.alive[d].all() and (nodes.mapcount[d] > 0).all() and (nodes.count[d[1:]] >= m).all()):
                return False
            head = int(d[0])
            if nodes.count[head] < m:
                # the head duplicate is the only one with room: every look-up picks it
                if nodes.count[head] < 1:
                    return False
                fill_node, fill = head, min(pages.size, m - int(nodes.count[head]))
            pj = msecs_to_jiffies(self.kernel.stable_node_chains_prune_millisecs)
            if self._now_jiffies >= self.chain_prune[chain_id] + pj:
                self.chain_prune[chain_id] = self._now_jiffies
        if fill:
            self._merge_into(pages[:fill], np.full(fill, fill_node, dtype=np.int32), work)
        rest = pages[fill:]
        seqs = np.concatenate([[u], rest]) if u_valid and rest.size else rest
        if seqs.size == 0:
            return True
        nfull, tail = divmod(seqs.size, m)
        sizes = [m] * nfull + ([tail] if tail >= 2 else [])
        leftover = int(seqs[-1]) if tail == 1 else -1
        if u_valid and rest.size:
            p.flags[u] &= _CLEAR_UNSTABLE
            self.pages_unshared -= 1
        if sizes:
            new = self._new_nodes(np.full(len(sizes), content, dtype=np.int64))
            counts = np.array(sizes, dtype=np.int32)
            merged = seqs[: int(counts.sum())]
            owner = np.repeat(new, counts)
            p.kpage[merged] = owner
            p.rnode[merged] = owner
            nodes.count[new] = counts
            nodes.mapcount[new] = counts
            mem.ksm_pages += new.size
            mem.ksm_mapped += merged.size
            self.pages_shared += new.size
            self.pages_sharing += merged.size - new.size
            work.merges += merged.size
            heads = [int(x) for x in new[::-1]]
            if chain_id >= 0:
                self.chains[chain_id][:0] = heads
                nodes.chain[new] = chain_id
                self.stable_node_dups += len(heads)
            elif fill_node >= 0 or len(heads) >= 2:
                if fill_node >= 0:
                    cid = self._make_chain(fill_node)
                else:
                    cid = self._make_chain(heads[-1])
                    heads = heads[:-1]
                self.chains[cid][:0] = heads
                nodes.chain[np.array(heads, dtype=np.int64)] = cid
                self.stable_node_dups += len(heads)
            else:
                mem.stable_of[content] = heads[0]
        if leftover >= 0:
            p.flags[leftover] |= UNSTABLE | (SEQ if self.seqnr & 1 else 0)
            self.pages_unshared += 1
            mem.unstable_of[content] = leftover
        return True

    def _run_seq(self, seq, work: _Work) -> None:
        if not seq:
            return
        seq.sort(key=lambda e: e[0])
        p = self.mem.pages
        for s, kind, after in seq:
            if kind == 0:
                self._visit_one(s, work, after)
            else:
                self._unlink_one(s)
                if kind == 2:
                    p.flags[s] &= _CLEAR_ITEM
                    self.mem.rmap_items -= 1

    # ---- the scan ------------------------------------------------------------

    def _scan(self, budget: int) -> tuple[_Work, bool]:
        """Visit up to ``budget`` pages; stops at the end of a full scan (then True)."""
        mem = self.mem
        work = _Work()
        if not self.slots:
            return work, False
        if self.cur == HEAD:
            self.advisor.start_scan(self._batch_time, self.kernel)
            self.cur = 0
            self.region_pos = self.page_pos = 0
        while True:
            if budget <= 0:
                return work, False
            pid = self.slots[self.cur]
            proc = mem.processes[pid]
            if proc.alive:
                while self.region_pos < len(proc.regions):
                    region = mem.regions[proc.regions[self.region_pos]]
                    if not region.mergeable:
                        self._drop_items(np.arange(region.start, region.stop))
                        self.region_pos += 1
                        continue
                    if budget <= 0:
                        return work, False
                    reached, used = self._scan_range(region.start + self.page_pos, region.stop, budget, work)
                    budget -= used
                    self.page_pos = reached - region.start
                    if reached < region.stop:
                        return work, False
                    self.region_pos += 1
                    self.page_pos = 0
                if budget <= 0:
                    return work, False
            else:
                self._drop_items(mem.process_slots(pid))
            self.region_pos = self.page_pos = 0
            if not proc.alive or not any(mem.regions[r].mergeable for r in proc.regions):
                self._remove_slot(pid)  # the cursor is now on the next slot
            else:
                self.cur += 1
            if self.cur >= len(self.slots):
                self.cur = HEAD
                self.seqnr += 1
                return work, True

    # ---- simulated time ------------------------------------------------------

    _batch_time = 0.0

    def _should_run(self) -> bool:
        return self.kernel.run == 1 and bool(self.slots)

    def _after(self, start: float, batches: int, work: float) -> float:
        """When ksmd wakes again after ``batches`` batches of ``work`` CPU seconds from ``start``."""
        if batches <= 0:
            return start
        jiffies = msecs_to_jiffies(self.kernel.sleep_millisecs)
        w = work + self.cost.batch
        if jiffies == 0:
            return start + batches * w
        # schedule_timeout(j) fires at the tick after jiffies + j (the timer wheel rounds up)
        first_tick = math.floor((start + w) * HZ + 1e-6)
        wake = (first_tick + jiffies + 1) * TICK
        if batches > 1:
            period = (math.floor(w * HZ + 1e-6) + jiffies + 1) * TICK
            wake += (batches - 1) * period
        return wake

    def _idle_scans(self, end: float, until_full_scans: int | None) -> None:
        """Nothing to visit: every batch is an empty full scan until something changes."""
        t = self.next_wake
        if t is None or t > end:
            return
        period = self._after(t, 1, 0.0) - t
        n = int((end - t) / period) + 1
        if until_full_scans is not None:
            n = min(n, max(until_full_scans - self.seqnr, 0))
        if n <= 0:
            return
        self.seqnr += n
        self.cpu_time += n * self.cost.batch
        self.next_wake = t + n * period
        self.clock = t + (n - 1) * period

    def advance(
        self, seconds: float, until_full_scans: int | None = None, until_pages_scanned: int | None = None
    ) -> float:
        """Run ksmd for ``seconds`` of simulated time; returns the time actually advanced.

        With ``until_full_scans`` and/or ``until_pages_scanned`` it stops as soon
        as both counters have reached those values (at a batch boundary, where
        the real ksmd can be stopped).
        """
        start = self.clock
        end = start + seconds

        def reached() -> bool:
            if until_full_scans is None and until_pages_scanned is None:
                return False
            return (until_full_scans is None or self.seqnr >= until_full_scans) and (
                until_pages_scanned is None or self.pages_scanned >= until_pages_scanned
            )

        while True:
            if reached():
                return self.clock - start
            if not self._should_run():
                self.next_wake = None
                self.clock = end
                return seconds
            if self.next_wake is None:
                self.next_wake = self.clock  # run_store wakes ksmd at once
            elif self._sleep_ms_used != self.kernel.sleep_millisecs and self.next_wake > self.clock:
                self.next_wake = self.clock  # a new sleep_millisecs cuts the sleep short
            t = self.next_wake
            if t > end:
                self.clock = end
                return seconds
            pts = int(self.kernel.pages_to_scan)
            self._sleep_ms_used = self.kernel.sleep_millisecs
            if pts == 0:  # ksmd wakes and sleeps without scanning: nothing changes
                self.next_wake = end + TICK
                self.clock = end
                return seconds
            period = self._after(1.0, 2, pts * self._cpv) - self._after(1.0, 1, pts * self._cpv)
            nb = 1 if period <= 0 else max(1, int((end - t) / period * 0.5))
            nb = min(nb, max(1, 1_000_000 // pts))
            budget = nb * pts
            if until_pages_scanned is not None and self.pages_scanned < until_pages_scanned:
                budget = min(budget, until_pages_scanned - self.pages_scanned)
            self._now_jiffies = int(t * HZ)
            self._batch_time = t
            unshared = self.pages_unshared
            whole = self.cur == HEAD  # this run of batches starts a full scan
            work, ended = self._scan(budget)
            used = work.visits // pts + 1 if ended else max(1, -(-work.visits // pts))
            secs = work.seconds(self.cost, max(unshared, work.tree // 2))  # the tree fills up as it goes
            # full batches carry pages_to_scan visits; the one that ends a full scan, the rest
            full = used - 1 if ended else used
            w_full = secs * pts / work.visits if work.visits else 0.0
            w_last = max(secs - full * w_full, 0.0) if ended else w_full
            if work.visits:
                self._cpv = max(secs / work.visits, 1e-8)
            self.cpu_time += secs + used * self.cost.batch
            last_start = self._after(t, used - 1, w_full)
            self.next_wake = self._after(last_start, 1, w_last)
            self.clock = t
            if ended:
                scan_end = last_start + w_last + self.cost.batch
                self.advisor.on_full_scan(scan_end, self.cpu_time, self.kernel)
                if reached():
                    self.clock = min(max(scan_end, self.clock), end)
                    return self.clock - start
                if whole and work.visits == 0 and work.skipped == 0 and self.kernel.advisor_mode == "none":
                    self._idle_scans(end, until_full_scans)
            elif reached():
                self.clock = min(last_start + w_last, end)
                return self.clock - start
