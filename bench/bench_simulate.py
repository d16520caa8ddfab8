"""Benchmark of sysfs-emu simulate: simulated seconds per second of wall time (a benchmark, not a test).

Runs the shipped 64 GiB / 40-guest host (datacenter-day) for a simulated day under
ksmtuned's rule (the default configuration), as ``sysfs-emu simulate datacenter-day
--duration 1d`` does, and one study set-up (study-3-same-os, 90 minutes) under
``always``; each ``--repeat`` times, in this one process. Prints simulated seconds
per wall second and per CPU second (medians; the slowest run too) and checks the
target: a simulated day of datacenter-day in 20 s of wall time or less (median).
The machine may be shared: CPU time is the steadier figure.

Usage: python bench/bench_simulate.py [--repeat R] [--duration T]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from sysfs_emu.cli import shipped_scenarios
from sysfs_emu.scenario import load_yaml
from sysfs_emu.units import parse_duration
from sysfs_emu.whatif import plan_runs, run_one

DAY_TARGET = 20.0  # wall seconds for a simulated day of datacenter-day


def timed(name: str, policy: str, seconds: float) -> tuple[float, float, dict]:
    """(wall, CPU) seconds of one run of the shipped scenario ``name``, and its summary."""
    scenario = load_yaml(shipped_scenarios()[name])
    plan = plan_runs([policy], [os.devnull])[0]
    c0, w0 = time.process_time(), time.perf_counter()
    result = run_one(scenario, plan, seconds)
    return time.perf_counter() - w0, time.process_time() - c0, result.summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", default="1d", help="simulated time of the datacenter-day runs (default 1d)")
    args = parser.parse_args()
    day = parse_duration(args.duration)
    cases = (("datacenter-day", "ksmtuned", day), ("study-3-same-os", "always", 90 * 60.0))
    figures = {}
    for name, policy, seconds in cases:
        runs = []
        for i in range(args.repeat):
            wall, cpu, summary = timed(name, policy, seconds)
            runs.append((wall, cpu, summary))
            print(f"{name} under {policy}, {seconds:g} s simulated: {wall:.1f} s wall, {cpu:.1f} s CPU "
                  f"(run {i + 1}/{args.repeat}; {summary['cycles']} cycles, saved at the end "
                  f"{summary['saved_bytes_end'] / 2**30:.2f} GiB)")
        if any(r[2] != runs[0][2] for r in runs):
            print("FAIL: the runs ended differently", file=sys.stderr)
            return 1
        figures[name] = ([r[0] for r in runs], [r[1] for r in runs], seconds)
    print(f"\nmedians of {args.repeat} runs:")
    ok = True
    for name, (walls, cpus, seconds) in figures.items():
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        print(f"  {name:16s}: {seconds / wall:7.0f} simulated s per wall s ({seconds / max(walls):.0f} in the "
              f"slowest run), {seconds / cpu:7.0f} per CPU s")
    walls = figures["datacenter-day"][0]
    scaled = statistics.median(walls) * 86400 / figures["datacenter-day"][2]
    ok = scaled <= DAY_TARGET
    print(f"{'PASS' if ok else 'FAIL'}  a simulated day of datacenter-day under ksmtuned: {scaled:.1f} s of wall "
          f"time (target <= {DAY_TARGET:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
