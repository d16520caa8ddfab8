"""What a cycle reads from the host (:class:`Readings`), and reading it from files: /proc/meminfo,
the guest processes and the KSM files.

Everything is read below one root directory (``/`` normally, a simulated or
test tree with ``--root``), without forking.  Guest processes are found by
their name (``comm``); a cache keyed by pid saves re-reading the details of
processes already known not to be guests: for those only ``/proc/PID/comm``
is read again each cycle.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ksmtuned_py import procinfo
from ksmtuned_py.commwatch import CommWatch
from ksmtuned_py.decision import wrap
from ksmtuned_py.errors import UserError
from ksmtuned_py.fileio import decimal, is_pid_name, natural, read_regular
from ksmtuned_py.knobs import KsmState, ksm_dir, read_ksm_state

log = logging.getLogger(__name__)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# How a known non-guest that becomes a guest is noticed.  Launchers (libvirt,
# scripts) fork and exec qemu later, and a process may rename itself
# (prctl PR_SET_NAME, as qemu's -name process=... does): the pid, the start time
# and the /proc/PID inode stay the same, only comm changes.  So each cycle
# re-reads the comm, the very thing the rule matches, of every known non-guest:
# exact.  On a live procfs the scanner keeps /proc/PID/comm open for each known
# non-guest and re-reads it with one pread(2): an open /proc file follows its
# process through exec and renames, and answers ESRCH once the process is gone
# (a new process with the same pid is another file), so the check stays exact at
# a sixth of the cost.  Measured on Linux 6.18 over 1,092 processes, per
# process: open+read+close of comm 8.2 us, of stat 12.6 us, pread of an open
# comm 1.2 us (readlink of /proc/PID/exe 5.9 us and stat() of it 5.7 us are
# inexact: they miss a rename and an exec of the same binary under another name,
# e.g. the qemu-kvm symlink).  Elsewhere (a test or simulated tree, where a file
# may be replaced by a rename) comm is opened and read each time.  Kernel
# threads are skipped: they never exec a guest (numerous on hosts with many
# CPUs); the one named ksmd is remembered for its CPU time.


class ReadingError(UserError):
    """The host could not be read (missing or malformed /proc/meminfo)."""


@dataclass(frozen=True)
class MemInfo:
    """The /proc/meminfo fields the decision uses, in kB."""

    total: int
    free: int
    buffers: int
    cached: int
    available: int | None
    swap_free: int | None = None  # SwapFree (what unmerged pages could be pushed to)

    def free_kb(self, metric: str = "classic") -> int:
        """Free memory: MemFree+Buffers+Cached (classic, the reference) or MemAvailable."""
        if metric == "available":
            if self.available is None:
                raise ReadingError("KSM_FREE_METRIC=available but /proc/meminfo has no MemAvailable")
            return self.available
        return self.free + self.buffers + self.cached


def read_meminfo(root: str | os.PathLike = "/") -> MemInfo:
    path = Path(root, "proc/meminfo")
    try:
        data = read_regular(path, follow=True)
    except OSError as e:
        raise ReadingError(f"cannot read {path}: {e.strerror}") from None
    # Bytes that are not ASCII cannot be part of a field the rule reads: never a decoding error.
    return parse_meminfo(data.decode("ascii", errors="replace"), str(path))


def parse_meminfo(text: str, where: str = "/proc/meminfo") -> MemInfo:
    """The fields of a /proc/meminfo text; ReadingError naming ``where`` when one is missing."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        value = decimal(parts[0]) if parts else None
        if value is not None:
            fields[name.strip()] = value
    missing = [k for k in ("MemTotal", "MemFree", "Buffers", "Cached") if k not in fields]
    if missing:
        raise ReadingError(f"{where} has no {', '.join(missing)}")
    if fields["MemTotal"] <= 0:
        raise ReadingError(f"{where}: MemTotal is {fields['MemTotal']}")
    return MemInfo(
        total=fields["MemTotal"],
        free=fields["MemFree"],
        buffers=fields["Buffers"],
        cached=fields["Cached"],
        available=fields.get("MemAvailable"),
        swap_free=fields.get("SwapFree"),
    )


@dataclass(frozen=True)
class Guest:
    """One process counted as a guest."""

    pid: int
    comm: str
    kb: int  # resident (or proportional) set size in kB
    name: str = ""  # from its command line (libvirt's -name guest=, Proxmox VE's -id), else the pid
    ksm: procinfo.KsmStat | None = None  # its /proc/PID/ksm_stat, None where there is none
    mergeable: bool | None = None  # ksm_stat's ksm_mergeable, else mg in smaps' VmFlags; None when neither says


