"""KSM_POLICY=adaptive: ksmtuned's gate, a scan rate from what scanning costs and returns."""

from __future__ import annotations

import os
import re

import pytest

from ksmtuned_py import config as configmod
from ksmtuned_py import policies, rewrites
from ksmtuned_py.adaptive import BURST, CATCH_UP, STEADY, AdaptivePolicy, batch
from ksmtuned_py.cycle import Cycle
from ksmtuned_py.decision import Params
from ksmtuned_py.knobs import KsmState
from ksmtuned_py.readings import Guest, MemInfo, Readings
from ksmtuned_py.simhost import SimulationHost
from sysfs_emu import Simulation
from sysfs_emu.simsummary import time_average
from sysfs_emu.simulate import SOONER, Simulate

TOTAL = 16 * 1024 * 1024  # kB
MEMINFO = MemInfo(total=TOTAL, free=1_000_000, buffers=10_000, cached=100_000, available=1_200_000)


class Host:
    """A host as a policy sees it, changed by hand between cycles."""

    def __init__(self) -> None:
        self.time = 1000.0
        self.cpu = 100.0
        self.counters = {"pages_shared": 0, "pages_sharing": 0, "pages_unshared": 0, "pages_volatile": 0,
                         "full_scans": 0, "pages_scanned": 0, "ksm_zero_pages": 0, "general_profit": 0}
        self.guests = [Guest(1000 + i, "qemu-system-x86", 3_000_000) for i in range(4)]  # 12 GB: KSM runs
        self.cow = 0
        self.advisor = "none"

    def readings(self) -> Readings:
        ksm = KsmState({"run": 1, "pages_to_scan": 100, "sleep_millisecs": 20}, dict(self.counters), self.advisor)
        committed = sum(g.kb for g in self.guests)
        return Readings(self.time, MEMINFO, MEMINFO.free_kb(), committed, list(self.guests), ksm,
                        ksmd_cpu_seconds=self.cpu, cow_ksm=self.cow)

    def advance(self, seconds=60.0, scanned=0, scans=0, merged=0, cpu=0.0, cow=0) -> None:
        self.time += seconds
        self.cpu += cpu
        c = self.counters
        c["pages_scanned"] += scanned
        c["full_scans"] += scans
        c["pages_sharing"] += merged
        c["pages_shared"] += merged // 4
        c["pages_unshared"] = max(0, 3_000_000 - c["pages_sharing"] - c["pages_shared"])
        self.cow += cow


def policy(max_cpu: int = 20) -> AdaptivePolicy:
    return AdaptivePolicy(Params(), max_cpu)


def test_it_is_in_the_registry_and_chosen_by_ksm_policy():
    cfg = configmod.load(os.devnull, environ={"KSM_POLICY": "adaptive", "KSM_MAX_CPU": "35"})
    chosen = policies.from_config(cfg)
    assert isinstance(chosen, AdaptivePolicy) and chosen.max_cpu == 35
    assert isinstance(policies.from_config(configmod.load(os.devnull, environ={})), policies.KsmtunedPolicy)
    with pytest.raises(configmod.ConfigError, match="KSM_POLICY: invalid value 'fastest'; expected ksmtuned or adaptive"):
        configmod.load(os.devnull, environ={"KSM_POLICY": "fastest"})
    with pytest.raises(configmod.ConfigError, match="KSM_MAX_CPU: invalid value '101'"):
        configmod.load(os.devnull, environ={"KSM_MAX_CPU": "101"})


def test_a_spec_gives_its_cpu_budget():
    cfg = configmod.load(os.devnull, environ={"KSM_MAX_CPU": "35"})
    chosen = policies.from_spec("adaptive:max_cpu=5", cfg)
    assert isinstance(chosen, AdaptivePolicy) and (chosen.max_cpu, chosen.spec) == (5, "adaptive:max_cpu=5")
    plain = policies.from_spec("adaptive", cfg)
    assert (plain.max_cpu, plain.spec) == (35, "adaptive")  # KSM_MAX_CPU
    with pytest.raises(policies.PolicySpecError, match="max_cpu is a percentage of one CPU, 1 to 100, not 0"):
        policies.from_spec("adaptive:max_cpu=0", cfg)
    with pytest.raises(policies.PolicySpecError, match="policy adaptive takes max_cpu, not 'pages_to_scan'"):
        policies.from_spec("adaptive:pages_to_scan=5", cfg)


def test_the_gate_is_ksmtuneds():
    """KSM stops exactly when ksmtuned's rule stops it, with its reason."""
    host = Host()
    host.guests = host.guests[:1]  # 3 GB of 16: fits, and free is above thres
    readings = host.readings()
    free = MemInfo(TOTAL, 12_000_000, 10_000, 100_000, None)
    readings = Readings(readings.time, free, free.free_kb(), readings.committed_kb, readings.guests, readings.ksm)
    p, k = policy(), policies.KsmtunedPolicy(Params())
    d, kd = p.decide(readings), k.decide(readings)
    assert (d.action, d.reason, d.thres_kb, d.total_kb) == ("stop", kd.reason, kd.thres_kb, kd.total_kb)
    assert d.debug_after == (f"adaptive: stop ksm: {kd.reason}",)


class ShortHost(Host):
    """Guests that fit, and free memory just short of the threshold: KSM runs until free memory is back."""

    def __init__(self) -> None:
        super().__init__()
        self.guests = self.guests[:3]  # 9 GB; with thres (3,355,443 kB) they fit in 16 GB
        self.free = 3_000_000  # kB

    def readings(self) -> Readings:
        r = super().readings()
        mem = MemInfo(TOTAL, self.free, 0, 0, None)
        return Readings(r.time, mem, mem.free_kb(), r.committed_kb, r.guests, r.ksm, r.ksmd_cpu_seconds, r.cow_ksm)


