"""Debian's real prometheus-node-exporter reads the tree: ksmd and meminfo collectors, no error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sysfs_emu import Simulation
from sysfs_emu.tree import KSM_DIR, Tree
from tests import nodeexporter
from tests.emutree import small_scenario

# The files node_exporter 1.5's ksmd collector reads, and its metric for each.
KSMD_METRICS = {
    "full_scans": "node_ksmd_full_scans_total",
    "merge_across_nodes": "node_ksmd_merge_across_nodes",
    "pages_shared": "node_ksmd_pages_shared",
    "pages_sharing": "node_ksmd_pages_sharing",
    "pages_to_scan": "node_ksmd_pages_to_scan",
    "pages_unshared": "node_ksmd_pages_unshared",
    "pages_volatile": "node_ksmd_pages_volatile",
    "run": "node_ksmd_run",
}


@pytest.fixture(scope="module")
def node_exporter() -> Path:
    return nodeexporter.binary()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_ksmd_and_meminfo_collectors_read_every_metric(node_exporter, tmp_path):
    sim = Simulation(small_scenario())
    sim.advance(30.0)  # ksmd has merged something
    root = tmp_path / "host"
    root.mkdir()
    tree = Tree(sim, root)
    tree.create()
    log = tmp_path / "node_exporter.log"
    with nodeexporter.running(node_exporter, f"--path.procfs={root / 'proc'}", f"--path.sysfs={root / 'sys'}",
                              "--collector.disable-defaults", "--collector.ksmd", "--collector.meminfo",
                              log=log) as exporter:
        samples = _samples(exporter.first)
        assert samples['node_scrape_collector_success{collector="ksmd"}'] == 1
        assert samples['node_scrape_collector_success{collector="meminfo"}'] == 1
        for name, metric in KSMD_METRICS.items():
            assert samples[metric] == int(sim.kernel.read_attr(name)), name
        assert samples["node_ksmd_sleep_seconds"] == int(sim.kernel.read_attr("sleep_millisecs")) / 1000
        assert samples["node_ksmd_pages_sharing"] > 0
        # Every meminfo line becomes a metric with the same value (kB lines in bytes).
        for line in sim.meminfo().splitlines():
            key, rest = line.split(":")
            parts = rest.split()
            metric = "node_memory_" + re.sub(r"[()]", "_", key).rstrip("_") + ("_bytes" if len(parts) == 2 else "")
            factor = 1024 if len(parts) == 2 else 1
            assert samples[metric] == int(parts[0]) * factor, metric
        # The exporter follows the tree as the simulation moves on.
        sim.advance(30.0)
        tree.sync()
        again = _samples(exporter.scrape())
        assert again["node_ksmd_pages_sharing"] == int(sim.kernel.read_attr("pages_sharing"))
        assert again["node_memory_MemFree_bytes"] == sim.meminfo_kb()["MemFree"] * 1024
    assert b"collector failed" not in log.read_bytes()
    assert KSM_DIR == "sys/kernel/mm/ksm"
