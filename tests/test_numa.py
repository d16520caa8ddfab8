"""merge_across_nodes 0 on a simulated host of several NUMA nodes (not verifiable against a real
multi-node kernel here: the machine has one node; these are the kernel's rules, worked by hand)."""

from __future__ import annotations

import errno

import pytest

from sysfs_emu import ScenarioError, Simulation
from sysfs_emu.kernel import Kernel
from sysfs_emu.ksmd import Ksmd
from sysfs_emu.memory import Memory


def make(nodes: int = 2, **attrs):
    kernel, memory = Kernel(), Memory()
    memory.numa_nodes = nodes
    ksmd = Ksmd(kernel, memory)
    kernel.engine = ksmd
    for name, value in {"pages_to_scan": 100000, "sleep_millisecs": 20, **attrs}.items():
        kernel.write_attr(name, str(value))
    return kernel, memory, ksmd


def scan(kernel, ksmd, n: int = 1) -> tuple[int, int, int, int]:
    kernel.write_attr("run", "1")
    ksmd.advance(3600, until_full_scans=ksmd.seqnr + n)
    c = ksmd.counters()
    return c["pages_shared"], c["pages_sharing"], c["pages_unshared"], c["pages_volatile"]


def pool(n: int) -> list[int]:
    return list(range(1000, 1000 + n))


def test_pages_on_two_nodes_merge_only_across_nodes_when_allowed():
    for mac, expect in ((1, (100, 100, 0, 0)), (0, (0, 0, 200, 0))):
        kernel, memory, ksmd = make(merge_across_nodes=mac)
        memory.add_region(1, pool(100), node=0)
        memory.add_region(2, pool(100), node=1)
        assert scan(kernel, ksmd, 2) == expect, mac


def test_within_a_node_pages_merge_as_usual():
    kernel, memory, ksmd = make(nodes=3, merge_across_nodes=0)
    memory.add_region(1, pool(100), node=1)
    memory.add_region(2, pool(100), node=1)
    memory.add_region(3, pool(100), node=2)
    memory.add_region(4, pool(60), node=2)
    memory.add_region(5, pool(100), node=0)
    # node 1: 100 KSM pages, 2 mappers each; node 2: 60 with 2, 40 pages alone; node 0: 100 alone
    assert scan(kernel, ksmd, 2) == (160, 160, 140, 0)
    assert memory.process_stats(5).ksm_merging_pages == 0 and memory.process_stats(4).ksm_merging_pages == 60


def test_empty_pages_merge_per_node_and_stay_empty():
    kernel, memory, ksmd = make(merge_across_nodes=0, use_zero_pages=0)
    memory.add_region(1, [0] * 50, node=0)
    memory.add_region(2, [0] * 50, node=1)
    assert scan(kernel, ksmd, 2) == (2, 98, 0, 0)  # one KSM page of zeros per node
    kernel2, memory2, ksmd2 = make(merge_across_nodes=0, use_zero_pages=1)
    memory2.add_region(1, [0] * 50, node=0)
    memory2.add_region(2, [0] * 50, node=1)
    scan(kernel2, ksmd2, 2)
    assert ksmd2.counters()["ksm_zero_pages"] == 100  # an empty page on any node is an empty page


def test_switching_merge_across_nodes_needs_no_merged_pages_and_keeps_checksums():
    kernel, memory, ksmd = make(merge_across_nodes=1)
    memory.add_region(1, pool(100), node=0)
    memory.add_region(2, pool(100), node=1)
    assert scan(kernel, ksmd, 2) == (100, 100, 0, 0)
    kernel.write_attr("run", "0")
    with pytest.raises(OSError) as info:
        kernel.write_attr("merge_across_nodes", "0")
    assert info.value.errno == errno.EBUSY
    kernel.write_attr("run", "2")
    kernel.write_attr("merge_across_nodes", "0")
    assert scan(kernel, ksmd, 1) == (0, 0, 0, 200)  # run 2 freed the rmap items: first visits again
    assert scan(kernel, ksmd, 1) == (0, 0, 200, 0)
    kernel.write_attr("run", "0")
    kernel.write_attr("merge_across_nodes", "1")  # nothing merged: allowed, and the checksums still hold
    assert scan(kernel, ksmd, 1) == (100, 100, 0, 0)


def test_one_node_ignores_merge_across_nodes():
    kernel, memory, ksmd = make(nodes=1, merge_across_nodes=0)
    memory.add_region(1, pool(100), node=0)
    memory.add_region(2, pool(100), node=0)
    assert scan(kernel, ksmd, 2) == (100, 100, 0, 0)


def test_scenario_places_regions_on_nodes():
    base = {
        "host": {"memory": "1GiB", "nodes": 2},
        "ksm": {"merge_across_nodes": 0, "pages_to_scan": 100000, "sleep_millisecs": 20, "run": 1},
        "processes": [{"name": "g", "regions": [{"pages": 300, "fill": "pool", "pool": "os", "node": 0}]},
                      {"name": "g", "regions": [{"pages": 300, "fill": "pool", "pool": "os", "node": 1}]},
                      {"name": "g", "regions": [{"pages": 300, "fill": "pool", "pool": "os", "node": 1}]}],
    }
    sim = Simulation(base)
    sim.run_until(full_scans=2)
    assert sim.kernel.read_attr("pages_sharing") == "300\n"
    sim.apply({"rewrite": {"process": 0, "fill": "pool", "pool": "os"}})  # the same contents again, node 0
    sim.run_until(full_scans=4)
    assert sim.kernel.read_attr("pages_sharing") == "300\n"
    with pytest.raises(ScenarioError, match=r"processes\[1\].regions\[0\].node: must be below host.nodes \(2\), got 2"):
        Simulation({**base, "processes": [base["processes"][0],
                                          {"name": "g", "regions": [{"pages": 1, "fill": "zero", "node": 2}]}]})
    with pytest.raises(ScenarioError, match=r"host.nodes: must be >= 1, got 0"):
        Simulation({**base, "host": {"memory": "1GiB", "nodes": 0}})
