"""Benchmark of the simulated memory and ksmd at host scale (a benchmark, not a test).

Builds a host of N pages (default 16.8 million: 64 GiB) shared by several
guests whose memory is part common pool (the same OS), part unique, part
empty, sized the way :class:`sysfs_emu.Simulation` sizes a host (page arrays
for the guests up front, growth slack trimmed once they are built), lets
ksmd merge it, and checks the two scale targets of the simulator:

* at most 32 bytes of simulator state per simulated page (all per-page,
  per-KSM-page and per-content arrays, divided by the number of pages), and
* at least 10 million page visits (pages_scanned + pages_skipped) per second
  of wall time on one core, in every phase: the first scan (checksums), the
  merging scan, and the steady state after it with smart_scan on and off.

The machine may be shared: the whole run is repeated (``--repeat``) and each
figure is the median over the runs. One PASS/FAIL line per target; the exit
status is 1 if any target fails.

Usage: python bench/bench_sim.py [--pages N] [--guests G] [--scans S] [--repeat R]
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time

import numpy as np

from sysfs_emu.kernel import Kernel
from sysfs_emu.ksmd import Ksmd
from sysfs_emu.memory import Memory

VISITS_TARGET = 10e6  # page visits per second of wall time
BYTES_TARGET = 32  # bytes of state per simulated page


def build(pages: int, guests: int) -> tuple[Kernel, Memory, Ksmd]:
    kernel = Kernel()
    memory = Memory(capacity=pages)  # as Simulation: room for the guests running at time 0
    ksmd = Ksmd(kernel, memory)
    per_guest = pages // guests
    pool_size = per_guest // 2
    pool = memory.new_contents(pool_size)
    rng = np.random.default_rng(1)
    for g in range(guests):
        shared = pool[rng.permutation(pool_size)[: per_guest // 2]]
        uniq = memory.new_contents(per_guest * 4 // 10)
        zero = np.zeros(per_guest - shared.size - uniq.size, dtype=np.int64)
        contents = np.concatenate([shared, uniq, zero])
        memory.add_region(100 + g, contents)
    memory.trim()  # as Simulation, once the time-0 guests are built
    for name, value in (("pages_to_scan", 10000), ("sleep_millisecs", 20), ("run", 1)):
        kernel.write_attr(name, str(value))
    return kernel, memory, ksmd


def timed_scans(ksmd: Ksmd, n: int) -> tuple[int, float, float, float]:
    """Run ``n`` full scans; returns (visits, wall seconds, CPU seconds, simulated seconds)."""
    visits0, sim0 = ksmd.pages_scanned + ksmd.pages_skipped, ksmd.clock
    c0, w0 = time.process_time(), time.perf_counter()
    ksmd.advance(1e9, until_full_scans=ksmd.seqnr + n)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return ksmd.pages_scanned + ksmd.pages_skipped - visits0, wall, cpu, ksmd.clock - sim0


def one_run(args, phases, verbose: bool) -> tuple[dict[str, tuple[float, float]], float, dict]:
    """Build and scan once: per phase (wall, CPU) visits per second, bytes per page, counters."""
    t0 = time.perf_counter()
    kernel, memory, ksmd = build(args.pages, args.guests)
    if verbose:
        print(f"host: {args.pages} pages ({args.pages * 4096 / 2**30:.1f} GiB) in {args.guests} guests, "
              f"built in {time.perf_counter() - t0:.1f} s")
    rates = {}
    for label, scans, smart in phases:
        kernel.write_attr("smart_scan", str(smart))
        visits, wall, cpu, sim = timed_scans(ksmd, scans)
        rates[label] = (visits / wall, visits / cpu)
        if verbose:
            print(f"  {label:22s}: {visits / wall / 1e6:5.1f} M visits/s wall, {visits / cpu / 1e6:5.1f} CPU "
                  f"({visits} visits in {wall:.2f} s; {sim:.0f} s simulated)")
    c = ksmd.counters()
    counters = {k: c[k] for k in ("full_scans", "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
                                  "pages_skipped", "ksm_zero_pages", "stable_node_dups")}
    state = memory.nbytes()
    if verbose:
        print(f"  state: {state / 2**20:.0f} MiB = {state / args.pages:.1f} bytes per page (per-page arrays "
              f"{memory.pages.nbytes() / args.pages:.1f}, content tables {memory.ctab.nbytes / args.pages:.1f}, "
              f"KSM pages {memory.nodes.nbytes() / args.pages:.1f})")
    return rates, state / args.pages, counters


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=64 * 2**30 // 4096)
    parser.add_argument("--guests", type=int, default=8)
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="runs; figures are medians (default 3)")
    args = parser.parse_args()
    phases = (("first scan (checksums)", 1, 1), ("merging scan", 1, 1), ("steady, smart_scan 1", args.scans, 1),
              ("steady, smart_scan 0", args.scans, 0))

    runs = []
    for i in range(args.repeat):
        print(f"run {i + 1}/{args.repeat}")
        runs.append(one_run(args, phases, verbose=True))
        gc.collect()
    counters = runs[0][2]
    if any(r[2] != counters for r in runs):
        print("FAIL: the runs ended in different states", file=sys.stderr)
        return 1
    print("counters:", counters)
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"\nmedians of {args.repeat} runs, {args.pages} pages ({args.pages * 4096 / 2**30:.1f} GiB):")
    ok = True
    for label, _, _ in phases:
        wall = statistics.median(r[0][label][0] for r in runs)
        cpu = statistics.median(r[0][label][1] for r in runs)
        low = min(r[0][label][0] for r in runs)
        passed = wall >= VISITS_TARGET
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  {label:22s}: {wall / 1e6:5.1f} M page visits/s of wall time "
              f"(target >= {VISITS_TARGET / 1e6:.0f}; slowest run {low / 1e6:.1f}; CPU time {cpu / 1e6:.1f})")
    per_page = statistics.median(r[1] for r in runs)
    passed = per_page <= BYTES_TARGET
    ok &= passed
    print(f"{'PASS' if passed else 'FAIL'}  {'state per page':22s}: {per_page:5.1f} bytes (target <= {BYTES_TARGET})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
