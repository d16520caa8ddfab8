"""Scenarios: a host, KSM settings, guest processes and timed events, validated up front.

:func:`load_scenario` turns a scenario mapping (as read from YAML) into frozen
dataclasses, or raises one :class:`ScenarioError` whose message names the file
and the place, e.g.::

    scenario.yaml: processes[1].regions[0].pages: must be >= 0, got -5

Everything is checked before any state is built: key names and types, sizes and
times, process ids and references, page ranges, the time-0 ``ksm`` writes (tried
on a scratch :class:`~sysfs_emu.kernel.Kernel`), and that the guests' resident
memory fits in the host at every moment of the timeline. The format is
documented in docs/scenario-format.md.
"""

from __future__ import annotations

import errno as errno_mod
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import yaml

from sysfs_emu.kernel import FILES as KSM_FILES
from sysfs_emu.kernel import TUNABLES as KSM_TUNABLES
from sysfs_emu.kernel import Kernel
from sysfs_emu.memory import PAGE_SIZE
from sysfs_emu.units import UnitError, describe_size, format_duration, parse_duration, parse_size

__all__ = [
    "SysfsEmuError",
    "ScenarioError",
    "PAGE_SIZE",
    "FILLS",
    "Fill",
    "RegionSpec",
    "ProcessSpec",
    "HostSpec",
    "SysfsWrite",
    "StartProcess",
    "ExitProcess",
    "Rewrite",
    "Touch",
    "Event",
    "Scenario",
    "machine_memory_bytes",
    "resolve_page_range",
    "load_scenario",
    "load_yaml",
    "parse_event",
    "ContentIds",
]

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when present: 20x faster

FILLS = ("same", "pool", "unique", "zero")
PID_MAX = 4194304  # /proc/sys/kernel/pid_max on 64-bit Linux
MAX_POOL_ENTRY = 1 << 30  # pool entries (and so distinct contents) stay well inside 31-bit ids


class SysfsEmuError(Exception):
    """Base of the errors sysfs_emu reports to a user (one line, no traceback needed)."""


class ScenarioError(SysfsEmuError):
    """A scenario (or an event given to ``Simulation.apply``) that is not valid."""


# ---------------------------------------------------------------------------
# The validated form
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fill:
    """What pages hold: ``zero``, ``unique``, ``same`` (``tag``) or ``pool`` (``pool``, ``offset``)."""

    kind: str
    tag: str | None = None
    pool: str | None = None
    offset: int = 0


@dataclass(frozen=True)
class RegionSpec:
    """One anonymous mapping of a process: ``pages`` pages holding ``fill``."""

    pages: int
    fill: Fill
    mergeable: bool = True
    lazy: bool = False


@dataclass(frozen=True)
class ProcessSpec:
    """A guest process; ``start``/``exit`` are scenario times in seconds (``exit`` None: runs on)."""

    id: int
    name: str
    cmdline: tuple[str, ...]
    start: float
    regions: tuple[RegionSpec, ...]
    mergeable_all: bool = False
    exit: float | None = None
    where: str = ""

    @property
    def pages(self) -> int:
        return sum(r.pages for r in self.regions)

    @property
    def resident_pages_at_start(self) -> int:
        return sum(r.pages for r in self.regions if not r.lazy)


@dataclass(frozen=True)
class HostSpec:
    """The host outside the guests (all sizes in bytes, times in seconds)."""

    memory: int
    buffers: int
    cached: int
    used: int
    swap: int = 0
    uptime: float = 0.0
    boot_time: float | None = None
    pid_base: int = 1000
    cpus: int = 1


@dataclass(frozen=True)
class SysfsWrite:
    """Writes to /sys/kernel/mm/ksm files, in order: ``((name, text), ...)``."""

    writes: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class StartProcess:
    process: ProcessSpec


@dataclass(frozen=True)
class ExitProcess:
    id: int


@dataclass(frozen=True)
class Rewrite:
    """Process ``process`` writes ``fill`` over pages ``first .. first+pages-1`` of region ``region``."""

    process: int
    region: int
    first: int
    pages: int
    fill: Fill


