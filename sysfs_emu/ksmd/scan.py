"""The scan loop and its cursor: ksm_do_scan() walking the mm list (scan_get_next_rmap_item()).

ksmd visits the candidate pages (mapped anonymous pages of mergeable regions)
of the processes on its mm list, in the order they became mergeable and pages
lie in them. The cursor (mm slot, region, page) survives between batches; at
the end of the list a full scan is complete (``full_scans``). A process that
became mergeable while a scan is under way joins the list just before the
cursor's mm (so the scan in progress does not see it); one that exits leaves
it when its rmap items are gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sysfs_emu.ksmd.timing import Work

HEAD = -1  # the scan cursor sits on the list head: between full scans


@dataclass
class ScanPass:
    """One run of batches handled at once: when it runs, in which full scan, and what it did."""

    now: int  # jiffies at its first batch (chain prune times)
    seqnr: int  # full scans completed before it (the unstable tree's parity)
    work: Work = field(default_factory=Work)


class MmList:
    """ksmd's list of mm slots, the scan cursor, and ``full_scans`` (``seqnr``)."""

    def __init__(self, memory, rmap) -> None:
        self.mem = memory
        self.rmap = rmap
        self.slots: list[int] = []  # pids, in the order they joined
        self.cur = HEAD
        self.region_pos = 0  # index into the current process's region list
        self.page_pos = 0  # page offset inside that region
        self.seqnr = 0

    @property
    def at_head(self) -> bool:
        """Between full scans: the next batch starts a new one."""
        return self.cur == HEAD

    def rewind(self) -> None:
        """run=2: the next scan starts from the head, and full_scans from 0."""
        self.seqnr = 0
        self.cur = HEAD
        self.region_pos = self.page_pos = 0

    def skip_empty_scans(self, n: int) -> None:
        """``n`` full scans that found nothing to visit (the cursor stays at the head)."""
        self.seqnr += n

    # ---- processes joining and leaving ----------------------------------------------

    def on_memory_event(self, event: str, pid: int) -> None:
        """The memory model's process events: ``enter`` (became mergeable) and ``exit``."""
        if event == "enter":
            if self.cur == HEAD:
                self.slots.append(pid)
            else:
                self.slots.insert(self.cur, pid)
                self.cur += 1
        elif event == "exit" and pid in self.slots:
            i = self.slots.index(pid)
            if i == self.cur:
                return  # ksmd notices at its next step in this mm
            has_items = self.mem.has_rmap_items(pid)
            del self.slots[i]
            if i < self.cur:
                self.cur -= 1
            if not has_items:
                self.mem.leave_ksm(pid)
            else:
                self.slots.insert(self.cur + 1 if self.cur != HEAD else 0, pid)

    def remove_slot(self, pid: int) -> None:
        """The process leaves ksmd's list (the cursor stays on the slot after it)."""
        i = self.slots.index(pid)
        del self.slots[i]
        if self.cur != HEAD and i < self.cur:
            self.cur -= 1
        self.mem.leave_ksm(pid)

    # ---- the scan ------------------------------------------------------------------

    def scan(self, budget: int, window, scan: ScanPass) -> bool:
        """Visit up to ``budget`` pages through ``window``; True if a full scan ended (it stops there)."""
        mem = self.mem
        if not self.slots:
            return False
        if self.cur == HEAD:
            self.cur = 0
            self.region_pos = self.page_pos = 0
        while True:
            if budget <= 0:
                return False
            pid = self.slots[self.cur]
            proc = mem.processes[pid]
            if proc.alive:
                budget = self._scan_mm(proc, budget, window, scan)
                if budget <= 0:
                    return False
            else:
                self.rmap.free(mem.process_slots(pid))
            self.region_pos = self.page_pos = 0
            if not proc.alive or not any(mem.regions[r].mergeable for r in proc.regions):
                self.remove_slot(pid)  # the cursor is now on the next slot
            else:
                self.cur += 1
            if self.cur >= len(self.slots):
                self.cur = HEAD
                self.seqnr += 1
                return True

    def _scan_mm(self, proc, budget: int, window, scan: ScanPass) -> int:
        """The cursor's process from where it stands; the budget left (0 when it stopped inside)."""
        mem = self.mem
        while self.region_pos < len(proc.regions):
            region = mem.regions[proc.regions[self.region_pos]]
            if not region.mergeable:
                self.rmap.free(np.arange(region.start, region.stop))
                self.region_pos += 1
                continue
            if budget <= 0:
                return 0
            reached, used = window.scan_range(region.start + self.page_pos, region.stop, budget, scan)
            budget -= used
            self.page_pos = reached - region.start
            if reached < region.stop:
                return 0
            self.region_pos += 1
            self.page_pos = 0
        return budget
