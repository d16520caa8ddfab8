"""Does a simulation fit in this machine?  Refused up front, in one line, instead of dying in numpy.

Every simulated page costs the simulator memory of its own: 24.4 bytes at rest
(bench/bench_sim.py: the per-page arrays, the content table, the KSM pages), and
up to about 90 while ksmd scans (numpy's temporaries over the whole memory;
measured 72-88 bytes per page on 8 GiB hosts of pool and unique pages, whatever
pages_to_scan).  A scenario whose guests need more than this machine can give
the process — the least of MemAvailable, the address-space limit (RLIMIT_AS) and
the cgroup's memory.max — is refused before anything is allocated.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Iterable

from sysfs_emu.files import decimal
from sysfs_emu.scenario.model import ExitProcess, Scenario, StartProcess

BYTES_PER_PAGE = 90  # the simulator's peak memory per simulated page (see above)
CHECK_FROM = 64 << 20  # needs below this are not worth reading the limits for


def peak_pages(scenario: Scenario) -> int:
    """The most pages (mapped or lazy) the scenario's processes hold at one time."""
    live: dict[int, int] = {}
    peak = 0
    for ev in scenario.timeline:
        if isinstance(ev.action, StartProcess):
            live[ev.action.process.id] = ev.action.process.pages
            peak = max(peak, sum(live.values()))
        elif isinstance(ev.action, ExitProcess):
            live.pop(ev.action.id, None)
    return peak


def memory_limit() -> tuple[int, str] | None:
    """(bytes this process may still use, what sets that limit), the least of the limits found; None when none is."""
    limits = [limit for limit in (_mem_available(), _address_space_left(), _cgroup_left()) if limit is not None]
    return min(limits) if limits else None


def shortfall(pages: int) -> str | None:
    """Why ``pages`` more simulated pages do not fit in this machine, or None when they do."""
    need = pages * BYTES_PER_PAGE
    if need < CHECK_FROM:
        return None
    limit = memory_limit()
    if limit is None or need <= limit[0]:
        return None
    from sysfs_emu.units import describe_size

    return (f"simulating {pages} pages needs about {describe_size(need)} of this machine's memory "
            f"({BYTES_PER_PAGE} bytes per simulated page while ksmd scans), more than the "
            f"{describe_size(max(limit[0], 0))} it can have ({limit[1]})")


def _mem_available(meminfo: str = "/proc/meminfo") -> tuple[int, str] | None:
    for line in _lines(meminfo):
        if line.startswith(b"MemAvailable:"):
            kb = decimal(line.split()[1]) if len(line.split()) > 1 else None
            return None if kb is None else (kb * 1024, "MemAvailable")
    return None


def _address_space_left() -> tuple[int, str] | None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    for line in _lines("/proc/self/status"):
        if line.startswith(b"VmSize:"):
            used = (decimal(line.split()[1]) or 0) * 1024 if len(line.split()) > 1 else 0
    return soft - used, f"RLIMIT_AS, the address-space limit of {soft >> 20} MiB (ulimit -v)"


def _cgroup_left() -> tuple[int, str] | None:
    """memory.max - memory.current of this process's cgroup v2 and of each parent, the least."""
    found = None
    for directory in _cgroup_dirs():
        top = _number(directory / "memory.max")
        if top is None:
            continue
        left = top - (_number(directory / "memory.current") or 0)
        if found is None or left < found[0]:
            found = (left, f"memory.max of the cgroup {directory}")
    return found


def _cgroup_dirs(mount: Path = Path("/sys/fs/cgroup")) -> Iterable[Path]:
    for line in _lines("/proc/self/cgroup"):
        if line.startswith(b"0::"):
            rel = os.fsdecode(line[3:]).strip("/")
            parts = [p for p in rel.split("/") if p and p != ".."]
            for n in range(len(parts), -1, -1):
                yield mount.joinpath(*parts[:n])


def _number(path: Path) -> int | None:
    lines = _lines(path)
    return decimal(lines[0]) if lines else None  # "max" (no limit) is None


def _lines(path: str | os.PathLike) -> list[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16).splitlines()
    except OSError:
        return []
