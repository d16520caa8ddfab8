"""The simulated ksmd's rules, with exact counters for small hand-worked cases (no real kernel)."""

from __future__ import annotations

import errno
import random
from types import SimpleNamespace

import numpy as np
import pytest

from sysfs_emu import procstats
from sysfs_emu.kernel import Kernel
from sysfs_emu.ksmd import TICK, CostModel, Ksmd, msecs_to_jiffies
from sysfs_emu.ksmd.timing import Work, batch_period, split_into_batches, wake_after
from sysfs_emu.memory import Memory


def make(vectorise: bool = True, **attrs):
    kernel = Kernel()
    memory = Memory()
    ksmd = Ksmd(kernel, memory, vectorise=vectorise)
    kernel.engine = ksmd
    settings = {"pages_to_scan": 100000, "sleep_millisecs": 0, **attrs}
    for name, value in settings.items():
        kernel.write_attr(name, str(value))
    return kernel, memory, ksmd


def scans(kernel, ksmd, n: int) -> dict[str, int]:
    kernel.write_attr("run", "1")
    ksmd.advance(3600, until_full_scans=ksmd.seqnr + n)
    return ksmd.counters()


def core(c: dict[str, int]) -> tuple:
    return tuple(c[k] for k in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
                                "ksm_zero_pages", "stable_node_chains", "stable_node_dups", "general_profit"))


def test_merging_needs_two_passes():
    kernel, memory, ksmd = make()
    memory.add_region(1, [5, 5, 9])
    c = scans(kernel, ksmd, 1)
    assert core(c) == (0, 0, 0, 3, 0, 0, 0, -3 * 64)
    c = scans(kernel, ksmd, 1)
    # the two 5s make one KSM page; 9 waits in the unstable tree
    assert core(c) == (1, 1, 1, 0, 0, 0, 0, 4096 - 3 * 64)
    assert c["pages_scanned"] == 6 and c["full_scans"] == 2


def test_pool_shared_by_three_processes():
    kernel, memory, ksmd = make()
    for pid in (1, 2, 3):
        memory.add_region(pid, np.arange(100, 150))
    c = scans(kernel, ksmd, 2)
    assert core(c) == (50, 100, 0, 0, 0, 0, 0, 100 * 4096 - 150 * 64)
    stat = memory.process_stats(2)
    assert stat.ksm_stat_text() == (
        "ksm_rmap_items 50\nksm_zero_pages 0\nksm_merging_pages 50\n"
        f"ksm_process_profit {50 * 4096 - 50 * 64}\nksm_merge_any: no\nksm_mergeable: yes\n"
    )
    # merging frees memory but not resident size
    assert memory.rss_pages(2) == 50
    assert memory.physical_pages() == 50


def test_max_page_sharing_chains_duplicates():
    kernel, memory, ksmd = make()
    memory.add_region(1, np.full(600, 7))
    c = scans(kernel, ksmd, 2)
    # 256 + 256 + 88 sharers: three KSM pages chained under one content
    assert core(c) == (3, 597, 0, 0, 0, 1, 3, 597 * 4096 - 600 * 64)
    assert memory.physical_pages() == 3


@pytest.mark.parametrize("limit,expect", [(2, (5, 5, 0, 0, 0, 1, 5)), (3, (3, 6, 1, 0, 0, 1, 3)), (5, (2, 8, 0, 0, 0, 1, 2))])
def test_small_max_page_sharing(limit, expect):
    kernel, memory, ksmd = make(max_page_sharing=limit)
    memory.add_region(1, np.full(10, 3))
    c = scans(kernel, ksmd, 2)
    rmap = memory.rmap_items
    assert core(c)[:7] == expect
    assert c["general_profit"] == expect[1] * 4096 - rmap * 64


