"""Text of the /proc files for simulated processes and the host, in the kernel's layout.

Pure functions: each takes plain numbers (or a process-like object with ``pid``,
``name``, ``cmdline``, ``start_time``, ``rss_pages``, ``vsz_pages``, ``page_size``) and returns the
exact text Linux 6.18 would show.  The field order and separators follow the real
files (``/proc/self/stat``, ``statm``, ``status``) so parsers written for Linux —
psutil, procps, node_exporter — read them unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# USER_HZ: /proc reports times in clock ticks of 1/100 s on every Linux architecture.
CLOCK_TICKS = 100
# Stand-in addresses of a process's text, stack and argument areas (stat fields 26-28, 45-51).
_START_CODE = 0x55_6000_0000
_CODE_SIZE = 0x2000
_STACK_TOP = 0x7FFD_0000_0000
_ARG_START = _STACK_TOP + 0x1000
# stat field 9: PF_RANDOMIZE | PF_FORKNOEXEC, as for an ordinary user process.
_PF_FLAGS = 0x400040
_RLIM_INFINITY = 2**64 - 1


@dataclass(frozen=True)
class Owner:
    """Credentials shown in status (uid/gid); the emulator's own by default."""

    uid: int
    gid: int

    @classmethod
    def current(cls) -> "Owner":
        return cls(os.getuid(), os.getgid())


def comm_text(name: str) -> str:
    """``/proc/PID/comm``: the name cut at 15 bytes, then a newline."""
    return name.encode()[:15].decode(errors="ignore") + "\n"


def cmdline_bytes(argv: list[str]) -> bytes:
    """``/proc/PID/cmdline``: arguments each ended by a NUL byte."""
    return b"".join(arg.encode() + b"\0" for arg in argv)


def stat_text(proc, cpu: int = 0) -> str:
    """``/proc/PID/stat``: the 52 fields of fs/proc/array.c, one line."""
    comm = comm_text(proc.name)[:-1]
    pid = proc.pid
    starttime = int(round(proc.start_time * CLOCK_TICKS))
    arg_end = _ARG_START + len(cmdline_bytes(proc.cmdline))
    fields = [
        "S",  # state: sleeping, as an idle-looking guest between vCPU runs
        1,  # ppid
        pid,  # pgrp
        pid,  # session
        0,  # tty_nr
        -1,  # tpgid
        _PF_FLAGS,
        proc.rss_pages,  # minflt: each resident page was faulted in once
        0, 0, 0,  # cminflt majflt cmajflt
        0, 0, 0, 0,  # utime stime cutime cstime
        20, 0,  # priority nice
        1,  # num_threads
        0,  # itrealvalue
        starttime,
        proc.vsz_pages * proc.page_size,  # vsize, bytes
        proc.rss_pages,  # rss, pages
        _RLIM_INFINITY,  # rsslim
        _START_CODE, _START_CODE + _CODE_SIZE, _STACK_TOP,  # startcode endcode startstack
        0, 0,  # kstkesp kstkeip
        0, 0, 0, 0,  # signal blocked sigignore sigcatch
        0, 0, 0,  # wchan nswap cnswap
        17,  # exit_signal SIGCHLD
        cpu,  # processor
        0, 0,  # rt_priority policy
        0,  # delayacct_blkio_ticks
        0, 0,  # guest_time cguest_time
        _START_CODE + 0x3000, _START_CODE + 0x4000, _START_CODE + 0x10000,  # data, brk
        _ARG_START, arg_end, arg_end, arg_end + 0x100,  # arg_start arg_end env_start env_end
        0,  # exit_code
    ]
    return f"{pid} ({comm}) " + " ".join(str(f) for f in fields) + "\n"


def statm_text(proc) -> str:
    """``/proc/PID/statm``: size resident shared text lib data dt, in pages."""
    text = _CODE_SIZE // proc.page_size
    data = max(proc.vsz_pages - text, 0)
    return f"{proc.vsz_pages} {proc.rss_pages} 0 {text} 0 {data} 0\n"


