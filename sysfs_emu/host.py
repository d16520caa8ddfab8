"""Host facts: the simulated host's /proc/meminfo in the kernel's layout, and the real machine's size.

:func:`machine_memory_bytes` and :func:`machine_cpus` read the machine sysfs-emu
runs on, for scenarios that do not say how big their host is.

The model (all in kB, as /proc/meminfo counts):

- ``MemTotal`` is ``host.memory``;
- the host itself holds ``host.used`` (kernel, slab, page tables, its own
  daemons), ``Buffers`` and ``Cached``; the guests hold one page per physical
  page in use (a KSM page counts once however many processes map it; pages
  mapped to the zero page by ``use_zero_pages`` count nothing);
- ``MemFree = MemTotal - used - Buffers - Cached - guests``. When the guests
  need more, the page cache gives way first (``Cached``, then ``Buffers``), as
  reclaim would; ``MemFree`` never goes below 0;
- the other fields are derived so that the usual identities hold: the LRU lists
  add up to anonymous + file pages, ``Slab = SReclaimable + SUnreclaim``,
  ``CommitLimit = SwapTotal + MemTotal / 2`` and ``MemAvailable`` follows the
  kernel's estimate (free memory above the watermarks plus the reclaimable half
  of the page cache and of reclaimable slab).

The field names, order and alignment are those of Linux 6.18 on x86_64 (read
from the development machine): ``Name:`` padded to 16 columns, the value right
aligned in 8, then `` kB``; the HugePages counts have no unit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

__all__ = ["MemorySnapshot", "meminfo_text", "meminfo_values", "watermarks_kb", "machine_memory_bytes",
           "machine_cpus", "PID_MAX"]

PID_MAX = 4194304  # /proc/sys/kernel/pid_max on 64-bit Linux: simulated PIDs stay below it
VMALLOC_TOTAL_KB = 34359738367  # 32 TiB - 1 kB of vmalloc space on x86_64 with 4-level paging


def machine_memory_bytes() -> int:
    """MemTotal of the machine this runs on (bytes), for hosts that give no ``memory``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def machine_cpus() -> int:
    """CPUs of the machine this runs on, for hosts that give no ``cpus``."""
    return os.cpu_count() or 1


@dataclass(frozen=True)
class MemorySnapshot:
    """What meminfo needs from the simulation, in bytes (``committed_guest``: sum of guests' mappings)."""

    memory: int
    used: int
    buffers: int
    cached: int
    swap: int
    guest_physical: int
    guest_committed: int
    cpus: int = 1
    guest_anon_huge: int = 0  # of guest_physical, in transparent huge pages


