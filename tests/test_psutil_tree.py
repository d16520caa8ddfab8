"""psutil, pointed at the tree with PROCFS_PATH, reads every simulated process unchanged."""

from __future__ import annotations

import psutil
import pytest

from sysfs_emu import Simulation
from sysfs_emu.tree import Tree
from tests.emutree import small_scenario


@pytest.fixture
def procfs(tmp_path):
    sim = Simulation(small_scenario())
    sim.advance(3.0)  # the second guest starts at 2s
    root = tmp_path / "host"
    root.mkdir()
    tree = Tree(sim, root)
    tree.create()
    saved = psutil.PROCFS_PATH
    psutil.PROCFS_PATH = str(root / "proc")  # global: always put it back
    try:
        yield sim, tree
    finally:
        psutil.PROCFS_PATH = saved


def test_psutil_reads_name_cmdline_and_memory(procfs):
    sim, _ = procfs
    procs = sim.processes
    assert len(procs) == 3
    assert sorted(psutil.pids()) == sorted([sim.scenario.host.pid_base - 1, *(p.pid for p in procs)])  # and ksmd
    for p in procs:
        ps = psutil.Process(p.pid)
        assert ps.cmdline() == list(p.cmdline)
        # comm is cut at 15 characters; psutil completes it from the command line, as on a real host.
        expected_name = p.cmdline[0] if len(p.name) >= 15 and p.cmdline[0].startswith(p.name) else p.name
        assert ps.name() == expected_name
        mem = ps.memory_info()
        assert mem.rss == p.rss_pages * 4096
        assert mem.vms == p.vsz_pages * 4096
        assert ps.ppid() == 1
        assert ps.status() == psutil.STATUS_SLEEPING
        assert ps.create_time() == pytest.approx(sim.boot_time + p.start_time, abs=0.02)
        assert ps.uids().real == ps.uids().effective
        assert ps.num_threads() == 1


def test_psutil_process_iter_and_boot_time(procfs):
    sim, _ = procfs
    names = sorted(p.info["name"] for p in psutil.process_iter(["name"]))
    assert names == sorted(["ksmd", "qemu-system-x86_64", "qemu-system-x86_64", "sshd"])
    assert psutil.boot_time() == pytest.approx(sim.boot_time, abs=1)


def test_psutil_sees_processes_exit(procfs):
    sim, tree = procfs
    guest = sim.processes[0]
    handle = psutil.Process(guest.pid)
    sim.apply({"exit": guest.id})
    tree.sync()
    assert guest.pid not in psutil.pids()
    with pytest.raises(psutil.NoSuchProcess):
        handle.memory_info()
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(guest.pid).memory_info()


def test_psutil_pss_counts_each_ksm_page_once_over_its_mappers(procfs):
    sim, tree = procfs
    sim.advance(30.0)  # the two guests' OS images merge
    tree.sync(force=True)
    total_pss = 0
    for p in sim.processes:
        full = psutil.Process(p.pid).memory_full_info()
        assert full.rss == p.rss_pages * 4096
        total_pss += full.pss
        if p.ksm_merging_pages:
            assert full.pss < full.rss  # merged pages are shared: their cost is split
            assert full.uss < full.rss
        else:
            assert full.pss == full.uss == full.rss
    # Each physical page is counted once over all processes (to a kB per process of rounding).
    assert abs(total_pss // 1024 - sim.memory.physical_pages() * 4) <= len(sim.processes)