def test_zero_pages_use_zero_pages():
    kernel, memory, ksmd = make(use_zero_pages=1)
    memory.add_region(1, np.zeros(10, dtype=np.int64))
    c = scans(kernel, ksmd, 2)
    # mapped to the zero page; the rmap items linger until the next scan passes
    assert core(c) == (0, 0, 0, 10, 10, 0, 0, 10 * 4096 - 10 * 64)
    assert memory.rss_pages(1) == 0 and memory.physical_pages() == 0
    c = scans(kernel, ksmd, 1)
    assert core(c) == (0, 0, 0, 0, 10, 0, 0, 10 * 4096)
    assert memory.process_stats(1).ksm_zero_pages == 10
    # a write to a zero page gives the process its own page back
    memory.write_pages(0, 0, [0, 0])
    assert ksmd.counters()["ksm_zero_pages"] == 8
    assert memory.rss_pages(1) == 2


def test_zero_pages_without_use_zero_pages_merge_like_any_content():
    kernel, memory, ksmd = make()
    memory.add_region(1, np.zeros(10, dtype=np.int64))
    c = scans(kernel, ksmd, 2)
    assert core(c) == (1, 9, 0, 0, 0, 0, 0, 9 * 4096 - 10 * 64)


def test_copy_on_write_break_is_seen_at_the_next_visit():
    kernel, memory, ksmd = make()
    r1 = memory.add_region(1, np.arange(10, 20))
    memory.add_region(2, np.arange(10, 20))
    c = scans(kernel, ksmd, 2)
    assert core(c)[:4] == (10, 10, 0, 0)
    before = memory.physical_pages()
    memory.write_pages(r1, 0, memory.new_contents(4))
    assert memory.physical_pages() == before + 4
    assert core(ksmd.counters())[:4] == (10, 10, 0, 0)  # ksmd has not looked yet
    c = scans(kernel, ksmd, 1)
    assert core(c)[:4] == (10, 6, 0, 4)  # KSM pages live on with one mapper
    c = scans(kernel, ksmd, 1)
    assert core(c)[:4] == (10, 6, 4, 0)


def test_ksm_page_freed_when_last_mapper_writes():
    kernel, memory, ksmd = make()
    r1 = memory.add_region(1, [10])
    r2 = memory.add_region(2, [10])
    scans(kernel, ksmd, 2)
    memory.write_pages(r1, 0, [11])
    memory.write_pages(r2, 0, [12])
    assert memory.physical_pages() == 2
    c = scans(kernel, ksmd, 1)
    assert core(c)[:4] == (0, 0, 0, 2)


def test_run_2_unmerges_everything_and_resets_full_scans():
    kernel, memory, ksmd = make(use_zero_pages=1)
    memory.add_region(1, [1, 1, 1, 0, 0, 4])
    scans(kernel, ksmd, 3)
    kernel.write_attr("run", "2")
    c = ksmd.counters()
    assert core(c) == (0, 0, 0, 0, 0, 0, 0, 0)
    assert c["full_scans"] == 0 and c["pages_scanned"] == 6 + 6 + 4  # the zero pages are not candidates in scan 3
    assert memory.physical_pages() == 6 and memory.rss_pages(1) == 6


def test_busy_refuses_max_page_sharing_while_shared():
    kernel, memory, ksmd = make()
    memory.add_region(1, [1, 1])
    scans(kernel, ksmd, 2)
    with pytest.raises(OSError) as err:
        kernel.write_attr("max_page_sharing", "10")
    assert err.value.errno == errno.EBUSY
    kernel.write_attr("run", "2")
    kernel.write_attr("max_page_sharing", "10")
    assert kernel.read_attr("max_page_sharing") == "10\n"


def test_smart_scan_skip_schedule():
    kernel, memory, ksmd = make()
    memory.add_region(1, [42])  # never merges
    skipped = []
    for _ in range(14):
        skipped.append(scans(kernel, ksmd, 1)["pages_skipped"])
    # ages 3.. allow 1, 2, 4, 8 skips between visits
    assert skipped == [0, 0, 0, 0, 1, 1, 2, 3, 3, 4, 5, 6, 7, 7]
    assert ksmd.pages_scanned == 14 - 7