@dataclass(frozen=True)
class Touch:
    """Process ``process`` touches pages ``first .. first+pages-1`` of region ``region``: lazy pages fault in."""

    process: int
    region: int
    first: int
    pages: int


Action = Union[SysfsWrite, StartProcess, ExitProcess, Rewrite, Touch]


@dataclass(frozen=True)
class Event:
    """One action at scenario time ``at``; ``where`` names its origin for messages."""

    at: float
    action: Action
    where: str = ""


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. ``timeline`` holds every start, exit and event, in time order."""

    source: str
    host: HostSpec
    ksm: tuple[tuple[str, str], ...]
    processes: tuple[ProcessSpec, ...]
    events: tuple[Event, ...]
    timeline: tuple[Event, ...]
    description: str = ""

    def error(self, where: str, message: str) -> ScenarioError:
        return ScenarioError(_message(self.source, where, message))


# ---------------------------------------------------------------------------
# Helpers for checking one value at a named place
# ---------------------------------------------------------------------------


def _message(source: str, where: str, message: str) -> str:
    return f"{source}: {where}: {message}" if where else f"{source}: {message}"


class _Checker:
    """Raises ScenarioError naming ``source`` and a path such as ``processes[1].regions[0].pages``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ScenarioError:
        return ScenarioError(_message(self.source, where, message))

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...], what: str = "a mapping") -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be {what}, got {_show(value)}")
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                raise self.fail(
                    _join(where, str(key)), f"unknown key (expected one of: {', '.join(allowed)})"
                )
        return value

    def integer(self, value: Any, where: str, minimum: int | None = None, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"must be a whole number, got {_show(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(where, f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.fail(where, f"must be <= {maximum}, got {value}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"must be true or false, got {_show(value)}")
        return value

    def string(self, value: Any, where: str, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"must be a string, got {_show(value)}")
        if not allow_empty and not value:
            raise self.fail(where, "must not be empty")
        return value

    def size(self, value: Any, where: str) -> int:
        try:
            return parse_size(value)
        except UnitError as exc:
            raise self.fail(where, str(exc)) from None

    def duration(self, value: Any, where: str) -> float:
        try:
            return parse_duration(value)
        except UnitError as exc:
            raise self.fail(where, str(exc)) from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


# ---------------------------------------------------------------------------
# Parsing the parts
# ---------------------------------------------------------------------------

_TOP_KEYS = ("description", "host", "ksm", "processes", "events")
_HOST_KEYS = ("memory", "buffers", "cached", "used", "swap", "uptime", "boot_time", "pid_base", "cpus")
_PROCESS_KEYS = ("name", "cmdline", "id", "start", "exit", "mergeable_all", "regions")
_FILL_KEYS = ("fill", "tag", "pool", "offset")
_REGION_KEYS = ("pages", "size", "mergeable", "lazy") + _FILL_KEYS
_TOUCH_KEYS = ("process", "region", "first", "pages")
_REWRITE_KEYS = _TOUCH_KEYS + _FILL_KEYS
_EVENT_KINDS = ("sysfs", "start", "exit", "rewrite", "touch")