def short_host_in_its_second_pass() -> tuple[ShortHost, AdaptivePolicy]:
    host, p = ShortHost(), policy()
    assert p.decide(host.readings()).level == BURST
    host.advance(scanned=2_250_000, scans=1, cpu=4.0)
    assert p.decide(host.readings()).reason.startswith("burst: 1 more full scan;")
    return host, p


def test_a_burst_whose_merging_brings_free_memory_back_finishes_its_full_scans_then_stops():
    """Stopping in the pass that merges what the one before checksummed would throw that pass away."""
    host, p = short_host_in_its_second_pass()
    gate = policies.KsmtunedPolicy(Params())
    host.advance(seconds=10, scanned=500_000, merged=100_000, cpu=1.0)
    host.free = 3_400_000  # above thres: the rule stops KSM
    assert gate.decide(host.readings()).action == "stop"
    d = p.decide(host.readings())
    assert (d.action, d.level) == ("start", BURST)
    assert d.reason.startswith("burst: 1 more full scan, finished although the rule would stop KSM now "
                               f"({gate.decide(host.readings()).reason}): its first pass is paid for, "
                               "and pages merge only on the second;")
    assert d.next_cycle_s == 10  # and decides again soon
    # An interval that merged nothing goes on too; a guest that starts meanwhile does not make it longer.
    host.guests.append(Guest(2000, "qemu-system-x86", 100_000))
    host.advance(seconds=10, scanned=500_000, cpu=1.0)
    d = p.decide(host.readings())
    assert (d.action, d.level) == ("start", BURST) and d.reason.startswith("burst: 1 more full scan, finished")
    host.advance(seconds=10, scanned=1_250_000, scans=1, merged=200_000, cpu=2.0)
    last = p.decide(host.readings())
    assert (last.action, last.reason) == ("stop", gate.decide(host.readings()).reason)
    # The guest that started meanwhile is new when the rule runs KSM again.
    host.free = 2_000_000
    host.advance(seconds=60, scanned=0, cpu=0.0)
    again = p.decide(host.readings())
    assert (again.level, again.reason.split(";")[0]) == (CATCH_UP, "catch-up: guest 2000 started")


def test_free_memory_back_while_nothing_merges_or_after_a_guest_left_stops_ksm_at_once():
    """Then merging is not what brought it back: the rule's stop stands."""
    gate = policies.KsmtunedPolicy(Params())
    host, p = short_host_in_its_second_pass()
    host.advance(seconds=10, scanned=500_000, cpu=1.0)  # nothing merged
    host.free = 3_400_000
    d = p.decide(host.readings())
    assert (d.action, d.reason) == ("stop", gate.decide(host.readings()).reason)
    host, p = short_host_in_its_second_pass()
    host.advance(seconds=10, scanned=500_000, merged=100_000, cpu=1.0)
    host.guests.pop()
    host.free = 3_400_000
    assert p.decide(host.readings()).action == "stop"


def test_a_burst_at_start_then_steady_once_its_scans_are_done_then_slower():
    host, p = Host(), policy()
    first = p.decide(host.readings())
    assert (first.action, first.level) == ("start", BURST)
    assert first.reason.startswith("burst: ksm starts; pages_to_scan ")
    # Nothing measured yet: the rate assumes unmerged pages cost 12 us each, within 20 % of a CPU.
    rate = first.npages / ((first.sleep_ms / 1000) + 0.004)
    assert rate * 12e-6 <= 0.20 * 1.05
    host.advance(scanned=3_000_000, scans=1, cpu=3.0)
    assert p.decide(host.readings()).reason.startswith("burst: 1 more full scan")
    host.advance(scanned=3_000_000, scans=1, merged=1_000_000, cpu=9.0)
    steady = p.decide(host.readings())
    assert steady.level == STEADY and steady.reason.startswith("steady: the burst's full scans are done")
    sleeps = []
    for _ in range(6):
        host.advance(scanned=20_000, cpu=0.05)
        d = p.decide(host.readings())
        assert d.reason.startswith("steady: full scans add no savings")
        sleeps.append((d.npages, d.sleep_ms))
    # backing off: fewer pages a second each quiet interval, down to a full scan in 8 hours
    rates = [n / (s / 1000 + 0.004) for n, s in sleeps]
    assert rates == sorted(rates, reverse=True) and rates[0] > 4 * rates[-1]


def test_a_new_guest_starts_a_catch_up_and_merges_found_by_the_steady_scan_quicken_it():
    host, p = Host(), policy()
    p.decide(host.readings())
    host.advance(scanned=6_000_000, scans=2, merged=1_000_000, cpu=10.0)
    assert p.decide(host.readings()).level == STEADY
    host.guests.append(Guest(2000, "qemu-system-x86", 10_000))
    d = p.decide(host.readings())
    assert (d.level, d.reason.split(";")[0]) == (CATCH_UP, "catch-up: guest 2000 started")
    host.advance(scanned=3_000_000, scans=2, cpu=6.0)
    # Its memory went in just behind ksmd's cursor, which was at the start of a pass (a pass
    # had just ended): after the two full scans, its own 2,500 pages and a margin of 2 % of a
    # 3,000,000-page pass remain to its second visit.
    d = p.decide(host.readings())
    assert (d.level, d.reason.split(";")[:2]) == (CATCH_UP, ["catch-up: its full scans are done",
                                                             " 62500 more pages, to the guests that started "
                                                             "behind ksmd's cursor"])
    host.advance(scanned=62_499, cpu=0.1)
    assert p.decide(host.readings()).level == CATCH_UP
    host.advance(scanned=1, cpu=0.0)
    assert p.decide(host.readings()).level == STEADY
    for _ in range(4):  # quiet intervals: the steady scan slows down
        host.advance(scanned=30_000, cpu=0.1)
        slow = p.decide(host.readings())
    host.advance(scanned=30_000, merged=5_000, cpu=0.1)
    d = p.decide(host.readings())
    # A steady scan that merges again goes back to its quickest (a full scan in 15 minutes), not to a
    # catch-up: two full scans of every guest for pages the steady scan is finding anyway.
    assert (d.level, d.reason.split(";")[0]) == (STEADY, "steady: the last interval merged 5000 pages, "
                                                          "probing at the quickest again")
    assert d.npages / (d.sleep_ms + 4) > 4 * slow.npages / (slow.sleep_ms + 4)
    assert d.reason.split("; ")[1].endswith("a full scan in 15 min")


