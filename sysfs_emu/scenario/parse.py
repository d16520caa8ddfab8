"""Parsing the parts of a scenario mapping into the validated model, one place at a time.

Each function checks the keys, types and ranges of one part and raises a
ScenarioError naming the place on the first problem. What needs the whole
scenario (ids, references, memory over time) is checked in
:mod:`sysfs_emu.scenario.timeline`.
"""

from __future__ import annotations

from typing import Any

from sysfs_emu.host import PID_MAX, machine_cpus, machine_memory_bytes
from sysfs_emu.kernel import BY_NAME as KSM_ATTRS
from sysfs_emu.memory import PAGE_SIZE
from sysfs_emu.scenario.checks import Checker, join, show
from sysfs_emu.scenario.fills import FILL_KEYS, parse_fill, span_error
from sysfs_emu.scenario.model import (
    Action,
    Event,
    ExitProcess,
    HostSpec,
    Madvise,
    ProcessSpec,
    RegionSpec,
    Rewrite,
    StartProcess,
    SysfsWrite,
    Touch,
)
from sysfs_emu.units import describe_size, format_duration

TOP_KEYS = ("description", "host", "ksm", "processes", "events")
HOST_KEYS = ("memory", "buffers", "cached", "used", "swap", "uptime", "boot_time", "pid_base", "cpus", "nodes")
MAX_NODES = 1024  # MAX_NUMNODES with CONFIG_NODES_SHIFT=10
PROCESS_KEYS = ("name", "cmdline", "id", "start", "exit", "mergeable_all", "regions")
REGION_KEYS = ("pages", "size", "mergeable", "lazy", "thp", "node", "fill") + FILL_KEYS
TOUCH_KEYS = ("process", "region", "first", "pages")
REWRITE_KEYS = TOUCH_KEYS + ("fill",) + FILL_KEYS
MADVISE_KEYS = ("process", "region", "advice")
MADVISE_ADVICE = {"mergeable": True, "unmergeable": False}
EVENT_KINDS = ("sysfs", "start", "exit", "rewrite", "touch", "madvise")
MIN_HOST_MEMORY = 16 * 1024 * 1024


