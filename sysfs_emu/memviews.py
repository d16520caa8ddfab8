"""What the memory model shows of one process: its slots, page counts, ksm_stat and RSS
(a part of :class:`sysfs_emu.memory.Memory`, read-only)."""

from __future__ import annotations

import numpy as np

from sysfs_emu import procstats
from sysfs_emu.errors import MemoryError_
from sysfs_emu.pagearrays import resident
from sysfs_emu.procstats import ProcessStats


class ProcessViews:
    """Read-only views of :class:`sysfs_emu.memory.Memory` per process."""

    def process_slots(self, pid: int) -> np.ndarray:
        proc = self.processes.get(pid)
        if proc is None:
            raise MemoryError_(f"no process {pid}")
        parts = [np.arange(self.regions[r].start, self.regions[r].stop) for r in proc.regions]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def process_pages(self, pid: int) -> procstats.ProcessPages:
        """A running process's page counts (RSS, rmap items, merged pages...), in one pass over its regions."""
        return procstats.count_pages(self, self._process(pid))

    def process_stats(self, pid: int) -> ProcessStats:
        """The numbers of /proc/PID/ksm_stat of a running process."""
        return self.process_pages(pid).stats()

    def rss_pages(self, pid: int) -> int:
        """Resident pages: every mapped page, merged or not; KSM zero pages are not counted."""
        proc = self.processes.get(pid)
        if proc is None:
            raise MemoryError_(f"no process {pid}")
        flags = self.pages.flags
        return sum(int(resident(flags[self.regions[r].start : self.regions[r].stop]).sum()) for r in proc.regions)
