"""sysfs_emu: a simulated KSM kernel backend.

- :class:`Kernel`: the 24 files of /sys/kernel/mm/ksm with Linux 6.18's defaults,
  read text and write rules (``read_attr``, ``write_attr``);
- :class:`Simulation`: a scenario running on a simulated clock (kernel, guest
  memory, ksmd, process table, /proc/meminfo); see docs/scenario-format.md;
- :class:`ScenarioError`: an invalid scenario or event, with a one-line message
  naming the place; :class:`SimulationError` (a ScenarioError) when a running
  simulation cannot do what was asked.
"""

from sysfs_emu.kernel import Kernel
from sysfs_emu.scenario import ScenarioError, SysfsEmuError

__all__ = ["Kernel", "Simulation", "SimProcess", "ScenarioError", "SimulationError", "SysfsEmuError"]


def __getattr__(name: str):
    # The simulation pulls in the memory model and ksmd; load it on first use.
    if name in ("Simulation", "SimProcess", "SimulationError"):
        from sysfs_emu import simulation

        return getattr(simulation, name)
    raise AttributeError(f"module 'sysfs_emu' has no attribute {name!r}")