def machine_memory_bytes() -> int:
    """MemTotal of the machine this runs on (bytes), for hosts that give no ``memory``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _parse_host(c: _Checker, raw: Any) -> HostSpec:
    where = "host"
    raw = {} if raw is None else c.mapping(raw, where, _HOST_KEYS)
    if "memory" in raw:
        memory = c.size(raw["memory"], "host.memory")
    else:
        memory = machine_memory_bytes()
    if memory < 16 * 1024 * 1024:
        raise c.fail("host.memory", f"must be at least 16MiB, got {describe_size(memory)}")
    defaults = {"buffers": memory // 1024, "cached": memory // 32, "used": memory // 64}
    values = {
        key: c.size(raw[key], f"host.{key}") if key in raw else default for key, default in defaults.items()
    }
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
            raise c.fail("host.boot_time", f"must be seconds since the epoch (>= 0), got {_show(value)}")
        boot_time = float(value)
    pid_base = c.integer(raw.get("pid_base", 1000), "host.pid_base", minimum=2, maximum=PID_MAX - 1)
    cpus = c.integer(raw.get("cpus", os.cpu_count() or 1), "host.cpus", minimum=1, maximum=8192)
    return HostSpec(
        memory=memory,
        buffers=values["buffers"],
        cached=values["cached"],
        used=values["used"],
        swap=swap,
        uptime=uptime,
        boot_time=boot_time,
        pid_base=pid_base,
        cpus=cpus,
    )


def _ksm_value_text(c: _Checker, value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # the kernel will refuse it, with its own errno
    raise c.fail(where, f"must be a number or a string, got {_show(value)}")


def _parse_sysfs_writes(c: _Checker, raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise c.fail(where, f"must be a mapping of /sys/kernel/mm/ksm file names to values, got {_show(raw)}")
    if not raw:
        raise c.fail(where, "must name at least one file")
    writes = []
    for name, value in raw.items():
        place = _join(where, str(name))
        if name not in KSM_FILES:
            raise c.fail(place, "no such file in /sys/kernel/mm/ksm")
        if name not in KSM_TUNABLES:
            raise c.fail(place, "read-only counter, cannot be written (EACCES)")
        writes.append((name, _ksm_value_text(c, value, place)))
    return tuple(writes)


def _fill_name(c: _Checker, raw: dict, key: str, where: str, why: str) -> str:
    """The content tag or pool name ``raw[key]``: a non-empty string or a number, as a string."""
    if key not in raw:
        raise c.fail(_join(where, key), f"missing ({why})")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise c.fail(_join(where, key), f"must be a non-empty string or a number, got {_show(value)}")
    return str(value)


def _parse_fill(c: _Checker, raw: dict, where: str) -> Fill:
    if "fill" not in raw:
        raise c.fail(_join(where, "fill"), f"missing (one of: {', '.join(FILLS)})")
    kind = raw["fill"]
    if kind not in FILLS:
        raise c.fail(_join(where, "fill"), f"must be one of {', '.join(FILLS)}, got {_show(kind)}")
    for key, needed_by in (("tag", "same"), ("pool", "pool"), ("offset", "pool")):
        if key in raw and kind != needed_by:
            raise c.fail(_join(where, key), f"only goes with fill: {needed_by}")
    if kind == "same":
        return Fill("same", tag=_fill_name(c, raw, "tag", where, "fill: same needs the content's tag"))
    if kind == "pool":
        pool = _fill_name(c, raw, "pool", where, "fill: pool needs the pool's name")
        offset = c.integer(raw.get("offset", 0), _join(where, "offset"), minimum=0, maximum=MAX_POOL_ENTRY)
        return Fill("pool", pool=pool, offset=offset)
    return Fill(kind)


def _parse_region(c: _Checker, raw: Any, where: str) -> RegionSpec:
    c.mapping(raw, where, _REGION_KEYS)
    if "pages" in raw and "size" in raw:
        raise c.fail(where, "give either pages or size, not both")
    if "pages" in raw:
        pages = c.integer(raw["pages"], _join(where, "pages"), minimum=0)
    elif "size" in raw:
        size = c.size(raw["size"], _join(where, "size"))
        pages = -(-size // PAGE_SIZE)  # whole pages, rounded up as mmap does
    else:
        raise c.fail(where, "needs pages or size")
    fill = _parse_fill(c, raw, where)
    if fill.kind == "pool" and fill.offset + pages > MAX_POOL_ENTRY:
        raise c.fail(_join(where, "offset"), f"offset + pages must be <= {MAX_POOL_ENTRY}")
    mergeable = c.boolean(raw.get("mergeable", True), _join(where, "mergeable"))
    lazy = c.boolean(raw.get("lazy", False), _join(where, "lazy"))
    return RegionSpec(pages=pages, fill=fill, mergeable=mergeable, lazy=lazy)


def _parse_cmdline(c: _Checker, raw: Any, where: str, name: str) -> tuple[str, ...]:
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
                raise c.fail(f"{where}[{i}]", f"must be a string, got {_show(arg)}")
        args = tuple(str(a) for a in raw)
        if any("\0" in a for a in args):
            raise c.fail(where, "must not contain NUL bytes")
        return args
    raise c.fail(where, f"must be a string or a non-empty list of strings, got {_show(raw)}")


def _parse_process(
    c: _Checker, raw: Any, where: str, default_id: int | None, start: float | None
) -> tuple[ProcessSpec, bool]:
    """A process spec; ``start`` is the event time for processes started by an event.

    Returns the spec and whether its id was given (specs without one get
    ``default_id``, or -1 to be filled in later).
    """
    c.mapping(raw, where, _PROCESS_KEYS if start is None else tuple(k for k in _PROCESS_KEYS if k != "start"))
    if "name" not in raw:
        raise c.fail(_join(where, "name"), "missing (the process's comm, e.g. qemu-system-x86)")
    name = c.string(raw["name"], _join(where, "name"))
    if "\n" in name or "\0" in name or "/" in name:
        raise c.fail(_join(where, "name"), f"must not contain '/', newlines or NUL bytes, got {name!r}")
    cmdline = _parse_cmdline(c, raw.get("cmdline"), _join(where, "cmdline"), name)
    has_id = "id" in raw
    if has_id:
        pid_id = c.integer(raw["id"], _join(where, "id"), minimum=0)
    else:
        pid_id = default_id if default_id is not None else -1
    if start is None:
        start = c.duration(raw.get("start", 0), _join(where, "start"))
    exit_at = None
    if "exit" in raw:
        exit_at = c.duration(raw["exit"], _join(where, "exit"))
        if exit_at <= start:
            raise c.fail(
                _join(where, "exit"),
                f"must be after the start ({format_duration(start)}), got {format_duration(exit_at)}",
            )
    mergeable_all = c.boolean(raw.get("mergeable_all", False), _join(where, "mergeable_all"))
    regions_raw = raw.get("regions", [])
    if not isinstance(regions_raw, list):
        raise c.fail(_join(where, "regions"), f"must be a list, got {_show(regions_raw)}")
    regions = tuple(_parse_region(c, r, f"{where}.regions[{i}]") for i, r in enumerate(regions_raw))
    spec = ProcessSpec(
        id=pid_id,
        name=name,
        cmdline=cmdline,
        start=start,
        regions=regions,
        mergeable_all=mergeable_all,
        exit=exit_at,
        where=where,
    )
    return spec, has_id


def _parse_page_range(c: _Checker, raw: Any, where: str, keys: tuple[str, ...]) -> tuple[int, int, int, int]:
    """(process, region, first, pages) of a rewrite or touch; pages -1 means "to the region's end"."""
    c.mapping(raw, where, keys)
    if "process" not in raw:
        raise c.fail(_join(where, "process"), "missing (the id of the process that writes)")
    process = c.integer(raw["process"], _join(where, "process"), minimum=0)
    region = c.integer(raw.get("region", 0), _join(where, "region"), minimum=0)
    first = c.integer(raw.get("first", 0), _join(where, "first"), minimum=0)
    pages = c.integer(raw["pages"], _join(where, "pages"), minimum=0) if "pages" in raw else -1
    return process, region, first, pages


def _parse_rewrite(c: _Checker, raw: Any, where: str) -> Rewrite:
    process, region, first, pages = _parse_page_range(c, raw, where, _REWRITE_KEYS)
    fill = _parse_fill(c, raw, where)
    return Rewrite(process=process, region=region, first=first, pages=pages, fill=fill)


def _parse_touch(c: _Checker, raw: Any, where: str) -> Touch:
    return Touch(*_parse_page_range(c, raw, where, _TOUCH_KEYS))


def _parse_event(c: _Checker, raw: Any, where: str, at_required: bool = True, now: float | None = None) -> Event:
    c.mapping(raw, where, ("at",) + _EVENT_KINDS)
    if "at" in raw:
        at = c.duration(raw["at"], _join(where, "at"))
    elif at_required:
        raise c.fail(_join(where, "at"), "missing (when the event happens, e.g. 30s)")
    else:
        at = now if now is not None else 0.0
    kinds = [k for k in _EVENT_KINDS if k in raw]
    if len(kinds) != 1:
        found = f"got {', '.join(kinds)}" if kinds else "got none"
        raise c.fail(where, f"needs exactly one of {', '.join(_EVENT_KINDS)}, {found}")
    kind = kinds[0]
    body = raw[kind]
    place = _join(where, kind)
    if kind == "sysfs":
        action: Action = SysfsWrite(_parse_sysfs_writes(c, body, place))
    elif kind == "start":
        spec, _ = _parse_process(c, body, place, None, at)
        action = StartProcess(spec)
    elif kind == "exit":
        action = ExitProcess(c.integer(body, place, minimum=0))
    elif kind == "rewrite":
        action = _parse_rewrite(c, body, place)
    else:
        action = _parse_touch(c, body, place)
    return Event(at=at, action=action, where=where)


# ---------------------------------------------------------------------------
# Whole-scenario checks
# ---------------------------------------------------------------------------


def _check_ksm_writes(c: _Checker, writes: tuple[tuple[str, str], ...]) -> None:
    """Try the time-0 writes on a scratch kernel, so a refused one is caught before anything runs."""
    kernel = Kernel()
    for name, text in writes:
        try:
            kernel.write_attr(name, text)
        except OSError as exc:
            code = errno_mod.errorcode.get(exc.errno, str(exc.errno))
            raise c.fail(f"ksm.{name}", f"the kernel refuses {text!r}: {code} ({os.strerror(exc.errno)})") from None


def resolve_page_range(ev: Event, live: dict[int, ProcessSpec], when: str) -> tuple[Event | None, str, str]:
    """Check a rewrite/touch against the processes running; fill in its page count.

    Returns (event, "", "") when fine, else (None, place, message) for the caller
    to raise; ``when`` ends "is running" messages (" at 5m", or "").
    """
    rw = ev.action
    assert isinstance(rw, (Rewrite, Touch))
    place = _join(ev.where, "rewrite" if isinstance(rw, Rewrite) else "touch")
    proc = live.get(rw.process)
    if proc is None:
        return None, _join(place, "process"), f"no process with id {rw.process} is running{when}"
    if rw.region >= len(proc.regions):
        return None, _join(place, "region"), (
            f"process {rw.process} has {len(proc.regions)} region(s), no region {rw.region}"
        )
    size = proc.regions[rw.region].pages
    if rw.first > size:
        return None, _join(place, "first"), (
            f"region {rw.region} of process {rw.process} has {size} pages, got first {rw.first}"
        )
    pages = size - rw.first if rw.pages < 0 else rw.pages
    if rw.first + pages > size:
        return None, _join(place, "pages"), (
            f"first + pages = {rw.first + pages} is past the end of region {rw.region} ({size} pages)"
        )
    if isinstance(rw, Touch):
        return Event(ev.at, Touch(rw.process, rw.region, rw.first, pages), ev.where), "", ""
    if rw.fill.kind == "pool" and rw.fill.offset + rw.first + pages > MAX_POOL_ENTRY:
        return None, _join(place, "offset"), f"offset + first + pages must be <= {MAX_POOL_ENTRY}"
    return Event(ev.at, Rewrite(rw.process, rw.region, rw.first, pages, rw.fill), ev.where), "", ""


def _build_timeline(c: _Checker, host: HostSpec, processes: list[ProcessSpec], events: list[Event]) -> list[Event]:
    """All starts, exits and events in time order; checks references and the memory limit on the way.

    At equal times the order is: exits given by a process's ``exit``, starts of
    ``processes`` (list order), then ``events`` in the order written.
    """
    entries: list[tuple[float, int, int, Event]] = []
    for i, p in enumerate(processes):
        entries.append((p.start, 1, i, Event(p.start, StartProcess(p), p.where)))
    for i, p in enumerate(processes):
        if p.exit is not None:
            entries.append((p.exit, 0, i, Event(p.exit, ExitProcess(p.id), _join(p.where, "exit"))))
    for i, ev in enumerate(events):
        entries.append((ev.at, 2, i, ev))
        if isinstance(ev.action, StartProcess) and ev.action.process.exit is not None:
            p = ev.action.process
            entries.append((p.exit, 0, len(processes) + i, Event(p.exit, ExitProcess(p.id), _join(p.where, "exit"))))
    entries.sort(key=lambda e: e[:3])

    budget = host.memory - host.used
    live: dict[int, ProcessSpec] = {}
    resident = 0
    timeline = []
    for at, _, _, ev in entries:
        action = ev.action
        if isinstance(action, StartProcess):
            p = action.process
            live[p.id] = p
            resident += p.resident_pages_at_start
            if resident * PAGE_SIZE > budget:
                raise c.fail(
                    p.where,
                    f"starting process {p.id} at {format_duration(at)} brings the guests' resident memory to "
                    f"{resident} pages ({describe_size(resident * PAGE_SIZE)}), more than the host has for them "
                    f"({describe_size(budget)} = host.memory {describe_size(host.memory)}"
                    f" - host.used {describe_size(host.used)})",
                )
        elif isinstance(action, ExitProcess):
            p = live.pop(action.id, None)
            if p is None:
                raise c.fail(
                    ev.where if ev.where.endswith(".exit") else _join(ev.where, "exit"),
                    f"no process with id {action.id} is running at {format_duration(at)}",
                )
            resident -= p.resident_pages_at_start
        elif isinstance(action, (Rewrite, Touch)):
            resolved, place, message = resolve_page_range(ev, live, f" at {format_duration(at)}")
            if resolved is None:
                raise c.fail(place, message)
            ev = resolved
        timeline.append(ev)
    return timeline


def load_scenario(data: Any, source: str = "scenario") -> Scenario:
    """Validate a scenario mapping (e.g. from YAML) and return it; raises ScenarioError."""
    c = _Checker(source)
    if data is None:
        data = {}
    c.mapping(data, "", _TOP_KEYS, what="a mapping with host, ksm, processes, events")
    description = c.string(data.get("description", ""), "description", allow_empty=True)
    host = _parse_host(c, data.get("host"))

    ksm_raw = data.get("ksm")
    ksm: tuple[tuple[str, str], ...] = ()
    if ksm_raw is not None and ksm_raw != {}:
        ksm = _parse_sysfs_writes(c, ksm_raw, "ksm")
        _check_ksm_writes(c, ksm)

    procs_raw = data.get("processes", [])
    if procs_raw is None:
        procs_raw = []
    if not isinstance(procs_raw, list):
        raise c.fail("processes", f"must be a list, got {_show(procs_raw)}")
    processes = [_parse_process(c, raw, f"processes[{i}]", i, None)[0] for i, raw in enumerate(procs_raw)]

    events_raw = data.get("events", [])
    if events_raw is None:
        events_raw = []
    if not isinstance(events_raw, list):
        raise c.fail("events", f"must be a list, got {_show(events_raw)}")
    events = [_parse_event(c, raw, f"events[{i}]") for i, raw in enumerate(events_raw)]

    # Process ids: unique over the whole scenario; event-started processes without
    # one get the smallest ids nobody else uses, in event order.
    seen: dict[int, str] = {}
    for p in processes:
        _claim_id(c, seen, p.id, p.where)
    for ev in events:
        if isinstance(ev.action, StartProcess) and ev.action.process.id >= 0:
            _claim_id(c, seen, ev.action.process.id, ev.action.process.where)
    next_id = 0
    for i, ev in enumerate(events):
        if isinstance(ev.action, StartProcess) and ev.action.process.id < 0:
            while next_id in seen:
                next_id += 1
            seen[next_id] = ev.action.process.where
            spec = _with_id(ev.action.process, next_id)
            events[i] = Event(ev.at, StartProcess(spec), ev.where)
    for pid_id, where in seen.items():
        if host.pid_base + pid_id >= PID_MAX:
            raise c.fail(_join(where, "id"), f"host.pid_base + id must be < {PID_MAX}, got {host.pid_base + pid_id}")

    timeline = _build_timeline(c, host, processes, events)
    return Scenario(
        source=source,
        host=host,
        ksm=ksm,
        processes=tuple(processes),
        events=tuple(events),
        timeline=tuple(timeline),
        description=description,
    )


def _claim_id(c: _Checker, seen: dict[int, str], pid_id: int, where: str) -> None:
    if pid_id in seen:
        raise c.fail(_join(where, "id"), f"id {pid_id} is already used by {seen[pid_id]}")
    seen[pid_id] = where


def _with_id(spec: ProcessSpec, pid_id: int) -> ProcessSpec:
    return replace(spec, id=pid_id)


def load_yaml(path: str | os.PathLike) -> Scenario:
    """Read and validate a YAML scenario file; every problem is a ScenarioError naming the file."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise ScenarioError(f"{source}: is a directory, not a scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{source}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        try:
            data = yaml.load(text, Loader=_YAML_LOADER)
        except yaml.YAMLError:
            # Parse again with PyYAML's own parser for its clearer, stable messages.
            data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ScenarioError(f"{source}: malformed YAML: {where}{problem}") from None
    return load_scenario(data, source)


