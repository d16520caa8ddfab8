"""The example scenarios that ship with sysfs-emu: listed, valid, and showing what they say."""

from __future__ import annotations

import pytest

from sysfs_emu import Simulation
from sysfs_emu.cli import shipped_scenarios
from tests.emutree import cli

STUDY = ["study-1-ubuntu", "study-2-different-os", "study-2-same-os", "study-3-same-os"]
REQUIRED = ["idle-host", *STUDY, "datacenter-day", "volatile-guest", "demo"]


def test_scenarios_command_lists_each_with_one_line():
    r = cli("scenarios")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(shipped_scenarios()) and set(REQUIRED) <= set(names)
    for line in lines:
        name, description = line.split(None, 1)
        assert len(description) > 20, line


@pytest.mark.parametrize("name", STUDY)
def test_study_setups_use_the_study_settings(name):
    sim = Simulation.from_yaml(shipped_scenarios()[name])
    k = sim.kernel
    assert (k.read_attr("sleep_millisecs"), k.read_attr("pages_to_scan"), k.read_attr("max_page_sharing")) == \
        ("200\n", "100\n", "256\n")
    assert all(p.vsz_pages == 262144 for p in sim.processes)  # 1 GiB guests
    assert len(sim.processes) == {"1": 1, "2": 2, "3": 3}[name.split("-")[1]]


def _shared_after_two_scans(name: str) -> int:
    sim = Simulation.from_yaml(shipped_scenarios()[name])
    sim.run_until(full_scans=3)
    return int(sim.kernel.read_attr("pages_shared"))


def test_study_shape_same_os_shares_far_more_than_different_os():
    one = _shared_after_two_scans("study-1-ubuntu")
    different = _shared_after_two_scans("study-2-different-os")
    same = _shared_after_two_scans("study-2-same-os")
    three = _shared_after_two_scans("study-3-same-os")
    # The study's table 2: 4894, 5361, 18440, 18320 pages shared.
    assert one < different < same
    assert same > 3 * different
    assert abs(three - same) < 0.05 * same


def test_datacenter_day_has_40_guests_that_start_and_stop():
    sim = Simulation.from_yaml(shipped_scenarios()["datacenter-day"])
    spec = sim.scenario
    assert spec.host.memory == 64 << 30
    assert len(spec.processes) == 40
    assert sum(p.exit is not None for p in spec.processes) >= 20
    assert sum(p.start > 0 for p in spec.processes) >= 20
    assert max(p.exit or 0 for p in spec.processes) <= 86400


def test_idle_and_volatile_scenarios_load():
    assert Simulation.from_yaml(shipped_scenarios()["idle-host"]).processes == []
    sim = Simulation.from_yaml(shipped_scenarios()["volatile-guest"])
    sim.advance(120)
    assert int(sim.kernel.read_attr("pages_volatile")) > 0
