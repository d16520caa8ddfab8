"""``sysfs-emu calibrate``: this machine's ksmd costs, measured with real processes on the real KSM.

Each experiment starts real workload processes (sysfs_emu.realksm.workload)
and lets the real ksmd scan them with ``pages_to_scan`` larger than the
workload, so that a full scan is one batch. A scan that happens once (the
first, the merging one) is followed by a sleep, during which the CPU time ksmd
spent in it is read from its ``/proc/PID/schedstat``; a scan that repeats
(the steady state) is timed as the timing tests time it, back to back with
``sleep_millisecs`` 0, over several scans, less the time ksmd waited for a CPU
(sysfs_emu.realksm.ksmd_clock): both are ksmd's own work, whatever else runs
on the machine. The costs follow from what the simulator counts for the same
scans (sysfs_emu.ksmd.timing.Work):

============== ===================================================================
checksum       the first scan of fresh pages (an rmap item and a checksum each)
tree_base,     later scans of unique pages (each an unstable-tree search and
tree_per_level insert), at two tree sizes
ksm_page       scans of pages all merged already
merge          the scan that merges two processes' identical pages, less its
               tree searches
skipped        smart_scan skipping unique pages, less the pages it visits
split          the scan that splits huge pages of empty pages (each split also
               maps its 512 pages to the zero page): huge pages holding data
               cost somewhat less to split
batch          not measured (too small to see): the reference profile's
============== ===================================================================

The whole measurement takes a few seconds, with ksmd at nice -20 so that other
load rarely delays it (its own nice value is put back afterwards). It needs
root and KSM, and the real KSM to itself (no other process with mergeable
memory); every KSM setting is put back afterwards and ``run`` left at 0
(sysfs_emu.realksm.guard).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

from sysfs_emu.ksmd.timing import REFERENCE_TREE_LOG2, CostModel
from sysfs_emu.realksm import guard, ksmd_clock
from sysfs_emu.realksm.guard import RealKsmError, read_counter
from sysfs_emu.realksm.workload import HUGE_PAGES, foreign_mergeable, start_workload, thp_unavailable, workload_processes

log = logging.getLogger(__name__)

SMALL_TREE = 4000  # unique pages: the tree size of the timing tests
LARGE_TREE = 16000
POOL = 4096  # pages in each of two processes sharing them
HUGE = 32  # empty huge pages to split
SLEEP_MS = 100  # between full scans: ksmd sleeps while its CPU time is read
BASE = 10_000_000  # content ids of unique pages


@dataclass(frozen=True)
class Scan:
    """One real full scan: ksmd's CPU seconds, and its pages scanned and skipped."""

    cpu: float
    scanned: int
    skipped: int


def _scans(n: int, timeout: float = 60.0) -> list[Scan]:
    """Let the real ksmd do ``n`` full scans, one batch each; what each cost."""
    schedstat = ksmd_clock.ksmd_schedstat()
    if schedstat is None:
        raise RealKsmError("cannot find the ksmd kernel thread's /proc/PID/schedstat")
    counters = ("full_scans", "pages_scanned", "pages_skipped")
    last = [read_counter(c) for c in counters]
    cpu = ksmd_clock.sched(schedstat).cpu
    out: list[Scan] = []
    deadline = time.monotonic() + timeout
    guard.write("run", 1)
    try:
        while len(out) < n:
            now = [read_counter(c) for c in counters]
            if now[0] != last[0]:
                time.sleep(0.002)  # the batch that ended the scan returns; ksmd sleeps SLEEP_MS
                now = [read_counter(c) for c in counters]
                spent = ksmd_clock.sched(schedstat).cpu
                out.append(Scan(spent - cpu, now[1] - last[1], now[2] - last[2]))
                cpu, last = spent, now
            elif time.monotonic() > deadline:
                raise RealKsmError("the real ksmd scans too slowly to calibrate")
            time.sleep(0.0005)
    finally:
        guard.write("run", 0)
    return out


