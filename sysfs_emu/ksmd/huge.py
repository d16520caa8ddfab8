"""Which huge pages of a window the vectorised scan must leave to the page-by-page path.

A huge page changes a visit's outcome only in the scan where ksmd first tries
to merge one of its pages (see :mod:`sysfs_emu.thp` and :mod:`.reference`):
the merge splits it, and two things can then differ from 4 KiB pages, both
depending on where in the scan the split happens.

- Its empty pages go to the shared zero page: the pages of it after the split
  are no longer visited. Such a huge page is visited one page at a time until
  it is split (``ONE_BY_ONE``), whichever path is used.
- A merge with another page of the same huge page fails. A partner in the
  unstable tree has the page's content, so this needs a content twice in the
  huge page: the vectorised path then leaves the huge page's private pages to
  the page-by-page path, in order (``IN_ORDER``).

In any other huge page a split only clears the HUGE bits, whatever the order,
and the bulk merge operations do it (``Memory.merge_pages``).
"""

from __future__ import annotations

import numpy as np

from sysfs_emu.pagearrays import HUGE, HUGE_PAGES, HUGE_SHIFT
from sysfs_emu.thp import block_slots

ONE_BY_ONE, IN_ORDER = 1, 2


def huge_blocks(memory, pos: int, end: int) -> np.ndarray:
    """The huge pages with a slot in [pos, end), as block numbers in order."""
    first, last = pos >> HUGE_SHIFT, (end - 1) >> HUGE_SHIFT
    starts = np.arange(first, last + 1, dtype=np.int64) << HUGE_SHIFT
    return (starts[(memory.pages.flags[starts] & HUGE) != 0]) >> HUGE_SHIFT


def slow_blocks(memory, pos: int, end: int, vectorise: bool) -> list[tuple[int, int]]:
    """The huge pages with a slot in [pos, end) that need the page-by-page path: (block, ONE_BY_ONE or IN_ORDER)."""
    blocks = huge_blocks(memory, pos, end)
    if blocks.size == 0:
        return []
    cont = memory.pages.content[block_slots(blocks)].reshape(-1, HUGE_PAGES)
    empty = memory.is_empty(cont).any(axis=1)
    kind = np.where(empty, ONE_BY_ONE, 0)
    if vectorise:
        ordered = np.sort(cont, axis=1)
        twice = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        kind[twice & ~empty] = IN_ORDER
    slow = np.flatnonzero(kind)
    return [(int(blocks[i]), int(kind[i])) for i in slow]
