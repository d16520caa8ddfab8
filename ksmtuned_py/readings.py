"""What a cycle reads from the host (:class:`Readings`), and reading it from files: /proc/meminfo,
the guest processes (found by ``guestscan.GuestScanner``) and the KSM files.

Everything is read below one root directory (``/`` normally, a simulated or
test tree with ``--root``), without forking.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from ksmtuned_py import procinfo
from ksmtuned_py.decision import wrap
from ksmtuned_py.errors import UserError
from ksmtuned_py.fileio import decimal, natural, read_regular
from ksmtuned_py.knobs import KsmState, ksm_dir, read_ksm_state

if TYPE_CHECKING:  # guestscan imports this module
    from ksmtuned_py.guestscan import GuestScanner

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


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
    swap_free: int | None = None  # SwapFree (what unmerged pages could be pushed to)

    def free_kb(self, metric: str = "classic") -> int:
        """Free memory: MemFree+Buffers+Cached (classic, the reference) or MemAvailable."""
        if metric == "available":
            if self.available is None:
                raise ReadingError("KSM_FREE_METRIC=available but /proc/meminfo has no MemAvailable")
            return self.available
        return self.free + self.buffers + self.cached


def read_meminfo(root: str | os.PathLike = "/") -> MemInfo:
    path = os.path.join(root, "proc/meminfo")
    try:
        data = read_regular(path, follow=True)
    except OSError as e:
        raise ReadingError(f"cannot read {path}: {e.strerror}") from None
    # Bytes that are not ASCII cannot be part of a field the rule reads: never a decoding error.
    return parse_meminfo(data.decode("ascii", errors="replace"), str(path))


_MEMINFO_FIELDS = frozenset(("MemTotal", "MemFree", "Buffers", "Cached", "MemAvailable", "SwapFree"))


def parse_meminfo(text: str, where: str = "/proc/meminfo") -> MemInfo:
    """The fields of a /proc/meminfo text; ReadingError naming ``where`` when one is missing."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep or (name := name.strip()) not in _MEMINFO_FIELDS:  # 6 of some 55 lines
            continue
        parts = rest.split()
        value = decimal(parts[0]) if parts else None
        if value is not None:
            fields[name] = value
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
        swap_free=fields.get("SwapFree"),
    )


@dataclass(frozen=True)
class Guest:
    """One process counted as a guest."""

    pid: int
    comm: str
    kb: int  # resident (or proportional) set size in kB
    name: str = ""  # from its command line (libvirt's -name guest=, Proxmox VE's -id), else the pid
    ksm: procinfo.KsmStat | None = None  # its /proc/PID/ksm_stat, None where there is none
    mergeable: bool | None = None  # ksm_stat's ksm_mergeable, else mg in smaps' VmFlags; None when neither says


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


@dataclass(frozen=True)
class Readings:
    """What a host shows at the start of a cycle: the input of a policy."""

    time: float  # the host's clock: seconds since the epoch, or simulated seconds in a simulation
    meminfo: MemInfo
    free_kb: int  # free memory by KSM_FREE_METRIC
    committed_kb: int  # the guests' memory (KSM_MEMORY_METRIC), summed
    guests: list[Guest]
    ksm: KsmState
    # Beyond ksmtuned's rule (None where the host cannot tell): what scanning costs and undoes.
    ksmd_cpu_seconds: float | None = None  # CPU time the ksmd thread has used since boot
    cow_ksm: int | None = None  # KSM pages copied on write since boot (/proc/vmstat cow_ksm)


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
