"""The live processes of a Simulation, as /proc/PID shows them."""

from __future__ import annotations

from dataclasses import dataclass

from sysfs_emu import procfs, procstats
from sysfs_emu.memory import PAGE_SIZE, Memory
from sysfs_emu.procstats import ProcessStats
from sysfs_emu.scenario import ProcessSpec

__all__ = ["LiveProcess", "SimProcess"]


@dataclass
class LiveProcess:
    """Book-keeping for one running process."""

    spec: ProcessSpec
    pid: int
    start_time: float  # seconds since boot
    regions: list[int]  # the memory model's region handles, in spec order


class SimProcess:
    """One live simulated process, as /proc/PID shows it; numbers are read live from the memory model."""

    def __init__(self, memory: Memory, live: LiveProcess) -> None:
        self._memory = memory
        self._live = live

    @property
    def pid(self) -> int:
        """Simulated PID: ``host.pid_base + id``."""
        return self._live.pid

    @property
    def id(self) -> int:
        """The scenario's process id."""
        return self._live.spec.id

    @property
    def name(self) -> str:
        """The comm: the scenario's name cut to 15 bytes, as the kernel keeps it."""
        return self._live.spec.name.encode()[:15].decode(errors="ignore")

    @property
    def cmdline(self) -> list[str]:
        return list(self._live.spec.cmdline)

    @property
    def start_time(self) -> float:
        """When the process started, in seconds since boot (/proc/PID/stat starttime / USER_HZ)."""
        return self._live.start_time

    @property
    def page_size(self) -> int:
        return PAGE_SIZE

    @property
    def rss_pages(self) -> int:
        """Resident pages: every page the process maps, merged or not (merging does not lower RSS)."""
        return int(self._memory.rss_pages(self.pid))

    @property
    def vsz_pages(self) -> int:
        """Mapped size in pages: all regions, lazy ones included."""
        return self._live.spec.pages

    def ksm_stats(self) -> ProcessStats:
        """The numbers of /proc/PID/ksm_stat (``ksm_rmap_items``, ``ksm_zero_pages``, ``ksm_merging_pages``,
        ``ksm_process_profit``, ``ksm_merge_any``, ``ksm_mergeable``)."""
        return self._memory.process_stats(self.pid)

    @property
    def ksm_merging_pages(self) -> int:
        """/proc/PID/ksm_merging_pages: this process's pages that map a KSM page."""
        return int(self.ksm_stats().ksm_merging_pages)

    def ksm_stat_text(self) -> str:
        """/proc/PID/ksm_stat exactly as Linux 6.18 prints it."""
        return self.ksm_stats().ksm_stat_text()

    @property
    def anon_huge_pages(self) -> int:
        """Pages in transparent huge pages (AnonHugePages, in pages)."""
        return self._memory.process_pages(self.pid).huge

    def smaps_rollup_text(self) -> str:
        """/proc/PID/smaps_rollup as Linux 6.18 prints it (what the live tree serves): Rss, Pss, KSM,
        AnonHugePages of the process's regions."""
        return procfs.smaps_rollup_text(self._memory.process_pages(self.pid).rollup(), self.vsz_pages, PAGE_SIZE)

    def smaps_text(self) -> str:
        """/proc/PID/smaps: each region as Linux 6.18 shows a mapping (what the live tree serves)."""
        return procfs.smaps_text(procstats.vmas(self._memory.process_pages(self.pid)))

    def __repr__(self) -> str:
        return f"SimProcess(pid={self.pid}, id={self.id}, name={self.name!r})"
