"""The scan-time advisor against hand-computed runs of mm/ksm.c's integer rule.

Every expected number below was worked out by hand from the rule in
sysfs_emu/advisor.py's docstring (C's truncating unsigned division), with the
intermediate values written next to it, so a wrong rounding, a missing
"0 counts as 1", a wrong EWMA weight or a wrong bound shows up as a different
integer.
"""

from __future__ import annotations

import pytest

from sysfs_emu import Kernel
from sysfs_emu.advisor import (
    Advice,
    ScanTimeAdvisor,
    advise,
    cpu_percent,
    scan_time_seconds,
)

SEC = 1_000_000_000


def scan_time_kernel(target: int = 10, max_cpu: int = 70, max_pages: int = 30000) -> Kernel:
    """A simulated kernel with the advisor switched on through sysfs (pages_to_scan = 500)."""
    kernel = Kernel()
    kernel.write_attr("advisor_target_scan_time", f"{target}\n")
    kernel.write_attr("advisor_max_cpu", f"{max_cpu}\n")
    kernel.write_attr("advisor_max_pages_to_scan", f"{max_pages}\n")
    kernel.write_attr("advisor_mode", "scan-time\n")
    assert kernel.read_attr("pages_to_scan") == "500\n"
    return kernel


# ---- the measured inputs ---------------------------------------------------


