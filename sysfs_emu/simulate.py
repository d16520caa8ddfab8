"""``sysfs-emu simulate``: ksmtuned-py's cycle driven in simulated time, no files, no daemon.

A run is one scenario under one policy (and configuration): a Simulation advanced
from cycle to cycle, where each cycle is the daemon's one cycle
(``ksmtuned_py.cycle.Cycle``: read, decide, write the knobs in the daemon's order) on
it through ``ksmtuned_py.simhost.SimulationHost``.  Cycles come when the daemon's
would: every ``KSM_MONITOR_INTERVAL`` seconds, and at once when a guest starts or
stops (the libvirt hook's retune), after which the interval starts again.  So a run
writes exactly what the daemon would write on the same host, and answers "what would
this policy save on my host, how soon, and at what ksmd CPU cost" in seconds of wall
time.  Of sysfs_emu only this command and capture (for the guest rule) import ksmtuned_py.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ksmtuned_py import policies
from ksmtuned_py.cycle import Cycle, next_wait
from ksmtuned_py.report import CycleReport
from ksmtuned_py.simhost import SimulationHost
from sysfs_emu import procfs
from sysfs_emu.scenario import ExitProcess, StartProcess

INTERVAL = "interval"
GUEST_STARTED = "guest started"
GUEST_STOPPED = "guest stopped"
SOONER = "the policy asked sooner"  # for its next cycle, before the interval ends
_EPSILON = 1e-9  # a cycle due "at" the end of a run still runs despite float sums


@dataclass(frozen=True)
class Row:
    """One cycle of a run: the cycle's report and what the simulated kernel shows right after it."""

    run_name: str
    cause: str  # INTERVAL, or the guest event that triggered a retune
    report: CycleReport
    pages_shared: int
    full_scans: int
    ksmd_cpu_seconds: float  # the simulated ksmd's CPU time so far (its cost model)

    @property
    def time_s(self) -> float:
        return self.report.time

    @property
    def saved_bytes(self) -> int:
        return self.report.saved_bytes or 0

    def decision(self) -> tuple:
        """What the policy chose, to tell one decision from the next (not the counters)."""
        r = self.report
        return r.action, r.level, r.npages, r.sleep_ms, r.advisor_active

    def as_dict(self) -> dict:
        """The timeline row of ``--json`` and ``timeline.csv``: the cycle's report and the kernel after it."""
        report = json_row(self.report)
        time_s = report.pop("time")
        return {"run_name": self.run_name, "time_s": time_s, "cause": self.cause,
                "decision": self.report.action, **report, "pages_shared": self.pages_shared,
                "full_scans": self.full_scans, "ksmd_cpu_seconds": round(self.ksmd_cpu_seconds, 6)}


class Simulate:
    """The daemon's loop in simulated time over a Simulation, under one policy (the configured one by default)."""

    def __init__(self, sim, config, policy=None, name: str | None = None):
        self.sim = sim
        self.config = config
        self.interval = float(config.monitor_interval)
        host = SimulationHost.from_config(sim, config)
        self.guest_pattern = re.compile(config.process_regex)
        self.policy = policy if policy is not None else policies.from_config(config)
        self.name = name or self.policy.spec
        self.policy.start(host.read_meminfo())  # a daemon starting with the simulation
        self.tuning_cycle = Cycle(host, self.policy)
        self.advisor_noted = False  # the kernel's advisor set pages_to_scan in some cycle
        self.next_interval = sim.now + self.interval  # the daemon's first cycle comes an interval after its start
        self.next_cause = INTERVAL

    def next_cycle(self) -> tuple[float, str]:
        """When the next cycle comes and why: the interval's end, or a guest starting or stopping before it."""
        for ev in self.sim.pending_events():
            if ev.at > self.next_interval:
                break
            cause = self._guest_change(ev)
            if cause is not None:
                return ev.at, cause
        return self.next_interval, self.next_cause

    def _guest_change(self, ev) -> str | None:
        """GUEST_STARTED or GUEST_STOPPED when the event starts or stops a process the tuner counts as a guest."""
        action = ev.action
        if isinstance(action, StartProcess):
            name, cause = action.process.name, GUEST_STARTED
        elif isinstance(action, ExitProcess):
            try:
                name, cause = self.sim.process(action.id).name, GUEST_STOPPED
            except KeyError:
                return None
        else:
            return None
        return cause if self.guest_pattern.search(procfs.comm_text(name)[:-1]) else None

    def cycle(self) -> Row:
        """Simulated time up to the next cycle, then that cycle."""
        at, cause = self.next_cycle()
        self.sim.advance(max(at - self.sim.now, 0.0))
        report = self.tuning_cycle.run()
        # Like the daemon: the interval starts again (or the policy's sooner cycle).
        wait = next_wait(self.interval, report)
        self.next_interval, self.next_cause = self.sim.now + wait, SOONER if wait < self.interval else INTERVAL
        self.advisor_noted = self.advisor_noted or report.advisor_active
        counters = self.sim.ksmd.counters()
        return Row(self.name, cause, report, counters["pages_shared"], counters["full_scans"],
                   self.sim.ksmd.cpu_time)

    def rows(self, until: float):
        """Every cycle up to simulated time ``until`` (seconds since the scenario began)."""
        while self.next_cycle()[0] <= until + _EPSILON:
            yield self.cycle()


def json_row(report: CycleReport) -> dict:
    """A cycle's report as JSON: without the wall time it took, so that runs compare equal."""
    row = asdict(report)
    del row["duration"]
    return row