def test_a_guest_that_starts_during_the_burst_joins_it():
    host, p = Host(), policy()
    first = p.decide(host.readings())
    host.advance(scanned=1_000_000, cpu=1.0)
    host.guests.append(Guest(2000, "qemu-system-x86", 1_000_000))
    d = p.decide(host.readings())
    assert (d.level, d.reason.split(";")[0]) == (BURST, "burst: guest 2000 started")
    assert d.npages / (d.sleep_ms + 4) >= first.npages / (first.sleep_ms + 4)  # not a catch-up's 5 % of a CPU
    host.advance(scanned=3_000_000, scans=1, cpu=3.0)
    assert p.decide(host.readings()).reason.startswith("burst: 1 more full scan")


def test_it_decides_again_sooner_while_a_burst_or_catch_up_scans():
    """ksmd can only be stopped at a decision: while its scans are due to end, the next one comes sooner."""
    host, p = Host(), AdaptivePolicy(Params(), 20, interval_s=60.0)
    first = p.decide(host.readings())
    assert (first.level, first.next_cycle_s) == (BURST, 10.0)  # a sixth of the interval
    host.advance(scanned=6_000_000, scans=2, merged=1_000_000, cpu=10.0)
    steady = p.decide(host.readings())
    assert (steady.level, steady.next_cycle_s) == (STEADY, None)  # the interval, as ksmtuned's
    host.guests.append(Guest(2000, "qemu-system-x86", 10_000))
    assert p.decide(host.readings()).next_cycle_s == 10.0  # a catch-up
    assert AdaptivePolicy(Params(), 20, interval_s=12.0).decide(Host().readings()).next_cycle_s == 5.0  # at least 5 s
    assert AdaptivePolicy(Params(), 20, interval_s=3.0).decide(Host().readings()).next_cycle_s == 3.0  # never later
    stopped = Host()
    stopped.guests = stopped.guests[:1]
    free = MemInfo(TOTAL, 12_000_000, 10_000, 100_000, None)
    r = stopped.readings()
    r = Readings(r.time, free, free.free_kb(), r.committed_kb, r.guests, r.ksm)
    assert policy().decide(r).next_cycle_s is None


def test_a_bursts_batch_holds_while_the_measured_cost_wobbles():
    """Over a sooner cycle's 10 s ksmd's cost per page wobbles: the knobs stay as they are (and the log quiet)."""
    host, p = Host(), AdaptivePolicy(Params(), 20, interval_s=60.0)
    p.decide(host.readings())
    batches = []
    for i in range(8):  # 15 us a page, then 18, then 15 ...: a budget-bound rate that would move by 20 %
        host.advance(seconds=10.0, scanned=100_000, cpu=100_000 * (15e-6 if i % 2 == 0 else 18e-6))
        d = p.decide(host.readings())
        assert d.level == BURST and "(held to 20% of a CPU" in d.reason
        batches.append((d.npages, d.sleep_ms))
    # the smoothed cost settles between the two: a change or two, not one at every cycle
    assert sum(1 for a, b in zip(batches, batches[1:]) if a != b) <= 2, batches
    host.advance(seconds=10.0, scanned=200_000, cpu=200_000 * 40e-6)  # 80 % of a CPU: over the budget at once
    d = p.decide(host.readings())
    assert d.reason.endswith("(ksmd used 80% of a CPU, over 20%)") and d.npages < batches[-1][0]


def test_simulate_runs_the_sooner_cycles():
    sim = Simulation.from_yaml(os.path.join(os.path.dirname(__file__), "..", "sysfs_emu", "scenarios", "demo.yaml"))
    loop = Simulate(sim, configmod.load(os.devnull, environ={"KSM_POLICY": "adaptive"}))
    rows = list(loop.rows(1800))
    bursts = [r for r in rows if r.report.level == BURST]
    assert bursts and all(r.report.next_cycle_s == 10.0 for r in bursts)
    for row, after in zip(rows, rows[1:]):
        if row.report.level == BURST:  # 10 s later, unless a guest starts or stops before
            assert after.cause == SOONER and after.time_s - row.time_s == pytest.approx(10.0) or \
                after.cause.startswith("guest") and after.time_s - row.time_s <= 10.0
    assert sum(1 for r in rows if r.cause == SOONER) >= 3
    steady = [r for r, after in zip(rows, rows[1:]) if r.report.level == STEADY and after.report.level == STEADY]
    assert steady and all(after.cause == "interval" for r, after in zip(rows, rows[1:]) if r in steady)


