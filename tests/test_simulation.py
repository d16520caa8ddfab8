"""The Simulation API: clock, run_until, apply, the process table and the /proc views."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from sysfs_emu import ScenarioError, Simulation, SimulationError

MiB = 1 << 20
GiB = 1 << 30


def pool_guest(name="qemu-system-x86", pages=2048, **extra):
    return {"name": name, "regions": [{"pages": pages, "fill": "pool", "pool": "debian"}], **extra}


def two_guests(**ksm):
    return {
        "host": {"memory": "1GiB", "boot_time": 1_700_000_000},
        "ksm": {"pages_to_scan": 500, "sleep_millisecs": 20, **ksm},
        "processes": [pool_guest(), pool_guest()],
    }


def counters(sim) -> dict[str, str]:
    return {name: sim.kernel.read_attr(name) for name in (
        "full_scans", "pages_scanned", "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
        "general_profit", "ksm_zero_pages", "stable_node_chains", "stable_node_dups")}


# ---------------------------------------------------------------------------
# run_until: a clear error, never a hang
# ---------------------------------------------------------------------------


def test_run_until_reaches_the_count_and_stops_there():
    sim = Simulation(two_guests(run=1))
    took = sim.run_until(full_scans=3)
    assert sim.kernel.read_attr("full_scans") == "3\n"
    assert took == sim.now > 0
    # 4096 candidate pages at 500 a batch, 20 ms apart: 9 batches a scan, so a
    # scan takes at least 8 sleeps of 20 ms (more with the kernel's jiffy rounding)
    assert 3 * 8 * 0.020 <= took < 3 * 9 * 0.040
    # already there: nothing to do
    assert sim.run_until(full_scans=2) == 0.0


def test_run_until_with_run_0():
    sim = Simulation(two_guests())
    with pytest.raises(SimulationError) as info:
        sim.run_until(full_scans=1)
    assert str(info.value) == "full_scans cannot reach 1 (it is 0): run is 0 (ksmd is stopped); write 1 to run"
    assert sim.now == 0.0


def test_run_until_with_run_2():
    sim = Simulation(two_guests(run=2))
    with pytest.raises(SimulationError) as info:
        sim.run_until(full_scans=1)
    assert str(info.value) == "full_scans cannot reach 1 (it is 0): run is 2 (ksmd only unmerges); write 1 to run"


def test_run_until_with_nothing_mergeable():
    data = two_guests(run=1)
    for p in data["processes"]:
        p["regions"][0]["mergeable"] = False
    sim = Simulation(data)
    with pytest.raises(SimulationError) as info:
        sim.run_until(full_scans=1)
    assert str(info.value) == (
        "full_scans cannot reach 1 (it is 0): no running process has mergeable memory, so ksmd has nothing to scan")
    with pytest.raises(SimulationError):
        Simulation({"host": {"memory": "1GiB"}, "ksm": {"run": 1}}).run_until(full_scans=1)


def test_run_until_waits_for_an_event_that_makes_progress_possible():
    data = two_guests()
    data["events"] = [{"at": "10m", "sysfs": {"run": 1}}]
    sim = Simulation(data)
    sim.run_until(full_scans=1)
    assert 600 < sim.now < 601
    assert sim.kernel.read_attr("full_scans") == "1\n"


def test_run_until_gives_up_when_the_enabling_event_is_too_late():
    data = two_guests()
    data["events"] = [{"at": "2h", "sysfs": {"run": 1}}]
    sim = Simulation(data)
    with pytest.raises(SimulationError) as info:
        sim.run_until(full_scans=1, timeout=3600)
    assert str(info.value) == "full_scans cannot reach 1 (it is 0): run is 0 (ksmd is stopped); write 1 to run"


def test_run_until_times_out_in_simulated_time():
    sim = Simulation(two_guests(run=1, pages_to_scan=1, sleep_millisecs=1000))
    with pytest.raises(SimulationError) as info:
        sim.run_until(full_scans=1, timeout=60)
    assert str(info.value) == (
        "full_scans is 0, not 1, after 1m of simulated time (pages_to_scan 1, sleep_millisecs 1000); "
        "give run_until a longer timeout")
    assert sim.now == 60.0


def test_run_until_stops_when_an_event_stops_ksmd():
    data = two_guests(run=1, pages_to_scan=1, sleep_millisecs=100)
    data["events"] = [{"at": "30s", "sysfs": {"run": 0}}]
    sim = Simulation(data)
    with pytest.raises(SimulationError) as info:
        sim.run_until(full_scans=1)
    assert str(info.value) == "full_scans cannot reach 1 (it is 0): run is 0 (ksmd is stopped); write 1 to run"
    assert sim.now == 30.0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_run_until_rejects_bad_goals(bad):
    with pytest.raises(ValueError):
        Simulation(two_guests(run=1)).run_until(full_scans=bad)


# ---------------------------------------------------------------------------
# advance: events at their times, determinism
# ---------------------------------------------------------------------------


def test_events_apply_at_their_simulated_times():
    data = two_guests()
    data["processes"][1]["start"] = "30s"
    data["events"] = [
        {"at": "10s", "sysfs": {"run": 1}},
        {"at": "1m", "exit": 0},
        {"at": "1m30s", "start": pool_guest(name="late")},
    ]
    sim = Simulation(data)
    assert sim.kernel.run == 0 and [p.id for p in sim.processes] == [0]
    assert sim.next_event_time == 10.0
    sim.advance(9.999)
    assert sim.kernel.run == 0
    sim.advance(0.001)
    assert sim.kernel.run == 1 and sim.now == 10.0
    sim.advance(19.5)
    assert [p.id for p in sim.processes] == [0]
    sim.advance(0.5)
    assert [p.id for p in sim.processes] == [0, 1]
    assert sim.process(1).start_time == 30.0
    sim.advance(70)  # over the exit at 1m and the start at 1m30s
    assert [(p.id, p.name, p.start_time) for p in sim.processes] == [(1, "qemu-system-x86", 30.0), (2, "late", 90.0)]
    assert sim.next_event_time is None and sim.now == 100.0


def test_advance_rejects_negative_and_infinite_time():
    sim = Simulation(two_guests())
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            sim.advance(bad)


def _run(steps: list[float], data=None) -> tuple[dict, str, list]:
    sim = Simulation(data or two_guests(run=1))
    for s in steps:
        sim.advance(s)
    return counters(sim), sim.meminfo(), [p.ksm_stat_text() for p in sim.processes]


def test_same_calls_give_the_same_state():
    data = two_guests(run=1)
    data["events"] = [{"at": 0.3, "rewrite": {"process": 1, "first": 100, "pages": 50, "fill": "unique"}}]
    assert _run([0.1] * 10, data) == _run([0.1] * 10, data)
    assert _run([0.1] * 10, data)[0]["pages_sharing"] != "0\n"


def test_slicing_time_differently_gives_the_same_state():
    """ksmd runs on the simulated clock: 60 calls of 1 s end where one call of 60 s does."""
    assert _run([1.0] * 60) == _run([60.0])
    assert _run([0.37] * 10) == _run([3.7])


# ---------------------------------------------------------------------------
# apply
# ---------------------------------------------------------------------------


def test_apply_runs_events_now():
    sim = Simulation(two_guests())
    sim.advance(5)
    sim.apply({"sysfs": {"run": 1, "pages_to_scan": 1000}})
    assert sim.kernel.read_attr("run") == "1\n" and sim.kernel.read_attr("pages_to_scan") == "1000\n"
    sim.apply({"start": {"name": "new-guest", "regions": [{"pages": 10, "fill": "zero"}]}})
    (new,) = [p for p in sim.processes if p.name == "new-guest"]
    assert (new.id, new.pid, new.start_time) == (2, 1002, 5.0)
    sim.apply({"at": 5, "exit": 0})  # 'at' may be given if it is now
    assert [p.id for p in sim.processes] == [1, 2]
    # a process started with an exit time (scenario time) goes away then
    sim.apply({"start": {"name": "brief", "id": 10, "exit": 8}})
    assert sim.next_event_time == 8.0
    sim.advance(2.5)
    assert [p.id for p in sim.processes] == [1, 2, 10]
    sim.advance(0.5)
    assert [p.id for p in sim.processes] == [1, 2] and sim.now == 8.0


@pytest.mark.parametrize(
    "event, message",
    [
        ({"exit": 5}, "event: exit: no process with id 5 is running"),
        ({"rewrite": {"process": 0, "region": 3, "fill": "zero"}},
         "event: rewrite.region: process 0 has 1 region(s), no region 3"),
        ({"touch": {"process": 9}}, "event: touch.process: no process with id 9 is running"),
        ({"rewrite": {"process": 0, "first": 2000, "pages": 100, "fill": "zero"}},
         "event: rewrite.pages: first + pages = 2100 is past the end of region 0 (2048 pages)"),
        ({"start": {"name": "x", "id": 1}}, "event: start.id: id 1 is already used by another process of this simulation"),
        ({"start": {"name": "x", "exit": 0}}, "event: start.exit: must be after the start (0s), got 0s"),
        ({"at": 3, "exit": 0}, "event: at: apply() runs an event now (0s); leave out 'at'"),
        ({"sysfs": {"max_page_sharing": 0}}, "event: sysfs.max_page_sharing: at 0s the kernel refuses '0': EINVAL (Invalid argument)"),
        ({"sysfs": {"run": 1}, "exit": 0}, "event: needs exactly one of sysfs, start, exit, rewrite, touch, madvise, got sysfs, exit"),
        ({"stop": 0}, "event: stop: unknown key (expected one of: at, sysfs, start, exit, rewrite, touch, madvise)"),
        ({"start": {"name": "x", "regions": [{"pages": -1, "fill": "zero"}]}},
         "event: start.regions[0].pages: must be >= 0, got -1"),
        ({"start": {"name": "x", "regions": [{"size": "2GiB", "fill": "unique"}]}},
         "event: start: starting process 2 at 0s brings the guests' resident memory to 2064MiB, more than the host has "
         "for them (1008MiB): out of memory"),
    ],
)
def test_apply_errors(event, message):
    sim = Simulation(two_guests())
    with pytest.raises(ScenarioError) as info:
        sim.apply(event)
    assert str(info.value) == message
    assert [p.id for p in sim.processes] == [0, 1]


def test_a_refused_sysfs_event_names_the_event():
    data = two_guests(run=1)
    data["events"] = [{"at": "1m", "sysfs": {"merge_across_nodes": 0}}]
    sim = Simulation(data, source="busy.yaml")
    sim.run_until(full_scans=3)
    assert sim.kernel.read_attr("pages_shared") != "0\n"
    with pytest.raises(SimulationError) as info:
        sim.advance(60)
    assert str(info.value) == (
        "busy.yaml: events[0].sysfs.merge_across_nodes: at 1m the kernel refuses '0': EBUSY (Device or resource busy)")


def test_out_of_memory_when_lazy_pages_fault_in():
    data = {
        "host": {"memory": "64MiB", "used": 0, "buffers": 0, "cached": 0},
        "processes": [{"name": "big", "regions": [{"size": "48MiB", "fill": "unique", "lazy": True}]},
                      {"name": "small", "regions": [{"size": "24MiB", "fill": "unique"}]}],
        "events": [{"at": 10, "touch": {"process": 0, "pages": 8192}}, {"at": 20, "touch": {"process": 0}}],
    }
    sim = Simulation(data, source="oom.yaml")
    sim.advance(15)
    assert sim.process(0).rss_pages == 8192
    with pytest.raises(SimulationError) as info:
        sim.advance(10)
    assert str(info.value) == (
        "oom.yaml: events[1].touch: at 20s the guests need 72MiB, more than the host has for them (64MiB): out of memory")


# ---------------------------------------------------------------------------
# The process table
# ---------------------------------------------------------------------------


def test_process_table():
    sim = Simulation({
        "host": {"memory": "1GiB", "pid_base": 4000, "uptime": "1h", "boot_time": 1_700_000_000},
        "processes": [
            {"name": "qemu-system-x86_64", "cmdline": "qemu-system-x86_64 -name vm1 -enable-kvm", "id": 7,
             "regions": [{"pages": 100, "fill": "zero"}, {"pages": 50, "fill": "unique", "lazy": True}]},
            {"name": "other", "start": 20, "mergeable_all": True, "regions": [{"pages": 10, "fill": "zero", "mergeable": False}]},
        ],
    })
    assert sim.boot_time == 1_700_000_000 and sim.uptime_at_start == 3600.0 and sim.uptime == 3600.0
    assert sim.page_size == 4096 and sim.mem_total_kb == 1024 * 1024
    (p,) = sim.processes
    assert (p.pid, p.id, p.name, p.cmdline) == (4007, 7, "qemu-system-x86", ["qemu-system-x86_64", "-name", "vm1", "-enable-kvm"])
    assert (p.start_time, p.rss_pages, p.vsz_pages, p.ksm_merging_pages) == (3600.0, 100, 150, 0)
    assert sim.process_by_pid(4007).id == 7 and sim.process_by_pid(4008) is None
    sim.advance(20)
    assert [(q.pid, q.start_time) for q in sim.processes] == [(4001, 3620.0), (4007, 3600.0)]
    assert sim.process(1).ksm_stat_text() == (
        "ksm_rmap_items 0\nksm_zero_pages 0\nksm_merging_pages 0\nksm_process_profit 0\n"
        "ksm_merge_any: yes\nksm_mergeable: yes\n")
    assert sim.uptime == 3620.0


def test_comm_is_cut_to_15_bytes():
    sim = Simulation({"host": {"memory": "1GiB"}, "processes": [{"name": "qemu-system-x86_64"}, {"name": "kvm"}]})
    assert [p.name for p in sim.processes] == ["qemu-system-x86", "kvm"]


def test_boot_time_defaults_to_now_minus_uptime():
    import time

    sim = Simulation({"host": {"memory": "1GiB", "uptime": "1d"}})
    assert abs(sim.boot_time - (time.time() - 86400)) < 5


# /proc/PID/ksm_stat of the reference kernel (Linux 6.18), recorded once, so the test does not
# depend on the kernel it runs on; on a 6.18 kernel the live file is compared too.
REAL_KSM_STAT = Path(__file__).parent / "data" / "ksm_stat-linux-6.18.txt"


def _live_ksm_stat_if_6_18() -> str | None:
    live = Path("/proc/self/ksm_stat")
    if os.uname().release.startswith("6.18.") and live.exists():
        return live.read_text()
    return None


def test_ksm_stat_has_the_real_kernels_lines():
    sim = Simulation(two_guests(run=1))
    sim.run_until(full_scans=3)
    text = sim.processes[0].ksm_stat_text()

    def shape(t: str) -> list[str]:
        return [re.sub(r"-?\d+$", "N", re.sub(r"(yes|no)$", "B", line)) for line in t.splitlines()]

    assert shape(text) == shape(REAL_KSM_STAT.read_text())
    live = _live_ksm_stat_if_6_18()
    if live is not None:
        assert shape(text) == shape(live)
    values = dict(line.rsplit(" ", 1) for line in text.splitlines())
    rmap, zero, merging = int(values["ksm_rmap_items"]), int(values["ksm_zero_pages"]), int(values["ksm_merging_pages"])
    assert merging == 2048 and sim.processes[0].ksm_merging_pages == 2048
    assert int(values["ksm_process_profit"]) == (merging + zero) * 4096 - rmap * 64


# ---------------------------------------------------------------------------
# /proc/meminfo
# ---------------------------------------------------------------------------


# /proc/meminfo of the reference machine (Linux 6.18, x86_64), recorded once: the simulator's
# fields and layout are compared with it, not with whatever kernel runs the tests.
REAL_MEMINFO = Path(__file__).parent / "data" / "meminfo-linux-6.18-x86_64.txt"


def _meminfo_fields(text: str) -> list[tuple[str, int, bool]]:
    """(name, value, has the kB unit) of each line."""
    fields = []
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields.append((name, int(rest.split()[0]), line.endswith(" kB")))
    return fields


def _kernel_layout(name: str, value: int, kb: bool) -> str:
    """A meminfo line as fs/proc/meminfo.c prints it: the name and colon in 16 columns, then the value
    right-aligned in 8 (or wider) and " kB"; hugetlb's counts are "   %5lu" after the label, no unit."""
    label = f"{name + ':':<16}"
    return f"{label}{value:>8} kB" if kb else f"{label}   {value:>5}"


