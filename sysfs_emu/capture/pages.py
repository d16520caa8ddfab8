"""Reading the resident anonymous pages of one mapping: /proc/PID/pagemap, /proc/PID/mem, /proc/kpageflags.

Everything is opened read-only and the process is never stopped: a read of
/proc/PID/mem needs ptrace-read permission only. A page is read when pagemap shows it
present, anonymous (not file-backed, not shared) and not the shared zero page; its
content becomes a keyed hash (:class:`Hasher`: SHA-256 after a random key held in
memory only, so no file tells what memory holds) or "empty" for an all-zero page. A page that pagemap
no longer shows at the same frame after the read, or whose bytes differ between two
reads, changed or vanished while read: it is skipped and counted.

With ``sample`` N > 1 only the first resident page of each run of N pages (counted
from the mapping's start) is read; the others are recorded as its neighbours (their
content is inferred when ids are assigned, see :mod:`.ids`).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from sysfs_emu.capture.procs import Gone, Mapping

PAGE = 4096
THP_PAGES = 512  # a 2 MiB transparent huge page on x86-64
PM_PRESENT = np.uint64(1 << 63)
PM_SWAPPED = np.uint64(1 << 62)
PM_FILE = np.uint64(1 << 61)  # file page or shared anonymous page: not a KSM candidate
PFN_MASK = np.uint64((1 << 55) - 1)
KPF_THP = 1 << 22
CHUNK = 16384  # pages of address space handled at once (64 MiB)
RUN = 256  # pages per read of /proc/PID/mem (1 MiB)
BATCH = 1024  # pages hashed at once (4 MiB)
EMPTY = np.uint64(0)  # the hash value that stands for an all-zero page


@dataclass
class MappingPages:
    """What was captured of one mapping: its resident candidate pages, in address order."""

    thp: list[np.ndarray] = field(default_factory=list)  # bool per page: in a transparent huge page
    sample_hash: list[np.ndarray] = field(default_factory=list)  # uint64 per sample (EMPTY: an empty page)
    # with sampling only (without, each page is its own sample):
    sample_block: list[np.ndarray] = field(default_factory=list)  # int64: which run of N pages it samples
    page_sample: list[np.ndarray] = field(default_factory=list)  # int64 per page: its sample (this mapping's count)
    page_offset: list[np.ndarray] = field(default_factory=list)  # uint16 per page: pages after its sample
    samples: int = 0
    skipped: int = 0  # pages that changed or vanished while read (or whose sample did)
    read_pages: int = 0

    def concat(self, name: str, dtype) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)

    @property
    def pages(self) -> int:
        return sum(len(t) for t in self.thp)


class PageReader:
    """One process's pagemap and memory (and the machine's kpageflags), open for reading."""

    def __init__(self, pid: int, hasher: "Hasher", zero_pfns: np.ndarray, proc: str = "/proc") -> None:
        self.hasher = hasher
        self.zero_pfns = zero_pfns
        self._fds: list[int] = []
        try:
            self.pagemap = self._open(f"{proc}/{pid}/pagemap")
            self.mem = self._open(f"{proc}/{pid}/mem")
            self.kpageflags = self._open(f"{proc}/kpageflags")
        except (FileNotFoundError, ProcessLookupError):
            self.close()
            raise Gone(f"{proc}/{pid}") from None

    def _open(self, path: str) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def entries(self, first_page: int, count: int) -> np.ndarray:
        """The pagemap entries of ``count`` pages from virtual page ``first_page``."""
        data = os.pread(self.pagemap, count * 8, first_page * 8)
        if len(data) < count * 8:
            raise Gone("pagemap")  # the process exited
        return np.frombuffer(data, dtype=np.uint64)

    def page_flags(self, pfn: int) -> int:
        data = os.pread(self.kpageflags, 8, pfn * 8)
        return int.from_bytes(data, "little") if len(data) == 8 else 0

    def read_into(self, rows: np.ndarray, first_page: int) -> bool:
        """Read ``len(rows)`` pages from ``first_page`` into ``rows``; False when they cannot be read."""
        try:
            got = os.preadv(self.mem, [memoryview(rows).cast("B")], first_page * PAGE)
        except OSError:
            return False  # unmapped meanwhile (EIO), or the process is gone
        return got == rows.nbytes

    def hashes(self, rows: np.ndarray) -> np.ndarray:
        return self.hasher.hashes(rows)


class Hasher:
    """A keyed 64-bit hash of pages: SHA-256 of a random key (held here only) followed by the page.

    EMPTY stands for an all-zero page and never for another. Pages are hashed on every
    CPU this process may use (hashlib lets go of the interpreter while it hashes).
    """

    def __init__(self, key: bytes, workers: int | None = None) -> None:
        self._keyed = hashlib.sha256(key)
        self.workers = workers or len(os.sched_getaffinity(0))
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self._keyed = None

    def _digests(self, data: memoryview, pages: np.ndarray, out: np.ndarray) -> None:
        keyed = self._keyed
        for slot, i in enumerate(pages.tolist()):
            h = keyed.copy()
            h.update(data[i * PAGE:(i + 1) * PAGE])
            out[slot] = int.from_bytes(h.digest()[:8], "little") or 1

    def hashes(self, rows: np.ndarray) -> np.ndarray:
        """The hash of each page of ``rows`` (pages as rows of 512 words)."""
        out = np.zeros(len(rows), dtype=np.uint64)
        nonzero = np.flatnonzero(rows.any(axis=1))
        if not nonzero.size:
            return out
        data = memoryview(np.ascontiguousarray(rows)).cast("B")
        found = np.zeros(nonzero.size, dtype=np.uint64)
        parts = np.array_split(np.arange(nonzero.size), self.workers if self._pool else 1)
        if self._pool is None or nonzero.size < 64:
            self._digests(data, nonzero, found)
        else:
            jobs = [self._pool.submit(self._digests, data, nonzero[part], found[part[0]:part[-1] + 1])
                    for part in parts if part.size]
            for job in jobs:
                job.result()
        out[nonzero] = found
        return out


def runs(pages: np.ndarray, limit: int = RUN):
    """(first, count) of each run of consecutive page numbers in sorted ``pages``, at most ``limit`` long."""
    if pages.size == 0:
        return
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    starts = np.r_[0, breaks].tolist()
    ends = np.r_[breaks, pages.size].tolist()
    firsts = pages[starts].tolist()
    for first, a, b in zip(firsts, starts, ends):
        for i in range(0, b - a, limit):
            yield first + i, min(limit, b - a - i)


def read_hashes(reader: PageReader, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hash, ok) for each of ``pages`` (sorted virtual page numbers): read twice, equal both times.

    Reads go a run of consecutive pages at a time straight into a batch of BATCH pages
    (4 MiB, hashed when full), the second read into a scratch run beside it.
    """
    hashes = np.zeros(pages.size, dtype=np.uint64)
    ok = np.zeros(pages.size, dtype=bool)
    batch = np.empty((BATCH, PAGE // 8), dtype=np.uint64)
    scratch = np.empty((RUN, PAGE // 8), dtype=np.uint64)
    where = np.empty(BATCH, dtype=np.int64)  # the index in ``pages`` of each page of the batch
    filled = 0
    at = 0
    for first, count in runs(pages):
        if filled + count > BATCH:
            hashes[where[:filled]] = reader.hashes(batch[:filled])
            filled = 0
        rows = batch[filled:filled + count]
        if reader.read_into(rows, first) and reader.read_into(scratch[:count], first):
            if count == 1:  # sampling reads pages one by one: no array work for them
                if rows.tobytes() == scratch[:1].tobytes():
                    ok[at] = True
                    where[filled] = at
                    filled += 1
            else:
                same = (rows == scratch[:count]).all(axis=1)
                ok[at:at + count] = same
                kept = int(same.sum())
                if kept < count:
                    rows[:kept] = rows[same]
                where[filled:filled + kept] = np.flatnonzero(same) + at
                filled += kept
        at += count
    if filled:
        hashes[where[:filled]] = reader.hashes(batch[:filled])
    return hashes, ok


def _thp_pages(reader: PageReader, vpn: np.ndarray, pfn: np.ndarray) -> np.ndarray:
    """Which pages sit in a PMD-mapped transparent huge page: a 2 MiB block of consecutive frames whose
    first present page kpageflags marks THP."""
    thp = np.zeros(vpn.size, dtype=bool)
    block = vpn // THP_PAGES
    starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], vpn.size]):
        if reader.page_flags(int(pfn[a])) & KPF_THP:
            thp[a:b] = (pfn[a:b].astype(np.int64) - int(pfn[a])) == (vpn[a:b] - vpn[a])
    return thp


@dataclass
class ZeroBudget:
    """How many shared-zero-page mappings of a process count as its KSM zero pages (use_zero_pages):
    empty pages KSM merged, resident before it did."""

    left: int = 0


def read_mapping(reader: PageReader, mapping: Mapping, sample: int, zero: ZeroBudget, on_pages=None
                 ) -> MappingPages:
    """Capture one mapping's resident candidate pages; ``on_pages(n)`` after each chunk of address space."""
    out = MappingPages()
    first = mapping.start // PAGE
    total = (mapping.end - mapping.start) // PAGE
    step = -(-CHUNK // sample) * sample  # chunks hold whole runs of ``sample`` pages
    for at in range(0, total, step):
        n = min(step, total - at)
        _read_chunk(reader, first, at, n, sample, zero, mapping.thp_kb > 0, out)
        if on_pages is not None:
            on_pages(n)
    return out


def _read_chunk(reader: PageReader, first: int, at: int, n: int, sample: int, zero: ZeroBudget, has_thp: bool,
                out: MappingPages) -> None:
    pm = reader.entries(first + at, n)
    present = (pm & PM_PRESENT) != 0
    pfn = pm & PFN_MASK
    anon = present & ((pm & PM_FILE) == 0)
    zero_mapped = anon & np.isin(pfn, reader.zero_pfns)
    ksm_zero = np.flatnonzero(zero_mapped)[: zero.left]
    zero.left -= ksm_zero.size
    cand = anon & ~zero_mapped
    cand[ksm_zero] = True  # empty pages KSM mapped to the zero page: they were resident (and empty)
    idx = np.flatnonzero(cand)
    if idx.size == 0:
        return
    offset = at + idx  # pages from the mapping's start
    block = offset // sample
    heads = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])  # the first resident page of each run
    head_of = np.repeat(np.arange(heads.size), np.diff(np.r_[heads, idx.size]))
    is_zero_head = zero_mapped[idx[heads]]
    to_read = heads[~is_zero_head]
    hashes = np.full(heads.size, EMPTY, dtype=np.uint64)
    ok = np.ones(heads.size, dtype=bool)
    h, good = read_hashes(reader, first + offset[to_read])
    hashes[~is_zero_head], ok[~is_zero_head] = h, good
    out.read_pages += to_read.size
    pm_after = reader.entries(first + at, n)
    same = (pm_after[idx] == pm[idx])[heads] | is_zero_head  # still the same frame after the reads
    ok &= same
    keep = ok[head_of]
    out.skipped += int((~keep).sum())
    kept_heads = np.flatnonzero(ok)
    renumber = np.full(heads.size, -1, dtype=np.int64)
    renumber[kept_heads] = np.arange(kept_heads.size) + out.samples
    out.sample_hash.append(hashes[kept_heads])
    if sample > 1:  # without sampling every page is its own sample: nothing more to keep
        out.sample_block.append(block[heads[kept_heads]])
        out.page_sample.append(renumber[head_of[keep]])
        out.page_offset.append((offset - offset[heads][head_of])[keep].astype(np.uint16))
    out.samples += kept_heads.size
    thp = _thp_pages(reader, first + offset, pfn[idx]) if has_thp else np.zeros(idx.size, dtype=bool)
    out.thp.append(thp[keep])