def test_the_steady_scan_is_never_faster_than_ksmtuneds_slowest():
    """On a big host a full scan in 15 minutes is faster than KSM_NPAGES_MIN pages every sleep: that is the cap."""
    host, p = Host(), policy()
    host.guests = [Guest(1000 + i, "qemu-system-x86", 6_000_000) for i in range(8)]  # 12M pages: 13,000/s for 15 min
    p.decide(host.readings())
    host.advance(scanned=24_000_000, scans=2, merged=1_000_000, cpu=20.0)
    d = p.decide(host.readings())
    sleep = p.tuner.tuning.sleep
    assert d.level == STEADY and (d.npages, d.sleep_ms) == (Params().npages_min, sleep)
    host, p = Host(), policy()  # 3M pages: 3,300/s, slower than ksmtuned's 64 every 10 ms
    p.decide(host.readings())
    host.advance(scanned=6_000_000, scans=2, merged=1_000_000, cpu=10.0)
    d = p.decide(host.readings())
    assert "a full scan in 15 min" in d.reason and (d.npages, d.sleep_ms) == (Params().npages_min, 15)


def test_copy_on_write_breaks_bring_the_probe_back():
    host, p = Host(), policy()
    p.decide(host.readings())
    host.advance(scanned=6_000_000, scans=2, merged=1_000_000, cpu=10.0)
    p.decide(host.readings())
    for _ in range(8):
        host.advance(scanned=5_000, cpu=0.02)
        slow = p.decide(host.readings())
    host.advance(scanned=5_000, cpu=0.02, cow=3_000, merged=-3_000)
    probe = p.decide(host.readings())
    assert probe.reason.startswith("steady: 3000 copy-on-write breaks, probing again sooner")
    assert probe.npages / probe.sleep_ms > slow.npages / slow.sleep_ms


def steady_after_burst(host: Host, p: AdaptivePolicy) -> None:
    p.decide(host.readings())
    host.advance(scanned=6_000_000, scans=2, merged=1_000_000, cpu=10.0)
    assert p.decide(host.readings()).level == STEADY
    for _ in range(3):
        host.advance(scanned=5_000, cpu=0.02)
        assert p.decide(host.readings()).level == STEADY


def test_the_steady_scans_gain_says_when_it_counts_copy_on_write_breaks_back():
    host, p = Host(), policy()
    steady_after_burst(host, p)
    host.advance(scanned=5_000, cpu=0.02, merged=-500, cow=2_000)  # 2,000 breaks, 500 of them seen by ksmd
    d = p.decide(host.readings())
    assert (d.level, d.reason.split(";")[0]) == (
        STEADY, "steady: the last interval merged 1500 pages (with its 2000 copy-on-write breaks counted back), "
                "probing at the quickest again")


def test_a_rewrite_of_a_tenth_of_the_merged_memory_starts_a_catch_up_which_backs_off_when_it_merges_little():
    host, p = Host(), policy()
    steady_after_burst(host, p)
    # pages_sharing still counts the broken merges (the kernel drops them only when ksmd visits
    # the pages again): 99,999 breaks of 1,000,000 merged pages are not a tenth.
    host.advance(scanned=5_000, cpu=0.02, cow=99_999)
    assert p.decide(host.readings()).level == STEADY
    host.advance(scanned=5_000, cpu=0.02, cow=100_000)
    d = p.decide(host.readings())
    assert (d.level, d.reason.split(";")[0]) == (
        CATCH_UP, "catch-up: 100000 copy-on-write breaks (the guests rewrote merged memory)")
    # The memory was rewritten with new contents: the visits drop the broken merges and merge
    # nothing back, so the catch-up goes on (smart_scan may be skipping those pages) up to 9 full scans.
    host.advance(scanned=6_000_000, scans=2, merged=-100_000, cpu=6.0)
    levels = scan_out(host, p)
    assert levels[-1].level == STEADY and len(levels) == 8  # 2 + 7 full scans
    assert levels[-2].reason.startswith("catch-up: 100000 of the copy-on-write breaks not merged back yet")
    # The next such rewrite finds that one paid nothing: no catch-up for breaks for COW_RETRY_S.
    wait = rewrites.COW_RETRY_S
    host.advance(seconds=600, scanned=5_000, cpu=0.02, cow=100_000)
    assert p.decide(host.readings()).level == STEADY
    missed = host.time
    host.advance(seconds=wait - 600, scanned=5_000, cpu=0.02, merged=-100_000)
    assert p.decide(host.readings()).level == STEADY
    host.advance(seconds=540, scanned=5_000, cpu=0.02, cow=100_000)
    assert p.decide(host.readings()).level == STEADY  # 60 s before the wait is over
    host.advance(seconds=600, scanned=5_000, cpu=0.02, cow=100_000)
    assert p.decide(host.readings()).level == CATCH_UP  # 540 s after it: tried again
    assert (p.memo.cow_retry_at, p.memo.cow_misses) == (missed + wait, 1)


def catch_up_left_behind(host: Host, p: AdaptivePolicy, breaks: int = 100_000) -> None:
    """Breaks whose catch-up ends, after its full scans, with none merged back (smart_scan skipping them)."""
    host.advance(scanned=5_000, cpu=0.02, cow=breaks)
    assert p.decide(host.readings()).level == CATCH_UP
    host.advance(scanned=6_000_000, scans=2, merged=-breaks, cpu=6.0)
    assert scan_out(host, p)[-1].level == STEADY


def scan_out(host: Host, p: AdaptivePolicy) -> list:
    """The decisions of a catch-up whose first two full scans were just advanced: a full scan each, to its end."""
    levels = [p.decide(host.readings())]
    while levels[-1].level == CATCH_UP and len(levels) < 20:
        host.advance(scanned=3_000_000, scans=1, cpu=3.0)
        levels.append(p.decide(host.readings()))
    return levels


