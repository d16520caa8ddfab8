"""Reading the resident anonymous pages of one mapping: /proc/PID/pagemap, /proc/PID/mem, /proc/kpageflags.

Everything is opened read-only and the process is never stopped: a read of
/proc/PID/mem needs ptrace-read permission only. A page is read when pagemap shows it
present, anonymous (not file-backed, not shared) and not the shared zero page; its
content becomes a keyed hash (BLAKE2b with a random key held in memory only, so no
file tells what memory holds) or "empty" for an all-zero page. A page that pagemap
no longer shows at the same frame after the read, or whose bytes differ between two
reads, changed or vanished while read: it is skipped and counted.

With ``sample`` N > 1 only the first resident page of each run of N pages (counted
from the mapping's start) is read; the others are recorded as its neighbours (their
content is inferred when ids are assigned, see :mod:`.ids`).
"""

from __future__ import annotations

import hashlib
import os
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
EMPTY = np.uint64(0)  # the hash value that stands for an all-zero page


@dataclass
class MappingPages:
    """What was captured of one mapping: its resident candidate pages, in address order."""

    thp: list[np.ndarray] = field(default_factory=list)  # bool per page: in a transparent huge page
    sample_hash: list[np.ndarray] = field(default_factory=list)  # uint64 per sample (EMPTY: an empty page)
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

    def __init__(self, pid: int, key: bytes, zero_pfns: np.ndarray, proc: str = "/proc") -> None:
        self.key = key
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

    def read(self, first_page: int, count: int) -> np.ndarray | None:
        """``count`` pages from ``first_page`` as rows of 512 words, or None when they cannot be read."""
        try:
            data = os.pread(self.mem, count * PAGE, first_page * PAGE)
        except OSError:
            return None  # unmapped meanwhile (EIO), or the process is gone
        if len(data) < count * PAGE:
            return None
        return np.frombuffer(data, dtype=np.uint64).reshape(count, PAGE // 8)

    def hashes(self, rows: np.ndarray) -> np.ndarray:
        """A keyed 64-bit hash of each page (EMPTY for an all-zero page, never for another)."""
        out = np.zeros(len(rows), dtype=np.uint64)
        nonzero = np.flatnonzero(rows.any(axis=1))
        key = self.key
        for i in nonzero:
            h = int.from_bytes(hashlib.blake2b(rows[i].tobytes(), digest_size=8, key=key).digest(), "little")
            out[i] = h or 1
        return out


def runs(pages: np.ndarray, limit: int = RUN):
    """(first, count) of each run of consecutive page numbers in sorted ``pages``, at most ``limit`` long."""
    if pages.size == 0:
        return
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    for part in np.split(pages, breaks):
        for i in range(0, part.size, limit):
            yield int(part[i]), min(limit, part.size - i)


def read_hashes(reader: PageReader, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hash, ok) for each of ``pages`` (sorted virtual page numbers): read twice, equal both times."""
    hashes = np.zeros(pages.size, dtype=np.uint64)
    ok = np.zeros(pages.size, dtype=bool)
    at = 0
    for first, count in runs(pages):
        rows = reader.read(first, count)
        again = reader.read(first, count) if rows is not None else None
        if again is not None:
            hashes[at:at + count] = reader.hashes(rows)
            ok[at:at + count] = (rows == again).all(axis=1)
        at += count
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