def zero_page_frames() -> np.ndarray:
    """The frames of the shared zero page (and of the huge zero page, when transparent huge pages map one),
    found by reading fresh anonymous memory of this process and asking its pagemap."""
    import ctypes
    import mmap

    found = set()
    size = 4 * THP_PAGES * PAGE
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        view = ctypes.c_char.from_buffer(buf)
        base = ctypes.addressof(view)
        del view  # no export left: the mapping can be closed
        huge = THP_PAGES * PAGE
        aligned = -(-(base + huge) // huge) * huge - base  # a whole 2 MiB block after the first 2 MiB
        buf.madvise(mmap.MADV_NOHUGEPAGE, 0, huge)
        probes = [PAGE]
        if hasattr(mmap, "MADV_HUGEPAGE"):
            buf.madvise(mmap.MADV_HUGEPAGE, aligned, huge)
            probes.append(aligned)
        for off in probes:
            buf[off]  # a read fault maps the zero page (or the huge zero page)
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            for off in probes:
                entry = int.from_bytes(os.pread(fd, 8, (base + off) // PAGE * 8), "little")
                pfn = entry & int(PFN_MASK)
                if entry & int(PM_PRESENT) and pfn:
                    found.update(range(pfn, pfn + (THP_PAGES if off == aligned else 1)))
        finally:
            os.close(fd)
    finally:
        buf.close()
    return np.array(sorted(found), dtype=np.uint64)
