"""Host and per-guest facts beyond what ksmtuned's rule reads: ksmd's CPU time, copy-on-write
breaks, a guest's name and its KSM numbers, a process's memory mappings.

Small readers of single /proc files below a root, each returning None (or an empty result)
when the file is missing or not what Linux writes: a kernel without the file, a tree that
does not serve it, a process that exited.  Reads are one ``read(2)`` of small files, as
guestscan.py does for every process, because the daemon runs them every cycle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: USER_HZ: /proc/PID/stat counts CPU time in ticks of 1/100 s on every Linux architecture.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_bytes(path: str, size: int = 65536) -> bytes | None:
    """The first ``size`` bytes of a file (one read, never blocking on a FIFO), None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _number(text: bytes) -> int | None:
    """An ASCII decimal number, with an optional minus sign; None for anything else."""
    digits = text[1:] if text[:1] == b"-" else text
    if not digits.isdigit() or not digits.isascii():
        return None
    return int(text)


# --- ksmd's CPU time -----------------------------------------------------------------


def stat_cpu_seconds(text: bytes) -> float | None:
    """utime + stime of a /proc/PID/stat line, in seconds; None when it is not one."""
    rpar = text.rfind(b")")
    fields = text[rpar + 2:].split() if rpar >= 0 else []
    if len(fields) < 13:
        return None
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    utime, stime = _number(fields[11]), _number(fields[12])
    if utime is None or stime is None:
        return None
    return (utime + stime) / CLOCK_TICKS


def ksmd_cpu_seconds(proc: str, pid: int | None) -> float | None:
    """The CPU time the ksmd kernel thread ``pid`` has used since boot, None when not known."""
    if pid is None:
        return None
    text = read_bytes(f"{proc}/{pid}/stat", 4096)
    return None if text is None else stat_cpu_seconds(text)


def uptime_seconds(proc: str) -> float | None:
    """Seconds since boot (/proc/uptime), None when it cannot be read."""
    text = read_bytes(f"{proc}/uptime", 256)
    try:
        return float(text.split()[0]) if text else None
    except ValueError:
        return None


# --- /proc/vmstat ------------------------------------------------------------------------


def vmstat_counter(proc: str, name: str) -> int | None:
    """One counter of /proc/vmstat (``cow_ksm``: KSM pages copied on write), None where the kernel has none."""
    text = read_bytes(f"{proc}/vmstat", 1 << 16)
    if text is None:
        return None
    key = name.encode() + b" "
    at = 0 if text.startswith(key) else text.find(b"\n" + key) + 1
    if at == 0 and not text.startswith(key):
        return None
    end = text.find(b"\n", at)
    return _number(text[at + len(key):end if end >= 0 else len(text)].strip())


# --- a guest -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KsmStat:
    """A process's /proc/PID/ksm_stat (Linux >= 6.1; the last two lines since 6.7: None before)."""

    rmap_items: int
    zero_pages: int | None
    merging_pages: int
    process_profit: int | None  # bytes, can be negative
    merge_any: bool | None  # prctl(PR_SET_MEMORY_MERGE)
    mergeable: bool | None  # some of its memory is madvised or merge_any


def parse_ksm_stat(text: bytes) -> KsmStat | None:
    """The numbers of a ksm_stat text; None when it has not even ``ksm_rmap_items``."""
    values: dict[bytes, bytes] = {}
    for line in text.splitlines():
        key, _, value = line.partition(b" ")
        values[key.rstrip(b":")] = value.strip()
    rmap = _number(values.get(b"ksm_rmap_items", b""))
    if rmap is None:
        return None

    def flag(name: bytes) -> bool | None:
        value = values.get(name)
        return None if value is None else value == b"yes"

    merging = _number(values.get(b"ksm_merging_pages", b""))
    return KsmStat(
        rmap_items=rmap,
        zero_pages=_number(values.get(b"ksm_zero_pages", b"")),
        merging_pages=merging if merging is not None else 0,
        process_profit=_number(values.get(b"ksm_process_profit", b"")),
        merge_any=flag(b"ksm_merge_any"),
        mergeable=flag(b"ksm_mergeable"),
    )


def read_ksm_stat(proc: str, pid: int) -> KsmStat | None:
    text = read_bytes(f"{proc}/{pid}/ksm_stat", 4096)
    return None if text is None else parse_ksm_stat(text)


