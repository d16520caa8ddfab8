"""Whole-scenario rules: process ids, the guests' memory budget, references, and the timeline.

These rules hold while a scenario is loaded (every start, exit and event in
time order) and again while a :class:`~sysfs_emu.simulation.Simulation` runs
(events given to ``apply``); both use the functions here:

- process ids are unique; a process started without one gets the smallest id
  no other process uses (:class:`ProcessIds`), and its PID
  (``host.pid_base + id``) stays below Linux's ``pid_max`` (:func:`pid_error`);
- the guests' resident memory fits in ``host.memory - host.used``
  (:func:`guest_budget_pages`), without counting on KSM;
- a rewrite or touch names a running process, one of its regions and pages
  inside it (:func:`resolve_page_range`); a madvise, a running process and one
  of its regions (:func:`region_error`).

A running simulation checks an event against its live process table with
:func:`resolve_live_event`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from sysfs_emu.errors import SimulationError, errno_text
from sysfs_emu.host import PID_MAX
from sysfs_emu.kernel import Kernel
from sysfs_emu.memory import PAGE_SIZE
from sysfs_emu.scenario.checks import Checker, join
from sysfs_emu.scenario.fills import span_error
from sysfs_emu.scenario.model import Event, ExitProcess, HostSpec, Madvise, ProcessSpec, Rewrite, StartProcess, Touch
from sysfs_emu.units import describe_size, format_duration


def guest_budget_bytes(host: HostSpec) -> int:
    """The memory the host has for its guests: all of it but what the host itself uses."""
    return host.memory - host.used


def guest_budget_pages(host: HostSpec) -> int:
    """:func:`guest_budget_bytes` in whole pages: the guests may hold at most this many."""
    return guest_budget_bytes(host) // PAGE_SIZE


def pid_error(host: HostSpec, pid_id: int) -> str | None:
    """Why process id ``pid_id`` cannot have a PID on this host, or None."""
    pid = host.pid_base + pid_id
    return f"host.pid_base + id must be < {PID_MAX}, got {pid}" if pid >= PID_MAX else None


def not_running(pid_id: int, when: str = "") -> str:
    return f"no process with id {pid_id} is running{when}"


class ProcessIds:
    """The process ids in use, each with the place that took it."""

    def __init__(self, taken: Iterable[tuple[int, str]] = ()) -> None:
        self._where: dict[int, str] = {}
        for pid_id, where in taken:
            self._where.setdefault(pid_id, where)

    def __contains__(self, pid_id: int) -> bool:
        return pid_id in self._where

    def __iter__(self):
        return iter(self._where.items())

    def claim(self, pid_id: int, where: str) -> str | None:
        """Take ``pid_id`` for ``where``; when it is taken already, return who has it instead."""
        if pid_id in self._where:
            return self._where[pid_id]
        self._where[pid_id] = where
        return None

    def lowest_free(self) -> int:
        pid_id = 0
        while pid_id in self._where:
            pid_id += 1
        return pid_id

    @classmethod
    def of(cls, scenario_processes: Iterable[ProcessSpec], events: Iterable[Event]) -> "ProcessIds":
        """The ids a loaded scenario's processes and event starts use."""
        starts = [ev.action.process for ev in events if isinstance(ev.action, StartProcess)]
        return cls((p.id, p.where) for p in [*scenario_processes, *starts])


def assign_ids(c: Checker, host: HostSpec, processes: list[ProcessSpec], events: list[Event]) -> list[Event]:
    """Check the ids given and give event-started processes without one the smallest free ids, in order."""
    ids = ProcessIds()
    explicit = processes + [ev.action.process for ev in events
                            if isinstance(ev.action, StartProcess) and ev.action.process.id >= 0]
    for p in explicit:
        other = ids.claim(p.id, p.where)
        if other is not None:
            raise c.fail(join(p.where, "id"), f"id {p.id} is already used by {other}")
    events = list(events)
    for i, ev in enumerate(events):
        if isinstance(ev.action, StartProcess) and ev.action.process.id < 0:
            spec = replace(ev.action.process, id=ids.lowest_free())
            ids.claim(spec.id, spec.where)
            events[i] = Event(ev.at, StartProcess(spec), ev.where)
    for pid_id, where in ids:
        problem = pid_error(host, pid_id)
        if problem:
            raise c.fail(join(where, "id"), problem)
    return events