def test_smart_scan_off_visits_every_page():
    kernel, memory, ksmd = make(smart_scan=0)
    memory.add_region(1, [42])
    c = scans(kernel, ksmd, 14)
    assert c["pages_skipped"] == 0 and c["pages_scanned"] == 14


def test_exit_leaves_rmap_items_until_ksmd_passes():
    kernel, memory, ksmd = make()
    memory.add_region(1, np.arange(1, 5))
    memory.add_region(2, np.arange(1, 5))
    scans(kernel, ksmd, 2)
    memory.remove_process(2)
    # KSM pages are still mapped by process 1
    assert core(ksmd.counters())[:2] == (4, 4)
    c = scans(kernel, ksmd, 1)
    assert core(c)[:4] == (4, 0, 0, 0)
    assert memory.rmap_items == 4
    assert 2 not in memory.processes


def test_lazy_pages_are_not_candidates_until_faulted_in():
    kernel, memory, ksmd = make()
    r = memory.add_region(1, np.full(8, 3), mapped=False)
    c = scans(kernel, ksmd, 2)
    assert c["pages_scanned"] == 0 and memory.rss_pages(1) == 0
    memory.fault_in(r, 0, 4)
    c = scans(kernel, ksmd, 2)
    assert core(c)[:2] == (1, 3) and memory.rss_pages(1) == 4


def test_prctl_makes_every_region_mergeable():
    kernel, memory, ksmd = make()
    memory.add_process(1)
    memory.set_process_mergeable(1)
    memory.add_region(1, [2, 2], mergeable=False)
    scans(kernel, ksmd, 2)
    stat = memory.process_stats(1)
    assert stat.ksm_merge_any and stat.ksm_merging_pages == 2


def test_unmergeable_region_is_left_alone():
    kernel, memory, ksmd = make()
    memory.add_region(1, [2, 2], mergeable=False)
    memory.add_region(2, [2, 2])
    c = scans(kernel, ksmd, 2)
    assert core(c)[:2] == (1, 1) and c["pages_scanned"] == 4


def test_batch_period_follows_jiffies():
    assert msecs_to_jiffies(20) == 5 and msecs_to_jiffies(10) == 3 and msecs_to_jiffies(1) == 1
    kernel, memory, ksmd = make(pages_to_scan=100, sleep_millisecs=20, smart_scan=0)
    memory.add_region(1, memory.new_contents(4000))
    scans(kernel, ksmd, 3)
    t0 = ksmd.clock
    scans(kernel, ksmd, 1)
    # 40 full batches plus the empty one that finds the end; each 5 + 1 ticks
    assert ksmd.clock - t0 == pytest.approx(41 * 6 * TICK, rel=1e-6)
    kernel.write_attr("sleep_millisecs", "10")
    scans(kernel, ksmd, 1)
    t0 = ksmd.clock
    scans(kernel, ksmd, 1)
    assert ksmd.clock - t0 == pytest.approx(41 * 4 * TICK, rel=1e-6)


def test_advance_respects_time():
    kernel, memory, ksmd = make(pages_to_scan=100, sleep_millisecs=20, smart_scan=0)
    memory.add_region(1, memory.new_contents(1000))
    kernel.write_attr("run", "1")
    ksmd.advance(1.0)
    # a wake-up every 24 ms from t=0: 42 batches of 100 pages (11 per full scan)
    assert ksmd.pages_scanned == 42 * 100 - 3 * 100
    assert ksmd.seqnr == 3
    kernel.write_attr("run", "0")
    ksmd.advance(10.0)
    assert ksmd.seqnr == 3


def test_advisor_scan_time_retunes_pages_to_scan():
    kernel, memory, ksmd = make(pages_to_scan=100, sleep_millisecs=20, smart_scan=0)
    kernel.write_attr("advisor_mode", "scan-time")
    assert kernel.pages_to_scan == 500
    memory.add_region(1, memory.new_contents(1000))
    scans(kernel, ksmd, 1)
    # scan time 1 s (rounded), cpu under 1 %: the lower cpu bound wins, 500 / 1 * 10
    assert kernel.pages_to_scan == 5000


