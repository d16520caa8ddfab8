"""What the daemon reads from the host: /proc/meminfo and the guest processes.

Everything is read below one root directory (``/`` normally, a simulated or
test tree with ``--root``), without forking.  Guest processes are found by
their name (``comm``); a cache keyed by pid and start time saves re-reading
processes already known not to be guests.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ksmtuned_py.errors import UserError

log = logging.getLogger(__name__)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A process that is not a guest is read again until it has been seen at least
# this old (seconds): launchers such as libvirt fork first and exec qemu a moment
# later, which changes the name but not the pid or the start time.  After that,
# it is not read again while its pid and /proc entry stay the same.
YOUNG_SECONDS = 60.0


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
        text = path.read_text()
    except OSError as e:
        raise ReadingError(f"cannot read {path}: {e.strerror}") from None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if parts:
            try:
                fields[name.strip()] = int(parts[0])
            except ValueError:
                continue
    missing = [k for k in ("MemTotal", "MemFree", "Buffers", "Cached") if k not in fields]
    if missing:
        raise ReadingError(f"{path} has no {', '.join(missing)}")
    if fields["MemTotal"] <= 0:
        raise ReadingError(f"{path}: MemTotal is {fields['MemTotal']}")
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
    ino: int
    start: int  # start time in clock ticks after boot
    guest: bool
    settled: bool  # was at least YOUNG_SECONDS old when read: no exec expected any more


@dataclass
class ScanStats:
    """Counters that show what the cache saved (for tests and benchmarks)."""

    stat_reads: int = 0
    regex_checks: int = 0
    vanished: int = 0


def parse_stat(text: str) -> tuple[str, int, int]:
    """(comm, start time in ticks, rss in pages) from a /proc/PID/stat line."""
    lpar = text.index("(")
    rpar = text.rindex(")")
    comm = text[lpar + 1:rpar]
    rest = text[rpar + 2:].split()
    # rest[0] is field 3 (state); starttime is field 22, rss field 24.
    return comm, int(rest[19]), int(rest[21])


def rss_kb(rss_pages: int) -> int:
    """kB as ps -o rsz prints it."""
    return rss_pages * PAGE_SIZE // 1024


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

    def _uptime(self) -> float | None:
        try:
            return float((self.proc / "uptime").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _read_stat(self, pid: int) -> tuple[str, int, int] | None:
        self.stats.stat_reads += 1
        try:
            # os-level calls: this runs for every new process, keep it cheap
            fd = os.open(f"{self._proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, 4096)
            finally:
                os.close(fd)
            return parse_stat(data.decode("utf-8", errors="replace"))
        except (OSError, ValueError, IndexError):
            self.stats.vanished += 1
            return None

    def _pss_kb(self, pid: int) -> int | None:
        try:
            with open(self.proc / str(pid) / "smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        return int(line.split()[1])
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
            with open(self.proc / str(pid) / "status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        return int(line.split()[1])
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
        uptime = self._uptime()
        # Processes started after this tick are still young (None: no uptime, all settled).
        young_tick = None if uptime is None else (uptime - YOUNG_SECONDS) * CLOCK_TICKS
        seen: set[int] = set()
        guests: list[Guest] = []
        for entry in entries:
            name = entry.name
            if not name.isdigit():
                continue
            pid = int(name)
            seen.add(pid)
            try:
                ino = entry.inode()
            except OSError:
                continue
            cached = self._cache.get(pid)
            if cached is not None and cached.ino == ino and not cached.guest and cached.settled:
                continue  # known not to be a guest, and old enough to stay so
            stat = self._read_stat(pid)
            if stat is None:
                self._cache.pop(pid, None)
                continue
            comm, start, rss = stat
            # Guests are re-checked every cycle: a guest may exec something else.
            guest = self._is_guest(comm)
            settled = young_tick is None or start <= young_tick
            self._cache[pid] = _Entry(ino, start, guest, settled)
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
class HostReading:
    """One cycle's readings."""

    meminfo: MemInfo
    free: int
    committed: int
    guests: list[Guest] = field(default_factory=list)


def read_host(root, scanner: GuestScanner, free_metric: str = "classic") -> HostReading:
    """Read meminfo and the guests once."""
    mem = read_meminfo(root)
    guests = scanner.scan()
    return HostReading(mem, mem.free_kb(free_metric), sum(g.kb for g in guests), guests)