def test_breaks_a_catch_up_left_unmerged_are_caught_up_with_later_if_still_not_back():
    host, p = Host(), policy()
    steady_after_burst(host, p)
    catch_up_left_behind(host, p)
    wait = rewrites.COW_RETRY_S
    host.advance(seconds=wait - 1, scanned=5_000, cpu=0.02)
    assert p.decide(host.readings()).level == STEADY
    host.advance(seconds=1, scanned=5_000, cpu=0.02)
    d = p.decide(host.readings())
    assert (d.level, d.reason.split(";")[0]) == (CATCH_UP, "catch-up: 100000 copy-on-write breaks not merged back yet")
    # Left unmerged again: the next try waits twice as long.
    host.advance(scanned=6_000_000, scans=2, cpu=6.0)
    assert scan_out(host, p)[-1].level == STEADY
    host.advance(seconds=2 * wait - 1, scanned=5_000, cpu=0.02)
    assert p.decide(host.readings()).level == STEADY
    host.advance(seconds=1, scanned=5_000, cpu=0.02)
    assert p.decide(host.readings()).level == CATCH_UP


def test_breaks_the_probe_merged_back_meanwhile_get_no_later_catch_up():
    host, p = Host(), policy()
    steady_after_burst(host, p)
    catch_up_left_behind(host, p)
    host.advance(seconds=1800, scanned=5_000, cpu=0.02, merged=100_000)
    p.decide(host.readings())
    for _ in range(3):
        host.advance(seconds=1800, scanned=5_000, cpu=0.02)
        assert p.decide(host.readings()).level == STEADY


def test_breaks_that_come_while_backing_off_are_put_off_not_dropped():
    host, p = Host(), policy()
    steady_after_burst(host, p)
    catch_up_left_behind(host, p)
    # New breaks find that catch-up paid nothing: none for COW_RETRY_S, but these are caught up with then.
    host.advance(seconds=600, scanned=5_000, cpu=0.02, cow=100_000)
    assert p.decide(host.readings()).level == STEADY
    host.advance(seconds=rewrites.COW_RETRY_S - 1, scanned=5_000, cpu=0.02, merged=-100_000)
    assert p.decide(host.readings()).level == STEADY
    host.advance(seconds=1, scanned=5_000, cpu=0.02)
    d = p.decide(host.readings())
    assert (d.level, d.reason.split(";")[0]) == (CATCH_UP, "catch-up: 200000 copy-on-write breaks not merged back yet")


def test_a_catch_up_that_merges_the_rewritten_memory_back_keeps_them_coming():
    host, p = Host(), policy()
    steady_after_burst(host, p)
    for _ in range(2):
        host.advance(scanned=5_000, cpu=0.02, cow=150_000)
        assert p.decide(host.readings()).level == CATCH_UP
        # Rewritten with what it held: the first visits drop the broken merges, the second merge them again.
        host.advance(scanned=6_000_000, scans=2, cpu=6.0)
        p.decide(host.readings())
        host.advance(scanned=3_000_000, scans=1, cpu=3.0)
        assert p.decide(host.readings()).level == STEADY


def rate(d) -> float:
    return d.npages / d.sleep_ms


def breaks_then_remerges(host: Host, p: AdaptivePolicy, times: int, remerge: bool = True) -> None:
    """``times`` rewrites of 20,000 merged pages (each below a tenth: no catch-up), merged again in between or not."""
    for _ in range(times):
        host.advance(scanned=5_000, cpu=0.02, cow=20_000, merged=-20_000)
        assert p.decide(host.readings()).reason.startswith("steady: 20000 copy-on-write breaks, probing again sooner")
        host.advance(scanned=5_000, cpu=0.02, merged=20_000 if remerge else 0)
        p.decide(host.readings())


def test_once_breaks_of_memory_that_keeps_merging_again_stop_the_probe_settles_at_its_quickest():
    """Restored contents smart_scan has aged: 9 full scans at the quickest visit every page it skips."""
    host, p = Host(), policy()
    p.decide(host.readings())
    host.advance(scanned=6_000_000, scans=2, merged=1_000_000, cpu=10.0)
    quickest = p.decide(host.readings())
    assert quickest.reason.startswith("steady: the burst's full scans are done") and "a full scan in 15 min" in quickest.reason
    quickest = rate(quickest)
    breaks_then_remerges(host, p, 5)  # 100,000 breaks in all: a tenth of the merged pages
    host.advance(seconds=rewrites.SETTLE_QUIET_S - 61, scanned=5_000, cpu=0.02)
    slow = p.decide(host.readings())
    assert slow.reason.startswith("steady: full scans add no savings") and rate(slow) < quickest
    host.advance(seconds=1, scanned=5_000, cpu=0.02)  # 30 minutes since the last breaks
    d = p.decide(host.readings())
    assert (d.level, d.reason.split(";")[0]) == (
        STEADY, "steady: 100000 copy-on-write breaks, none for 30 min: settling, "
                "9 full scans at the quickest for the pages smart_scan skips")
    assert rate(d) == quickest
    reasons = []
    for n in range(8):
        host.advance(seconds=900, scanned=3_000_000, scans=1, cpu=1.0)
        d = p.decide(host.readings())
        reasons.append(d.reason.split(";")[0])
        assert rate(d) == quickest
    assert reasons[0] == "steady: settling, 8 more full scans for the pages smart_scan skips"
    # An interval that merges pages: 9 more full scans from there.
    host.advance(seconds=900, scanned=3_000_000, scans=1, cpu=1.0, merged=2_000)
    assert p.decide(host.readings()).reason.startswith("steady: the last interval merged 2000 pages")
    host.advance(seconds=900, scanned=3_000_000, scans=1, cpu=1.0)
    assert p.decide(host.readings()).reason.startswith("steady: settling, 8 more full scans")
    for _ in range(7):
        host.advance(seconds=900, scanned=3_000_000, scans=1, cpu=1.0)
        d = p.decide(host.readings())
    assert d.reason.startswith("steady: settling, 1 more full scan for")
    host.advance(seconds=900, scanned=3_000_000, scans=1, cpu=1.0)
    d = p.decide(host.readings())
    assert d.reason.startswith("steady: full scans add no savings")
    host.advance(seconds=900, scanned=3_000_000, scans=1, cpu=1.0)
    assert rate(p.decide(host.readings())) < rate(d)  # slowing again; no settle without new breaks
    assert p.memo.cow_since == 0 and p.memo.settle_to == 0


