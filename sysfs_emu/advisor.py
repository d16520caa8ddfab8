"""The in-kernel KSM advisor (Linux >= 6.7, ``advisor_mode`` = ``scan-time``).

With the scan-time advisor on, ksmd retunes ``pages_to_scan`` itself once per
completed full scan, aiming for a full scan every ``advisor_target_scan_time``
seconds while keeping its own CPU use in a band. This module reproduces
mm/ksm.c's rule with the kernel's integer types, so the simulator ends up with
the very ``pages_to_scan`` the real kernel would show.

The rule, in words (every division truncates, as C's unsigned division does):

1. *Scan time* ``T``: whole seconds from the start of the full scan to its end
   (nanoseconds -> milliseconds -> seconds, truncating each time); 0 counts as 1.
2. *CPU percent* ``C``: ksmd's CPU time since the previous advisor run, in whole
   milliseconds, times 100, divided by ``T * 1000``; kept as an unsigned 32-bit
   value; 0 counts as 1. The baseline is the cumulative CPU time ksmd had at
   the previous run -- 0 after a reset, so the first scan after switching the
   advisor on charges ksmd's whole CPU time since boot to that one scan.
3. *Target factor* ``F = target * 100 / T`` (0 counts as 1): the target as a
   percentage of the measured time.
4. *Change* ``D``: ``T * 100 / T_prev`` (0 counts as 1), where ``T_prev`` is the
   previous scan's ``T`` or, when there is none, ``T`` itself (so 100); then
   smoothed by an exponentially weighted moving average with weight 30 %:
   ``D = (70 * D_prev + 30 * D) / 100``, ``D_prev`` being 0 after a reset (the
   first scan after a reset therefore gets ``D`` = 30).
5. *Raw proposal*: ``P' = (P * 100 mod 2**32) / F`` where ``P`` is the current
   ``pages_to_scan`` (an unsigned 32-bit number, so the product wraps at 32
   bits), then ``P' = P' * D / 100``.
6. *CPU band*: ``K = P / C`` pages per CPU percent (0 counts as 1); the proposal
   is capped at ``K * advisor_max_cpu`` and then raised to at least ``K * 10``
   (a fixed 10 % CPU floor, which wins when both conflict).
7. *Page cap*: at most ``advisor_max_pages_to_scan``. Note that
   ``advisor_min_pages_to_scan`` takes no part: it is only the value
   ``pages_to_scan`` is set to when the advisor is switched on, and the advisor
   may well go below it later.
8. The result is stored into the unsigned 32-bit ``pages_to_scan``; ``T``,
   ``D`` and the CPU time become the context for the next run.

Switching ``advisor_mode`` (to either value) clears the context: start time,
previous scan time, previous change and CPU baseline all become 0. The start
time is recorded when a new full scan begins, and only while the advisor is on;
a scan that began before the advisor was switched on is therefore measured
from time 0 (boot), exactly as the kernel does.

How the simulated ksmd uses it::

    adv = ScanTimeAdvisor()
    adv.start_scan(now_s, kernel)          # a new full scan begins (cursor at the head)
    ...
    adv.on_full_scan(now_s, ksmd_cpu_s, kernel)   # the full scan just completed
    adv.reset()                            # from Engine.advisor_reset()

Both calls do nothing while ``kernel.advisor_mode`` is ``"none"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

U32_MASK = (1 << 32) - 1
U64_MASK = (1 << 64) - 1

EWMA_WEIGHT = 30
"""Percent weight of the newest change factor in the moving average."""

ADVISOR_MIN_CPU = 10
"""Fixed lower CPU bound (percent) of the advisor; not a sysfs knob."""

NSEC_PER_MSEC = 1_000_000
MSEC_PER_SEC = 1_000


class AdvisorKernel(Protocol):
    """The tunables the advisor reads (``sysfs_emu.Kernel`` has them all)."""

    advisor_mode: str
    advisor_max_cpu: int
    advisor_max_pages_to_scan: int
    advisor_target_scan_time: int
    pages_to_scan: int


@dataclass
class AdvisorContext:
    """What the kernel keeps between two advisor runs (all 0 after a reset)."""

    start_scan_ns: int = 0
    scan_time: int = 0
    change: int = 0
    cpu_time_ns: int = 0


@dataclass(frozen=True)
class Advice:
    """One advisor run: its inputs as the kernel computed them and the result.

    ``scan_time``, ``pages_to_scan`` and ``cpu_percent`` are the three values the
    kernel's ``ksm:ksm_advisor`` trace event reports.
    """

    scan_time: int
    cpu_percent: int
    factor: int
    change: int
    per_page_cost: int
    pages_to_scan: int


def _nonzero(value: int) -> int:
    return value if value else 1


def _trunc_div(a: int, b: int) -> int:
    """C's signed division (toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def scan_time_seconds(start_ns: int, now_ns: int) -> int:
    """Step 1: whole seconds of a scan (ms delta, then seconds), 0 counted as 1."""
    delta_ms = _trunc_div(now_ns - start_ns, NSEC_PER_MSEC)
    return _nonzero(_trunc_div(delta_ms, MSEC_PER_SEC) & U64_MASK)