def status_text(proc, owner: Owner, hwm_pages: int | None = None) -> str:
    """``/proc/PID/status`` with every line Linux 6.18 prints, in its order."""
    kb = proc.page_size // 1024
    size_kb = proc.vsz_pages * kb
    rss_kb = proc.rss_pages * kb
    hwm_kb = max(hwm_pages or 0, proc.rss_pages) * kb
    exe_kb = _CODE_SIZE // 1024
    uid, gid = owner.uid, owner.gid
    pid = proc.pid

    def vm(value: int) -> str:
        return f"{value:8d} kB"

    lines = [
        ("Name", _escape_name(comm_text(proc.name)[:-1])),
        ("Umask", "0022"),
        ("State", "S (sleeping)"),
        ("Tgid", pid),
        ("Ngid", 0),
        ("Pid", pid),
        ("PPid", 1),
        ("TracerPid", 0),
        ("Uid", f"{uid}\t{uid}\t{uid}\t{uid}"),
        ("Gid", f"{gid}\t{gid}\t{gid}\t{gid}"),
        ("FDSize", 64),
        ("Groups", " "),
        ("NStgid", pid),
        ("NSpid", pid),
        ("NSpgid", pid),
        ("NSsid", pid),
        ("Kthread", 0),
        ("VmPeak", vm(size_kb)),
        ("VmSize", vm(size_kb)),
        ("VmLck", vm(0)),
        ("VmPin", vm(0)),
        ("VmHWM", vm(hwm_kb)),
        ("VmRSS", vm(rss_kb)),
        ("RssAnon", vm(rss_kb)),
        ("RssFile", vm(0)),
        ("RssShmem", vm(0)),
        ("VmData", vm(max(size_kb - exe_kb - 132, 0))),
        ("VmStk", vm(132)),
        ("VmExe", vm(exe_kb)),
        ("VmLib", vm(0)),
        ("VmPTE", vm(_pte_kb(proc.vsz_pages))),
        ("VmSwap", vm(0)),
        ("HugetlbPages", vm(0)),
        ("CoreDumping", 0),
        ("THP_enabled", 1),
        ("untag_mask", "0xffffffffffffffff"),
        ("Threads", 1),
        ("SigQ", "0/63448"),
        ("SigPnd", "0" * 16),
        ("ShdPnd", "0" * 16),
        ("SigBlk", "0" * 16),
        ("SigIgn", "0000000000001000"),
        ("SigCgt", "0000000100004243"),
        ("CapInh", "0" * 16),
        ("CapPrm", "0" * 16),
        ("CapEff", "0" * 16),
        ("CapBnd", "000001ffffffffff"),
        ("CapAmb", "0" * 16),
        ("NoNewPrivs", 0),
        ("Seccomp", 0),
        ("Seccomp_filters", 0),
        ("Speculation_Store_Bypass", "thread vulnerable"),
        ("SpeculationIndirectBranch", "conditional enabled"),
        ("Cpus_allowed", "ffffffff"),
        ("Cpus_allowed_list", "0-31"),
        ("Mems_allowed", "00000001"),
        ("Mems_allowed_list", "0"),
        ("voluntary_ctxt_switches", 0),
        ("nonvoluntary_ctxt_switches", 0),
    ]
    return "".join(f"{key}:\t{value}\n" for key, value in lines)


def host_stat_text(boot_time: int, uptime: float, cpus: int, nprocs: int) -> str:
    """``/proc/stat`` of an idle host: per-CPU times, btime and process counts."""
    idle = int(uptime * CLOCK_TICKS)

    def cpu_line(label: str, idle_ticks: int) -> str:
        # user nice system idle iowait irq softirq steal guest guest_nice
        return f"{label} 0 0 0 {idle_ticks} 0 0 0 0 0 0"

    lines = [cpu_line("cpu ", idle * cpus)]
    lines += [cpu_line(f"cpu{i}", idle) for i in range(cpus)]
    lines += [
        "intr 0",
        "ctxt 0",
        f"btime {boot_time}",
        f"processes {nprocs}",
        "procs_running 1",
        "procs_blocked 0",
        "softirq 0 0 0 0 0 0 0 0 0 0 0",
    ]
    return "\n".join(lines) + "\n"


def uptime_text(uptime: float, cpus: int) -> str:
    """``/proc/uptime``: seconds up and seconds idle summed over CPUs."""
    return f"{uptime:.2f} {uptime * cpus:.2f}\n"