def _experiment(regions_per_process: list[list[dict]], scans: int, steady: int = 0,
                **knobs) -> tuple[list[Scan], float | None]:
    """Fresh processes with these regions, from an empty KSM: ``scans`` full scans of them one by
    one, then (``steady`` > 0) the median time of ``steady`` back-to-back scans."""
    guard.write("run", 2)
    guard.write("run", 0)
    settings = {"pages_to_scan": 1_000_000, "sleep_millisecs": SLEEP_MS, "smart_scan": 0, "use_zero_pages": 0,
                "max_page_sharing": 256, **knobs}
    for name, value in settings.items():
        guard.write(name, value)
    with workload_processes() as procs:
        for regions in regions_per_process:
            procs.append(start_workload(regions))
        one_by_one = _scans(scans)
        if not steady:
            return one_by_one, None
        return one_by_one, ksmd_clock.real_scan_time(1_000_000, 0, scans=steady + 1)


def _unique(n: int) -> list[dict]:
    return [{"contents": list(range(BASE, BASE + n))}]


def _tree_costs(small: float, large: float) -> tuple[float, float]:
    """(tree_base, tree_per_level) that give ``small`` s per search at SMALL_TREE and ``large`` at LARGE_TREE."""
    per_level = max(0.0, (large - small) / math.log2(LARGE_TREE / SMALL_TREE))
    base = small - per_level * (math.log2(SMALL_TREE) - REFERENCE_TREE_LOG2)
    return base, per_level


def steady_search_cost(model: CostModel, steady_scan: float, pages: int) -> float:
    """One unstable-tree search and insert, from a steady full scan of ``pages`` unique pages (one
    batch, and the batch that finds the end of the list) that took ``steady_scan`` seconds."""
    return (steady_scan - 2 * model.batch) / pages


def refit_tree(model: CostModel, steady_scan: float, pages: int) -> CostModel:
    """``model`` with ``tree_base`` such that a search at ``pages`` costs what a steady full scan of
    ``pages`` unique pages that took ``steady_scan`` seconds shows (``tree_per_level`` kept).

    On a shared machine ksmd's speed drifts by tens of per cent over minutes; the timing test
    measures the costs that dominate its CPU-bound configurations again right beside them."""
    search = steady_search_cost(model, steady_scan, pages)
    base = search - model.tree_per_level * (math.log2(pages) - REFERENCE_TREE_LOG2)
    return replace(model, tree_base=base) if base > 0 else model


def steady_scan_work(sleep_ms: int, scans: int = 6) -> float:
    """ksmd's work in one full scan of the pages it has now, each scan one batch, ``sleep_ms``
    between them (median seconds): its CPU time per scan after a sleep, or with no sleep its
    full-scan time less its waits for a CPU. After a sleep ksmd works slower than back to back
    (other work has been through the caches meanwhile), so each is measured as it is used."""
    if sleep_ms == 0:
        return ksmd_clock.real_scan_time(1_000_000, 0, scans=scans)
    guard.write("pages_to_scan", 1_000_000)
    guard.write("sleep_millisecs", sleep_ms)
    return statistics.median(s.cpu for s in _scans(scans + 1)[1:])


def measure(reference: CostModel | None = None) -> tuple[CostModel, dict]:
    """Measure this machine's costs; the caller holds the real KSM (guard.real_ksm()).

    Returns the cost model and what was measured (for the profile's record).
    A cost that comes out unusable (not above 0) keeps the reference's value.
    ksmd runs at a high priority meanwhile (ksmd_clock.boosted()).
    """
    with ksmd_clock.boosted():
        return _measure(reference)


