"""What capture reads of /proc and /sys besides page contents: processes, their mappings, meminfo, KSM.

Read-only: every file is opened for reading; a process that exits while it is read is
left out (:class:`Gone`), never an error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sysfs_emu.errors import EmuError

KSM_DIR = Path("/sys/kernel/mm/ksm")
# The KSM files a scenario can set, in an order the kernel accepts them in (the advisor's mode
# after its limits, since switching it sets pages_to_scan; run last).
KSM_SETTINGS = (
    "max_page_sharing", "merge_across_nodes", "use_zero_pages", "smart_scan", "stable_node_chains_prune_millisecs",
    "sleep_millisecs", "pages_to_scan", "advisor_max_cpu", "advisor_max_pages_to_scan", "advisor_min_pages_to_scan",
    "advisor_target_scan_time", "advisor_mode", "run",
)
_VMA_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ")


class CaptureError(EmuError):
    """A capture that cannot be made (not root, a bad option, an output that cannot be written)."""


class Gone(Exception):
    """The process exited (or its memory went away) while it was read."""


@dataclass
class Mapping:
    """One VMA of a process, as /proc/PID/smaps shows it."""

    start: int  # bytes
    end: int
    perms: str
    path: str
    anon_kb: int = 0  # Anonymous:
    thp_kb: int = 0  # AnonHugePages:
    flags: tuple[str, ...] = ()  # VmFlags:

    @property
    def mergeable(self) -> bool:
        """MADV_MERGEABLE (or prctl's merge-any): ksmd scans its anonymous pages."""
        return "mg" in self.flags


@dataclass
class ProcessInfo:
    """A process capture looks at: who it is, its size and its mappings."""

    pid: int
    comm: str
    cmdline: list[str]
    rss_kb: int
    merge_any: bool
    ksm_zero_pages: int
    mappings: list[Mapping] = field(default_factory=list)

    @property
    def mergeable(self) -> bool:
        return any(m.mergeable for m in self.mappings)


def _read(path: Path, binary: bool = False):
    try:
        return path.read_bytes() if binary else path.read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        raise Gone(str(path)) from None


def parse_smaps(text: str) -> list[Mapping]:
    """The mappings of a /proc/PID/smaps text, in address order."""
    maps: list[Mapping] = []
    for line in text.splitlines():
        head = _VMA_HEADER.match(line)
        if head:
            parts = line.split(None, 5)
            maps.append(Mapping(int(head.group(1), 16), int(head.group(2), 16), head.group(3),
                                parts[5].strip() if len(parts) > 5 else ""))
        elif maps and line.startswith("VmFlags:"):
            maps[-1].flags = tuple(line.split()[1:])
        elif maps and line.startswith("Anonymous:"):
            maps[-1].anon_kb = int(line.split()[1])
        elif maps and line.startswith("AnonHugePages:"):
            maps[-1].thp_kb = int(line.split()[1])
    return maps


def _status_kb(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _ksm_stat(proc: Path) -> tuple[bool, int]:
    """(ksm_merge_any, ksm_zero_pages) of /proc/PID/ksm_stat; (False, 0) on kernels without it."""
    try:
        text = _read(proc / "ksm_stat")
    except (Gone, OSError):
        return False, 0
    merge_any = "ksm_merge_any: yes" in text
    zero = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("ksm_zero_pages ")), 0)
    return merge_any, zero


def read_process(pid: int, proc_root: Path = Path("/proc")) -> ProcessInfo | None:
    """A process with a user address space, or None (a kernel thread); Gone when it exited meanwhile."""
    proc = proc_root / str(pid)
    cmdline = [a.decode(errors="replace") for a in _read(proc / "cmdline", binary=True).split(b"\0") if a]
    if not cmdline:
        return None  # kernel threads have no memory of their own
    comm = _read(proc / "comm").rstrip("\n")
    status = _read(proc / "status")
    merge_any, zero = _ksm_stat(proc)
    mappings = parse_smaps(_read(proc / "smaps"))
    return ProcessInfo(pid, comm, cmdline, _status_kb(status, "VmRSS"), merge_any, zero, mappings)


def processes(proc_root: Path = Path("/proc")) -> list[ProcessInfo]:
    """Every process with a user address space but this one, by pid."""
    found = []
    for entry in sorted((e for e in os.listdir(proc_root) if e.isdigit()), key=int):
        pid = int(entry)
        if pid == os.getpid():
            continue
        try:
            info = read_process(pid, proc_root)
        except (Gone, PermissionError):
            continue
        if info is not None:
            found.append(info)
    return found


def meminfo_kb(proc_root: Path = Path("/proc")) -> dict[str, int]:
    out = {}
    for line in (proc_root / "meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if rest.split():
            out[name] = int(rest.split()[0])
    return out


def uptime_and_boot_time(proc_root: Path = Path("/proc")) -> tuple[float, int]:
    uptime = float((proc_root / "uptime").read_text().split()[0])
    btime = next(int(line.split()[1]) for line in (proc_root / "stat").read_text().splitlines()
                 if line.startswith("btime "))
    return uptime, btime


def ksm_settings(ksm_dir: Path = KSM_DIR) -> dict[str, int | str]:
    """The writable KSM files as they are now (those the kernel has), in :data:`KSM_SETTINGS`' order."""
    values = {}
    for name in KSM_SETTINGS:
        try:
            text = (ksm_dir / name).read_text().strip()
        except OSError:
            continue
        if name == "advisor_mode":
            text = text[text.index("[") + 1:text.index("]")] if "[" in text else text
        values[name] = int(text) if text.isdigit() else text
    if values.get("advisor_mode") == "scan-time":
        values.pop("pages_to_scan", None)  # the advisor's: switching it on sets pages_to_scan
    if values.get("run") == 2:
        values["run"] = 0  # unmerging: nothing runs afterwards
    return values