def watermarks_kb(total_kb: int) -> tuple[int, int, int]:
    """(min, low, high) free-page watermarks summed over zones, as the kernel sizes them by default.

    min_free_kbytes = sqrt(16 * lowmem kB) clamped to [128, 262144];
    low = min + 0.1 % of memory, high = min + 0.2 % (watermark_scale_factor 10).
    """
    wmin = int(math.isqrt(16 * total_kb))
    wmin = max(128, min(wmin, 262144))
    step = max(wmin // 4, total_kb * 10 // 10000)
    return wmin, wmin + step, wmin + 2 * step


def _after_reclaim(total: int, used: int, buffers: int, cached: int, guests: int) -> tuple[int, int, int]:
    """(Buffers, Cached, MemFree) in kB: the page cache gives way to the guests before free memory goes negative."""
    short = used + buffers + cached + guests - total
    if short > 0:
        take = min(short, cached)
        cached -= take
        short -= take
        take = min(short, buffers)
        buffers -= take
    return buffers, cached, max(0, total - used - buffers - cached - guests)


def _direct_map_kb(total: int) -> tuple[int, int, int]:
    """(DirectMap4k, DirectMap2M, DirectMap1G): the kernel maps all RAM directly, a little of it in
    4k pages, the first GiB(s) in 2M pages and the rest in 1G pages."""
    direct_4k = 28672 if total > 65536 else total // 2
    rest = max(0, -(-total // 2048) * 2048 - direct_4k)
    gib = 1024 * 1024
    if total > 4 * gib:
        direct_2m = 2 * gib - direct_4k
        return direct_4k, direct_2m, -(-(rest - direct_2m) // gib) * gib
    return direct_4k, -(-rest // 2048) * 2048, 0


def meminfo_values(s: MemorySnapshot) -> list[tuple[str, int, bool]]:
    """The fields of /proc/meminfo in order: (name, value, has_kB_unit)."""
    kb = lambda b: b // 1024  # noqa: E731
    total = kb(s.memory)
    used = kb(s.used)
    guests = kb(s.guest_physical)
    buffers, cached, free = _after_reclaim(total, used, kb(s.buffers), kb(s.cached), guests)

    # The host's own share, split among the kernel's consumers.
    host_anon = used * 30 // 100
    slab = used * 35 // 100
    sreclaimable = slab * 70 // 100
    sunreclaim = slab - sreclaimable
    kernel_stack = used * 2 // 100
    page_tables = used * 3 // 100
    vmalloc_used = used * 5 // 100
    percpu = max(s.cpus * 32, used // 1000)

    shmem = cached // 8
    file_pages = buffers + cached - shmem
    anon = host_anon + guests
    active_anon = (anon + shmem) * 2 // 3
    inactive_anon = anon + shmem - active_anon
    active_file = file_pages // 2
    inactive_file = file_pages - active_file
    dirty = cached // 256
    mapped = cached // 3

    _, low, high = watermarks_kb(total)
    reclaim_file = file_pages - min(file_pages // 2, low)
    reclaim_slab = sreclaimable - min(sreclaimable // 2, low)
    available = max(0, free - high + reclaim_file + reclaim_slab)

    swap = kb(s.swap)
    commit_limit = swap + total // 2
    committed = host_anon * 3 + shmem + kb(s.guest_committed)

    direct_4k, direct_2m, direct_1g = _direct_map_kb(total)

    return [
        ("MemTotal", total, True),
        ("MemFree", free, True),
        ("MemAvailable", available, True),
        ("Buffers", buffers, True),
        ("Cached", cached, True),
        ("SwapCached", 0, True),
        ("Active", active_anon + active_file, True),
        ("Inactive", inactive_anon + inactive_file, True),
        ("Active(anon)", active_anon, True),
        ("Inactive(anon)", inactive_anon, True),
        ("Active(file)", active_file, True),
        ("Inactive(file)", inactive_file, True),
        ("Unevictable", 0, True),
        ("Mlocked", 0, True),
        ("SwapTotal", swap, True),
        ("SwapFree", swap, True),
        ("Zswap", 0, True),
        ("Zswapped", 0, True),
        ("Dirty", dirty, True),
        ("Writeback", 0, True),
        ("AnonPages", anon, True),
        ("Mapped", mapped, True),
        ("Shmem", shmem, True),
        ("KReclaimable", sreclaimable, True),
        ("Slab", slab, True),
        ("SReclaimable", sreclaimable, True),
        ("SUnreclaim", sunreclaim, True),
        ("KernelStack", kernel_stack, True),
        ("PageTables", page_tables, True),
        ("SecPageTables", 0, True),
        ("NFS_Unstable", 0, True),
        ("Bounce", 0, True),
        ("WritebackTmp", 0, True),
        ("CommitLimit", commit_limit, True),
        ("Committed_AS", committed, True),
        ("VmallocTotal", VMALLOC_TOTAL_KB, True),
        ("VmallocUsed", vmalloc_used, True),
        ("VmallocChunk", 0, True),
        ("Percpu", percpu, True),
        ("AnonHugePages", kb(s.guest_anon_huge), True),
        ("ShmemHugePages", 0, True),
        ("ShmemPmdMapped", 0, True),
        ("FileHugePages", 0, True),
        ("FilePmdMapped", 0, True),
        ("Balloon", 0, True),
        ("HugePages_Total", 0, False),
        ("HugePages_Free", 0, False),
        ("HugePages_Rsvd", 0, False),
        ("HugePages_Surp", 0, False),
        ("Hugepagesize", 2048, True),
        ("Hugetlb", 0, True),
        ("DirectMap4k", direct_4k, True),
        ("DirectMap2M", direct_2m, True),
        ("DirectMap1G", direct_1g, True),
    ]


def meminfo_text(s: MemorySnapshot) -> str:
    """The full /proc/meminfo text, byte for byte in the kernel's layout."""
    lines = []
    for name, value, has_unit in meminfo_values(s):
        if has_unit:
            lines.append(f"{name + ':':<16}{value:>8} kB\n")
        else:
            # hugetlb_report_meminfo: "HugePages_Total:   %5lu"
            lines.append(f"{name + ':':<16}   {value:>5}\n")
    return "".join(lines)