def random_workload(seed: int, vectorise: bool, steps: int = 12):
    rng = random.Random(seed)
    settings = {
        "max_page_sharing": rng.choice([2, 3, 5, 256]),
        "use_zero_pages": rng.choice([0, 1]),
        "smart_scan": rng.choice([0, 1]),
        "pages_to_scan": rng.choice([7, 50, 100000]),
        "sleep_millisecs": rng.choice([1, 20]),
    }
    kernel, memory, ksmd = make(vectorise, **settings)
    regions = []
    for pid in range(1, rng.randint(2, 5)):
        for _ in range(rng.randint(1, 3)):
            n = rng.randint(1, 60)
            contents = [rng.choice([0, 1, 2, 3, rng.randint(4, 40), rng.randint(100, 10**6)]) for _ in range(n)]
            regions.append((memory.add_region(pid, contents, mergeable=rng.random() < 0.85), n))
    trace = []
    kernel.write_attr("run", "1")
    for step in range(steps):
        ksmd.advance(rng.choice([0.01, 0.05, 0.3, 2.0]))
        trace.append(ksmd.counters())
        action = rng.random()
        if action < 0.3:
            rid, n = rng.choice(regions)
            if memory.regions[rid].alive:
                first = rng.randrange(n)
                k = rng.randint(1, n - first)
                memory.write_pages(rid, first, [rng.choice([0, 1, 2, rng.randint(4, 40)]) for _ in range(k)])
        elif action < 0.35:
            pids = [p for p, proc in memory.processes.items() if proc.alive]
            if len(pids) > 1:
                memory.remove_process(rng.choice(pids))
        elif action < 0.4:
            kernel.write_attr("run", "2")
            kernel.write_attr("run", "1")
    stats = {pid: memory.process_stats(pid) for pid, proc in memory.processes.items() if proc.alive}
    return trace, stats, memory.physical_pages()


@pytest.mark.parametrize("seed", range(40))
def test_vectorised_equals_page_by_page(seed):
    assert random_workload(seed, True) == random_workload(seed, False)


@pytest.mark.parametrize("seed", range(0, 40, 3))
def test_look_ups_in_small_steps_equal_page_by_page(seed, monkeypatch):
    # passes are looked up in steps of 32768 pages at scale; steps of 2 cross contents between steps here
    expected = random_workload(seed, False)
    monkeypatch.setattr(Ksmd, "LOOKUP_CHUNK", 2)
    assert random_workload(seed, True) == expected


def test_stop_at_a_batch_boundary_by_pages_scanned():
    kernel, memory, ksmd = make()
    memory.add_region(1, [42])
    kernel.write_attr("run", "1")
    # the page is visited in scans 1, 2, 3, 4, 6, 9 and 14: 7 visits end scan 14's last batch,
    # but the end of the scan is only found by the next (empty) batch
    ksmd.advance(3600, until_pages_scanned=7)
    assert (ksmd.seqnr, ksmd.pages_scanned, ksmd.pages_skipped) == (13, 7, 7)
    ksmd.advance(3600, until_full_scans=15, until_pages_scanned=7)
    assert (ksmd.seqnr, ksmd.pages_scanned, ksmd.pages_skipped) == (15, 7, 8)


def test_vanished_ksm_page_leaves_the_other_sharers_stats():
    kernel, memory, ksmd = make()
    r1 = memory.add_region(1, [10, 11])
    r2 = memory.add_region(2, [10, 11])
    memory.add_region(3, [10])
    scans(kernel, ksmd, 2)
    assert memory.process_stats(3).ksm_merging_pages == 1
    # every mapper of the KSM page for 10 writes: the page is freed
    for r in (r1, r2):
        memory.write_pages(r, 0, [20])
    memory.write_pages(memory.processes[3].regions[0], 0, [21])
    # one page only: process 1's rewritten page finds the KSM page gone
    kernel.write_attr("pages_to_scan", "1")
    ksmd.advance(3600, until_pages_scanned=ksmd.pages_scanned + 1)
    assert core(ksmd.counters())[:2] == (1, 1)
    assert memory.process_stats(3).ksm_merging_pages == 0  # its rmap item is not visited yet
    kernel.write_attr("pages_to_scan", "100")
    c = scans(kernel, ksmd, 1)
    # the first rmap item removed finds the page gone and takes the node (and all its items) away
    assert core(c)[:2] == (1, 1)
    assert [memory.process_stats(pid).ksm_merging_pages for pid in (1, 2, 3)] == [1, 1, 0]


