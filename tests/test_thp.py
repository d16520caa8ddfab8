"""Transparent huge pages in the simulated memory and ksmd (no real kernel: the cases measured on it are
written out here; tests/test_fidelity.py runs them on the real kernel too)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest

from sysfs_emu import Simulation
from sysfs_emu.kernel import Kernel
from sysfs_emu.ksmd import Ksmd
from sysfs_emu.ksmd.timing import CostModel, Work
from sysfs_emu.memory import Memory
from sysfs_emu.pagearrays import HUGE, HUGE_PAGES, MAPPED

H = HUGE_PAGES


def make(vectorise: bool = True, **attrs):
    kernel = Kernel()
    memory = Memory()
    ksmd = Ksmd(kernel, memory, vectorise=vectorise)
    kernel.engine = ksmd
    for name, value in {"pages_to_scan": 100000, "sleep_millisecs": 20, **attrs}.items():
        kernel.write_attr(name, str(value))
    kernel.write_attr("run", "1")
    return kernel, memory, ksmd


def scan(ksmd, n: int = 1) -> dict[str, int]:
    ksmd.advance(3600, until_full_scans=ksmd.seqnr + n)
    return ksmd.counters()


def huge(memory, pid: int) -> int:
    """Pages of ``pid`` in huge pages."""
    return sum(int(((memory.pages.flags[r.start:r.stop] & HUGE) != 0).sum())
               for r in (memory.regions[i] for i in memory.processes[pid].regions))


def pool(first: int, n: int) -> list[int]:
    return list(range(1000 + first, 1000 + first + n))


def unique(n: int, base: int = 500_000) -> list[int]:
    return list(range(base, base + n))


def counts(c: dict[str, int]) -> tuple[int, int, int, int, int]:
    return c["pages_shared"], c["pages_sharing"], c["pages_unshared"], c["pages_volatile"], c["ksm_zero_pages"]


# ---- the memory model ----------------------------------------------------------------------


def test_a_thp_region_is_aligned_and_its_whole_2mib_are_huge_pages():
    memory = Memory()
    memory.add_region(1, unique(100))
    rid = memory.add_region(1, unique(2 * H + 100, 10**6), thp=True)
    region = memory.regions[rid]
    assert region.start % H == 0
    assert memory.huge_pages == 2 * H  # the last 100 pages are no whole huge page
    assert huge(memory, 1) == 2 * H and memory.rss_pages(1) == 100 + 2 * H + 100
    # the slots skipped for the alignment are reused by a later region
    small = memory.add_region(2, unique(50, 2 * 10**6))
    assert memory.regions[small].stop <= region.start


def test_a_lazy_thp_region_faults_in_2mib_at_a_time():
    memory = Memory()
    rid = memory.add_region(1, unique(3 * H), thp=True, mapped=False)
    assert memory.rss_pages(1) == 0
    memory.fault_in(rid, first=H + 5, n=1)  # one page touched: its whole huge page comes
    assert memory.rss_pages(1) == H and memory.huge_pages == H
    memory.write_pages(rid, 2 * H + 7, [5])
    assert memory.rss_pages(1) == 2 * H and memory.huge_pages == 2 * H
    assert memory.pages.content[memory.regions[rid].start + 2 * H + 7] == 5


def test_a_split_maps_the_empty_pages_to_the_zero_page_and_later_faults_are_small():
    memory = Memory()
    rid = memory.add_region(1, pool(0, 10) + [0] * (H - 10), thp=True)
    start = memory.regions[rid].start
    assert memory.split_huge(start + 3) == 1
    assert memory.huge_pages == 0 and memory.thp_splits == 1
    assert memory.rss_pages(1) == 10 and memory.physical_pages() == 10
    memory.fault_in(rid)  # the empty pages fault in again, one 4 KiB page each
    assert memory.rss_pages(1) == H and memory.huge_pages == 0


def test_exit_frees_the_huge_pages():
    memory = Memory()
    memory.add_region(1, unique(2 * H), thp=True)
    memory.remove_process(1)
    assert memory.huge_pages == 0 and memory.physical_pages() == 0


def test_writing_into_a_huge_page_does_not_split_it():
    memory = Memory()
    rid = memory.add_region(1, unique(H), thp=True)
    memory.write_pages(rid, 3, [0, 0, 7])
    assert memory.huge_pages == H and memory.thp_splits == 0


# ---- ksmd, as measured on Linux 6.18 (tests/test_fidelity.py: the same workloads on the real kernel) ------


def test_all_pages_shared_splits_both_huge_pages_at_the_merge():
    _, memory, ksmd = make()
    memory.add_region(1, pool(0, 2 * H), thp=True)
    memory.add_region(2, pool(0, 2 * H), thp=True)
    assert counts(scan(ksmd)) == (0, 0, 0, 4 * H, 0)
    assert huge(memory, 1) == huge(memory, 2) == 2 * H  # checksums only: nothing is split yet
    assert counts(scan(ksmd)) == (2 * H, 2 * H, 0, 0, 0)
    assert huge(memory, 1) == huge(memory, 2) == 0 and memory.thp_splits == 4


def test_a_huge_page_with_no_merged_page_stays_whole():
    _, memory, ksmd = make()
    memory.add_region(1, pool(0, 2 * H), thp=True)
    memory.add_region(2, pool(0, H))  # 4 KiB pages sharing the first huge page only
    scan(ksmd, 2)
    assert huge(memory, 1) == H and huge(memory, 2) == 0
    assert counts(ksmd.counters()) == (H, H, H, 0, 0)


def test_two_pages_of_one_huge_page_merge_a_scan_later():
    """The first merge attempt between two pages of one huge page only splits it."""
    _, memory, ksmd = make()
    memory.add_region(1, [5] * 8 + unique(H - 8), thp=True)
    scan(ksmd)
    assert counts(scan(ksmd)) == (1, 6, H - 8, 1, 0)
    assert counts(scan(ksmd)) == (1, 7, H - 8, 0, 0)


def test_empty_huge_pages_without_use_zero_pages_go_to_the_zero_page_at_the_split():
    _, memory, ksmd = make(use_zero_pages=0)
    memory.add_region(1, [0] * (2 * H), thp=True)
    scan(ksmd)
    c = scan(ksmd)
    # page 0 waits in the unstable tree, page 1 splits the first huge page (its pages go), the
    # second huge page finds the first one's tree page gone and waits
    assert counts(c) == (0, 0, 1, H + 1, 0) and c["pages_scanned"] == 2 * H + H + 2
    assert huge(memory, 1) == H and memory.rss_pages(1) == H
    assert counts(scan(ksmd)) == (0, 0, 1, 1, 0) and memory.rss_pages(1) == 0
    assert counts(scan(ksmd)) == (0, 0, 0, 0, 0)


def test_empty_huge_pages_with_use_zero_pages_are_not_ksm_zero_pages():
    _, memory, ksmd = make(use_zero_pages=1)
    memory.add_region(1, [0] * (2 * H), thp=True)
    scan(ksmd)
    c = scan(ksmd)
    assert counts(c) == (0, 0, 1, 1, 0) and c["pages_scanned"] == 2 * H + 2
    assert memory.rss_pages(1) == 0 and memory.process_stats(1).ksm_zero_pages == 0
    assert counts(scan(ksmd)) == (0, 0, 0, 0, 0)


def test_a_few_shared_pages_in_an_otherwise_empty_huge_page():
    _, memory, ksmd = make()
    memory.add_region(1, pool(0, 10) + [0] * (H - 10), thp=True)
    memory.add_region(2, pool(0, 10))
    scan(ksmd)
    assert counts(scan(ksmd)) == (10, 10, 1, 1, 0)
    assert memory.rss_pages(1) == 10 and memory.process_stats(1).ksm_rmap_items == 12
    assert counts(scan(ksmd)) == (10, 10, 0, 0, 0)


def test_the_split_is_in_the_cost_model():
    cost = CostModel()
    assert Work(splits=3).seconds(cost, 0) == pytest.approx(3 * cost.split)
    _, memory, ksmd = make()
    memory.add_region(1, pool(0, 2 * H), thp=True)
    memory.add_region(2, pool(0, 2 * H))
    scan(ksmd)
    before = ksmd.cpu_time
    scan(ksmd)
    _, memory2, ksmd2 = make()
    memory2.add_region(1, pool(0, 2 * H))
    memory2.add_region(2, pool(0, 2 * H))
    scan(ksmd2)
    before2 = ksmd2.cpu_time
    scan(ksmd2)
    assert (ksmd.cpu_time - before) - (ksmd2.cpu_time - before2) == pytest.approx(2 * cost.split)


# ---- the vectorised path equals the page-by-page one --------------------------------------------------


def _thp_contents(rng: random.Random, n: int) -> list[int]:
    kind = rng.random()
    if kind < 0.25:
        return [rng.randint(10**5, 10**6) for _ in range(n)]  # unique: stays huge
    if kind < 0.5:
        first = rng.randrange(200)
        return [1000 + first + i for i in range(n)]  # a pool: merges with its twin
    if kind < 0.6:
        return [0] * n
    return [rng.choice([0, 1, 2, rng.randint(4, 60), rng.randint(10**5, 10**6)]) for _ in range(n)]


def thp_workload(seed: int, vectorise: bool, steps: int = 8):
    rng = random.Random(seed)
    settings = {
        "max_page_sharing": rng.choice([2, 5, 256]),
        "use_zero_pages": rng.choice([0, 1]),
        "smart_scan": rng.choice([0, 1]),
        "pages_to_scan": rng.choice([50, 700, 100000]),
        "sleep_millisecs": rng.choice([10, 20]),
    }
    kernel, memory, ksmd = make(vectorise, **settings)
    regions = []
    for pid in range(1, rng.randint(2, 4)):
        for _ in range(rng.randint(1, 3)):
            n = rng.choice([rng.randint(1, 80), rng.randint(H, 3 * H + 40)])
            thp, lazy = rng.random() < 0.7, rng.random() < 0.2
            rid = memory.add_region(pid, _thp_contents(rng, n), mergeable=rng.random() < 0.9, thp=thp, mapped=not lazy)
            regions.append((rid, n))
    trace = []
    for _ in range(steps):
        ksmd.advance(rng.choice([0.01, 0.05, 0.3]))
        trace.append((ksmd.counters(), memory.huge_pages, memory.mapped_pages))
        action, (rid, n) = rng.random(), rng.choice(regions)
        if not memory.regions[rid].alive:
            continue
        first = rng.randrange(n)
        k = rng.randint(1, n - first)
        if action < 0.2:
            memory.write_pages(rid, first, _thp_contents(rng, k))
        elif action < 0.3:
            memory.fault_in(rid, first, k)
        elif action < 0.35:
            memory.set_region_mergeable(rid, rng.random() < 0.5)
    stats = {pid: memory.process_stats(pid) for pid, proc in memory.processes.items() if proc.alive}
    return trace, stats, memory.physical_pages(), memory.thp_splits


@pytest.mark.parametrize("seed", range(30))
def test_vectorised_equals_page_by_page_with_huge_pages(seed):
    assert thp_workload(seed, True) == thp_workload(seed, False)


def test_huge_pages_that_merge_in_bulk_stay_fast():
    """Huge pages with no empty page and no content twice are merged by the bulk path: the
    page-by-page path sees none of them."""
    kernel, memory, ksmd = make()
    for pid in (1, 2):
        memory.add_region(pid, np.arange(1000, 1000 + 8 * H), thp=True)
    scan(ksmd)
    seen = []
    original = ksmd.window.pages.visit
    ksmd.window.pages.visit = lambda s, *a, **k: (seen.append(s), original(s, *a, **k))
    assert counts(scan(ksmd)) == (8 * H, 8 * H, 0, 0, 0)
    assert seen == [] and memory.huge_pages == 0 and memory.thp_splits == 16
    assert int(((memory.pages.flags & MAPPED) != 0).sum()) == 16 * H


# ---- what /proc shows -------------------------------------------------------------------------------

DATA = Path(__file__).parent / "data"
# Recorded on Linux 6.18: a process whose first region (4 MiB, MADV_HUGEPAGE while faulted in, then
# MADV_NOHUGEPAGE) has its first 2 MiB merged with another process's 4 KiB pages and its second 2 MiB
# still a huge page, followed by 300 unique 4 KiB pages; and that process's smaps_rollup.
REAL_VMA = DATA / "smaps-vma-linux-6.18.txt"
REAL_ROLLUP = DATA / "smaps_rollup-linux-6.18.txt"


def recorded_host() -> Simulation:
    sim = Simulation({
        "host": {"memory": "1GiB"},
        "ksm": {"pages_to_scan": 100000, "sleep_millisecs": 20, "run": 1},
        "processes": [
            {"name": "guest", "regions": [{"pages": 2 * H, "fill": "pool", "pool": "os", "thp": True},
                                          {"pages": 300, "fill": "unique"}]},
            {"name": "guest", "regions": [{"pages": H, "fill": "pool", "pool": "os"}]},
        ],
    })
    sim.run_until(full_scans=2)
    return sim


def test_smaps_shows_a_half_split_huge_region_as_the_real_kernel():
    real = REAL_VMA.read_text().splitlines()
    ours = recorded_host().processes[0].smaps_text().splitlines()
    assert re.fullmatch(r"[0-9a-f]{8,}-[0-9a-f]{8,} rw-p 00000000 00:00 0 ", ours[0]), ours[0]
    assert re.fullmatch(r"[0-9a-f]{8,}-[0-9a-f]{8,} rw-p 00000000 00:00 0 ", real[0])
    start, end = (int(x, 16) for x in ours[0].split()[0].split("-"))
    assert start % (2 << 20) == 0 and end - start == 4 << 20
    # every memory line, value for value; the real region was MADV_NOHUGEPAGE once faulted in
    assert ours[1 : len(real) - 3] == real[1:-3]
    assert ours[len(real) - 3 : len(real)] == ["THPeligible:           1", "ProtectionKey:         0",
                                               "VmFlags: rd wr mr mw me ac hg mg "]
    assert real[-3:] == ["THPeligible:           0", "ProtectionKey:         0", "VmFlags: rd wr mr mw me ac nh mg "]
    assert ours[len(real)].startswith(f"{end:08x}-")  # the second region follows


def test_smaps_rollup_has_the_real_kernels_lines():
    sim = recorded_host()
    real = REAL_ROLLUP.read_text().splitlines()
    ours = sim.processes[0].smaps_rollup_text().splitlines()
    assert [line.split(":")[0] for line in ours[1:]] == [line.split(":")[0] for line in real[1:]]
    assert ours[0].index("[rollup]") == real[0].index("[rollup]")
    values = {line.split(":")[0]: int(line.split()[1]) for line in ours[1:]}
    assert (values["Rss"], values["AnonHugePages"], values["KSM"], values["Shared_Dirty"]) == (
        (2 * H + 300) * 4, H * 4, H * 4, H * 4)
    assert values["Pss"] == (H + 300) * 4 + H * 2
    assert sim.processes[0].anon_huge_pages == H and sim.processes[1].anon_huge_pages == 0


def test_meminfo_anon_huge_pages_follow_the_splits():
    sim = Simulation({
        "host": {"memory": "1GiB"},
        "ksm": {"pages_to_scan": 100000, "sleep_millisecs": 20, "run": 1},
        "processes": [{"name": "g", "regions": [{"pages": 4 * H, "fill": "pool", "pool": "os", "thp": True}]},
                      {"name": "g", "regions": [{"pages": H, "fill": "pool", "pool": "os", "thp": True}]}],
    })
    assert sim.meminfo_kb()["AnonHugePages"] == 5 * H * 4
    sim.run_until(full_scans=2)
    assert sim.meminfo_kb()["AnonHugePages"] == 3 * H * 4  # one huge page of each process was split


def test_thp_is_a_region_key():
    from sysfs_emu import ScenarioError

    with pytest.raises(ScenarioError, match=r"processes\[0\].regions\[0\].thp: must be true or false, got 'yes'"):
        Simulation({"processes": [{"name": "g", "regions": [{"pages": 10, "fill": "zero", "thp": "yes"}]}]})
    sim = Simulation({"host": {"memory": "64MiB"},
                      "processes": [{"name": "g", "regions": [{"pages": 3 * H, "fill": "unique", "thp": True,
                                                               "lazy": True}]}]})
    assert sim.processes[0].anon_huge_pages == 0
    sim.apply({"touch": {"process": 0, "first": H, "pages": 1}})
    assert sim.processes[0].anon_huge_pages == H and sim.processes[0].rss_pages == H
