"""Benchmark of the simulated memory and ksmd at host scale (a benchmark, not a test).

Builds a host of N pages (default 16.8 million: 64 GiB) shared by several
guests whose memory is part common pool (the same OS), part unique, part
empty, lets ksmd merge it, and prints:

* bytes of simulator state per simulated page (all per-page, per-KSM-page and
  per-content arrays, divided by the number of pages), and
* page visits per second of wall time on one core, for the merging scans and
  for the steady state that follows.

Usage: python bench/bench_sim.py [--pages N] [--guests G] [--scans S]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from sysfs_emu.kernel import Kernel
from sysfs_emu.ksmd import Ksmd
from sysfs_emu.memory import Memory


def build(pages: int, guests: int) -> tuple[Kernel, Memory, Ksmd]:
    kernel = Kernel()
    memory = Memory()
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
    for name, value in (("pages_to_scan", 10000), ("sleep_millisecs", 20), ("run", 1)):
        kernel.write_attr(name, str(value))
    return kernel, memory, ksmd


def timed_scans(ksmd: Ksmd, n: int) -> tuple[int, float, float]:
    visits0, sim0 = ksmd.pages_scanned + ksmd.pages_skipped, ksmd.clock
    t0 = time.process_time()
    ksmd.advance(1e9, until_full_scans=ksmd.seqnr + n)
    cpu = time.process_time() - t0
    return ksmd.pages_scanned + ksmd.pages_skipped - visits0, cpu, ksmd.clock - sim0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=64 * 2**30 // 4096)
    parser.add_argument("--guests", type=int, default=8)
    parser.add_argument("--scans", type=int, default=3)
    args = parser.parse_args()

    t0 = time.process_time()
    kernel, memory, ksmd = build(args.pages, args.guests)
    print(f"host: {args.pages} pages ({args.pages * 4096 / 2**30:.1f} GiB) in {args.guests} guests, "
          f"built in {time.process_time() - t0:.1f} s")
    phases = (("first scan (checksums)", 1, 1), ("merging scan", 1, 1), ("steady, smart_scan 1", args.scans, 1),
              ("steady, smart_scan 0", args.scans, 0))
    for label, scans, smart in phases:
        kernel.write_attr("smart_scan", str(smart))
        visits, cpu, sim = timed_scans(ksmd, scans)
        print(f"{label:24s}: {visits / cpu / 1e6:6.1f} M page visits/s of CPU "
              f"({visits} visits in {cpu:.2f} s; {sim:.0f} s simulated)")
    c = ksmd.counters()
    print("counters:", {k: c[k] for k in ("full_scans", "pages_shared", "pages_sharing", "pages_unshared",
                                          "pages_volatile", "pages_skipped", "ksm_zero_pages", "stable_node_dups")})
    state = memory.nbytes()
    print(f"simulator state: {state / 2**20:.0f} MiB = {state / args.pages:.1f} bytes per simulated page "
          f"(per-page arrays {memory.pages.nbytes() / args.pages:.1f}, content tables "
          f"{(memory.stable_of.nbytes + memory.unstable_of.nbytes) / args.pages:.1f}, KSM pages "
          f"{memory.nodes.nbytes() / args.pages:.1f})")
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