def parse_host(c: Checker, raw: Any) -> HostSpec:
    raw = {} if raw is None else c.mapping(raw, "host", HOST_KEYS)
    memory = c.size(raw["memory"], "host.memory") if "memory" in raw else machine_memory_bytes()
    if memory < MIN_HOST_MEMORY:
        raise c.fail("host.memory", f"must be at least {describe_size(MIN_HOST_MEMORY)}, got {describe_size(memory)}")
    defaults = {"buffers": memory // 1024, "cached": memory // 32, "used": memory // 64}
    values = {key: c.size(raw[key], f"host.{key}") if key in raw else default for key, default in defaults.items()}
    reserved = values["buffers"] + values["cached"] + values["used"]
    if reserved > memory:
        raise c.fail(
            "host",
            f"buffers + cached + used = {describe_size(reserved)} is more than host.memory {describe_size(memory)}",
        )
    swap = c.size(raw["swap"], "host.swap") if "swap" in raw else 0
    uptime = c.duration(raw["uptime"], "host.uptime") if "uptime" in raw else 0.0
    boot_time = None
    if "boot_time" in raw:
        value = raw["boot_time"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise c.fail("host.boot_time", f"must be seconds since the epoch (>= 0), got {show(value)}")
        boot_time = float(value)
    return HostSpec(
        memory=memory,
        swap=swap,
        uptime=uptime,
        boot_time=boot_time,
        pid_base=c.integer(raw.get("pid_base", 1000), "host.pid_base", minimum=2, maximum=PID_MAX - 1),
        cpus=c.integer(raw.get("cpus", machine_cpus()), "host.cpus", minimum=1, maximum=8192),
        nodes=c.integer(raw.get("nodes", 1), "host.nodes", minimum=1, maximum=MAX_NODES),
        **values,
    )


def _ksm_value_text(c: Checker, value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # the kernel will refuse it, with its own errno
    raise c.fail(where, f"must be a number or a string, got {show(value)}")


def parse_sysfs_writes(c: Checker, raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    """``{file: value, ...}`` as ((file, text), ...) in order; each file must exist and be writable."""
    if not isinstance(raw, dict):
        raise c.fail(where, f"must be a mapping of /sys/kernel/mm/ksm file names to values, got {show(raw)}")
    if not raw:
        raise c.fail(where, "must name at least one file")
    writes = []
    for name, value in raw.items():
        place = join(where, str(name))
        attr = KSM_ATTRS.get(name) if isinstance(name, str) else None
        if attr is None:
            raise c.fail(place, "no such file in /sys/kernel/mm/ksm")
        if attr.counter:
            raise c.fail(place, "read-only counter, cannot be written (EACCES)")
        writes.append((name, _ksm_value_text(c, value, place)))
    return tuple(writes)


def parse_region(c: Checker, raw: Any, where: str) -> RegionSpec:
    c.mapping(raw, where, REGION_KEYS)
    if "pages" in raw and "size" in raw:
        raise c.fail(where, "give either pages or size, not both")
    if "pages" in raw:
        pages = c.integer(raw["pages"], join(where, "pages"), minimum=0)
    elif "size" in raw:
        size = c.size(raw["size"], join(where, "size"))
        pages = -(-size // PAGE_SIZE)  # whole pages, rounded up as mmap does
    else:
        raise c.fail(where, "needs pages or size")
    fill = parse_fill(c, raw, where)
    problem = span_error(fill, None, pages)
    if problem:
        raise c.fail(join(where, problem[0]), problem[1])
    mergeable = c.boolean(raw.get("mergeable", True), join(where, "mergeable"))
    lazy = c.boolean(raw.get("lazy", False), join(where, "lazy"))
    thp = c.boolean(raw.get("thp", False), join(where, "thp"))
    node = c.integer(raw.get("node", 0), join(where, "node"), minimum=0, maximum=MAX_NODES - 1)
    return RegionSpec(pages=pages, fill=fill, mergeable=mergeable, lazy=lazy, thp=thp, node=node)


def _parse_cmdline(c: Checker, raw: Any, where: str, name: str) -> tuple[str, ...]:
    if raw is None:
        return (name,)
    if isinstance(raw, str):
        parts = raw.split()
        if not parts:
            raise c.fail(where, "must not be empty")
        return tuple(parts)
    if isinstance(raw, list) and raw:
        for i, arg in enumerate(raw):
            if isinstance(arg, bool) or not isinstance(arg, (str, int, float)):
                raise c.fail(f"{where}[{i}]", f"must be a string, got {show(arg)}")
        args = tuple(str(a) for a in raw)
        if any("\0" in a for a in args):
            raise c.fail(where, "must not contain NUL bytes")
        return args
    raise c.fail(where, f"must be a string or a non-empty list of strings, got {show(raw)}")


def _parse_name(c: Checker, raw: dict, where: str) -> str:
    if "name" not in raw:
        raise c.fail(join(where, "name"), "missing (the process's comm, e.g. qemu-system-x86)")
    name = c.string(raw["name"], join(where, "name"))
    if "\n" in name or "\0" in name or "/" in name:
        raise c.fail(join(where, "name"), f"must not contain '/', newlines or NUL bytes, got {name!r}")
    return name


def parse_process(c: Checker, raw: Any, where: str, default_id: int, start: float | None) -> ProcessSpec:
    """A process spec; ``start`` is the event time for a process started by an event (None: read it).

    A spec without an ``id`` gets ``default_id`` (-1: the timeline gives it one).
    """
    c.mapping(raw, where, PROCESS_KEYS if start is None else tuple(k for k in PROCESS_KEYS if k != "start"))
    name = _parse_name(c, raw, where)
    cmdline = _parse_cmdline(c, raw.get("cmdline"), join(where, "cmdline"), name)
    pid_id = c.integer(raw["id"], join(where, "id"), minimum=0) if "id" in raw else default_id
    if start is None:
        start = c.duration(raw.get("start", 0), join(where, "start"))
    exit_at = None
    if "exit" in raw:
        exit_at = c.duration(raw["exit"], join(where, "exit"))
        if exit_at <= start:
            raise c.fail(
                join(where, "exit"),
                f"must be after the start ({format_duration(start)}), got {format_duration(exit_at)}",
            )
    mergeable_all = c.boolean(raw.get("mergeable_all", False), join(where, "mergeable_all"))
    regions_raw = raw.get("regions", [])
    if not isinstance(regions_raw, list):
        raise c.fail(join(where, "regions"), f"must be a list, got {show(regions_raw)}")
    regions = tuple(parse_region(c, r, f"{where}.regions[{i}]") for i, r in enumerate(regions_raw))
    return ProcessSpec(id=pid_id, name=name, cmdline=cmdline, start=start, regions=regions,
                       mergeable_all=mergeable_all, exit=exit_at, where=where)


def _parse_page_range(c: Checker, raw: Any, where: str, keys: tuple[str, ...]) -> tuple[int, int, int, int]:
    """(process, region, first, pages) of a rewrite or touch; pages -1 means "to the region's end"."""
    c.mapping(raw, where, keys)
    if "process" not in raw:
        raise c.fail(join(where, "process"), "missing (the id of the process that writes)")
    process = c.integer(raw["process"], join(where, "process"), minimum=0)
    region = c.integer(raw.get("region", 0), join(where, "region"), minimum=0)
    first = c.integer(raw.get("first", 0), join(where, "first"), minimum=0)
    pages = c.integer(raw["pages"], join(where, "pages"), minimum=0) if "pages" in raw else -1
    return process, region, first, pages


def _parse_action(c: Checker, kind: str, body: Any, place: str, at: float) -> Action:
    if kind == "sysfs":
        return SysfsWrite(parse_sysfs_writes(c, body, place))
    if kind == "start":
        return StartProcess(parse_process(c, body, place, -1, at))
    if kind == "exit":
        return ExitProcess(c.integer(body, place, minimum=0))
    if kind == "rewrite":
        process, region, first, pages = _parse_page_range(c, body, place, REWRITE_KEYS)
        return Rewrite(process=process, region=region, first=first, pages=pages, fill=parse_fill(c, body, place))
    if kind == "madvise":
        return _parse_madvise(c, body, place)
    return Touch(*_parse_page_range(c, body, place, TOUCH_KEYS))


def _parse_madvise(c: Checker, raw: Any, where: str) -> Madvise:
    """``{process, region, advice}``: advice ``mergeable`` or ``unmergeable``; region defaults to 0."""
    c.mapping(raw, where, MADVISE_KEYS)
    if "process" not in raw:
        raise c.fail(join(where, "process"), "missing (the id of the process that calls madvise)")
    process = c.integer(raw["process"], join(where, "process"), minimum=0)
    region = c.integer(raw.get("region", 0), join(where, "region"), minimum=0)
    if "advice" not in raw:
        raise c.fail(join(where, "advice"), "missing (mergeable or unmergeable)")
    advice = raw["advice"]
    if advice not in MADVISE_ADVICE:
        raise c.fail(join(where, "advice"), f"must be mergeable or unmergeable, got {show(advice)}")
    return Madvise(process=process, region=region, mergeable=MADVISE_ADVICE[advice])


def parse_event(c: Checker, raw: Any, where: str, now: float | None = None) -> Event:
    """One event; ``now`` (when given) is the time of an event without ``at``, else ``at`` is required."""
    c.mapping(raw, where, ("at",) + EVENT_KINDS)
    if "at" in raw:
        at = c.duration(raw["at"], join(where, "at"))
    elif now is None:
        raise c.fail(join(where, "at"), "missing (when the event happens, e.g. 30s)")
    else:
        at = now
    kinds = [k for k in EVENT_KINDS if k in raw]
    if len(kinds) != 1:
        found = f"got {', '.join(kinds)}" if kinds else "got none"
        raise c.fail(where, f"needs exactly one of {', '.join(EVENT_KINDS)}, {found}")
    kind = kinds[0]
    return Event(at=at, action=_parse_action(c, kind, raw[kind], join(where, kind), at), where=where)
