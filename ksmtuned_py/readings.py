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
# re-reads /proc/PID/comm, the very thing the rule matches, for every known
# non-guest: exact, and cheap (measured on Linux 6.18 over 1,088 processes, per
# process: open+read+close of comm 7.4 us; of stat, the full read, 13.2 us;
# readlink of /proc/PID/exe 5.9 us and stat() of it 5.7 us, barely cheaper and
# inexact: they miss a rename and an exec of the same binary under another name,
# e.g. the qemu-kvm symlink).  Kernel threads are skipped: they never exec a
# guest (numerous on hosts with many CPUs).  A whole guest scan then costs about
# 13 ms of CPU on a host with 1,000 processes, against about 130 ms for the
# reference's forks (bench/bench_cycle.py).


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
    )


@dataclass(frozen=True)
class Guest:
    """One process counted as a guest."""

    pid: int
    comm: str
    kb: int  # resident (or proportional) set size in kB


@dataclass
class _Entry:
    ino: int  # of /proc/PID: a new process with a reused pid has another
    comm: str  # as last read; a change means an exec or a rename
    guest: bool
    kthread: bool  # a kernel thread never execs a guest: its comm is not re-read


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

    def __init__(self, root: str | os.PathLike = "/", regex: str | None = None, metric: str = "rss"):
        from ksmtuned_py.config import UPSTREAM_PROCESS_REGEX

        self.proc = Path(root, "proc")
        self._proc = str(self.proc)
        self.pattern = re.compile(regex if regex is not None else UPSTREAM_PROCESS_REGEX)
        self.metric = metric
        self._cache: dict[int, _Entry] = {}
        self.stats = ScanStats()
        self._pss_warned = False
        self._list_failed: str | None = None

    def _read_stat(self, pid: int) -> tuple[str, int, int, int] | None:
        self.stats.stat_reads += 1
        try:
            return _parse_stat(_read_small(f"{self._proc}/{pid}/stat", 4096))
        except (OSError, ValueError, IndexError):
            self.stats.vanished += 1
            return None

    def _read_comm(self, pid: int) -> str | None:
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

    def scan(self) -> list[Guest]:
        """The guests running now, sorted by pid."""
        try:
            entries = list(os.scandir(self.proc))
        except OSError as e:
            if e.strerror != self._list_failed:  # once per change, not every cycle
                log.warning("cannot list %s: %s; counting no guests", self.proc, e.strerror)
                self._list_failed = e.strerror
            return []
        if self._list_failed:
            log.info("listing %s works again", self.proc)
            self._list_failed = None
        seen: set[int] = set()
        guests: list[Guest] = []
        for entry in entries:
            name = entry.name
            if not is_pid_name(name):
                continue
            pid = int(name)
            seen.add(pid)
            try:
                ino = entry.inode()
            except OSError:
                continue
            cached = self._cache.get(pid)
            if cached is not None and cached.ino == ino and not cached.guest:
                # Known not to be a guest: only an exec or a rename changes that.
                if cached.kthread or self._read_comm(pid) == cached.comm:
                    continue
            stat = self._read_stat(pid)
            if stat is None:
                self._cache.pop(pid, None)
                continue
            comm, _start, rss, flags = stat
            # Guests are re-checked every cycle: a guest may exec something else.
            guest = self._is_guest(comm)
            self._cache[pid] = _Entry(ino, comm, guest, bool(flags & PF_KTHREAD))
            if not guest:
                continue
            kb = self._vmrss_kb(pid, rss)
            if kb is None:
                self.stats.vanished += 1
                self._cache.pop(pid, None)
                continue
            if self.metric == "pss":
                pss = self._pss_kb(pid)
                if pss is None and not (self.proc / str(pid)).exists():
                    self.stats.vanished += 1
                    self._cache.pop(pid, None)
                    continue
                if pss is not None:
                    kb = pss
            guests.append(Guest(pid, comm, kb))
        for pid in list(self._cache):
            if pid not in seen:
                del self._cache[pid]
        guests.sort(key=lambda g: g.pid)
        return guests


@dataclass(frozen=True)
class Readings:
    """What a host shows at the start of a cycle: the input of a policy."""

    time: float  # the host's clock: seconds since the epoch, or simulated seconds in a simulation
    meminfo: MemInfo
    free_kb: int  # free memory by KSM_FREE_METRIC
    committed_kb: int  # the guests' memory (KSM_MEMORY_METRIC), summed
    guests: list[Guest]
    ksm: KsmState


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
