"""The host as files under a root: the real ``/``, a test tree, or a tree sysfs-emu serves."""

from __future__ import annotations

import dataclasses
import os

from ksmtuned_py import config as configmod
from ksmtuned_py import procinfo
from ksmtuned_py.knobs import KsmState, ksm_dir, read_ksm_state, write_knob
from ksmtuned_py.guestscan import GuestScanner
from ksmtuned_py.readings import PAGE_SIZE, MemInfo, Readings, awk_sum_kb, read_host, read_meminfo


class FileHost:
    """``cycle.Host`` over ``<root>/proc`` and ``<root>/sys/kernel/mm/ksm``."""

    page_size = PAGE_SIZE

    def __init__(self, root: str | os.PathLike = "/", scanner: GuestScanner | None = None,
                 free_metric: str = "classic", awk_sum: bool = False):
        self.root = root
        self.scanner = scanner if scanner is not None else GuestScanner(root)
        self.free_metric = free_metric
        self.sum_kb = awk_sum_kb if awk_sum else sum  # Proxmox VE's ksmtuned sums with awk
        self._ksm = ksm_dir(root)
        self._proc = os.path.join(root, "proc")
        self.ksm_dir = str(self._ksm)

    @classmethod
    def from_config(cls, root: str | os.PathLike, config: configmod.Config) -> "FileHost":
        scanner = GuestScanner(root, config.process_regex, config.memory_metric)
        return cls(root, scanner, config.free_metric, awk_sum=config.compat.proxmox)

    def read_meminfo(self) -> MemInfo:
        return read_meminfo(self.root)

    def read(self) -> Readings:
        readings = read_host(self.root, self.scanner, self.free_metric, self.sum_kb)
        proc = self._proc
        return dataclasses.replace(readings, ksmd_cpu_seconds=procinfo.ksmd_cpu_seconds(proc, self.scanner.ksmd_pid),
                                   cow_ksm=procinfo.vmstat_counter(proc, "cow_ksm"))

    def read_knobs(self) -> KsmState:
        return read_ksm_state(self._ksm, counters=False)

    def write_ksm(self, name: str, value: str) -> None:
        write_knob(self._ksm, name, value)