@dataclass(slots=True)
class _Entry:
    ino: int  # of /proc/PID (when its comm is not kept open): a new process with a reused pid has another
    comm: str  # as last read; a change means an exec or a rename
    guest: bool
    kthread: bool  # a kernel thread never execs a guest: its comm is not re-read
    name: str = ""  # a guest's name (its command line is read once)
    merges: bool = False  # smaps showed mergeable memory (kernels before 6.7): not read again


@dataclass
class ScanStats:
    """Counters that show what the cache saved (for tests and benchmarks)."""

    stat_reads: int = 0
    comm_reads: int = 0
    regex_checks: int = 0
    vanished: int = 0


PF_KTHREAD = 0x00200000  # in /proc/PID/stat's flags: a kernel thread


def parse_stat(text: str) -> tuple[str, int, int]:
    """(comm, start time in ticks, rss in pages) from a /proc/PID/stat line."""
    comm, start, rss, _flags = _parse_stat(text)
    return comm, start, rss


def _parse_stat(text: str) -> tuple[str, int, int, int]:
    """(comm, start time, rss, flags) from a /proc/PID/stat line; ValueError or IndexError when it is not one."""
    lpar = text.index("(")
    rpar = text.rindex(")")
    comm = text[lpar + 1:rpar]
    rest = text[rpar + 2:].split()
    # rest[0] is field 3 (state); flags is field 9, starttime field 22, rss field 24.
    return comm, _field(rest[19]), _field(rest[21]), _field(rest[6])


def _field(text: str | bytes) -> int:
    """A number of a /proc file (a size, a time, flags), unsigned ASCII decimal only; ValueError otherwise."""
    value = natural(text)
    if value is None:
        raise ValueError(f"not a decimal number: {text!r}")
    return value


def rss_kb(rss_pages: int) -> int:
    """kB as ps -o rsz prints it."""
    return rss_pages * PAGE_SIZE // 1024


def _read_small(path: str, size: int) -> str:
    """One read(2) of a small /proc file with os-level calls (this runs for every process).

    O_NONBLOCK: a FIFO in a tree's /proc reads as empty instead of hanging the cycle.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        data = os.read(fd, size)
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")


def _read_lines(path: str) -> list[bytes]:
    """The lines of a /proc file (status, smaps_rollup: a few kB), read without blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        chunks = []
        while len(chunks) < 64 and (data := os.read(fd, 65536)):
            chunks.append(data)
    finally:
        os.close(fd)
    return b"".join(chunks).splitlines()


