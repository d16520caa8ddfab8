"""Benchmark: the cost of one sysfs-emu tree tick on a big host (a script, not a test).

    .venv/bin/python bench/bench_tree_tick.py [SCENARIO] [--at 6h]

Loads a shipped scenario (default: datacenter-day, 64 GiB, 40 guests), advances it to
``--at``, builds the tree in a temporary directory and reports the wall time of:
an idle tick (nothing changed), a tick while ksmd scans (advance 0.1 s + sync), and a
forced refresh of every process's files; plus the emulator's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time

from sysfs_emu import Simulation
from sysfs_emu.cli import shipped_scenarios
from sysfs_emu.tree import Tree
from sysfs_emu.units import parse_duration


def per_call_ms(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", nargs="?", default="datacenter-day")
    ap.add_argument("--at", default="6h", help="simulated time to advance to first")
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--dir", default=None, help="where to build the tree (default: the system's temp dir)")
    args = ap.parse_args()
    sim = Simulation.from_yaml(shipped_scenarios()[args.scenario])
    sim.advance(parse_duration(args.at))
    root = tempfile.mkdtemp(prefix="bench-tree-", dir=args.dir)
    try:
        tree = Tree(sim, root)
        tree.create()
        idle = per_call_ms(tree.sync, args.n)
        sim.kernel.write_attr("run", "1")

        def busy():
            sim.advance(0.1)
            tree.sync()

        scanning = per_call_ms(busy, args.n)
        forced = per_call_ms(lambda: tree.sync(force=True), max(1, args.n // 5))
        tree.remove()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.scenario} at {args.at}: {len(sim.processes)} processes, tree in {root}")
    print(f"idle tick (no change)          {idle:8.2f} ms")
    print(f"tick while ksmd scans          {scanning:8.2f} ms  (advance 0.1 s + sync)")
    print(f"forced refresh of every proc/  {forced:8.2f} ms")
    print(f"peak resident memory           {rss_mb:8.0f} MB")


if __name__ == "__main__":
    main()