def test_a_settle_ends_when_full_scans_go_back_to_0():
    """run=2 written by another tool unmerges everything and resets full_scans: the settle's count is void."""
    host, p = Host(), policy()
    steady_after_burst(host, p)
    breaks_then_remerges(host, p, 5)
    host.advance(seconds=rewrites.SETTLE_QUIET_S, scanned=5_000, cpu=0.02)
    assert "settling, 9 full scans" in p.decide(host.readings()).reason
    host.counters["full_scans"] = 0
    host.advance(scanned=5_000, cpu=0.02)
    d = p.decide(host.readings())
    assert "settling" not in d.reason and p.memo.settle_to == 0


@pytest.mark.parametrize("times, remerge", [(5, False), (4, True)])
def test_no_settle_after_breaks_of_new_contents_or_too_few(times, remerge):
    """Memory overwritten with new contents breaks once (nothing merges in between); or too few breaks in all."""
    host, p = Host(), policy()
    steady_after_burst(host, p)
    breaks_then_remerges(host, p, times, remerge)
    for _ in range(6):
        host.advance(seconds=900, scanned=5_000, cpu=0.02)
        assert "settling" not in p.decide(host.readings()).reason


def restores(every_s: int, until_s: int, pages: int) -> dict:
    """Four guests sharing an OS image; every ``every_s`` one overwrites ``pages`` of it and restores them 60 s later."""
    guests = [{"name": "qemu-system-x86", "id": i, "cmdline": f"qemu-system-x86_64 -name guest=g{i}",
               "regions": [{"pages": 40000, "fill": "pool", "pool": "deb"}, {"pages": 30000, "fill": "unique"}]}
              for i in range(4)]
    events = []
    for j, at in enumerate(range(90, until_s, every_s)):
        where = {"process": j % 4, "region": 0, "first": j // 4 * pages % 40000, "pages": pages}
        events += [{"at": f"{at}s", "rewrite": {**where, "fill": "unique"}},
                   {"at": f"{at + 60}s", "rewrite": {**where, "fill": "pool", "pool": "deb", "offset": where["first"]}}]
    return {"host": {"memory": "1280MiB"}, "processes": guests, "events": events}


def test_on_a_host_whose_guests_overwrite_and_restore_memory_it_keeps_ksmtuneds_saving_once_they_stop():
    """Slices overwritten and restored for 2 h: without the settle, adaptive kept 89.5 % of ksmtuned's saving over 12 h."""
    (k_saved, k_cpu, _), (a_saved, a_cpu, reasons) = side_by_side(restores(300, 7200, 10000), 12 * 3600)
    assert any("settling, 9 full scans" in r for r in reasons)
    assert a_saved >= 0.95 * k_saved and a_cpu < 0.5 * k_cpu


def side_by_side(scenario: dict, seconds: float) -> list[tuple[float, float, list[str]]]:
    """ksmtuned's rule, then adaptive, on ``scenario``: (time-averaged saving, ksmd CPU, reasons) each."""
    results = []
    for name in ("ksmtuned", "adaptive"):
        sim = Simulation(scenario)
        loop = Simulate(sim, configmod.load(os.devnull, environ={"KSM_POLICY": name}))
        rows = list(loop.rows(seconds))
        saved = [row.report.pages_sharing + row.report.ksm_zero_pages for row in rows]
        results.append((time_average([row.time_s for row in rows], saved), sim.ksmd.cpu_time,
                        [row.report.reason for row in rows]))
    return results


def os_rewrites(every_s: int, first_s: int, count: int, pool: str) -> dict:
    """Four guests sharing an OS image on 1280 MiB; every ``every_s`` one rewrites it with ``pool``'s pages."""
    guests = [{"name": "qemu-system-x86", "id": i, "cmdline": f"qemu-system-x86_64 -name guest=g{i}",
               "regions": [{"pages": 40000, "fill": "pool", "pool": "deb"}, {"pages": 30000, "fill": "unique"}]}
              for i in range(4)]
    rewrite = {"region": 0, "fill": "pool", "pool": pool}
    events = [{"at": f"{every_s * j + first_s}s", "rewrite": {"process": j % 4, **rewrite}} for j in range(1, count + 1)]
    return {"host": {"memory": "1280MiB"}, "processes": guests, "events": events}


def test_on_a_host_whose_guests_rewrite_their_os_it_keeps_ksmtuneds_saving():
    """Guests that reload their OS image (a reboot): the merges break, and merge again on two visits."""
    scenario = os_rewrites(900, 7, 11, "deb")
    (k_saved, k_cpu, _), (a_saved, a_cpu, reasons) = side_by_side(scenario, 3 * 3600)
    assert any(r.startswith("catch-up: 40000 copy-on-write breaks") for r in reasons)
    assert a_saved >= 0.95 * k_saved and a_cpu < k_cpu


def test_on_a_host_whose_guests_upgrade_their_os_one_after_another_it_keeps_ksmtuneds_saving():
    """New contents that merge only once a second guest has them: the wait after a catch-up that paid nothing is short."""
    scenario = os_rewrites(1200, 0, 4, "deb13")
    (k_saved, k_cpu, _), (a_saved, a_cpu, reasons) = side_by_side(scenario, 3 * 3600)
    assert sum(r.startswith("catch-up: 40000 copy-on-write breaks (the guests rewrote") for r in reasons) >= 2
    assert a_saved >= 0.95 * k_saved and a_cpu < k_cpu


@pytest.mark.parametrize("use_zero_pages", [0, 1])
def test_on_a_host_short_of_free_memory_it_merges_at_least_what_ksmtuned_does(use_zero_pages):
    """Guests that fit, free memory just short: the rule stops KSM once merging brings free memory back.

    With use_zero_pages, the guests' resident memory falls as their empty pages merge: no reason to stop.
    """
    guests = [{"name": "qemu-system-x86", "id": i, "cmdline": f"qemu-system-x86_64 -name guest=g{i}",
               "regions": [{"pages": 30000, "fill": "pool", "pool": "deb"}, {"pages": 20000, "fill": "zero"},
                           {"pages": 46000, "fill": "unique"}]}
              for i in range(4)]
    scenario = {"host": {"memory": "2GiB", "used": "300MiB"}, "ksm": {"use_zero_pages": use_zero_pages},
                "processes": guests}
    (k_saved, k_cpu, k_reasons), (a_saved, a_cpu, reasons) = side_by_side(scenario, 3600)
    stopped = re.compile(r"committed \+ thres = \d+ kB < total 2097152 kB and free \d+ kB > thres 419430 kB$")
    assert "so boost" in k_reasons[0] and stopped.match(k_reasons[-1]) and stopped.match(reasons[-1])
    assert any("finished although the rule would stop KSM now" in r for r in reasons)
    assert a_saved >= k_saved > 0


def test_the_guests_memory_growing_by_2_percent_starts_a_catch_up():
    """Growth is counted from the memory at the last catch-up: 2 % of it, at least 16 MiB."""
    host, p = Host(), policy()
    steady_after_burst(host, p)
    host.guests[1] = Guest(1001, "qemu-system-x86", 3_000_000 + 239_999)  # 12,000,000 kB + 2 % - 1 kB
    assert p.decide(host.readings()).level == STEADY
    host.advance(scanned=5_000, cpu=0.02)
    host.guests[2] = Guest(1002, "qemu-system-x86", 3_000_001)
    d = p.decide(host.readings())
    assert (d.level, d.reason.split(";")[0]) == (CATCH_UP, "catch-up: the guests' memory grew to 12240000 kB")
    small = Host()
    small.guests = [Guest(1000, "qemu-system-x86", 500_000)]
    p = policy()
    p.decide(small.readings())
    small.advance(scanned=250_000, scans=2, merged=50_000, cpu=0.5)
    assert p.decide(small.readings()).level == STEADY
    small.guests = [Guest(1000, "qemu-system-x86", 500_000 + 16_383)]  # 3.3 % but under 16 MiB
    small.advance(scanned=5_000, cpu=0.02)
    assert p.decide(small.readings()).level == STEADY
    small.guests = [Guest(1000, "qemu-system-x86", 500_000 + 16_384)]
    small.advance(scanned=5_000, cpu=0.02)
    assert p.decide(small.readings()).level == CATCH_UP


def test_on_a_host_whose_guests_load_memory_in_steps_it_keeps_ksmtuneds_saving():
    """Guests whose memory grows by steps of zero and duplicate pages (a nightly job): each step is scanned twice."""
    guests = [{"name": "qemu-system-x86", "id": i, "cmdline": f"qemu-system-x86_64 -name guest=g{i}",
               "regions": [{"pages": 20000, "fill": "pool", "pool": "deb"}, {"pages": 30000, "fill": "unique"},
                           {"pages": 15000, "fill": "zero", "lazy": True}]}
              for i in range(4)]
    events = [{"at": f"{1800 + 600 * i}s", "touch": {"process": i, "region": 2}} for i in range(4)]
    # KSM starts as the third guest's step fills the host; the fourth's 58.6 MiB is 6 % more memory.
    scenario = {"host": {"memory": "1152MiB"}, "processes": guests, "events": events}
    (k_saved, k_cpu, _), (a_saved, a_cpu, reasons) = side_by_side(scenario, 2 * 3600)
    assert any(r.startswith("catch-up: the guests' memory grew") for r in reasons)
    assert a_saved >= 0.95 * k_saved and a_cpu < k_cpu


def test_never_above_ksm_max_cpu():
    """A measured cost per page sets the rate; an interval over the budget slows the next one at once."""
    host, p = Host(), policy(max_cpu=10)
    p.decide(host.readings())
    host.advance(scanned=1_000_000, cpu=30.0)  # 30 us a page, half a CPU: over 10 %
    d = p.decide(host.readings())
    assert d.reason.endswith("(held to 10% of a CPU at 30.0 us a page)")
    rate = d.npages / (d.sleep_ms / 1000 + 0.004)
    assert rate * 30e-6 <= 0.10 * 1.1
    # ksmd busy with few pages scanned (its CPU is not the pages' cost): the share itself slows it
    host.advance(scanned=500, cpu=30.0)
    d = p.decide(host.readings())
    assert d.reason.endswith("(ksmd used 50% of a CPU, over 10%)")
    assert d.npages / (d.sleep_ms / 1000 + 0.004) <= 500 / 60 * 0.2 * 1.1


def test_the_advisor_keeps_pages_to_scan():
    host, p = Host(), policy()
    host.advisor = "scan-time"
    d = p.decide(host.readings())
    assert (d.action, d.level, d.npages, d.sleep_ms) == ("start", "advisor", None, 10)
    assert d.reason.startswith("advisor: the kernel's scan-time advisor sets pages_to_scan")
    assert d.debug_after[-1] == "KSMCTL start advisor 10"


def test_the_same_readings_give_the_same_decisions_and_the_published_state_continues():
    """Pure: no clock, no I/O; a policy rebuilt from its state decides as the original does."""
    steps = [dict(scanned=3_000_000, scans=1, cpu=3.0), dict(scanned=3_000_000, scans=1, merged=900_000, cpu=8.0),
             dict(scanned=10_000, cpu=0.05), dict(scanned=10_000, cpu=0.05, cow=500)]
    runs = []
    for _ in range(2):
        host, p = Host(), policy()
        decisions = [p.decide(host.readings())]
        for step in steps:
            host.advance(**step)
            decisions.append(p.decide(host.readings()))
        runs.append((decisions, p.state(), host))
    assert runs[0][0] == runs[1][0]
    (decisions, state, host), original = runs[0], runs[1][2]
    rebuilt = policies.from_state(state)
    assert isinstance(rebuilt, AdaptivePolicy)
    host.advance(scanned=10_000, cpu=0.05)
    kept = policies.from_state(state)
    assert rebuilt.decide(host.readings()) == kept.decide(host.readings())


@pytest.mark.parametrize("rate, base, pages, sleep", [
    (100_000, 10, 1400, 10),  # fast: ksmtuned's sleep, bigger batches (two significant digits)
    (5_000, 10, 70, 10),
    (1_000, 10, 64, 60),  # slow: KSM_NPAGES_MIN pages, further apart
    (10, 10, 64, 6400),
    (0.001, 10, 64, 60_000),  # at most a minute apart
])
def test_batches_for_a_rate(rate, base, pages, sleep):
    assert batch(rate, base, 64) == (pages, sleep)


def test_on_the_demo_host_it_saves_as_much_as_ksmtuned_with_far_less_cpu():
    """The simulated host (deterministic): the same saving, a third of ksmd's CPU or less over 3 hours."""
    results = {}
    for name in ("ksmtuned", "adaptive"):
        sim = Simulation.from_yaml(os.path.join(os.path.dirname(__file__), "..", "sysfs_emu", "scenarios", "demo.yaml"))
        loop = Simulate(sim, configmod.load(os.devnull, environ={"KSM_POLICY": name}))
        rows = list(loop.rows(3 * 3600))
        saved = [row.report.pages_sharing + row.report.ksm_zero_pages for row in rows]
        results[name] = (time_average([row.time_s for row in rows], saved), sim.ksmd.cpu_time)
    (k_saved, k_cpu), (a_saved, a_cpu) = results["ksmtuned"], results["adaptive"]
    assert a_saved >= 0.95 * k_saved
    assert a_cpu <= k_cpu / 3


def test_the_cycle_leaves_pages_to_scan_to_the_advisor_and_writes_the_rest():
    sim = Simulation({"host": {"memory": "1GiB"}, "ksm": {"advisor_mode": "scan-time", "run": 1},
                      "processes": [{"name": "qemu-system-x86", "regions": [{"pages": 240000, "fill": "zero"}]}]})
    host = SimulationHost(sim)
    report = Cycle(host, policy()).run()
    # ksmtuned's sleep for 1 GiB: 10 ms x 16 GiB / 1 GiB
    assert report.writes == ("sleep_millisecs=160", "run=1") and report.level == "advisor"
    assert sim.kernel.read_attr("advisor_mode") == "none [scan-time]\n"


def test_next_wait_is_the_interval_unless_the_decision_asks_sooner():
    from ksmtuned_py.cycle import next_wait
    from ksmtuned_py.report import CycleReport

    def report(next_cycle_s):
        return CycleReport(0.0, 0.0, 1, "start", BURST, "", 64, 20, 0, 0, None, 0, 0, False, "",
                           next_cycle_s=next_cycle_s)

    assert next_wait(60.0, None) == 60.0  # a cycle that could not read the host
    assert next_wait(60.0, report(None)) == 60.0
    assert next_wait(60.0, report(10.0)) == 10.0
    assert next_wait(60.0, report(600.0)) == 60.0  # never later than the interval
    assert next_wait(60.0, report(0.0)) == 1.0  # nor a busy loop


def test_the_daemon_runs_the_sooner_cycle_of_a_burst(tmp_path):
    """A real daemon under KSM_POLICY=adaptive: after a burst's decision the next cycle comes 10 s later, not 60."""
    import signal
    import time

    from tests.svc_daemon import RunningDaemon, make_host, wait_for

    host = make_host(tmp_path, "KSM_POLICY=adaptive\nKSM_MONITOR_INTERVAL=60\n")
    with RunningDaemon(host) as daemon:
        def finished() -> int:  # cycles whose last debug line is written
            return host.logfile.read_text().count("KSMCTL start")

        os.kill(daemon.proc.pid, signal.SIGUSR1)  # the first cycle now (a retune), not after the interval
        wait_for(lambda: finished() >= 1, timeout=20, what="the first cycle")
        first = time.monotonic()
        wait_for(lambda: finished() >= 2, timeout=45, what="the burst's sooner cycle")
        assert time.monotonic() - first >= 5.0  # 10 s after the first (seen late under load), not at once
        log = host.logfile.read_text()
    assert log.count("adaptive: burst: ") == 2