def parse_event(data: Any, source: str = "event", now: float = 0.0) -> Event:
    """Validate one event mapping (``at`` optional, default ``now``); references are checked by the caller."""
    return _parse_event(_Checker(source), data, "", at_required=False, now=now)


# ---------------------------------------------------------------------------
# Page contents
# ---------------------------------------------------------------------------


class ContentIds:
    """Content identifiers for page fills (equal id = identical 4 KiB page), allocated compactly.

    - 0 is the zero page;
    - ``same`` with tag T: one id per tag, the same wherever the tag is used;
    - ``pool`` P entry k: one id per (P, k), so page i of a region filled from P
      with ``offset`` o holds entry ``i + o``, identical in every process;
    - ``unique``: ids handed out once and never again.

    Fresh ids come from ``new_ids(n)`` (the memory model's allocator, so ids stay
    small and dense); without one, a private counter from 1 is used.
    """

    def __init__(self, new_ids: Callable[[int], np.ndarray] | None = None) -> None:
        self._new_ids = new_ids or self._counter
        self._next = 1
        self._tags: dict[str, int] = {}
        self._pools: dict[str, np.ndarray] = {}  # entry -> id, -1 where not used yet

    def _counter(self, n: int) -> np.ndarray:
        ids = np.arange(self._next, self._next + n, dtype=np.int64)
        self._next += n
        return ids

    def tag_id(self, tag: str) -> int:
        if tag not in self._tags:
            self._tags[tag] = int(self._new_ids(1)[0])
        return self._tags[tag]

    def pool_ids(self, pool: str, first_entry: int, count: int) -> np.ndarray:
        """Ids of entries ``first_entry .. first_entry + count - 1`` of a pool."""
        table = self._pools.get(pool, np.zeros(0, dtype=np.int64))
        stop = first_entry + count
        if stop > len(table):
            grown = np.full(max(stop, len(table) * 5 // 4), -1, dtype=np.int64)
            grown[: len(table)] = table
            table = grown
            self._pools[pool] = table
        ids = table[first_entry:stop]
        missing = ids < 0
        n = int(missing.sum())
        if n:
            ids[missing] = self._new_ids(n)
        return ids.copy()

    def contents(self, fill: Fill, first: int, count: int) -> np.ndarray:
        """Ids for ``count`` pages starting at page ``first`` of a region."""
        if fill.kind == "zero":
            return np.zeros(count, dtype=np.int64)
        if fill.kind == "same":
            return np.full(count, self.tag_id(fill.tag), dtype=np.int64)
        if fill.kind == "pool":
            return self.pool_ids(fill.pool, fill.offset + first, count)
        return np.asarray(self._new_ids(count), dtype=np.int64)