def test_process_numbers_agree_after_a_shared_ksm_page_vanishes():
    """/proc/PID/ksm_stat and the live tree's numbers are one count: items of a vanished KSM page stop merging."""
    kernel, memory, ksmd = make()
    r1 = memory.add_region(1, [10, 11])
    r2 = memory.add_region(2, [10, 11])
    r3 = memory.add_region(3, [10])
    scans(kernel, ksmd, 2)
    for r, content in ((r1, 20), (r2, 20), (r3, 21)):
        memory.write_pages(r, 0, [content])
    kernel.write_attr("pages_to_scan", "1")
    ksmd.advance(3600, until_pages_scanned=ksmd.pages_scanned + 1)
    # process 1's visit removed the KSM page of 10 from the stable tree; the rmap items of processes 2
    # and 3 still point at it, unvisited, but no longer count as merging (remove_node_from_stable_tree)
    for pid, merging in ((1, 1), (2, 1), (3, 0)):
        stats = memory.process_stats(pid)
        fast = procstats.numbers(memory, pid)
        assert (stats.ksm_merging_pages, fast.ksm_merging_pages) == (merging, merging)
        assert fast.ksm_stat_text == stats.ksm_stat_text()
        assert fast.rss_pages == memory.rss_pages(pid)


def test_cost_model_and_batch_timing_alone():
    cost = CostModel()
    assert cost.tree(4096) == pytest.approx(4.7e-6)  # measured with 4096 pages in the unstable tree
    assert cost.tree(8192) == pytest.approx(4.7e-6 + 0.75e-6)  # one level more
    assert cost.tree(2) == cost.tree(0) == cost.checksum  # never below a checksum
    work = Work(visits=15, ksm=1, skipped=2, changed=3, tree=4, merges=5)
    assert work.seconds(cost, 4096) == pytest.approx(0.37e-6 + 2 * 0.30e-6 + 3 * 1.0e-6 + 4 * 4.7e-6 + 5 * 1.5e-6)
    # a batch sleeps msecs_to_jiffies(sleep) and wakes one tick later; work past a tick adds a tick
    assert batch_period(100e-6, 20, cost) == pytest.approx(6 * TICK)
    assert batch_period(4.7e-3, 20, cost) == pytest.approx(7 * TICK)
    assert batch_period(100e-6, 10, cost) == pytest.approx(4 * TICK)
    assert batch_period(100e-6, 0, cost) == pytest.approx(100e-6 + cost.batch)  # no sleep: just the work
    # 4000 pages at 100 a batch: 40 full batches and the empty one that finds the end (984 ms on Linux 6.18)
    b = split_into_batches(40e-3, 4000, 100, ended=True)
    assert (b.count, b.full, b.last) == (41, pytest.approx(1e-3), pytest.approx(0.0))
    last_start = wake_after(0.0, b.count - 1, b.full, 20, cost)
    assert wake_after(last_start, 1, b.last, 20, cost) == pytest.approx(41 * 6 * TICK)
    # at 1000 a batch each full batch's work passes a tick: 4 x 7 + 6 ticks (136 ms on Linux 6.18)
    b = split_into_batches(4 * 4.7e-3, 4000, 1000, ended=True)
    last_start = wake_after(0.0, b.count - 1, b.full, 20, cost)
    assert (b.count, wake_after(last_start, 1, b.last, 20, cost)) == (5, pytest.approx(34 * TICK))
    # a run that stops inside a full scan: every batch is a full one
    b = split_into_batches(3e-3, 250, 100, ended=False)
    assert (b.count, b.full, b.last) == (3, pytest.approx(1.2e-3), pytest.approx(1.2e-3))