def test_meminfo_has_linux_6_18s_fields_in_order():
    real = _meminfo_fields(REAL_MEMINFO.read_text())
    ours = _meminfo_fields(Simulation({"host": {"memory": "64GiB"}, "processes": [pool_guest()]}).meminfo())
    assert [(name, kb) for name, _, kb in ours] == [(name, kb) for name, _, kb in real]


@pytest.mark.parametrize("memory", ["64GiB", "16MiB", "1TiB", "48TiB"])
def test_meminfo_lines_have_the_kernels_layout(memory):
    real = REAL_MEMINFO.read_text()
    assert real.splitlines() == [_kernel_layout(*f) for f in _meminfo_fields(real)]  # the rule is the kernel's
    text = Simulation({"host": {"memory": memory}}).meminfo()
    assert text.endswith("\n") and text.count("\n") == len(real.splitlines())
    assert text.splitlines() == [_kernel_layout(*f) for f in _meminfo_fields(text)]


def test_meminfo_identities():
    sim = Simulation({"host": {"memory": "8GiB", "swap": "2GiB"}, "processes": [pool_guest(pages=100_000)]})
    m = sim.meminfo_kb()
    assert m["MemTotal"] == 8 * 1024 * 1024
    assert m["MemFree"] == m["MemTotal"] - 128 * 1024 - m["Buffers"] - m["Cached"] - 100_000 * 4
    assert (m["Buffers"], m["Cached"]) == (8 * 1024, 256 * 1024)
    assert m["Slab"] == m["SReclaimable"] + m["SUnreclaim"] and m["KReclaimable"] == m["SReclaimable"]
    assert m["Active"] == m["Active(anon)"] + m["Active(file)"]
    assert m["Inactive"] == m["Inactive(anon)"] + m["Inactive(file)"]
    lru = m["Active"] + m["Inactive"] + m["Unevictable"]
    assert lru == m["AnonPages"] + m["Buffers"] + m["Cached"]
    assert m["AnonPages"] >= 100_000 * 4
    assert m["SwapTotal"] == m["SwapFree"] == 2 * 1024 * 1024
    assert m["CommitLimit"] == m["SwapTotal"] + m["MemTotal"] // 2
    assert m["Committed_AS"] >= 100_000 * 4
    assert m["MemFree"] < m["MemAvailable"] < m["MemFree"] + m["Buffers"] + m["Cached"] + m["SReclaimable"]
    assert m["HugePages_Total"] == 0 and m["Hugepagesize"] == 2048
    assert m["DirectMap4k"] + m["DirectMap2M"] + m["DirectMap1G"] >= m["MemTotal"]


def test_page_cache_gives_way_before_free_memory_runs_out():
    sim = Simulation({"host": {"memory": "1GiB", "used": "64MiB", "buffers": "32MiB", "cached": "128MiB"},
                      "processes": [{"name": "big", "regions": [{"size": "900MiB", "fill": "unique"}]}]})
    m = sim.meminfo_kb()
    assert m["MemFree"] == 0
    assert m["Cached"] == 1024 * 1024 - 64 * 1024 - 32 * 1024 - 900 * 1024
    assert m["Buffers"] == 32 * 1024


def test_run_until_stops_at_the_moment_the_scan_completes():
    a = Simulation(two_guests(run=1))
    took = a.run_until(full_scans=2)
    b = Simulation(two_guests(run=1))
    step = 0.001
    while b.kernel.read_attr("full_scans") != "2\n":
        b.advance(step)
    # b sees the counter at the wake-up whose batch completes the scan; run_until stops
    # when that batch's work is done: later by the batch's CPU time, well within one sleep
    assert b.now - step < took < b.now + 0.020
    assert counters(a) == counters(b)
