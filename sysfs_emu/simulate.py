"""``sysfs-emu simulate``: ksmtuned-py's cycle driven in simulated time, no files, no daemon.

Each step advances the Simulation by ``KSM_MONITOR_INTERVAL`` seconds and runs the
daemon's one cycle (``ksmtuned_py.cycle.Cycle``: read, decide with the configured
policy, write the knobs in the daemon's order) on it through
``ksmtuned_py.simhost.SimulationHost``.  So it writes exactly what the daemon would
write on the same host, and answers "what would these settings save on my host, and
how fast" in seconds of wall time.  This command is the only part of sysfs_emu that
imports ksmtuned_py.
"""

from __future__ import annotations

from dataclasses import asdict

from ksmtuned_py import policies
from ksmtuned_py.cycle import Cycle
from ksmtuned_py.report import CycleReport
from ksmtuned_py.simhost import SimulationHost


class Simulate:
    """The daemon's loop in simulated time over a Simulation."""

    def __init__(self, sim, config):
        self.sim = sim
        self.interval = float(config.monitor_interval)
        host = SimulationHost.from_config(sim, config)
        policy = policies.from_config(config)
        policy.start(host.read_meminfo())  # a daemon starting with the simulation
        self.tuning_cycle = Cycle(host, policy)
        self.advisor_noted = False  # the kernel's advisor set pages_to_scan in some cycle

    def cycle(self) -> CycleReport:
        """One interval of simulated time, then one cycle."""
        self.sim.advance(self.interval)
        report = self.tuning_cycle.run()
        self.advisor_noted = self.advisor_noted or report.advisor_active
        return report


def json_row(report: CycleReport) -> dict:
    """A cycle as ``--json`` prints it: the report, without the wall time it took (runs compare equal)."""
    row = asdict(report)
    del row["duration"]
    return row