@pytest.mark.parametrize(
    ("start_ns", "now_ns", "expected"),
    [
        (0, 2 * SEC, 2),
        (0, 2 * SEC - 1, 1),  # 1999.999999 ms -> 1999 ms -> 1 s
        (5 * SEC, 5 * SEC + SEC // 2, 1),  # 0 s counts as 1
        (5 * SEC, 5 * SEC, 1),
        (10 * SEC, 130 * SEC + 999_999_999, 120),
    ],
)
def test_scan_time_is_whole_seconds_at_least_one(start_ns, now_ns, expected):
    assert scan_time_seconds(start_ns, now_ns) == expected


@pytest.mark.parametrize(
    ("cpu_now_ns", "cpu_prev_ns", "scan_time", "expected"),
    [
        (4 * SEC, 0, 20, 20),  # 4000 ms * 100 / 20000
        (10 * SEC, 4 * SEC, 30, 20),  # 6000 * 100 / 30000
        (4 * SEC + 999_999, 4 * SEC, 1, 1),  # 0.999999 ms -> 0 ms -> 0 % -> counts as 1
        (4 * SEC + 19_999_999, 4 * SEC, 1, 1),  # 19 ms * 100 / 1000 = 1
        (4 * SEC + 20_000_000, 4 * SEC, 1, 2),
        (3 * SEC, 0, 1, 300),  # more than 100 %: nothing caps it
        # the percentage is an unsigned int: 2**32 % wraps to 0, which counts as 1
        (42_949_672_960 * 1_000_000, 0, 1, 1),
        (42_949_672_970 * 1_000_000, 0, 1, 1),  # 2**32 + 1 -> 1
        (42_949_672_980 * 1_000_000, 0, 1, 2),  # 2**32 + 2 -> 2
    ],
)
def test_cpu_percent_integer_rules(cpu_now_ns, cpu_prev_ns, scan_time, expected):
    assert cpu_percent(cpu_now_ns, cpu_prev_ns, scan_time) == expected


# ---- one advisor step with explicit inputs ----------------------------------


def test_too_slow_with_steady_history_grows_by_the_target_ratio():
    # F = 10*100/20 = 50; D = 20*100/20 = 100 -> (70*100 + 30*100)/100 = 100
    # P' = 1000*100/50 = 2000, *100/100 = 2000; K = 1000/5 = 200: band [2000, 14000]
    advice = advise(1000, 20, 5, 20, 100, target_scan_time=10, max_cpu=70, max_pages_to_scan=30000)
    assert advice == Advice(
        scan_time=20, cpu_percent=5, factor=50, change=100, per_page_cost=200, pages_to_scan=2000
    )


def test_too_fast_with_busy_cpu_shrinks():
    # F = 10*100/2 = 500; D = 2*100/2 = 100 -> 100; P' = 1000*100/500 = 200
    # K = 1000/50 = 20: cap 1400, floor 200 -> 200
    advice = advise(1000, 2, 50, 2, 100, target_scan_time=10, max_cpu=70, max_pages_to_scan=30000)
    assert advice.pages_to_scan == 200
    assert advice.factor == 500 and advice.per_page_cost == 20


def test_cpu_limit_caps_the_growth():
    # F = 10*100/40 = 25; D = 100; P' = 1000*100/25 = 4000
    # K = 1000/50 = 20: cap 20*70 = 1400 < 4000
    advice = advise(1000, 40, 50, 40, 100, target_scan_time=10, max_cpu=70, max_pages_to_scan=30000)
    assert advice.pages_to_scan == 1400
    # a lower advisor_max_cpu lowers the cap: 20*30 = 600
    advice = advise(1000, 40, 50, 40, 100, target_scan_time=10, max_cpu=30, max_pages_to_scan=30000)
    assert advice.pages_to_scan == 600


def test_cpu_floor_wins_over_the_target_when_ksmd_is_idle():
    # Too fast (T=1 < target 10), yet ksmd used < 2 % CPU (C=1): K = 1000/1 = 1000,
    # floor 10*K = 10000 beats P' = 1000*100/1000 = 100: pages_to_scan grows tenfold.
    advice = advise(1000, 1, 1, 1, 100, target_scan_time=10, max_cpu=70, max_pages_to_scan=30000)
    assert advice.pages_to_scan == 10000


def test_floor_beats_a_max_cpu_below_ten_percent():
    # K = 1000/50 = 20; cap 20*5 = 100, then floor 20*10 = 200 is applied after it
    advice = advise(1000, 40, 50, 40, 100, target_scan_time=10, max_cpu=5, max_pages_to_scan=30000)
    assert advice.pages_to_scan == 200


def test_max_pages_to_scan_caps_last():
    # P' = 4000 (as above, C=1 this time): K = 1000, band [10000, 70000] -> 10000 -> capped at 2500
    advice = advise(1000, 40, 1, 40, 100, target_scan_time=10, max_cpu=70, max_pages_to_scan=2500)
    assert advice.pages_to_scan == 2500


def test_no_lower_clamp_to_min_pages_and_zero_counts_as_one():
    # P' = 1*100/1000 = 0 ... K = 1/1 = 1, floor 10: the advisor can reach 10 pages
    advice = advise(1, 1, 1, 1, 100, target_scan_time=10, max_cpu=70, max_pages_to_scan=30000)
    assert advice.pages_to_scan == 10
    # target 0 is refused by sysfs, but a factor of 0 (target*100 < T) counts as 1:
    # F = 1*100/200 = 0 -> 1; D = 100; P' = 7*100/1 = 700; K = 7/1 = 7: cap 490
    advice = advise(7, 200, 1, 200, 100, target_scan_time=1, max_cpu=70, max_pages_to_scan=30000)
    assert advice.factor == 1 and advice.pages_to_scan == 490


def test_change_factor_is_an_ewma_of_scan_time_ratios():
    # T=30 after T_prev=20: 30*100/20 = 150; ewma(30, 150) = (2100 + 4500)/100 = 66
    advice = advise(300, 30, 20, 20, 30, target_scan_time=10, max_cpu=70, max_pages_to_scan=30000)
    assert advice.change == 66
    # T=1 after T_prev=300: 1*100/300 = 0 -> counts as 1; ewma(100, 1) = (7000 + 30)/100 = 70
    advice = advise(300, 1, 20, 300, 100, target_scan_time=10, max_cpu=70, max_pages_to_scan=30000)
    assert advice.change == 70


def test_pages_times_100_wraps_at_32_bits():
    # pages_to_scan is an unsigned int: 50_000_000 * 100 = 5e9 -> 5e9 - 2**32 = 705032704
    # F = 10*100/10 = 100 -> P' = 7050327; D = 100; K = 50e6/100 = 500000: band [5e6, 35e6]
    advice = advise(50_000_000, 10, 100, 10, 100, target_scan_time=10, max_cpu=70, max_pages_to_scan=10**9)
    assert advice.pages_to_scan == 7_050_327


def test_result_is_stored_as_unsigned_int():
    # K = (2**32 - 1)/1; floor 10*K = 10*2**32 - 10 -> low 32 bits 2**32 - 10
    advice = advise(
        2**32 - 1, 1, 1, 1, 100, target_scan_time=1, max_cpu=70, max_pages_to_scan=2**64 - 1
    )
    assert advice.pages_to_scan == 4_294_967_286


# ---- the advisor with its context, driven through a simulated Kernel ---------


def test_sequence_first_scan_then_too_slow_then_too_fast():
    kernel = scan_time_kernel(target=10)
    adv = ScanTimeAdvisor()

    # Scan 1, 100 s -> 120 s: T=20, ksmd CPU since boot 4 s -> C = 4000*100/20000 = 20.
    # No history: T_prev := T, D = ewma(0, 100) = 30. F = 100*10/20 = 50.
    # P' = 500*100/50 = 1000 -> *30/100 = 300; K = 500/20 = 25: band [250, 1750] -> 300.
    # Too slow, yet pages_to_scan drops: the first change factor is only 30 %,
    # and it drops below advisor_min_pages_to_scan (500): there is no lower clamp.
    adv.start_scan(100.0, kernel)
    assert adv.on_full_scan(120.0, 4.0, kernel) == 300
    assert kernel.read_attr("pages_to_scan") == "300\n"
    assert (adv.last.scan_time, adv.last.cpu_percent, adv.last.change) == (20, 20, 30)

    # Scan 2, 120.5 -> 150.5: T=30 (too slow), CPU 4 -> 10 s: C = 6000*100/30000 = 20.
    # F = 1000/30 = 33; D = ewma(30, 30*100/20 = 150) = 66;
    # P' = 300*100/33 = 909 -> *66/100 = 599; K = 300/20 = 15: band [150, 1050] -> 599.
    adv.start_scan(120.5, kernel)
    assert adv.on_full_scan(150.5, 10.0, kernel) == 599

    # Scan 3, 151 -> 153.9: T=2 (too fast), CPU 10 -> 11 s: C = 1000*100/2000 = 50.
    # F = 1000/2 = 500; D = ewma(66, 2*100/30 = 6) = (4620 + 180)/100 = 48;
    # P' = 599*100/500 = 119 -> *48/100 = 57; K = 599/50 = 11: band [110, 770] -> 110.
    adv.start_scan(151.0, kernel)
    assert adv.on_full_scan(153.9, 11.0, kernel) == 110
    assert adv.last == Advice(
        scan_time=2, cpu_percent=50, factor=500, change=48, per_page_cost=11, pages_to_scan=110
    )
    assert (adv.ctx.scan_time, adv.ctx.change, adv.ctx.cpu_time_ns) == (2, 48, 11 * SEC)


def test_cpu_cap_through_the_kernel_knob():
    kernel = scan_time_kernel(target=10, max_cpu=16)
    adv = ScanTimeAdvisor()
    # T=40, C = 8000*100/40000 = 20; F = 25; D = 30; P' = 500*100/25 = 2000 -> *30/100 = 600
    # K = 500/20 = 25: cap 25*16 = 400, floor 250 -> 400
    adv.start_scan(0.0, kernel)
    assert adv.on_full_scan(40.0, 8.0, kernel) == 400


def test_max_pages_through_the_kernel_knob():
    kernel = scan_time_kernel(target=10, max_pages=700)
    adv = ScanTimeAdvisor()
    # T=100, C = 1000*100/100000 = 1; F = 10; D = 30; P' = 500*100/10 = 5000 -> 1500
    # K = 500: band [5000, 35000] -> 5000 -> advisor_max_pages_to_scan 700
    adv.start_scan(0.0, kernel)
    assert adv.on_full_scan(100.0, 1.0, kernel) == 700


def test_off_means_no_change_and_no_start_time():
    kernel = Kernel()  # advisor_mode none, pages_to_scan 100
    adv = ScanTimeAdvisor()
    adv.start_scan(100.0, kernel)
    assert adv.on_full_scan(130.0, 65.0, kernel) is None
    assert kernel.pages_to_scan == 100 and adv.ctx.start_scan_ns == 0 and adv.last is None


def test_scan_begun_before_the_switch_is_measured_from_boot():
    kernel = Kernel()
    adv = ScanTimeAdvisor()
    adv.start_scan(100.0, kernel)  # ignored: the advisor is off
    kernel.write_attr("advisor_mode", "scan-time")
    adv.reset()  # what the engine's advisor_reset() does
    # T = 130 (since boot), C = 65000*100/130000 = 50; F = 200*100/130 = 153; D = 30;
    # P' = 500*100/153 = 326 -> *30/100 = 97; K = 500/50 = 10: band [100, 700] -> 100.
    # (Had the start been 100 s: T=30, C=216, K=2, P'=22 -> 22.)
    assert adv.on_full_scan(130.0, 65.0, kernel) == 100
    assert adv.last.scan_time == 130


def test_reset_forgets_history_and_cpu_baseline():
    kernel = scan_time_kernel(target=10)
    adv = ScanTimeAdvisor()
    adv.start_scan(100.0, kernel)
    adv.on_full_scan(120.0, 4.0, kernel)
    adv.start_scan(120.5, kernel)
    adv.on_full_scan(150.5, 10.0, kernel)
    assert kernel.pages_to_scan == 599

    # switching the mode off and on again: pages_to_scan back to 500, context cleared
    kernel.write_attr("advisor_mode", "none")
    adv.reset()
    kernel.write_attr("advisor_mode", "scan-time")
    adv.reset()
    assert kernel.pages_to_scan == 500 and adv.ctx == type(adv.ctx)() and adv.last is None

    # Same scan as scan 2 above, but now it is a first scan: the CPU baseline is 0, so
    # C = 12000*100/30000 = 40 (all 12 s since boot); T_prev := 30 -> D = ewma(0, 100) = 30;
    # F = 33; P' = 500*100/33 = 1515 -> *30/100 = 454; K = 500/40 = 12: band [120, 840] -> 454.
    adv.start_scan(200.0, kernel)
    assert adv.on_full_scan(230.0, 12.0, kernel) == 454
    assert (adv.last.cpu_percent, adv.last.change) == (40, 30)


def test_mode_switch_resets_and_advisor_follows_the_live_knobs():
    kernel = scan_time_kernel(target=10)
    adv = ScanTimeAdvisor()
    adv.start_scan(0.0, kernel)
    # T=20, C = 2000*100/20000 = 10, F = 50, D = 30: P' = 1000 -> 300; K = 50: band [500, 3500] -> 500
    assert adv.on_full_scan(20.0, 2.0, kernel) == 500
    # a knob written between scans takes effect at the next advisor run
    kernel.write_attr("advisor_target_scan_time", "40")
    adv.start_scan(20.0, kernel)
    # T=20, C = 2000*100/20000 = 10; F = 4000/20 = 200; D = ewma(30, 100) = 51;
    # P' = 500*100/200 = 250 -> *51/100 = 127; K = 50: band [500, 3500] -> 500
    assert adv.on_full_scan(40.0, 4.0, kernel) == 500
    assert adv.last.factor == 200 and adv.last.change == 51
