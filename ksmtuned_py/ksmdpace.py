"""ksmd's pace as the adaptive policy reads it from the KSM counters: intervals, passes, batches.

Pure functions of a cycle's readings and the policy's memo (``adaptive.Memo``): what the
last interval cost and returned, where ksmd's cursor is in its pass, and the
``pages_to_scan``/``sleep_millisecs`` pair that scans at a given rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ksmtuned_py.readings import PAGE_SIZE, Readings

if TYPE_CHECKING:  # adaptive imports this module
    from ksmtuned_py.adaptive import Memo

TICK_S = 0.004  # ksmd's batch period is its sleep plus about one tick
MAX_SLEEP_MS = 60_000
RESUME_MARGIN = 0.02  # of a pass: where a pass ended is known only to a decision


@dataclass(frozen=True)
class Interval:
    """What the last interval cost and returned."""

    seconds: float
    cpu_s: float | None  # ksmd's CPU time in it
    scanned: int
    full_scans: int
    gain: int  # pages merged in it (net change plus copy-on-write breaks)
    cow: int  # copy-on-write breaks in it

    @property
    def cpu_share(self) -> float | None:
        """ksmd's CPU use as a share of one CPU."""
        return None if self.cpu_s is None or self.seconds <= 0 else self.cpu_s / self.seconds


def merged_pages(readings: Readings) -> int | None:
    return readings.ksm.merged_pages


def _delta(now: float | int | None, before: float | int | None) -> float | int:
    return 0 if now is None or before is None or now < before else now - before


def interval(memo: Memo, readings: Readings) -> Interval | None:
    """The interval since the last cycle, None on the first cycle."""
    if memo.time is None or readings.time <= memo.time:
        return None
    c = readings.ksm.counters
    cow = _delta(readings.cow_ksm, memo.cow)
    merged = merged_pages(readings)
    net = 0 if merged is None or memo.merged is None else merged - memo.merged
    cpu = None if readings.ksmd_cpu_seconds is None or memo.cpu_s is None else \
        max(0.0, readings.ksmd_cpu_seconds - memo.cpu_s)
    return Interval(readings.time - memo.time, cpu, int(_delta(c.get("pages_scanned"), memo.scanned)),
                    int(_delta(c.get("full_scans"), memo.full_scans)), max(0, net + cow), int(cow))


def volatile_share(readings: Readings) -> float:
    """pages_volatile as a share of the pages KSM tracks."""
    c = readings.ksm.counters
    items = sum(c.get(k, 0) for k in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile"))
    return c.get("pages_volatile", 0) / items if items else 0.0


def guest_pages(readings: Readings, page_size: int = PAGE_SIZE) -> int:
    """What a full scan visits, at most: the guests' resident pages (or KSM's rmap items, if more)."""
    c = readings.ksm.counters
    items = sum(c.get(k, 0) for k in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile"))
    return max(readings.committed_kb * 1024 // page_size, items, 1)


def batch(rate: float, base_sleep_ms: int, min_pages: int) -> tuple[int, int]:
    """(pages_to_scan, sleep_millisecs) that scan about ``rate`` pages a second.

    At ksmtuned's sleep while that gives at least ``min_pages`` a batch; slower, batches of
    ``min_pages`` further apart.  Rounded to two significant digits, so a rate that hardly
    moves writes the same values.
    """
    period = base_sleep_ms / 1000 + TICK_S
    pages = rate * period
    if pages >= min_pages:
        return _round2(pages), base_sleep_ms
    sleep_s = max(base_sleep_ms / 1000, min_pages / max(rate, 1e-9) - TICK_S)
    return min_pages, _round2(min(MAX_SLEEP_MS, sleep_s * 1000))


def _round2(x: float) -> int:
    """``x`` to two significant digits, at least 1."""
    if x < 1:
        return 1
    digits = int(math.floor(math.log10(x))) - 1
    return int(round(x / 10 ** digits) * 10 ** digits) if digits > 0 else int(round(x))


def track_passes(memo: Memo, readings: Readings) -> None:
    """Note where ksmd's passes end (at this decision's precision) and how many pages one took."""
    c = readings.ksm.counters
    scans, scanned = c.get("full_scans"), c.get("pages_scanned")
    if scans is None or scanned is None:
        return
    if scanned == 0:  # ksmd has not scanned since boot: its cursor is at the start
        memo.wrap_scanned = 0
        return
    if memo.full_scans is None or memo.scanned is None or scans < memo.full_scans or scanned < memo.scanned:
        return  # the first decision, or the counters went back: nothing to tell yet
    wraps = scans - memo.full_scans
    if wraps > 0:
        if memo.wrap_scanned is not None:
            memo.pass_pages = max(1, (scanned - memo.wrap_scanned) // wraps)
        memo.wrap_scanned = scanned


def resume_into(memo: Memo, readings: Readings, new_guests: bool) -> int:
    """How far into the pass after next a burst or catch-up starting now goes on (0: it ends with its scans).

    New guests' memory is visited last in this pass, just behind the cursor, and again at
    that place in the pass after: so that far, plus their pages, plus a margin for where
    the decisions saw the passes end.  0 where the cursor's place is not known.
    """
    scanned = readings.ksm.counters.get("pages_scanned")
    if scanned is None or memo.wrap_scanned is None or scanned == 0:
        return 0  # not known, or ksmd has never scanned: its first pass visits every guest
    per_pass = memo.pass_pages or guest_pages(readings)
    behind = min(per_pass, max(0, scanned - memo.wrap_scanned))
    known = set(memo.guests)
    new = 0 if not new_guests else sum(g.kb for g in readings.guests if g.pid not in known) * 1024 // PAGE_SIZE
    return int(behind + new + RESUME_MARGIN * per_pass)


def scan_time(seconds: float) -> str:
    """A full scan's duration in words: 45 s, 15 min, 4.0 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