def test_ksmd_reads_its_tunables_through_a_small_interface():
    tunables = SimpleNamespace(
        run=1, pages_to_scan=100000, sleep_millisecs=0, max_page_sharing=256, use_zero_pages=0, smart_scan=1,
        stable_node_chains_prune_millisecs=2000, advisor_mode="none", advisor_max_cpu=70,
        advisor_max_pages_to_scan=30000, advisor_target_scan_time=200,
    )
    memory = Memory()
    ksmd = Ksmd(tunables, memory)
    memory.add_region(1, [5, 5, 9])
    ksmd.advance(3600, until_full_scans=2)
    assert core(ksmd.counters()) == (1, 1, 1, 0, 0, 0, 0, 4096 - 3 * 64)
    kernel = Kernel()
    Ksmd(kernel, Memory())
    assert kernel.engine is None  # plugging it in is the builder's choice, not a side effect


# ---- the chain walk ----------------------------------------------------------

def _walk_oracle(nodes, chain: list[int], prune: bool, max_page_sharing: int) -> tuple[int, list[int]]:
    """stable_node_dup()'s walk, one dup at a time as mm/ksm.c writes it: (the pick, the stale dups passed)."""
    def room(n):
        return 0 < nodes.count[n] < max_page_sharing

    found, passed = -1, []
    for dup in chain:
        if nodes.alive[dup] and nodes.mapcount[dup] == 0:
            passed.append(dup)
            continue
        if found < 0 or (room(dup) and (not room(found) or nodes.count[dup] > nodes.count[found])):
            found = dup
            if not prune and room(found):
                break
    return found, passed


def test_the_chain_walk_picks_and_prunes_as_the_kernel_walks():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from sysfs_emu.ksmd.stable import StableTree

    dup = st.tuples(st.integers(0, 6), st.integers(0, 3), st.booleans())  # count, mapcount, alive
    # long chains of mostly full dups: the walk looks at them piece by piece
    def with_some(length_and_changes):
        (length, changes), chain = length_and_changes, []
        chain = [(6, 1, True)] * length
        for at, state in changes:
            chain[at % length] = state
        return chain

    long_chain = st.tuples(st.integers(1, 700), st.lists(st.tuples(st.integers(0, 699), dup), max_size=4)).map(with_some)

    @settings(max_examples=400, deadline=None)
    @given(st.one_of(st.lists(dup, min_size=1, max_size=12), long_chain), st.booleans(), st.integers(2, 6))
    def check(dups, prune, max_page_sharing):
        memory = Memory()
        ids = memory.new_ksm_pages(np.full(len(dups), 7, dtype=np.int64))
        for n, (count, mapcount, alive) in zip(ids, dups):
            memory.nodes.count[n], memory.nodes.mapcount[n], memory.nodes.alive[n] = count, mapcount, alive
        tree = StableTree(memory, SimpleNamespace(max_page_sharing=max_page_sharing))
        chain = [int(n) for n in ids]
        assert tree._walk(chain, prune) == _walk_oracle(memory.nodes, chain, prune, max_page_sharing)

    check()
    # one dup with room, or a stale one, at every place of a long chain of full dups
    memory = Memory()
    ids = [int(n) for n in memory.new_ksm_pages(np.full(700, 7, dtype=np.int64))]
    tree = StableTree(memory, SimpleNamespace(max_page_sharing=6))
    for special in ((1, 1, True), (3, 0, True)):
        for at in range(len(ids)):
            for n in ids:
                memory.nodes.count[n], memory.nodes.mapcount[n], memory.nodes.alive[n] = 6, 1, True
            memory.nodes.count[ids[at]], memory.nodes.mapcount[ids[at]], memory.nodes.alive[ids[at]] = special
            for prune in (False, True):
                assert tree._walk(ids, prune) == _walk_oracle(memory.nodes, ids, prune, 6), (special, at, prune)
