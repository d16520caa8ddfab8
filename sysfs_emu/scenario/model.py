"""The validated form of a scenario: frozen dataclasses, all sizes in bytes or pages, times in seconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from sysfs_emu.scenario.fills import Fill

__all__ = ["RegionSpec", "ProcessSpec", "HostSpec", "SysfsWrite", "StartProcess", "ExitProcess", "Rewrite",
           "Touch", "Madvise", "Action", "Event", "Scenario"]


@dataclass(frozen=True)
class RegionSpec:
    """One anonymous mapping of a process: ``pages`` pages holding ``fill``."""

    pages: int
    fill: Fill
    mergeable: bool = True
    lazy: bool = False
    thp: bool = False  # backed by transparent huge pages
    node: int = 0  # the NUMA node its pages are on


@dataclass(frozen=True)
class ProcessSpec:
    """A guest process; ``start``/``exit`` are scenario times in seconds (``exit`` None: runs on).

    ``id`` is -1 for a process started by an event without one, until the
    timeline gives it the smallest free id.
    """

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

    @property
    def mergeable(self) -> bool:
        """Whether ksmd may scan any of its memory."""
        return self.mergeable_all or any(r.mergeable for r in self.regions)


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
    nodes: int = 1  # NUMA nodes


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
    """Process ``process`` writes ``fill`` over pages ``first .. first+pages-1`` of region ``region``.

    ``pages`` is -1 until the timeline resolves it to "the rest of the region".
    """

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


@dataclass(frozen=True)
class Madvise:
    """Process ``process`` calls madvise() on region ``region``: ``mergeable`` (MADV_MERGEABLE) or not (MADV_UNMERGEABLE)."""

    process: int
    region: int
    mergeable: bool


Action = Union[SysfsWrite, StartProcess, ExitProcess, Rewrite, Touch, Madvise]


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