def check_ksm_writes(c: Checker, writes: tuple[tuple[str, str], ...]) -> None:
    """Try the time-0 writes on a scratch kernel, so a refused one is caught before anything runs."""
    kernel = Kernel()
    for name, text in writes:
        try:
            kernel.write_attr(name, text)
        except OSError as exc:
            raise c.fail(f"ksm.{name}", f"the kernel refuses {text!r}: {errno_text(exc.errno)}") from None


def resolve_page_range(ev: Event, live: dict[int, ProcessSpec], when: str) -> tuple[Event | None, str, str]:
    """Check a rewrite/touch against the processes running; fill in its page count.

    Returns (event, "", "") when fine, else (None, place, message) for the caller
    to raise; ``when`` ends "is running" messages (" at 5m", or "").
    """
    rw = ev.action
    assert isinstance(rw, (Rewrite, Touch))
    place = join(ev.where, "rewrite" if isinstance(rw, Rewrite) else "touch")
    proc = live.get(rw.process)
    if proc is None:
        return None, join(place, "process"), not_running(rw.process, when)
    if rw.region >= len(proc.regions):
        return None, join(place, "region"), (
            f"process {rw.process} has {len(proc.regions)} region(s), no region {rw.region}"
        )
    size = proc.regions[rw.region].pages
    if rw.first > size:
        return None, join(place, "first"), (
            f"region {rw.region} of process {rw.process} has {size} pages, got first {rw.first}"
        )
    pages = size - rw.first if rw.pages < 0 else rw.pages
    if rw.first + pages > size:
        return None, join(place, "pages"), (
            f"first + pages = {rw.first + pages} is past the end of region {rw.region} ({size} pages)"
        )
    if isinstance(rw, Touch):
        return Event(ev.at, Touch(rw.process, rw.region, rw.first, pages), ev.where), "", ""
    problem = span_error(rw.fill, rw.first, pages)
    if problem:
        return None, join(place, problem[0]), problem[1]
    return Event(ev.at, Rewrite(rw.process, rw.region, rw.first, pages, rw.fill), ev.where), "", ""


def node_error(host: HostSpec, spec: ProcessSpec) -> tuple[str, str] | None:
    """(place, message) when a region of ``spec`` is on a NUMA node the host does not have, else None."""
    for i, region in enumerate(spec.regions):
        if region.node >= host.nodes:
            return (join(f"{spec.where or 'start'}.regions[{i}]", "node"),
                    f"must be below host.nodes ({host.nodes}), got {region.node}")
    return None


def region_error(ev: Event, live: dict[int, ProcessSpec], when: str) -> tuple[str, str] | None:
    """(place, message) when a madvise names no running process or no region of it, else None."""
    action = ev.action
    assert isinstance(action, Madvise)
    place = join(ev.where, "madvise")
    proc = live.get(action.process)
    if proc is None:
        return join(place, "process"), not_running(action.process, when)
    if action.region >= len(proc.regions):
        return join(place, "region"), f"process {action.process} has {len(proc.regions)} region(s), no region {action.region}"
    return None


