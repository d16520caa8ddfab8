"""The host as a sysfs_emu ``Simulation`` object: read and written in memory, in simulated time.

What it reads is what the daemon would read from the same simulation served as files
(``sysfs-emu run``): the /proc/meminfo text parsed by the daemon's own parser, guests
matched on their ``comm`` (the name cut at 15 bytes) with the size of /proc/PID/status's
VmRSS or smaps_rollup's Pss, the KSM files' text, ksmd's CPU time as the simulated ksmd
accounts it (its /proc/PID/stat) and the copy-on-write breaks of KSM pages (/proc/vmstat's
cow_ksm); each knob is one ``write(2)`` of the
value and a newline, as the daemon's.  Only ``sysfs-emu simulate`` uses it, so the
daemon never imports the simulator (numpy).
"""

from __future__ import annotations

import re

from ksmtuned_py import config as configmod
from ksmtuned_py import procinfo
from ksmtuned_py.knobs import KsmState
from ksmtuned_py.readings import Guest, MemInfo, Readings, awk_sum_kb, parse_meminfo
from sysfs_emu import procfs, procstats


class SimulationHost:
    """``cycle.Host`` over a ``sysfs_emu.Simulation``; the caller advances the simulation between cycles."""

    ksm_dir = "the simulated /sys/kernel/mm/ksm"

    def __init__(self, sim, process_regex: str = configmod.UPSTREAM_PROCESS_REGEX,
                 memory_metric: str = "rss", free_metric: str = "classic", awk_sum: bool = False):
        self.sim = sim
        self.pattern = re.compile(process_regex)
        self.memory_metric = memory_metric
        self.free_metric = free_metric
        self.sum_kb = awk_sum_kb if awk_sum else sum  # Proxmox VE's ksmtuned sums with awk
        self._sizes: tuple[tuple, dict[int, int]] = ((), {})  # (key, guest kB by pid) of the last read

    @classmethod
    def from_config(cls, sim, config: configmod.Config) -> "SimulationHost":
        return cls(sim, config.process_regex, config.memory_metric, config.free_metric,
                   awk_sum=config.compat.proxmox)

    @property
    def page_size(self) -> int:
        return self.sim.page_size

    def read_meminfo(self) -> MemInfo:
        return parse_meminfo(self.sim.meminfo(), "the simulated /proc/meminfo")

    def read(self) -> Readings:
        meminfo = self.read_meminfo()
        key, sizes = self._sizes
        if key != self._sizes_key():
            sizes = {}
        guests = []
        for proc in self.sim.processes:
            comm = procfs.comm_text(proc.name)[:-1]
            if self.pattern.search(comm):
                kb = sizes.get(proc.pid)
                if kb is None:
                    kb = sizes[proc.pid] = self._size_kb(proc)
                guests.append(Guest(proc.pid, comm, kb, procinfo.guest_name(proc.cmdline, proc.pid)))
        self._sizes = (self._sizes_key(), sizes)
        return Readings(self.sim.now, meminfo, meminfo.free_kb(self.free_metric),
                        self.sum_kb(g.kb for g in guests), guests, self.read_ksm(),
                        ksmd_cpu_seconds=self.sim.ksmd.cpu_time, cow_ksm=self.sim.memory.cow_ksm)

    def _sizes_key(self) -> tuple:
        """What a guest's size depends on: it is counted again only when this changes.

        RSS moves only when a page starts or stops counting in some process
        (``Memory.residency``) or a process starts or exits (an event); Pss also
        whenever ksmd merges or unmerges (``Simulation.state_key``).
        """
        mem = self.sim.memory
        if self.memory_metric == "pss":
            return (mem.residency,) + self.sim.state_key()
        return mem.residency, self.sim.events_applied

    def _size_kb(self, proc) -> int:
        """VmRSS, or with KSM_MEMORY_METRIC=pss the Pss of smaps_rollup."""
        if self.memory_metric == "pss":
            return procstats.numbers(self.sim.memory, proc.pid).rollup.pss
        return proc.rss_pages * (proc.page_size // 1024)

    def read_ksm(self) -> KsmState:
        return KsmState.from_texts(self._attr)

    def read_knobs(self) -> KsmState:
        return KsmState.from_texts(self._attr, counters=False)

    def _attr(self, name: str) -> str | None:
        try:
            return self.sim.kernel.read_attr(name)
        except OSError:
            return None

    def write_ksm(self, name: str, value: str) -> None:
        self.sim.kernel.write_attr(name, f"{value}\n")
