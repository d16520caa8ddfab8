"""sysfs_emu: a simulated KSM kernel backend.

- :class:`Kernel`: the 24 files of /sys/kernel/mm/ksm with Linux 6.18's defaults,
  read text and write rules (``read_attr``, ``write_attr``);
- :class:`Simulation`: a scenario running on a simulated clock (kernel, guest
  memory, ksmd, process table, /proc/meminfo); see docs/scenario-format.md;
- :class:`EmuError` (also ``SysfsEmuError``): the base of every error sysfs_emu
  reports to a user, with a one-line message; :class:`ScenarioError` for an
  invalid scenario or event, :class:`SimulationError` (a ScenarioError) when a
  running simulation cannot do what was asked.

Importing the package loads only the kernel model and the errors; the
simulation (numpy, the memory model, ksmd) loads on first use.
"""

from sysfs_emu.errors import EmuError, ScenarioError, SimulationError, SysfsEmuError
from sysfs_emu.kernel import Kernel

__all__ = ["Kernel", "Simulation", "SimProcess", "EmuError", "ScenarioError", "SimulationError", "SysfsEmuError"]


def __getattr__(name: str):
    # The simulation pulls in the memory model and ksmd; load it on first use.
    if name in ("Simulation", "SimProcess"):
        from sysfs_emu import simulation

        return getattr(simulation, name)
    raise AttributeError(f"module 'sysfs_emu' has no attribute {name!r}")
