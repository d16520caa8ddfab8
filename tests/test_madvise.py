"""madvise(MADV_UNMERGEABLE / MADV_MERGEABLE) on a region, in the memory model and as a scenario event
(the same sequence runs against the real kernel in tests/test_fidelity.py)."""

from __future__ import annotations

import pytest

from sysfs_emu import ScenarioError, Simulation, SimulationError
from sysfs_emu.kernel import Kernel
from sysfs_emu.ksmd import Ksmd
from sysfs_emu.memory import Memory


def pool(first: int, n: int) -> list[int]:
    return list(range(1000 + first, 1000 + first + n))


def make(**attrs):
    kernel, memory = Kernel(), Memory()
    ksmd = Ksmd(kernel, memory)
    kernel.engine = ksmd
    for name, value in {"pages_to_scan": 100000, "sleep_millisecs": 20, **attrs, "run": 1}.items():
        kernel.write_attr(name, str(value))
    return kernel, memory, ksmd


def scan(ksmd, n: int = 1) -> dict[str, int]:
    ksmd.advance(3600, until_full_scans=ksmd.seqnr + n)
    return ksmd.counters()


def stat(memory, pid: int) -> tuple[int, int, int, int, bool]:
    s = memory.process_stats(pid)
    return s.ksm_rmap_items, s.ksm_zero_pages, s.ksm_merging_pages, s.ksm_process_profit, s.ksm_mergeable


def shared(c: dict[str, int]) -> tuple[int, int, int, int]:
    return c["pages_shared"], c["pages_sharing"], c["pages_volatile"], c["ksm_zero_pages"]


def test_unmergeable_breaks_at_once_and_ksmd_forgets_later():
    """Measured on Linux 6.18 (the numbers below are the real kernel's)."""
    kernel, memory, ksmd = make(use_zero_pages=1)
    a = memory.add_region(1, pool(0, 100) + [0] * 20)
    memory.add_region(1, pool(100, 50))
    b = memory.add_region(2, pool(0, 150))
    memory.add_region(3, pool(0, 100))
    assert shared(scan(ksmd, 2)) == (150, 250, 20, 20)
    memory.set_region_mergeable(a, False)
    # the mappings are broken at once (zero pages too); the rmap items and the sharers' counts stay
    assert shared(ksmd.counters()) == (150, 250, 20, 0) and ksmd.counters()["general_profit"] == 997120
    assert stat(memory, 1) == (170, 0, 150, 603520, True)
    assert memory.process_pages(1).merged == 50
    assert shared(scan(ksmd)) == (150, 150, 0, 0) and stat(memory, 1) == (50, 0, 50, 201600, True)
    memory.set_region_mergeable(b, False)  # process 2's only region
    assert stat(memory, 2) == (150, 0, 150, 604800, False)
    assert shared(scan(ksmd)) == (150, 0, 0, 0) and stat(memory, 2) == (0, 0, 0, 0, False)
    assert ksmd.counters()["general_profit"] == -9600
    memory.set_region_mergeable(a, True)
    assert shared(scan(ksmd)) == (150, 0, 120, 0)
    assert shared(scan(ksmd)) == (150, 100, 20, 20) and stat(memory, 1) == (170, 20, 150, 685440, True)


def test_unmergeable_twice_or_on_an_unmergeable_region_changes_nothing():
    kernel, memory, ksmd = make()
    a = memory.add_region(1, pool(0, 10), mergeable=False)
    memory.add_region(2, pool(0, 10))
    memory.set_region_mergeable(a, False)
    assert not memory.processes[1].in_ksm
    memory.set_region_mergeable(a, True)  # MADV_MERGEABLE: the process joins ksmd's list
    assert memory.processes[1].in_ksm
    assert shared(scan(ksmd, 2)) == (10, 10, 0, 0)


SCENARIO = {
    "host": {"memory": "1GiB"},
    "ksm": {"pages_to_scan": 100000, "sleep_millisecs": 20, "run": 1},
    "processes": [
        {"name": "g", "regions": [{"pages": 200, "fill": "pool", "pool": "os"}, {"pages": 10, "fill": "unique"}]},
        {"name": "g", "regions": [{"pages": 200, "fill": "pool", "pool": "os"}]},
    ],
}


def test_madvise_event():
    sim = Simulation({**SCENARIO, "events": [{"at": "1m", "madvise": {"process": 1, "advice": "unmergeable"}}]})
    sim.advance(30)
    assert sim.kernel.read_attr("pages_sharing") == "200\n"
    sim.advance(30)  # to the event: it applies at the end of this advance
    assert sim.processes[1].ksm_merging_pages == 200  # until ksmd passes
    assert "KSM:                   0 kB" in sim.processes[1].smaps_rollup_text()
    sim.advance(1)
    assert sim.kernel.read_attr("pages_sharing") == "0\n" and "ksm_mergeable: no" in sim.processes[1].ksm_stat_text()
    sim.apply({"madvise": {"process": 1, "region": 0, "advice": "mergeable"}})
    sim.advance(1)
    assert sim.kernel.read_attr("pages_sharing") == "200\n"


@pytest.mark.parametrize("event, message", [
    ({"madvise": {"process": 0, "advice": "dontneed"}}, "events[0].madvise.advice: must be mergeable or unmergeable, got 'dontneed'"),
    ({"madvise": {"process": 0}}, "events[0].madvise.advice: missing (mergeable or unmergeable)"),
    ({"madvise": {"advice": "mergeable"}}, "events[0].madvise.process: missing (the id of the process that calls madvise)"),
    ({"madvise": {"process": 0, "region": 5, "advice": "mergeable"}}, "events[0].madvise.region: process 0 has 2 region(s), no region 5"),
    ({"madvise": {"process": 7, "advice": "mergeable"}}, "events[0].madvise.process: no process with id 7 is running at 1m"),
    ({"madvise": {"process": 0, "advice": "mergeable", "first": 3}}, "events[0].madvise.first: unknown key (expected one of: process, region, advice)"),
])
def test_madvise_event_errors(event, message):
    with pytest.raises(ScenarioError) as info:
        Simulation({**SCENARIO, "events": [{"at": "1m", **event}]}, source="s.yaml")
    assert str(info.value) == f"s.yaml: {message}"


def test_madvise_apply_errors():
    sim = Simulation(SCENARIO)
    with pytest.raises(SimulationError, match="event: madvise.process: no process with id 4 is running"):
        sim.apply({"madvise": {"process": 4, "advice": "unmergeable"}})