def cpu_percent(cpu_now_ns: int, cpu_prev_ns: int, scan_time: int) -> int:
    """Step 2: ksmd's CPU use over the scan in whole percent, 0 counted as 1."""
    diff_ms = ((cpu_now_ns - cpu_prev_ns) & U64_MASK) // NSEC_PER_MSEC
    percent = ((diff_ms * 100) & U64_MASK) // ((scan_time * MSEC_PER_SEC) & U64_MASK)
    return _nonzero(percent & U32_MASK)


def advise(
    pages_to_scan: int,
    scan_time: int,
    cpu_pct: int,
    prev_scan_time: int,
    prev_change: int,
    *,
    target_scan_time: int,
    max_cpu: int,
    max_pages_to_scan: int,
) -> Advice:
    """Steps 3-7: the new pages_to_scan from already-measured ``scan_time`` and ``cpu_pct``.

    ``prev_scan_time`` and ``prev_change`` are 0 when there is no previous run.
    """
    pts = pages_to_scan & U32_MASK
    last = prev_scan_time if prev_scan_time else scan_time

    factor = _nonzero(((target_scan_time * 100) & U64_MASK) // scan_time)

    change = _nonzero(((scan_time * 100) & U64_MASK) // last)
    change = ((((100 - EWMA_WEIGHT) * prev_change) + EWMA_WEIGHT * change) & U64_MASK) // 100

    pages = ((pts * 100) & U32_MASK) // factor  # unsigned int product
    pages = ((pages * change) & U64_MASK) // 100

    per_page_cost = _nonzero(pts // cpu_pct)
    pages = min(pages, (per_page_cost * max_cpu) & U64_MASK)
    pages = max(pages, (per_page_cost * ADVISOR_MIN_CPU) & U64_MASK)
    pages = min(pages, max_pages_to_scan)

    return Advice(
        scan_time=scan_time,
        cpu_percent=cpu_pct,
        factor=factor,
        change=change,
        per_page_cost=per_page_cost,
        pages_to_scan=pages & U32_MASK,
    )


def _ns(seconds: float) -> int:
    return round(seconds * 1_000_000_000)


class ScanTimeAdvisor:
    """mm/ksm.c's scan-time advisor with its context, driven by the simulated ksmd."""

    def __init__(self) -> None:
        self.ctx = AdvisorContext()
        self.last: Advice | None = None
        """The most recent run (the simulator's ``ksm:ksm_advisor`` trace)."""

    def reset(self) -> None:
        """advisor_mode changed: forget everything (pages_to_scan is set by the Kernel)."""
        self.ctx = AdvisorContext()
        self.last = None

    def start_scan(self, now_s: float, kernel: AdvisorKernel) -> None:
        """A new full scan begins at ``now_s`` (simulated seconds since boot)."""
        if kernel.advisor_mode == "scan-time":
            self.ctx.start_scan_ns = _ns(now_s)

    def on_full_scan(self, now_s: float, ksmd_cpu_s: float, kernel: AdvisorKernel) -> int | None:
        """A full scan ended at ``now_s``; ``ksmd_cpu_s`` is ksmd's cumulative CPU time since boot.

        Sets and returns the new ``kernel.pages_to_scan``; None (and no change)
        while the advisor is off.
        """
        if kernel.advisor_mode != "scan-time":
            return None
        ctx = self.ctx
        scan_time = scan_time_seconds(ctx.start_scan_ns, _ns(now_s))
        cpu_now = _ns(ksmd_cpu_s)
        advice = advise(
            kernel.pages_to_scan,
            scan_time,
            cpu_percent(cpu_now, ctx.cpu_time_ns, scan_time),
            ctx.scan_time,
            ctx.change,
            target_scan_time=kernel.advisor_target_scan_time,
            max_cpu=kernel.advisor_max_cpu,
            max_pages_to_scan=kernel.advisor_max_pages_to_scan,
        )
        ctx.scan_time = advice.scan_time
        ctx.change = advice.change
        ctx.cpu_time_ns = cpu_now
        kernel.pages_to_scan = advice.pages_to_scan
        self.last = advice
        log.debug(
            "ksm advisor: scan time %d s, cpu %d %%, pages_to_scan %d",
            advice.scan_time,
            advice.cpu_percent,
            advice.pages_to_scan,
        )
        return advice.pages_to_scan