def resolve_live_event(ev: Event, host: HostSpec, ids: ProcessIds, live: dict[int, ProcessSpec]) -> Event:
    """An event given to a running simulation, checked against its ``live`` processes (by id) and
    ``ids`` in use, with defaults filled in (a new process's id, a rewrite's page count)."""
    action = ev.action
    if isinstance(action, StartProcess):
        p = action.process
        if p.id < 0:
            action = StartProcess(replace(p, id=ids.lowest_free(), where="start"))
        elif p.id in ids:
            raise SimulationError(f"event: start.id: id {p.id} is already used by another process of this simulation")
        problem = pid_error(host, action.process.id)
        if problem:
            raise SimulationError(f"event: start.id: {problem}")
        located = node_error(host, action.process)
        if located:
            raise SimulationError(f"event: {located[0]}: {located[1]}")
    elif isinstance(action, ExitProcess):
        if action.id not in live:
            raise SimulationError(f"event: exit: {not_running(action.id)}")
    elif isinstance(action, (Rewrite, Touch)):
        resolved, place, message = resolve_page_range(Event(ev.at, action, ""), live, "")
        if resolved is None:
            raise SimulationError(f"event: {place}: {message}")
        return resolved
    elif isinstance(action, Madvise):
        located = region_error(Event(ev.at, action, ""), live, "")
        if located:
            raise SimulationError(f"event: {located[0]}: {located[1]}")
    return Event(ev.at, action, ev.where)


def _entries(processes: list[ProcessSpec], events: list[Event]) -> list[Event]:
    """Every start, exit and event, sorted: by time, then exits, starts of ``processes``, ``events``."""
    def exit_of(p: ProcessSpec) -> Event:
        return Event(p.exit, ExitProcess(p.id), join(p.where, "exit"))

    entries: list[tuple[float, int, int, Event]] = []
    for i, p in enumerate(processes):
        entries.append((p.start, 1, i, Event(p.start, StartProcess(p), p.where)))
        if p.exit is not None:
            entries.append((p.exit, 0, i, exit_of(p)))
    for i, ev in enumerate(events):
        entries.append((ev.at, 2, i, ev))
        if isinstance(ev.action, StartProcess) and ev.action.process.exit is not None:
            entries.append((ev.action.process.exit, 0, len(processes) + i, exit_of(ev.action.process)))
    entries.sort(key=lambda e: e[:3])
    return [ev for *_, ev in entries]


def _over_budget(host: HostSpec, p: ProcessSpec, at: float, resident: int) -> str:
    return (
        f"starting process {p.id} at {format_duration(at)} brings the guests' resident memory to "
        f"{resident} pages ({describe_size(resident * PAGE_SIZE)}), more than the host has for them "
        f"({describe_size(guest_budget_bytes(host))} = host.memory {describe_size(host.memory)}"
        f" - host.used {describe_size(host.used)})"
    )


def build_timeline(c: Checker, host: HostSpec, processes: list[ProcessSpec], events: list[Event]) -> list[Event]:
    """All starts, exits and events in time order; checks references and the memory limit on the way.

    At equal times the order is: exits given by a process's ``exit``, starts of
    ``processes`` (list order), then ``events`` in the order written.
    """
    live: dict[int, ProcessSpec] = {}
    resident = 0
    timeline = []
    for ev in _entries(processes, events):
        action, at = ev.action, ev.at
        if isinstance(action, StartProcess):
            p = action.process
            problem = node_error(host, p)
            if problem:
                raise c.fail(*problem)
            live[p.id] = p
            resident += p.resident_pages_at_start
            if resident > guest_budget_pages(host):
                raise c.fail(p.where, _over_budget(host, p, at, resident))
        elif isinstance(action, ExitProcess):
            p = live.pop(action.id, None)
            if p is None:
                where = ev.where if ev.where.endswith(".exit") else join(ev.where, "exit")
                raise c.fail(where, not_running(action.id, f" at {format_duration(at)}"))
            resident -= p.resident_pages_at_start
        elif isinstance(action, (Rewrite, Touch)):
            resolved, place, message = resolve_page_range(ev, live, f" at {format_duration(at)}")
            if resolved is None:
                raise c.fail(place, message)
            ev = resolved
        elif isinstance(action, Madvise):
            problem = region_error(ev, live, f" at {format_duration(at)}")
            if problem:
                raise c.fail(*problem)
        timeline.append(ev)
    return timeline
