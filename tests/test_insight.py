"""Readings beyond ksmtuned's rule: ksmd's CPU time, copy-on-write breaks, guests' names and KSM numbers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ksmtuned_py import config as configmod
from ksmtuned_py import procinfo
from ksmtuned_py.filehost import FileHost
from ksmtuned_py.simhost import SimulationHost
from sysfs_emu import Simulation

TWO_GUESTS = {
    "host": {"memory": "2GiB"},
    "ksm": {"pages_to_scan": 5000, "sleep_millisecs": 10, "run": 1},
    "processes": [
        {"name": "qemu-system-x86", "cmdline": "qemu-system-x86_64 -name guest=web-1,debug-threads=on -m 64",
         "regions": [{"pages": 3000, "fill": "pool", "pool": "p"}, {"pages": 1000, "fill": "unique"}]},
        {"name": "kvm", "cmdline": "/usr/bin/kvm -id 101 -m 64",
         "regions": [{"pages": 3000, "fill": "pool", "pool": "p"}]},
    ],
}


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, name", [
    (["qemu-system-x86_64", "-name", "guest=web-1,debug-threads=on"], "web-1"),  # libvirt
    (["qemu-system-x86_64", "-name", "debug-threads=on,guest=db"], "db"),
    (["qemu-system-x86_64", "-name", "guest=a,,b,debug-threads=on"], "a,b"),  # ",," is a comma
    (["qemu-system-x86_64", "-name", "plain"], "plain"),
    (["qemu-system-x86_64", "--name=eq"], "eq"),
    (["/usr/bin/kvm", "-id", "100", "-name", "vm100,debug-threads=on"], "vm100"),  # Proxmox VE
    (["/usr/bin/kvm", "-id", "101"], "101"),
    (["qemu-system-x86_64", "-name", "process=qemu-x"], "42"),  # no guest name: the pid
    (["qemu-system-x86_64", "-m", "1024"], "42"),
    ([], "42"),
])
def test_guest_names(argv, name):
    assert procinfo.guest_name(argv, 42) == name


# --- ksm_stat, stat, vmstat, smaps texts ------------------------------------------------------


def test_ksm_stat_of_every_kernel_generation():
    new = b"ksm_rmap_items 200\nksm_zero_pages 3\nksm_merging_pages 100\nksm_process_profit -4096\n" \
          b"ksm_merge_any: no\nksm_mergeable: yes\n"
    assert procinfo.parse_ksm_stat(new) == procinfo.KsmStat(200, 3, 100, -4096, False, True)
    # Linux 6.1: only the first lines, so whether memory is mergeable is not said
    old = b"ksm_rmap_items 5\nksm_merging_pages 2\nksm_process_profit 8192\n"
    assert procinfo.parse_ksm_stat(old) == procinfo.KsmStat(5, None, 2, 8192, None, None)
    assert procinfo.parse_ksm_stat(b"") is None
    assert procinfo.parse_ksm_stat(b"ksm_rmap_items \xb2\n") is None


def test_stat_cpu_time_and_vmstat_counters(tmp_path):
    line = b"37 (ksmd) S 2 0 0 0 -1 2097216 0 0 0 0 120 5148 0 0 25 5 1 0 17 0 0 0\n"
    assert procinfo.stat_cpu_seconds(line) == (120 + 5148) / procinfo.CLOCK_TICKS
    assert procinfo.stat_cpu_seconds(b"37 (ksmd) S 2") is None
    (tmp_path / "vmstat").write_bytes(b"nr_free_pages 5\ncow_ksm 14390\nksm_swpin_copy 0\n")
    assert procinfo.vmstat_counter(str(tmp_path), "cow_ksm") == 14390
    assert procinfo.vmstat_counter(str(tmp_path), "nr_free_pages") == 5
    assert procinfo.vmstat_counter(str(tmp_path), "ksm") is None
    assert procinfo.vmstat_counter(str(tmp_path / "none"), "cow_ksm") is None


def test_smaps_mappings_and_flags_of_a_real_process():
    """A madvised area shows VmFlags mg (mergeable); the others do not."""
    import mmap

    area = mmap.mmap(-1, 64 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        area.madvise(mmap.MADV_MERGEABLE)
        area.write(b"x" * len(area))
        maps = procinfo.read_smaps("/proc", os.getpid())
        mergeable = [m for m in maps if m.mergeable]
        assert any(m.size_kb >= 64 * mmap.PAGESIZE // 1024 and m.rss_kb > 0 and m.name == "" for m in mergeable)
        assert any(m.name.startswith("[stack") and not m.mergeable for m in maps)
    finally:
        area.close()
    assert procinfo.read_smaps("/proc", 2 ** 22 + 1) is None


# --- hosts -------------------------------------------------------------------------------


def test_the_simulation_host_reads_ksmds_cpu_time_and_copy_on_write_breaks():
    sim = Simulation(TWO_GUESTS)
    host = SimulationHost.from_config(sim, configmod.load(os.devnull, environ={"KSM_PROCESS_REGEX": "^(qemu|kvm)"}))
    first = host.read()
    assert first.ksmd_cpu_seconds == 0 and first.cow_ksm == 0
    assert [(g.name, g.comm) for g in first.guests] == [("web-1", "qemu-system-x86"), ("101", "kvm")]
    sim.run_until(full_scans=3)
    merged = host.read()
    assert merged.ksmd_cpu_seconds == sim.ksmd.cpu_time > 0
    assert merged.ksm.counters["pages_sharing"] == 3000
    sim.apply({"rewrite": {"process": 1, "region": 0, "first": 0, "pages": 500, "fill": "unique"}})
    assert host.read().cow_ksm == 500  # each write to a merged page copies it


def test_the_file_host_reads_the_real_ksmd_and_vmstat():
    if not Path("/sys/kernel/mm/ksm").is_dir():
        pytest.skip("the kernel has no KSM")
    host = FileHost("/")
    before = procinfo.vmstat_counter("/proc", "cow_ksm")
    readings = host.read()
    after = procinfo.vmstat_counter("/proc", "cow_ksm")
    if before is None:
        assert readings.cow_ksm is None
    else:
        assert before <= readings.cow_ksm <= after
    ksmd = host.scanner.ksmd_pid
    assert Path(f"/proc/{ksmd}/comm").read_text() == "ksmd\n"
    fields = Path(f"/proc/{ksmd}/stat").read_text().rsplit(")", 1)[1].split()
    assert readings.ksmd_cpu_seconds <= (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    host.scanner.close()


# --- status -------------------------------------------------------------------------------

from tests.ksm_guests import ksm_guests  # noqa: E402
from tests.test_cli import cli  # noqa: E402
from tests.test_daemon import daemons, host  # noqa: E402,F401 (fixtures)


def test_status_shows_each_guest_its_name_and_ksm_numbers(host):
    import json

    with ksm_guests({"name": "web-1"}, {"name": "db-1", "mergeable": False},
                    {"name": "x", "comm": "kvm", "argv0": "/usr/bin/kvm", "args": ("-id", "104")}) as (web, db, pve):
        for g in (web, db, pve):
            host.link(g.pid)
        host.conf.write_text(host.conf.read_text() + "KSM_PROCESS_REGEX='^(qemu-system-x86|kvm)$'\n")
        r = cli(host, "status", "--json")
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        text = cli(host, "status").stdout
    by_pid = {g["pid"]: g for g in s["guests"]}
    assert [by_pid[g.pid]["name"] for g in (web, db, pve)] == ["web-1", "db-1", "104"]
    assert [by_pid[g.pid]["mergeable"] for g in (web, db, pve)] == [True, False, True]
    for g in (web, db, pve):
        # Their pages are like no other's: nothing merges, so each rmap item (64 bytes) is a loss.
        # (The real ksmd may be scanning them for another test: the numbers are one reading's.)
        mine = by_pid[g.pid]
        assert mine["ksm_merging_pages"] == 0 and mine["ksm_zero_pages"] == 0
        assert mine["ksm_process_profit"] == -64 * mine["ksm_rmap_items"]
    from ksmtuned_py.report import human_bytes

    size = human_bytes(by_pid[db.pid]["committed_kb"] * 1024)
    assert f"guest:      {db.pid} db-1 (qemu-system-x86) {size}, merging 0 pages, profit 0 B,\n" \
           "            NOT mergeable (see ksmtuned-py doctor)\n" in text  # not mergeable: never scanned
    # no ksmd in this tree: its CPU is not known; the unmerge figures come from the tree's files
    assert s["ksmd"] == {"cpu_seconds": None, "cpu_percent": None, "over": "since boot", "cpu_budget_percent": 20}
    # (the tree's meminfo has MemAvailable 100000 kB and no swap)
    assert s["unmerge"] == {"need_bytes": 2560 * os.sysconf("SC_PAGE_SIZE"), "room_bytes": 100000 * 1024, "fits": True}


# --- said once per change -------------------------------------------------------------------

from ksmtuned_py.cycle import Cycle  # noqa: E402
from ksmtuned_py.notices import Notices  # noqa: E402
from ksmtuned_py.policies import from_config  # noqa: E402


def test_knobs_another_program_writes_between_cycles_are_reported_and_logged_once(caplog):
    sim = Simulation(TWO_GUESTS)
    cfg = configmod.load(os.devnull, environ={"KSM_THRES_COEF": "99"})  # free < thres: KSM runs
    cycle, notices = Cycle(SimulationHost.from_config(sim, cfg), from_config(cfg)), Notices()
    reports = []
    with caplog.at_level("INFO", logger="ksmtuned_py.notices"):
        for other in (None, "1000", "1000", None, None):
            if other:
                sim.kernel.write_attr("pages_to_scan", other + "\n")  # tuned, a second tuner...
            sim.advance(60)
            reports.append(cycle.run())
            notices(reports[-1])
    assert [r.knobs_changed for r in reports] == [(), ("pages_to_scan 300 -> 1000",),
                                                 ("pages_to_scan 600 -> 1000",), (), ()]
    assert [r.getMessage() for r in caplog.records] == [
        "another program changed pages_to_scan between cycles (pages_to_scan 300 -> 1000): tuned, KubeVirt, "
        "Harvester or a second tuner? The daemon writes its own values each cycle, so the two fight over KSM",
        "the KSM knobs kept the daemon's values this cycle",
    ]
    assert notices.other_writer == {"time": 180.0, "changes": ["pages_to_scan 600 -> 1000"]}


def test_the_unmerge_risk_is_logged_when_it_appears_and_when_it_goes(caplog):
    from dataclasses import replace

    from ksmtuned_py.report import CycleReport

    base = CycleReport(time=0, duration=0, cycles=1, action="start", level="boost", reason="", npages=1,
                       sleep_ms=1, free_kb=0, committed_kb=0, thres_kb=0, total_kb=1, guests=0,
                       advisor_active=False, status="")
    notices = Notices()
    with caplog.at_level("INFO", logger="ksmtuned_py.notices"):
        for need, room in ((1 << 30, 4 << 30), (6 << 30, 4 << 30), (7 << 30, 4 << 30), (1 << 30, 4 << 30)):
            notices(replace(base, unmerge_need_bytes=need, unmerge_room_bytes=room))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "unmerge risk: KSM has merged 6.0 GiB that the guests would need back if they wrote it, "
                    "more than MemAvailable + SwapFree (4.0 GiB): the host could run out of memory"),
        ("INFO", "unmerge risk gone: merged 1.0 GiB fits in MemAvailable + SwapFree (4.0 GiB)"),
    ]


# --- the simulated tree serves what the real /proc does ------------------------------------------


def test_the_served_tree_has_the_ksmd_thread_and_vmstat_as_linux_shows_them(tmp_path):
    from sysfs_emu.tree import Tree

    sim = Simulation(TWO_GUESTS)
    tree = Tree(sim, tmp_path / "host")
    tree.create()
    proc = tmp_path / "host" / "proc"
    real = Path("/proc/vmstat").read_text().split()[0::2]
    assert (proc / "vmstat").read_text().split()[0::2] == real  # the same counters, in the same order
    ksmd = proc / str(tree.ksmd_pid)
    assert (ksmd / "comm").read_text() == "ksmd\n" and (ksmd / "cmdline").read_bytes() == b""
    assert "Kthread:\t1\n" in (ksmd / "status").read_text()
    sim.run_until(full_scans=3)
    sim.apply({"rewrite": {"process": 0, "region": 0, "first": 0, "pages": 100, "fill": "unique"}})
    tree.sync(force=True)
    host = FileHost(tmp_path / "host")
    readings = host.read()
    assert host.scanner.ksmd_pid == tree.ksmd_pid  # a kernel thread named ksmd, as on Linux
    assert readings.ksmd_cpu_seconds == int(sim.ksmd.cpu_time * 100) / 100 > 0
    assert readings.cow_ksm == sim.memory.cow_ksm == 100
    # and the same parser on the real kernel's files reads the same fields
    if Path("/sys/kernel/mm/ksm").is_dir():
        real_host = FileHost("/")
        assert real_host.read().ksmd_cpu_seconds is not None
        real_host.scanner.close()


def test_empty_pages_merged_into_the_zero_page_count_as_saved(tmp_path):
    """With use_zero_pages, ksm_zero_pages is memory saved too (the kernel's documentation): status, simulate."""
    from ksmtuned_py import status
    from sysfs_emu.tree import Tree

    scenario = {**TWO_GUESTS, "ksm": {**TWO_GUESTS["ksm"], "use_zero_pages": 1}}
    scenario["processes"] = [{**p, "regions": [*p["regions"], {"pages": 500, "fill": "zero"}]}
                             for p in TWO_GUESTS["processes"]]
    sim = Simulation(scenario)
    sim.run_until(full_scans=3)
    c = sim.kernel.counters()
    assert c["ksm_zero_pages"] == 1000 and c["pages_sharing"] == 3000
    assert sim.saved_bytes == 4000 * 4096
    Tree(sim, tmp_path / "host").create()
    cfg = configmod.load(os.devnull, environ={})
    s = status.collect(cfg, str(tmp_path / "host"))
    assert s["saved_bytes"] == 4000 * 4096
    assert "saved:      15.6 MiB (pages_sharing 3000 + ksm_zero_pages 1000 x 4096 B)" in status.render_text(s)