def _measure(reference: CostModel | None) -> tuple[CostModel, dict]:
    ref = reference or CostModel()
    others = foreign_mergeable()
    if others:
        raise RealKsmError(f"other processes use KSM (pids {', '.join(map(str, sorted(others)))}): "
                           "calibration needs the real ksmd to itself")
    split_scans = None
    if thp_unavailable() is None:
        log.info("measuring ksmd: splitting %d empty huge pages", HUGE)
        split_scans, _ = _experiment([[{"contents": [0] * (HUGE * HUGE_PAGES), "thp": True}]], 2, use_zero_pages=1)
    log.info("measuring ksmd: smart_scan over %d unique pages", SMALL_TREE)
    smart, _ = _experiment([_unique(SMALL_TREE)], 12, smart_scan=1)
    log.info("measuring ksmd: two processes sharing %d pages", POOL)
    pool = [{"contents": list(range(1000, 1000 + POOL))}]
    shared = _experiment([pool, pool], 2, steady=10)
    # the tree searches last: what most of ksmd's time goes to, measured closest to its use
    log.info("measuring ksmd: %d unique pages", LARGE_TREE)
    large = _experiment([_unique(LARGE_TREE)], 2, steady=6)
    log.info("measuring ksmd: %d unique pages", SMALL_TREE)
    small = _experiment([_unique(SMALL_TREE)], 2, steady=16)
    return _derive(ref, small, large, shared, smart, split_scans)


def _derive(ref: CostModel, small, large, shared, smart, split_scans) -> tuple[CostModel, dict]:
    """The cost model from the experiments (see the module's table): (one-by-one scans, steady scan time) each."""
    found: dict[str, float] = {}
    found["checksum"] = small[0][0].cpu / SMALL_TREE
    # a steady full scan: one batch's work, the batch that finds the end of the list, two wake-ups
    tree_small = steady_search_cost(ref, small[1], SMALL_TREE)
    tree_large = steady_search_cost(ref, large[1], LARGE_TREE)
    found["tree_base"], found["tree_per_level"] = _tree_costs(tree_small, tree_large)
    model = replace(ref, **{k: v for k, v in found.items() if v > 0})
    found["ksm_page"] = (shared[1] - 2 * ref.batch) / (2 * POOL)
    found["merge"] = (shared[0][1].cpu - 2 * POOL * model.tree(POOL)) / (2 * POOL)
    late = smart[6:]
    skipped = sum(s.skipped for s in late)
    if skipped:
        visited = sum(s.cpu - s.scanned * model.tree(max(s.scanned, 2)) for s in late)
        found["skipped"] = visited / skipped
    if split_scans is not None:
        found["split"] = split_scans[1].cpu / HUGE - found["checksum"]
    kept = sorted(k for k, v in found.items() if not v > 0)
    model = replace(model, **{k: v for k, v in found.items() if v > 0}, origin=_origin())
    measured = {
        "machine": _origin(),
        "cpu_seconds_per_scan": {
            f"{SMALL_TREE} unique pages": [round(s.cpu, 6) for s in small[0]],
            f"{LARGE_TREE} unique pages": [round(s.cpu, 6) for s in large[0]],
            f"2 x {POOL} shared pages": [round(s.cpu, 6) for s in shared[0]],
            f"smart_scan over {SMALL_TREE} unique pages": [[round(s.cpu, 6), s.scanned, s.skipped] for s in smart],
            f"{HUGE} empty huge pages, use_zero_pages 1": [round(s.cpu, 6) for s in split_scans or []],
        },
        "steady_full_scan_seconds": {
            f"{SMALL_TREE} unique pages": round(small[1], 6),
            f"{LARGE_TREE} unique pages": round(large[1], 6),
            f"2 x {POOL} shared pages": round(shared[1], 6),
        },
        "reference_values_kept": kept + ["batch"] + ([] if split_scans is not None else ["split (no huge pages)"]),
    }
    return model, measured


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _origin() -> str:
    return (f"calibrated on {platform.node() or 'this machine'} (Linux {platform.release()}, {_cpu_model()}, "
            f"{os.cpu_count()} CPUs) on {date.today().isoformat()}")


def calibrate(reference: CostModel | None = None) -> tuple[CostModel, dict]:
    """:func:`measure` with exclusive use of the real KSM, every setting put back afterwards."""
    with guard.real_ksm():
        return measure(reference)