def read_cmdline(proc: str, pid: int) -> list[str]:
    """The arguments of /proc/PID/cmdline (empty for a kernel thread or an exited process)."""
    data = read_bytes(f"{proc}/{pid}/cmdline", 1 << 17)
    if not data:
        return []
    return [a.decode("utf-8", errors="replace") for a in data.rstrip(b"\0").split(b"\0")]


def _option(argv: list[str], name: str) -> str | None:
    """The value of qemu's ``-name VALUE`` or ``-name=VALUE`` (also with ``--``), the last one given."""
    found = None
    for i, arg in enumerate(argv):
        for dash in ("-", "--"):
            flag = dash + name
            if arg == flag and i + 1 < len(argv):
                found = argv[i + 1]
            elif arg.startswith(flag + "="):
                found = arg[len(flag) + 1:]
    return found


def _first_suboption(value: str, key: str) -> str:
    """``guest=NAME,debug-threads=on`` -> NAME: qemu's option syntax (``,,`` is a comma)."""
    parts, part, i = [], "", 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1:i + 2] == ",":
                part += ","
                i += 2
                continue
            parts.append(part)
            part = ""
        else:
            part += value[i]
        i += 1
    parts.append(part)
    for p in parts:
        if p.startswith(key + "="):
            return p[len(key) + 1:]
    first = parts[0]
    return "" if "=" in first else first


def guest_name(argv: list[str], pid: int) -> str:
    """A guest's name: libvirt's ``-name guest=NAME,...``, qemu's ``-name NAME``, Proxmox VE's ``-id N``, else the pid."""
    value = _option(argv, "name")
    if value:
        name = _first_suboption(value, "guest")
        if name:
            return name
    vmid = _option(argv, "id")
    if vmid and vmid.isascii() and vmid.isdigit():
        return vmid
    return str(pid)


# --- memory mappings ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mapping:
    """One memory mapping of /proc/PID/smaps, with the fields KSM cares about (kB)."""

    name: str  # the file or [heap], [anon:...]; "" for anonymous memory
    size_kb: int
    rss_kb: int
    anon_huge_kb: int  # AnonHugePages: transparent huge pages
    flags: frozenset[str]  # VmFlags: "mg" mergeable, "sh" shared, "ht" hugetlb, "hg" MADV_HUGEPAGE, ...

    @property
    def mergeable(self) -> bool:
        return "mg" in self.flags


def parse_smaps(text: bytes) -> list[Mapping]:
    """The mappings of an smaps text (each starts with its address range line)."""
    out: list[Mapping] = []
    current: dict | None = None

    def close() -> None:
        if current is not None:
            out.append(Mapping(current["name"], current.get(b"Size", 0), current.get(b"Rss", 0),
                               current.get(b"AnonHugePages", 0), current.get("flags", frozenset())))

    for line in text.splitlines():
        if _is_range(line):
            close()
            fields = line.split(None, 5)
            current = {"name": fields[5].decode("utf-8", errors="replace").strip() if len(fields) > 5 else ""}
            continue
        head, sep, rest = line.partition(b":")
        if not sep or current is None:
            continue
        if head in (b"Size", b"Rss", b"AnonHugePages"):
            words = rest.split()
            current[head] = (_number(words[0]) if words else None) or 0
        elif head == b"VmFlags":
            current["flags"] = frozenset(rest.decode("ascii", errors="replace").split())
    close()
    return out


def _is_range(line: bytes) -> bool:
    """Whether an smaps line is a mapping's first line (``start-end perms offset dev inode [name]``)."""
    first = line.split(b" ", 1)[0]
    start, dash, end = first.partition(b"-")
    try:
        return bool(dash) and int(start, 16) >= 0 and int(end, 16) >= 0
    except ValueError:
        return False


def read_smaps(proc: str, pid: int) -> list[Mapping] | None:
    """A process's mappings, None when /proc/PID/smaps cannot be read (gone, or not served)."""
    try:
        fd = os.open(f"{proc}/{pid}/smaps", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO in a tree: no hang
    except OSError:
        return None
    chunks, size = [], 0
    try:
        while size < 64 << 20 and (data := os.read(fd, 1 << 18)):  # procfs gives a few mappings per read
            chunks.append(data)
            size += len(data)
    except OSError:
        return None
    finally:
        os.close(fd)
    return parse_smaps(b"".join(chunks))


def smaps_mergeable(proc: str, pid: int) -> bool | None:
    """Whether any of a process's mappings is mergeable (VmFlags mg); None when smaps cannot be read."""
    maps = read_smaps(proc, pid)
    return None if maps is None else any(m.mergeable for m in maps)
