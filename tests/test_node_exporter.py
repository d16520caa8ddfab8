"""Debian's real prometheus-node-exporter reads the tree: ksmd and meminfo collectors, no error."""

from __future__ import annotations

import re
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from sysfs_emu import Simulation
from sysfs_emu.tree import KSM_DIR, Tree
from tests import debpkg
from tests.emutree import small_scenario, wait_for

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
    try:
        root = debpkg.unpacked("prometheus-node-exporter")
    except debpkg.Unavailable as e:
        pytest.skip(str(e))
    binary = root / "usr/bin/prometheus-node-exporter"
    if not binary.exists():
        pytest.skip(f"{binary} not in the package")
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


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
    port = _free_port()
    log = open(tmp_path / "node_exporter.log", "wb")
    proc = subprocess.Popen(
        [str(node_exporter), f"--path.procfs={root / 'proc'}", f"--path.sysfs={root / 'sys'}",
         "--collector.disable-defaults", "--collector.ksmd", "--collector.meminfo",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=log,
    )
    try:
        def up():
            try:
                return _scrape(port)
            except OSError:
                return None

        text = wait_for(up, what="node_exporter to answer")
        samples = _samples(text)
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
        again = _samples(_scrape(port))
        assert again["node_ksmd_pages_sharing"] == int(sim.kernel.read_attr("pages_sharing"))
        assert again["node_memory_MemFree_bytes"] == sim.meminfo_kb()["MemFree"] * 1024
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert b"collector failed" not in (tmp_path / "node_exporter.log").read_bytes()
    assert KSM_DIR == "sys/kernel/mm/ksm"
