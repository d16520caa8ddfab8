"""A simulated host: kernel attributes, guest memory and ksmd, driven by a scenario on a simulated clock.

Typical use::

    sim = Simulation.from_yaml("two-guests.yaml")
    sim.kernel.write_attr("run", "1")
    sim.run_until(full_scans=2)
    print(sim.kernel.read_attr("pages_sharing"), sim.meminfo())

Time: ``sim.now`` is simulated seconds since the scenario began (0 at
construction). The host booted ``sim.uptime_at_start`` seconds before that, at
the epoch ``sim.boot_time``; process ``start_time`` values are seconds since
boot, as /proc/PID/stat counts them.

The API here is what the file tree and the CLI (sysfs_emu.tree, sysfs_emu.cli)
read; keep it stable.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time

from sysfs_emu import capacity
from sysfs_emu.costs import resolve as resolve_costs
from sysfs_emu.errors import SimulationError, errno_text
from sysfs_emu.host import MemorySnapshot, meminfo_text
from sysfs_emu.kernel import Kernel, saved_bytes
from sysfs_emu.ksmd import CostModel, Ksmd
from sysfs_emu.memory import PAGE_SIZE, Memory
from sysfs_emu.processes import LiveProcess, SimProcess
from sysfs_emu.scenario import (
    ContentIds,
    Event,
    ExitProcess,
    Madvise,
    ProcessSpec,
    Rewrite,
    Scenario,
    StartProcess,
    SysfsWrite,
    Touch,
    load_scenario,
    load_yaml,
    parse_event,
)
from sysfs_emu.scenario.timeline import ProcessIds, guest_budget_pages, resolve_live_event
from sysfs_emu.units import describe_size, format_duration

__all__ = ["Simulation", "SimProcess", "SimulationError"]

log = logging.getLogger(__name__)

DEFAULT_RUN_UNTIL_TIMEOUT = 86400.0


class Simulation:
    """A scenario running: ``kernel`` (sysfs), ``memory`` (pages), ``ksmd``, the process table and a clock.

    Build it from a scenario mapping or with :meth:`from_yaml`; an invalid
    scenario raises :class:`ScenarioError` before anything is built. At
    construction the ``ksm`` writes are applied, then everything the timeline
    holds for time 0.
    """

    page_size = PAGE_SIZE

    def __init__(self, scenario: dict | Scenario | None = None, *, source: str = "scenario", costs=None) -> None:
        """``costs``: ksmd's cost profile, a :class:`CostModel` or a profile file (default: the reference profile)."""
        cost_model = resolve_costs(costs)
        if not isinstance(scenario, Scenario):
            scenario = load_scenario(scenario, source)
        self.scenario: Scenario = scenario
        host = scenario.host
        problem = capacity.shortfall(capacity.peak_pages(scenario))
        if problem:  # before numpy allocates: one line, not a MemoryError half-way
            raise SimulationError(f"{scenario.source}: {problem}")
        # Room for the guests running at time 0 up front: growing page arrays one region at a time is slow.
        self.memory = Memory(capacity=sum(p.pages for p in scenario.processes if p.start == 0))
        self.memory.numa_nodes = host.nodes
        self.kernel = Kernel()
        self.ksmd = Ksmd(self.kernel, self.memory, cost=cost_model)  # reads its tunables from the kernel's attributes
        self.kernel.engine = self.ksmd  # the kernel's counters, run=2 and EBUSY come from ksmd
        self.contents = ContentIds(self.memory.new_contents)
        self.now: float = 0.0
        self.uptime_at_start: float = host.uptime
        self.boot_time: int = int(host.boot_time if host.boot_time is not None else time.time() - host.uptime)
        self._live: dict[int, LiveProcess] = {}  # by scenario id
        self._ids = ProcessIds.of(scenario.processes, scenario.events)
        self._timeline = list(scenario.timeline)
        self._next = 0  # the first timeline entry not applied yet
        self.events_applied = 0
        for name, text in scenario.ksm:
            self.kernel.write_attr(name, text)  # load_scenario tried them on a kernel like this one
        self._apply_due(0.0)
        self.memory.trim()  # the content tables grew while guests were built: no slack kept at rest

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, costs=None) -> "Simulation":
        """Load, validate and start the scenario in a YAML file (ScenarioError names the file and place)."""
        return cls(load_yaml(path), costs=costs)

    @property
    def costs(self) -> CostModel:
        """ksmd's CPU costs; ``costs.origin`` names the profile they come from."""
        return self.ksmd.cost

    # ---- the clock -------------------------------------------------------------------

    @property
    def uptime(self) -> float:
        """Seconds since the simulated host booted."""
        return self.uptime_at_start + self.now

    @property
    def next_event_time(self) -> float | None:
        """Scenario time of the next pending timeline entry, or None."""
        return self._timeline[self._next].at if self._next < len(self._timeline) else None

    def pending_events(self):
        """The timeline entries not applied yet, in the order they will apply (starts and exits included)."""
        return itertools.islice(self._timeline, self._next, None)

    def advance(self, seconds: float) -> None:
        """Run ``seconds`` of simulated time: ksmd works, and due events apply at their times, in order."""
        if not seconds >= 0 or math.isinf(seconds):
            raise ValueError(f"advance() needs a finite number of seconds >= 0, got {seconds!r}")
        end = self.now + seconds
        while True:
            due = self.next_event_time
            if due is None or due > end:
                break
            if due > self.now:
                self.ksmd.advance(due - self.now)
                self.now = due
            self._apply_due(self.now)
        if end > self.now:
            self.ksmd.advance(end - self.now)
        self.now = end

    def run_until(self, full_scans: int, timeout: float = DEFAULT_RUN_UNTIL_TIMEOUT) -> float:
        """Advance until the ``full_scans`` counter reads ``full_scans``; return the simulated seconds it took.

        It stops right after the batch that completes that scan (events due on
        the way apply at their times). Raises :class:`SimulationError` at once
        when ksmd cannot get there (``run`` is not 1, or no process has
        mergeable memory, and no pending event changes that within the time
        limit), or when ``timeout`` simulated seconds pass first.
        """
        if isinstance(full_scans, bool) or not isinstance(full_scans, int) or full_scans < 0:
            raise ValueError(f"full_scans must be a whole number >= 0, got {full_scans!r}")
        if not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        start = self.now
        deadline = self.now + timeout
        while self._full_scans() < full_scans:
            blocked = self._why_ksmd_idle()
            due = self.next_event_time
            if blocked and (due is None or due > deadline):
                raise SimulationError(f"full_scans cannot reach {full_scans} (it is {self._full_scans()}): {blocked}")
            if self.now >= deadline:
                raise SimulationError(
                    f"full_scans is {self._full_scans()}, not {full_scans}, after {format_duration(timeout)} "
                    f"of simulated time (pages_to_scan {self.kernel.pages_to_scan}, "
                    f"sleep_millisecs {self.kernel.sleep_millisecs}); give run_until a longer timeout"
                )
            limit = deadline if due is None else min(due, deadline)
            if limit > self.now:
                used = self.ksmd.advance(limit - self.now, until_full_scans=full_scans)
                self.now = limit if used >= limit - self.now else self.now + used
            self._apply_due(self.now)
        return self.now - start

    def _full_scans(self) -> int:
        return int(self.kernel.counters()["full_scans"])

    def _why_ksmd_idle(self) -> str | None:
        run = self.kernel.run
        if run == 0:
            return "run is 0 (ksmd is stopped); write 1 to run"
        if run == 2:
            return "run is 2 (ksmd only unmerges); write 1 to run"
        if not any(self.memory.processes[lv.pid].in_ksm for lv in self._live.values()):
            return "no running process has mergeable memory, so ksmd has nothing to scan"
        return None

    # ---- events ----------------------------------------------------------------------

    def apply(self, event: dict) -> None:
        """Apply one event now; the same mapping as a scenario event (``at``, if given, must be now)."""
        ev = parse_event(event, "event", now=self.now)
        if ev.at != self.now and "at" in event:
            raise SimulationError(f"event: at: apply() runs an event now ({format_duration(self.now)}); leave out 'at'")
        ev = self._resolve(ev)
        self._apply_event(ev)
        if isinstance(ev.action, StartProcess) and ev.action.process.exit is not None:
            self._schedule(Event(ev.action.process.exit, ExitProcess(ev.action.process.id), "start.exit"))

    def _schedule(self, ev: Event) -> None:
        """Add an event to the pending timeline, after those already due at the same time."""
        i = self._next
        while i < len(self._timeline) and self._timeline[i].at <= ev.at:
            i += 1
        self._timeline.insert(i, ev)

    def _resolve(self, ev: Event) -> Event:
        """The checks load_scenario does on the timeline, against the live table (SimulationError if one fails)."""
        live = {i: lv.spec for i, lv in self._live.items()}
        return resolve_live_event(ev, self.scenario.host, self._ids, live)

    def _apply_due(self, now: float) -> None:
        while self._next < len(self._timeline) and self._timeline[self._next].at <= now:
            ev = self._timeline[self._next]
            self._next += 1
            self._apply_event(ev)

    def _apply_event(self, ev: Event) -> None:
        action = ev.action
        log.debug("t=%s %s: %s", format_duration(self.now), ev.where or "event", action)
        self.events_applied += 1
        if isinstance(action, SysfsWrite):
            self._write_sysfs(action, ev)
        elif isinstance(action, StartProcess):
            self._start(action.process, ev)
        elif isinstance(action, ExitProcess):
            self._exit(action.id)
        elif isinstance(action, (Rewrite, Touch)):
            self._write(action, ev)
        elif isinstance(action, Madvise):
            lv = self._live[action.process]
            self.memory.set_region_mergeable(lv.regions[action.region], action.mergeable)
        else:  # pragma: no cover - parse_event only builds these kinds
            raise TypeError(action)

    def _write_sysfs(self, action: SysfsWrite, ev: Event) -> None:
        for name, text in action.writes:
            try:
                self.kernel.write_attr(name, text)
            except OSError as exc:
                raise SimulationError(
                    f"{self._place(ev)}sysfs.{name}: at {format_duration(self.now)} "
                    f"the kernel refuses {text!r}: {errno_text(exc.errno)}"
                ) from None

    def _place(self, ev: Event) -> str:
        """The start of a message about an event: ``file: events[3].`` or ``event: `` for apply()."""
        return f"{self.scenario.source}: {ev.where}." if ev.where else "event: "

    def _budget_text(self) -> str:
        """The guests' memory budget, for out-of-memory messages."""
        return describe_size(guest_budget_pages(self.scenario.host) * PAGE_SIZE)

    # ---- processes -------------------------------------------------------------------

    def _start(self, spec: ProcessSpec, ev: Event) -> None:
        pid = self.scenario.host.pid_base + spec.id
        need = self.memory.physical_pages() + spec.resident_pages_at_start
        prefix = f"{self.scenario.source}: " if ev.where else "event: "
        problem = None if ev.where else capacity.shortfall(self.memory.pages.size + spec.pages)
        if problem:  # a start given to apply(): the scenario's own starts were checked at construction
            raise SimulationError(f"{prefix}{spec.where or 'start'}: {problem}")
        if need > guest_budget_pages(self.scenario.host):
            raise SimulationError(
                f"{prefix}{spec.where or 'start'}: starting process {spec.id} at {format_duration(self.now)} brings the "
                f"guests' resident memory to {describe_size(need * PAGE_SIZE)}, more than the host has for them "
                f"({self._budget_text()}): out of memory"
            )
        self._ids.claim(spec.id, spec.where or "start")
        self.memory.add_process(pid)
        if spec.mergeable_all:
            self.memory.set_process_mergeable(pid)  # prctl(PR_SET_MEMORY_MERGE) before mapping guest RAM
        handles = []
        for region in spec.regions:
            contents = self.contents.contents(region.fill, 0, region.pages)
            handles.append(self.memory.add_region(pid, contents, mergeable=region.mergeable, mapped=not region.lazy,
                                                  thp=region.thp, node=region.node))
        self._live[spec.id] = LiveProcess(spec=spec, pid=pid, start_time=self.uptime, regions=handles)
        log.debug("process %d (%s, pid %d) started with %d pages", spec.id, spec.name, pid, spec.pages)

    def _exit(self, pid_id: int) -> None:
        lv = self._live.pop(pid_id)
        self.memory.remove_process(lv.pid)
        log.debug("process %d (pid %d) exited", pid_id, lv.pid)

    def _write(self, action: Rewrite | Touch, ev: Event) -> None:
        """A rewrite (new contents, breaking copy-on-write) or a touch (faulting lazy pages in)."""
        lv = self._live[action.process]
        region = lv.regions[action.region]
        before = self.memory.physical_pages()
        if isinstance(action, Rewrite):
            contents = self.contents.contents(action.fill, action.first, action.pages)
            self.memory.write_pages(region, action.first, contents)
        else:
            self.memory.fault_in(region, action.first, action.pages)
        after = self.memory.physical_pages()
        if after > before and after > guest_budget_pages(self.scenario.host):
            kind = "rewrite" if isinstance(action, Rewrite) else "touch"
            raise SimulationError(
                f"{self._place(ev)}{kind}: at {format_duration(self.now)} the guests need "
                f"{describe_size(after * PAGE_SIZE)}, more than the host has for them ({self._budget_text()}): "
                "out of memory"
            )

    @property
    def processes(self) -> list[SimProcess]:
        """The live processes, by PID."""
        return [SimProcess(self.memory, lv) for lv in sorted(self._live.values(), key=lambda lv: lv.pid)]

    def process(self, pid_id: int) -> SimProcess:
        """The live process with scenario id ``pid_id`` (KeyError if none)."""
        return SimProcess(self.memory, self._live[pid_id])

    def process_by_pid(self, pid: int) -> SimProcess | None:
        for lv in self._live.values():
            if lv.pid == pid:
                return SimProcess(self.memory, lv)
        return None

    # ---- the host --------------------------------------------------------------------

    @property
    def mem_total_kb(self) -> int:
        return self.scenario.host.memory // 1024

    @property
    def cpus(self) -> int:
        return self.scenario.host.cpus

    @property
    def saved_bytes(self) -> int:
        """What KSM saves now: ``pages_sharing + ksm_zero_pages`` pages."""
        c = self.kernel.counters()
        return saved_bytes(c["pages_sharing"], PAGE_SIZE, c["ksm_zero_pages"])

    def state_key(self) -> tuple:
        """A value that changes whenever a process's resident or KSM numbers can have changed.

        Readers that recompute per-process numbers (a pass over each process's
        pages) compare it to skip the work when nothing moved.
        """
        mem = self.memory
        return (mem.mapped_pages, mem.zero_pages, mem.ksm_mapped, mem.ksm_pages, mem.rmap_items, mem.huge_pages,
                self.events_applied)

    def memory_snapshot(self) -> MemorySnapshot:
        host = self.scenario.host
        return MemorySnapshot(
            memory=host.memory,
            used=host.used,
            buffers=host.buffers,
            cached=host.cached,
            swap=host.swap,
            guest_physical=int(self.memory.physical_pages()) * PAGE_SIZE,
            guest_committed=sum(lv.spec.pages for lv in self._live.values()) * PAGE_SIZE,
            cpus=host.cpus,
            guest_anon_huge=self.memory.huge_pages * PAGE_SIZE,
        )

    def meminfo(self) -> str:
        """The /proc/meminfo text of the simulated host."""
        return meminfo_text(self.memory_snapshot())

    def meminfo_kb(self) -> dict[str, int]:
        """/proc/meminfo as a mapping of field name to value (kB, or a count for HugePages_*)."""
        out = {}
        for line in self.meminfo().splitlines():
            name, _, rest = line.partition(":")
            out[name] = int(rest.split()[0])
        return out
