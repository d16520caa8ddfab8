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

The parts: :mod:`.model` (the validated dataclasses), :mod:`.checks` (one value
at a named place), :mod:`.fills` (the registry of page fills and their content
ids), :mod:`.parse` (mapping to model), :mod:`.timeline` (ids, memory budget,
references, time order) and :mod:`.load` (YAML and the whole scenario).
"""

from sysfs_emu.errors import ScenarioError, SysfsEmuError
from sysfs_emu.scenario.fills import FILLS, ContentIds, Fill
from sysfs_emu.scenario.load import load_scenario, load_yaml, parse_event, parse_yaml
from sysfs_emu.scenario.model import (
    Event,
    ExitProcess,
    HostSpec,
    Madvise,
    ProcessSpec,
    RegionSpec,
    Rewrite,
    Scenario,
    StartProcess,
    SysfsWrite,
    Touch,
)
from sysfs_emu.scenario.timeline import resolve_page_range

__all__ = [
    "SysfsEmuError",
    "ScenarioError",
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
    "Madvise",
    "Event",
    "Scenario",
    "resolve_page_range",
    "load_scenario",
    "load_yaml",
    "parse_event",
    "parse_yaml",
    "ContentIds",
]
