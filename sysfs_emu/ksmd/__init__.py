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
* A transparent huge page is split by the first merge of one of its pages
  (sysfs_emu.thp): its empty pages go to the shared zero page, and two pages
  of one huge page merge only a scan later.

The modules follow mm/ksm.c's seams:

=============== ===============================================================
``engine``      :class:`Ksmd`: the parts put together, the kernel model's engine
                interface (counters, run=2, EBUSY), ksm_scan_thread() in
                simulated time
``scan``        the mm list and the scan cursor (ksm_do_scan(),
                scan_get_next_rmap_item()), ``full_scans``
``stable``      the stable tree: nodes, chains and duplicates, and the counters
                ``pages_shared``, ``pages_sharing``, ``stable_node_chains``,
                ``stable_node_dups``
``rmap``        rmap items and the unstable tree, ``pages_unshared``
``reference``   the page-by-page path (cmp_and_merge_page()), the oracle of
                the vectorised one
``window``      the vectorised scan of consecutive pages, ``pages_scanned``,
                ``pages_skipped``
``treepass``    the vectorised stable/unstable tree pass over a window
``groups``      the tree pass's pages that share a content within one pass
``huge``        the huge pages the vectorised scan leaves to the page-by-page path
``timing``      jiffies, the batch period and the cost model (pure)
=============== ===============================================================

Known simplifications (the module named after each says so too): a stale KSM
page (all mappers gone) is pruned when its own content is looked up, when one
of its rmap items is removed, by chain walks, run=2 and busy(); the kernel also
prunes stale nodes any rb-tree walk happens to pass, which depends on the
tree's shape (``stable``). Likewise the unstable tree is looked up by content:
a tree page that went away during a scan (an exited process, an empty page a
huge page's split mapped to the zero page) stops the searches for its own
content; in the kernel it stops every search whose path passes it, so when it
is the tree's root (the first page a scan inserted) nothing more merges in that
scan (``rmap``, ``reference``). merge_across_nodes=0 on a host of several NUMA
nodes is modelled by giving pages off node 0 content ids of their own
(sysfs_emu.numa), not verified against a real multi-node kernel. After ``run``
goes 0->1 ksmd wakes at once (``engine``). Within a run of batches handled in
one pass, chain prune times use the time of its first batch and work is
spread evenly over its full batches (``engine``). The timing is that of an
unloaded machine, with per-page costs from a cost profile (``timing``): the
reference one or this machine's (``sysfs-emu calibrate``); a page in a huge
page costs as a 4 KiB page, though Linux visits it faster. khugepaged is not
modelled (sysfs_emu.thp).
"""

from sysfs_emu.ksmd.engine import Ksmd, Tunables
from sysfs_emu.ksmd.timing import HZ, TICK, CostModel, msecs_to_jiffies

__all__ = ["HZ", "TICK", "CostModel", "Ksmd", "Tunables", "msecs_to_jiffies"]
