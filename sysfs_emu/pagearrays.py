"""The storage of the memory model: flat numpy arrays per page and per KSM page, and the flag bits.

Every simulated page owns one slot in each per-page array (19 bytes in all);
every KSM page ("stable node") one slot in each per-node array (21 bytes).
Arrays of one kind grow together (:class:`Growable`). The fields and who
writes them are described in :mod:`sysfs_emu.memory`.
"""

from __future__ import annotations

import ctypes
import logging

import numpy as np

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
"""Bytes in a simulated page (x86-64's base page): the one page size of the simulator."""
RMAP_ITEM_SIZE = 64
"""sizeof(struct ksm_rmap_item) on 64-bit Linux: the cost counted in general_profit."""
HUGE_SHIFT = 9
HUGE_PAGES = 1 << HUGE_SHIFT
"""Pages in a transparent huge page (2 MiB on x86-64); a huge page's slots are aligned to it."""

# Per-page flag bits.
MAPPED = np.uint8(1)  # a page table entry maps a page here
RMAP = np.uint8(2)  # ksmd holds an rmap item for this page
UNSTABLE = np.uint8(4)  # the rmap item is a node of the unstable tree
SEQ = np.uint8(8)  # parity of the full scan that inserted it in the unstable tree
ZERO = np.uint8(16)  # the entry maps the shared zero page (placed by KSM)
HUGE = np.uint8(32)  # part of a transparent huge page: HUGE_PAGES slots from a multiple of HUGE_PAGES
SMALL = np.uint8(64)  # a huge page here was split: faults here map 4 KiB pages
NOT_HUGE = np.uint8(~HUGE & 0xFF)

NO_NODE = -1
NOT_AN_ITEM = np.uint8(~(RMAP | UNSTABLE | SEQ) & 0xFF)  # clears an rmap item's bits

LARGE = 1 << 20
"""Pages from which a memory counts as large (4 GiB): see :func:`keep_temporaries_on_heap`."""

_malloc_tuned = False


def keep_temporaries_on_heap() -> None:
    """Let glibc serve ksmd's multi-megabyte numpy temporaries from its heap, not from fresh mmaps.

    A pass over a large memory allocates and frees arrays of several MiB.
    glibc maps any block above its mmap threshold (128 KiB until the process
    happens to free a large mapped block, which raises it) afresh, and the
    kernel zero-fills it page by page when first touched: passes ran up to
    twice as slow whenever nothing large had been freed before, e.g. when the
    page arrays were sized up front for the guests of a scenario. Raising the
    thresholds (32 MiB to map, 128 MiB to give back) makes the speed not
    depend on that history. Process-wide, done once, only for large memories;
    a no-op without glibc.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    if mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 128 << 20):
        log.debug("malloc thresholds raised for large simulated memories")


def resident(flags: np.ndarray) -> np.ndarray:
    """Entries that count in a process's RSS: mapped, and not to the KSM zero page."""
    return ((flags & MAPPED) != 0) & ((flags & ZERO) == 0)


class Growable:
    """Flat numpy arrays of one length that grow together.

    ``halves`` names int32 views of the two halves of an int64 array
    (``{"count": ("cm", 0)}``): two fields often read together share one
    cache line, and a random look-up fetches both at once.
    """

    def __init__(
        self, specs: dict[str, tuple[np.dtype, int]], capacity: int = 0, halves: dict[str, tuple[str, int]] | None = None
    ) -> None:
        self._specs = specs
        self._halves = halves or {}
        self.size = 0
        for name, (dtype, fill) in specs.items():
            setattr(self, name, np.full(capacity, fill, dtype=dtype))
        self._set_halves()

    def _set_halves(self) -> None:
        for name, (base, half) in self._halves.items():
            setattr(self, name, getattr(self, base).view(np.int32)[half::2])

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._halves}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._set_halves()  # copies and pickles keep the halves views of their own array

    @property
    def capacity(self) -> int:
        first = next(iter(self._specs))
        return len(getattr(self, first))

    def reserve(self, n: int, factor: float = 1.25) -> None:
        if n <= self.capacity:
            return
        new = max(n, int(self.capacity * factor) + 16)
        for name, (dtype, fill) in self._specs.items():
            old = getattr(self, name)
            arr = np.full(new, fill, dtype=dtype)
            arr[: len(old)] = old
            setattr(self, name, arr)
        self._set_halves()

    def shrink(self, n: int) -> None:
        """Keep room for ``n`` entries only (at least ``size``)."""
        n = max(n, self.size)
        if n >= self.capacity:
            return
        for name in self._specs:
            setattr(self, name, getattr(self, name)[:n].copy())
        self._set_halves()

    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self._specs)


PAGE_ARRAYS = {
    "content": (np.dtype(np.int32), 0),  # content id of the page mapped (or to be faulted in)
    "oldsum": (np.dtype(np.uint32), 0),  # rmap item's checksum at the last scan (0 = none)
    "kpage": (np.dtype(np.int32), NO_NODE),  # KSM page (stable node) this entry maps
    "rnode": (np.dtype(np.int32), NO_NODE),  # stable node the rmap item hangs off
    "flags": (np.dtype(np.uint8), 0),
    "age": (np.dtype(np.uint8), 0),  # smart scan: visits without merging
    "skips": (np.dtype(np.uint8), 0),  # smart scan: remaining skips
}

NODE_ARRAYS = {
    "content": (np.dtype(np.int64), 0),
    "cm": (np.dtype(np.int64), 0),  # count and mapcount side by side (see NODE_HALVES)
    "chain": (np.dtype(np.int32), NO_NODE),  # chain id when the node is a dup
    "alive": (np.dtype(np.bool_), False),  # still in the stable tree
}
NODE_HALVES = {
    "count": ("cm", 0),  # rmap items on the node (rmap_hlist_len)
    "mapcount": ("cm", 1),  # page table entries mapping the KSM page
}
ONE_EACH = np.int64(0x1_0000_0001)
"""Added to ``nodes.cm``: one more rmap item and one more mapping (both halves stay below 2**31)."""


def checksum(contents: np.ndarray) -> np.ndarray:
    """The page checksum ksmd compares between scans: never 0 (0 = no checksum yet)."""
    return contents.astype(np.uint32) + np.uint32(1)
