"""Finding the guest processes under a root's /proc, cheaply and exactly (:class:`GuestScanner`).

Guests are found by their name (``comm``); a cache keyed by the /proc entry saves re-reading
the details of processes already known not to be guests: for those only ``comm`` is read
again each cycle (from the file kept open, on a live procfs).  On the host's procfs /proc
itself is listed only when the kernel's pid cursor and process count say that a process
may have started unseen (``newpids.py``); else the pids handed out since are looked at.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from ksmtuned_py import procinfo
from ksmtuned_py.commwatch import CommWatch
from ksmtuned_py.fileio import is_pid_name
from ksmtuned_py.newpids import NewPids
from ksmtuned_py.readings import Guest, _field, _parse_stat, rss_kb

log = logging.getLogger(__name__)

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
    listings: int = 0  # scans that listed /proc
    probes: int = 0  # pids looked at one by one instead (handed out since the scan before)
    relisted: int = 0  # scans that looked at those, then listed /proc after all


PF_KTHREAD = 0x00200000  # in /proc/PID/stat's flags: a kernel thread

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

        self.proc = os.path.join(root, "proc")
        self.pattern = re.compile(regex if regex is not None else UPSTREAM_PROCESS_REGEX)
        self.metric = metric
        self.details = details  # each guest's name (once) and ksm_stat (every scan)
        self._cache: dict[str, _Entry] = {}  # by /proc entry name (the pid)
        self._unwatched: set[str] = set()  # those of them whose comm is not kept open (guests, for one)
        self.stats = ScanStats()
        self._pss_warned = False
        self._list_failed: str | None = None
        self.ksmd_pid: int | None = None  # the ksmd kernel thread, once a scan has seen it
        self._live = _is_live_procfs(self.proc)
        self.watch = CommWatch()  # the comm files of known non-guests, kept open on a live procfs
        self.pids = NewPids(self.proc, self._live)  # which processes may be new, without a listing
        self._budget = 0  # how many may be, this scan

    def close(self) -> None:
        """Close the comm files kept open (the scanner still works: the next scans read everyone again)."""
        self.watch.close()
        self._cache.clear()
        self._unwatched.clear()
        self.pids = NewPids(self.proc, self._live)  # the next scan lists /proc again

    def _drop(self, name: str) -> None:
        self.watch.discard(name)
        self._unwatched.discard(name)
        if self._cache.pop(name, None) is not None and name == str(self.ksmd_pid):
            self.ksmd_pid = None

    def _read_stat(self, pid: int) -> tuple[str, int, int, int] | None:
        self.stats.stat_reads += 1
        try:
            return _parse_stat(_read_small(f"{self.proc}/{pid}/stat", 4096))
        except (OSError, ValueError, IndexError):
            self.stats.vanished += 1
            return None

    def _read_comm(self, pid: int | str) -> str | None:
        """/proc/PID/comm without the newline (decoded as parse_stat does), None when gone."""
        self.stats.comm_reads += 1
        try:
            return _read_small(f"{self.proc}/{pid}/comm", 64).removesuffix("\n")
        except OSError:
            return None

    def _pss_kb(self, pid: int) -> int | None:
        try:
            for line in _read_lines(f"{self.proc}/{pid}/smaps_rollup"):
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
            for line in _read_lines(f"{self.proc}/{pid}/status"):
                if line.startswith(b"VmRSS:"):
                    return _field(line.split()[1])
        except FileNotFoundError:
            # gone, or a tree (simulated host, test) that only has stat
            return rss_kb(stat_rss_pages) if os.path.exists(f"{self.proc}/{pid}/stat") else None
        except (OSError, ValueError, IndexError):
            return rss_kb(stat_rss_pages)
        return 0  # no VmRSS line: a zombie or a kernel thread, as ps shows it

    def _is_guest(self, comm: str) -> bool:
        self.stats.regex_checks += 1
        return self.pattern.search(comm) is not None

    def _names(self) -> list[str]:
        """The entries of /proc; none (logged once per change) when it cannot be listed."""
        try:
            names = os.listdir(self.proc)
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
        mark = self.pids.mark()
        new = self.pids.since(mark, len(self._cache))
        self._budget = _open_files_budget() if self._live else 0
        if new is None:
            return self._scan_listed(mark, checked=False)
        # Nothing to list when the count agrees: the known processes and those started since.
        again = self._changed()
        fresh = {name for pid in new if (name := str(pid)) not in self._cache and self.pids.is_process(pid)}
        self.stats.probes += len(new)
        guests = self._read_all(self._unwatched | again | fresh, again)
        if self.pids.complete(mark, len(self._cache)):
            return guests
        # A process started with a pid of its choice, or one started or ended while this scan ran.
        self.stats.relisted += 1
        return self._scan_listed(self.pids.mark(), checked=True)

    def _scan_listed(self, mark, checked: bool) -> list[Guest]:
        """The scan with a listing of /proc (``checked``: the kept-open comm files were read just now)."""
        names = self._names()
        self.stats.listings += 1
        if mark is not None and not self._list_failed:
            self.pids.listed(mark, sum(map(str.isdigit, names)))
        present = set(names)
        cache = self._cache
        for name in cache.keys() - present:
            self._drop(name)
        again = set() if checked else self._changed()
        return self._read_all(present - self.watch.names() | again, again)

    def _changed(self) -> set[str]:
        """Known processes whose kept-open comm changed: exec'd, renamed, or gone (its pid may be another's now)."""
        self.stats.comm_reads += len(self.watch)
        again = set()
        for name, raw in self.watch.changed():
            if raw is not None and self._cache[name].kthread:
                self.watch.update(name, raw)  # a kernel thread may rename itself, as kworkers do
            else:
                again.add(name)
        return again

    def _read_all(self, names, again: set[str]) -> list[Guest]:
        """Check or read each of ``names`` (none of them a kept-open one that did not change)."""
        cache = self._cache
        guests: list[Guest] = []
        for name in names:
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
            if os.stat(f"{self.proc}/{name}").st_ino != entry.ino:
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
        self._unwatched.add(name)  # until _remember keeps its comm open
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
            entry.name = procinfo.guest_name(procinfo.read_cmdline(self.proc, pid), pid)
        ksm = procinfo.read_ksm_stat(self.proc, pid)
        mergeable = None if ksm is None else ksm.mergeable
        if mergeable is None:  # a kernel before 6.7: VmFlags say it (read until it is yes)
            mergeable = entry.merges or procinfo.smaps_mergeable(self.proc, pid)
            entry.merges = mergeable is True
        return Guest(pid, comm, kb, entry.name, ksm, mergeable)

    def _remember(self, name: str, entry: _Entry) -> None:
        """How a non-guest is told apart later: its comm file kept open, else its /proc/PID inode."""
        if len(self.watch) < self._budget:
            try:
                fd = os.open(f"{self.proc}/{name}/comm", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
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
                    self._unwatched.discard(name)
                    return
                os.close(fd)
        try:
            entry.ino = os.stat(f"{self.proc}/{name}").st_ino
        except OSError:
            entry.ino = -1  # gone already: the next scan drops it or reads it again

    def _guest_kb(self, pid: int, stat_rss_pages: int) -> int | None:
        """A guest's size by the metric: VmRSS, or the Pss of smaps_rollup; None when it is gone."""
        kb = self._vmrss_kb(pid, stat_rss_pages)
        if kb is None or self.metric != "pss":
            return kb
        pss = self._pss_kb(pid)
        if pss is None and not os.path.exists(f"{self.proc}/{pid}"):
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


def raise_open_files_limit(wanted: int = 1 << 16) -> None:
    """Let the guest scan keep a comm file open per process: the soft open-files limit up to the hard one.

    (systemd starts services with a soft limit of 1024; the scan reads processes beyond
    what it may keep open the slower way, so a limit that cannot be raised costs only time.)
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            log.debug("cannot raise the open-files limit to %d: %s", target, e)