class GuestScanner:
    """Finds guest processes and sums their memory, caching who is not a guest."""

    def __init__(self, root: str | os.PathLike = "/", regex: str | None = None, metric: str = "rss",
                 details: bool = True):
        from ksmtuned_py.config import UPSTREAM_PROCESS_REGEX

        self.proc = Path(root, "proc")
        self._proc = str(self.proc)
        self.pattern = re.compile(regex if regex is not None else UPSTREAM_PROCESS_REGEX)
        self.metric = metric
        self.details = details  # each guest's name (once) and ksm_stat (every scan)
        self._cache: dict[str, _Entry] = {}  # by /proc entry name (the pid)
        self.stats = ScanStats()
        self._pss_warned = False
        self._list_failed: str | None = None
        self.ksmd_pid: int | None = None  # the ksmd kernel thread, once a scan has seen it
        self._live = _is_live_procfs(self._proc)
        self.watch = CommWatch()  # the comm files of known non-guests, kept open on a live procfs
        self._budget = 0  # how many may be, this scan

    def close(self) -> None:
        """Close the comm files kept open (the scanner still works: the next scans read everyone again)."""
        self.watch.close()
        self._cache.clear()

    def _drop(self, name: str) -> None:
        self.watch.discard(name)
        if self._cache.pop(name, None) is not None and name == str(self.ksmd_pid):
            self.ksmd_pid = None

    def _read_stat(self, pid: int) -> tuple[str, int, int, int] | None:
        self.stats.stat_reads += 1
        try:
            return _parse_stat(_read_small(f"{self._proc}/{pid}/stat", 4096))
        except (OSError, ValueError, IndexError):
            self.stats.vanished += 1
            return None

    def _read_comm(self, pid: int | str) -> str | None:
        """/proc/PID/comm without the newline (decoded as parse_stat does), None when gone."""
        self.stats.comm_reads += 1
        try:
            return _read_small(f"{self._proc}/{pid}/comm", 64).removesuffix("\n")
        except OSError:
            return None

    def _pss_kb(self, pid: int) -> int | None:
        try:
            for line in _read_lines(f"{self._proc}/{pid}/smaps_rollup"):
                if line.startswith(b"Pss:"):
                    return _field(line.split()[1])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, IndexError) as e:
            if not self._pss_warned:
                log.warning("cannot read PSS of pid %d (%s); using RSS", pid, e)
                self._pss_warned = True
        return None

    def _vmrss_kb(self, pid: int, stat_rss_pages: int) -> int | None:
        """Resident size in kB exactly as ps -o rsz= prints it: VmRSS of /proc/PID/status.

        /proc/PID/stat's rss comes from per-CPU counters that Linux >= 6.2 reads
        without summing, so it can be hundreds of kB off what ps (and so the
        reference) reports; status sums them. None when the process is gone.
        """
        try:
            for line in _read_lines(f"{self._proc}/{pid}/status"):
                if line.startswith(b"VmRSS:"):
                    return _field(line.split()[1])
        except FileNotFoundError:
            # gone, or a tree (simulated host, test) that only has stat
            return rss_kb(stat_rss_pages) if (self.proc / str(pid) / "stat").exists() else None
        except (OSError, ValueError, IndexError):
            return rss_kb(stat_rss_pages)
        return 0  # no VmRSS line: a zombie or a kernel thread, as ps shows it

    def _is_guest(self, comm: str) -> bool:
        self.stats.regex_checks += 1
        return self.pattern.search(comm) is not None

    def _names(self) -> list[str]:
        """The entries of /proc; none (logged once per change) when it cannot be listed."""
        try:
            names = os.listdir(self._proc)
        except OSError as e:
            if e.strerror != self._list_failed:  # once per change, not every cycle
                log.warning("cannot list %s: %s; counting no guests", self.proc, e.strerror)
                self._list_failed = e.strerror
            return []
        if self._list_failed:
            log.info("listing %s works again", self.proc)
            self._list_failed = None
        return names

    def scan(self) -> list[Guest]:
        """The guests running now, sorted by pid."""
        names = self._names()
        present = set(names)
        cache = self._cache
        for name in cache.keys() - present:
            self._drop(name)
        self._budget = _open_files_budget() if self._live else 0
        # Known non-guests whose comm is kept open: one pass over all of them.
        self.stats.comm_reads += len(self.watch)
        again = set()
        for name, raw in self.watch.changed():
            if raw is not None and cache[name].kthread:
                self.watch.update(name, raw)  # a kernel thread may rename itself, as kworkers do
            else:
                again.add(name)  # exec'd, renamed, or gone (its pid may be another's now)
        guests: list[Guest] = []
        for name in present - self.watch.names() | again:
            cached = cache.get(name)
            if cached is not None and not cached.guest and name not in again:
                # Known not to be a guest: only an exec or a rename changes that.
                if self._same_process(name, cached):
                    continue
            if not is_pid_name(name):
                continue
            guest = self._read_process(name, cached)
            if guest is not None:
                guests.append(guest)
        guests.sort(key=lambda g: g.pid)
        return guests

    def _same_process(self, name: str, entry: _Entry) -> bool:
        """Whether a known process whose comm is not kept open is the same, with the same comm."""
        try:
            if os.stat(f"{self._proc}/{name}").st_ino != entry.ino:
                return False  # a new process with that pid
        except OSError:
            return False
        return entry.kthread or self._read_comm(name) == entry.comm

    def _read_process(self, name: str, cached: _Entry | None) -> Guest | None:
        """Read a process in full (new, changed, or a guest); its Guest when it is one."""
        pid = int(name)
        stat = self._read_stat(pid)
        if stat is None:
            self._drop(name)
            return None
        comm, _start, rss, flags = stat
        # Guests are re-checked every cycle: a guest may exec something else.
        guest = self._is_guest(comm)
        kthread = bool(flags & PF_KTHREAD)
        same = cached is not None and cached.guest and cached.comm == comm
        self.watch.discard(name)
        self._cache[name] = entry = _Entry(0, comm, guest, kthread, name=cached.name if same else "",
                                           merges=same and cached.merges)
        if kthread and comm == "ksmd":
            self.ksmd_pid = pid
        if not guest:
            self._remember(name, entry)
            return None
        kb = self._guest_kb(pid, rss)
        if kb is None:
            self.stats.vanished += 1
            self._drop(name)
            return None
        if not self.details:
            return Guest(pid, comm, kb)
        if not entry.name:
            entry.name = procinfo.guest_name(procinfo.read_cmdline(self._proc, pid), pid)
        ksm = procinfo.read_ksm_stat(self._proc, pid)
        mergeable = None if ksm is None else ksm.mergeable
        if mergeable is None:  # a kernel before 6.7: VmFlags say it (read until it is yes)
            mergeable = entry.merges or procinfo.smaps_mergeable(self._proc, pid)
            entry.merges = mergeable is True
        return Guest(pid, comm, kb, entry.name, ksm, mergeable)

    def _remember(self, name: str, entry: _Entry) -> None:
        """How a non-guest is told apart later: its comm file kept open, else its /proc/PID inode."""
        if len(self.watch) < self._budget:
            try:
                fd = os.open(f"{self._proc}/{name}/comm", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                fd = None
            if fd is not None:
                try:
                    raw = os.pread(fd, 64, 0)
                except OSError:
                    raw = b""
                # The same comm as stat's: else it changed in between, and the next scan reads it again.
                if raw.decode("utf-8", errors="replace").removesuffix("\n") == entry.comm:
                    self.watch.add(name, fd, raw)
                    return
                os.close(fd)
        try:
            entry.ino = os.stat(f"{self._proc}/{name}").st_ino
        except OSError:
            entry.ino = -1  # gone already: the next scan drops it or reads it again

    def _guest_kb(self, pid: int, stat_rss_pages: int) -> int | None:
        """A guest's size by the metric: VmRSS, or the Pss of smaps_rollup; None when it is gone."""
        kb = self._vmrss_kb(pid, stat_rss_pages)
        if kb is None or self.metric != "pss":
            return kb
        pss = self._pss_kb(pid)
        if pss is None and not (self.proc / str(pid)).exists():
            return None
        return pss if pss is not None else kb


def _is_live_procfs(proc: str) -> bool:
    """Whether ``proc`` is a procfs mount showing this very process (not a tree of files)."""
    try:
        return os.readlink(f"{proc}/self") == str(os.getpid())
    except OSError:
        return False


def _open_files_budget() -> int:
    """How many comm files the scanner may keep open: the open-files limit less room for everything else."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(0, soft - 256)


@dataclass(frozen=True)
class Readings:
    """What a host shows at the start of a cycle: the input of a policy."""

    time: float  # the host's clock: seconds since the epoch, or simulated seconds in a simulation
    meminfo: MemInfo
    free_kb: int  # free memory by KSM_FREE_METRIC
    committed_kb: int  # the guests' memory (KSM_MEMORY_METRIC), summed
    guests: list[Guest]
    ksm: KsmState
    # Beyond ksmtuned's rule (None where the host cannot tell): what scanning costs and undoes.
    ksmd_cpu_seconds: float | None = None  # CPU time the ksmd thread has used since boot
    cow_ksm: int | None = None  # KSM pages copied on write since boot (/proc/vmstat cow_ksm)


def awk_sum_kb(sizes: Iterable[int]) -> int:
    """The sizes summed as Proxmox VE's ksmtuned does: ``awk '{ sum += $1 }; END { printf ("%.0f", sum) }'``.

    awk adds in double precision (each number read to the nearest double, as Python's float()
    does) and printf rounds to an integer; bash then reads the digits as a 64-bit integer.
    Below 2**53 kB (8 EiB) that is the exact sum; beyond, low bits are lost exactly as awk
    loses them.  ps lists the processes in pid order, the order of the guests here.
    """
    total = 0.0
    for kb in sizes:
        total += kb
    return wrap(int("%.0f" % total))


def read_host(root, scanner: GuestScanner, free_metric: str = "classic",
              sum_kb: Callable[[Iterable[int]], int] = sum) -> Readings:
    """Read meminfo, the guests and the KSM files under ``root`` once (``sum_kb`` adds the guests' sizes)."""
    started = time.time()
    mem = read_meminfo(root)
    guests = scanner.scan()
    return Readings(started, mem, mem.free_kb(free_metric), sum_kb(g.kb for g in guests), guests,
                    read_ksm_state(ksm_dir(root)))