def loadavg_text(nprocs: int, last_pid: int) -> str:
    """``/proc/loadavg`` of an idle host."""
    return f"0.00 0.00 0.00 1/{nprocs} {last_pid}\n"


def _pte_kb(vsz_pages: int) -> int:
    """Page-table size for a mapping: one 4 KiB table per 512 pages."""
    return ((vsz_pages + 511) // 512) * 4


def _escape_name(name: str) -> str:
    """status escapes backslash and newline in Name as the kernel does."""
    return name.replace("\\", "\\\\").replace("\n", "\\n")


@dataclass(frozen=True)
class Rollup:
    """A process's (or one mapping's) memory as smaps sums it, in kB (all anonymous, all dirty)."""

    rss: int
    pss: int
    shared_dirty: int  # entries mapping a KSM page that has other mappers (a KSM page is dirty)
    private_dirty: int  # the others
    ksm: int  # entries mapping a KSM page
    anon_huge: int = 0  # in transparent huge pages


MMAP_BASE = 0x7F00_0000_0000
"""Where the stand-in addresses of a simulated process's regions start (in ``smaps``)."""


@dataclass(frozen=True)
class Vma:
    """One region as /proc/PID/smaps shows it: its place, size (bytes) and memory."""

    start: int
    size: int
    memory: Rollup
    mergeable: bool
    thp: bool


def _smaps_values(r: Rollup) -> list[tuple[str, int]]:
    """The memory lines smaps and smaps_rollup share, from Rss to Locked, in Linux 6.18's order."""
    return [
        ("Rss", r.rss), ("Pss", r.pss), ("Pss_Dirty", r.pss), ("Shared_Clean", 0), ("Shared_Dirty", r.shared_dirty),
        ("Private_Clean", 0), ("Private_Dirty", r.private_dirty), ("Referenced", r.rss), ("Anonymous", r.rss),
        ("KSM", r.ksm), ("LazyFree", 0), ("AnonHugePages", r.anon_huge), ("ShmemPmdMapped", 0),
        ("FilePmdMapped", 0), ("Shared_Hugetlb", 0), ("Private_Hugetlb", 0), ("Swap", 0), ("SwapPss", 0),
        ("Locked", 0),
    ]


def _kb_lines(values: list[tuple[str, int]]) -> str:
    return "".join(f"{k + ':':<16}{v:8d} kB\n" for k, v in values)


def smaps_rollup_text(r: Rollup, vsz_pages: int, page_size: int) -> str:
    """``/proc/PID/smaps_rollup`` with Linux 6.18's lines: ``Key:`` in 16 columns, value in 8, `` kB``."""
    end = _STACK_TOP + 0x21000
    start = min(_START_CODE, end - vsz_pages * page_size)
    head = f"{start:08x}-{end:08x} ---p 00000000 00:00 0".ljust(73) + "[rollup]"
    values = _smaps_values(r)
    values[3:3] = [("Pss_Anon", r.pss), ("Pss_File", 0), ("Pss_Shmem", 0)]
    return head + "\n" + _kb_lines(values)


def smaps_text(vmas) -> str:
    """``/proc/PID/smaps`` of a process's anonymous regions, each as Linux 6.18 shows a mapping."""
    out = []
    for v in vmas:
        flags = "rd wr mr mw me ac " + ("hg " if v.thp else "") + ("mg " if v.mergeable else "")
        out.append(
            f"{v.start:08x}-{v.start + v.size:08x} rw-p 00000000 00:00 0 \n"
            + _kb_lines([("Size", v.size // 1024), ("KernelPageSize", 4), ("MMUPageSize", 4)])
            + _kb_lines(_smaps_values(v.memory))
            + f"{'THPeligible:':<16}{int(v.thp):8d}\n{'ProtectionKey:':<16}{0:8d}\nVmFlags: {flags}\n"
        )
    return "".join(out)


# --- the host's /proc/vmstat and the ksmd kernel thread -------------------------------------

#: The counters of /proc/vmstat on Linux 6.18 (x86_64, one NUMA node), in the kernel's order.
VMSTAT_KEYS = (
    "nr_free_pages", "nr_free_pages_blocks", "nr_zone_inactive_anon", "nr_zone_active_anon",
    "nr_zone_inactive_file", "nr_zone_active_file", "nr_zone_unevictable", "nr_zone_write_pending",
    "nr_mlock", "nr_zspages", "nr_free_cma", "numa_hit", "numa_miss", "numa_foreign", "numa_interleave",
    "numa_local", "numa_other", "nr_inactive_anon", "nr_active_anon", "nr_inactive_file", "nr_active_file",
    "nr_unevictable", "nr_slab_reclaimable", "nr_slab_unreclaimable", "nr_isolated_anon",
    "nr_isolated_file", "workingset_nodes", "workingset_refault_anon", "workingset_refault_file",
    "workingset_activate_anon", "workingset_activate_file", "workingset_restore_anon",
    "workingset_restore_file", "workingset_nodereclaim", "nr_anon_pages", "nr_mapped", "nr_file_pages",
    "nr_dirty", "nr_writeback", "nr_shmem", "nr_shmem_hugepages", "nr_shmem_pmdmapped",
    "nr_file_hugepages", "nr_file_pmdmapped", "nr_anon_transparent_hugepages", "nr_vmscan_write",
    "nr_vmscan_immediate_reclaim", "nr_dirtied", "nr_written", "nr_throttled_written",
    "nr_kernel_misc_reclaimable", "nr_foll_pin_acquired", "nr_foll_pin_released", "nr_kernel_stack",
    "nr_page_table_pages", "nr_sec_page_table_pages", "nr_iommu_pages", "nr_swapcached",
    "pgpromote_success", "pgpromote_candidate", "pgpromote_candidate_nrl", "pgdemote_kswapd",
    "pgdemote_direct", "pgdemote_khugepaged", "pgdemote_proactive", "nr_hugetlb", "nr_balloon_pages",
    "nr_kernel_file_pages", "nr_dirty_threshold", "nr_dirty_background_threshold", "nr_memmap_pages",
    "nr_memmap_boot_pages", "pgpgin", "pgpgout", "pswpin", "pswpout", "pgalloc_dma", "pgalloc_dma32",
    "pgalloc_normal", "pgalloc_movable", "pgalloc_device", "allocstall_dma", "allocstall_dma32",
    "allocstall_normal", "allocstall_movable", "allocstall_device", "pgskip_dma", "pgskip_dma32",
    "pgskip_normal", "pgskip_movable", "pgskip_device", "pgfree", "pgactivate", "pgdeactivate",
    "pglazyfree", "pgfault", "pgmajfault", "pglazyfreed", "pgrefill", "pgreuse", "pgsteal_kswapd",
    "pgsteal_direct", "pgsteal_khugepaged", "pgsteal_proactive", "pgscan_kswapd", "pgscan_direct",
    "pgscan_khugepaged", "pgscan_proactive", "pgscan_direct_throttle", "pgscan_anon", "pgscan_file",
    "pgsteal_anon", "pgsteal_file", "zone_reclaim_success", "zone_reclaim_failed", "pginodesteal",
    "slabs_scanned", "kswapd_inodesteal", "kswapd_low_wmark_hit_quickly", "kswapd_high_wmark_hit_quickly",
    "pageoutrun", "pgrotated", "drop_pagecache", "drop_slab", "oom_kill", "numa_pte_updates",
    "numa_huge_pte_updates", "numa_hint_faults", "numa_hint_faults_local", "numa_pages_migrated",
    "pgmigrate_success", "pgmigrate_fail", "thp_migration_success", "thp_migration_fail",
    "thp_migration_split", "compact_migrate_scanned", "compact_free_scanned", "compact_isolated",
    "compact_stall", "compact_fail", "compact_success", "compact_daemon_wake",
    "compact_daemon_migrate_scanned", "compact_daemon_free_scanned", "htlb_buddy_alloc_success",
    "htlb_buddy_alloc_fail", "unevictable_pgs_culled", "unevictable_pgs_scanned",
    "unevictable_pgs_rescued", "unevictable_pgs_mlocked", "unevictable_pgs_munlocked",
    "unevictable_pgs_cleared", "unevictable_pgs_stranded", "thp_fault_alloc", "thp_fault_fallback",
    "thp_fault_fallback_charge", "thp_collapse_alloc", "thp_collapse_alloc_failed", "thp_file_alloc",
    "thp_file_fallback", "thp_file_fallback_charge", "thp_file_mapped", "thp_split_page",
    "thp_split_page_failed", "thp_deferred_split_page", "thp_underused_split_page", "thp_split_pmd",
    "thp_scan_exceed_none_pte", "thp_scan_exceed_swap_pte", "thp_scan_exceed_share_pte", "thp_split_pud",
    "thp_zero_page_alloc", "thp_zero_page_alloc_failed", "thp_swpout", "thp_swpout_fallback",
    "balloon_inflate", "balloon_deflate", "balloon_migrate", "swap_ra", "swap_ra_hit", "swpin_zero",
    "swpout_zero", "ksm_swpin_copy", "cow_ksm", "zswpin", "zswpout", "zswpwb", "direct_map_level2_splits",
    "direct_map_level3_splits", "direct_map_level2_collapses", "direct_map_level3_collapses",
    "nr_unstable",
)

# stat field 9 of a kernel thread: PF_KTHREAD | PF_NOFREEZE, as Linux shows ksmd.
_KTHREAD_FLAGS = 0x200040


def vmstat_text(free_pages: int, anon_pages: int, cow_ksm: int) -> str:
    """``/proc/vmstat`` of an otherwise idle host: free and anonymous pages, KSM's copy-on-write breaks."""
    values = {"nr_free_pages": free_pages, "nr_zone_active_anon": anon_pages, "nr_active_anon": anon_pages,
              "nr_anon_pages": anon_pages, "cow_ksm": cow_ksm}
    return "".join(f"{key} {values.get(key, 0)}\n" for key in VMSTAT_KEYS)


def kthread_stat_text(pid: int, name: str, cpu_seconds: float, start_ticks: int = 17) -> str:
    """``/proc/PID/stat`` of a kernel thread (ksmd): child of kthreadd, no memory, its CPU time as system time."""
    stime = int(cpu_seconds * CLOCK_TICKS)
    fields = ["S", 2, 0, 0, 0, -1, _KTHREAD_FLAGS, 0, 0, 0, 0, 0, stime, 0, 0, 25, 5, 1, 0, start_ticks, 0, 0,
              _RLIM_INFINITY, 0, 0, 0, 0, 0, 0, 0, 2147483647, 0, 1, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    return f"{pid} ({name}) " + " ".join(str(f) for f in fields) + "\n"


def kthread_status_text(pid: int, name: str) -> str:
    """``/proc/PID/status`` of a kernel thread: no Vm lines, ``Kthread: 1``."""
    lines = [("Name", name), ("Umask", "0022"), ("State", "S (sleeping)"), ("Tgid", pid), ("Ngid", 0), ("Pid", pid),
             ("PPid", 2), ("TracerPid", 0), ("Uid", "0\t0\t0\t0"), ("Gid", "0\t0\t0\t0"), ("FDSize", 64),
             ("Groups", " "), ("NStgid", pid), ("NSpid", pid), ("NSpgid", 0), ("NSsid", 0), ("Kthread", 1),
             ("Threads", 1), ("SigQ", "0/63448"), ("SigPnd", "0" * 16), ("ShdPnd", "0" * 16), ("SigBlk", "0" * 16),
             ("SigIgn", "f" * 16), ("SigCgt", "0" * 16), ("CapInh", "0" * 16), ("CapPrm", "000001ffffffffff"),
             ("CapEff", "000001ffffffffff"), ("CapBnd", "000001ffffffffff"), ("CapAmb", "0" * 16),
             ("NoNewPrivs", 0), ("Seccomp", 0), ("Seccomp_filters", 0),
             ("Speculation_Store_Bypass", "thread vulnerable"), ("SpeculationIndirectBranch", "conditional enabled"),
             ("Cpus_allowed", "ffffffff"), ("Cpus_allowed_list", "0-31"), ("Mems_allowed", "00000001"),
             ("Mems_allowed_list", "0"), ("voluntary_ctxt_switches", 0), ("nonvoluntary_ctxt_switches", 0)]
    return "".join(f"{key}:\t{value}\n" for key, value in lines)
