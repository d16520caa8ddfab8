#!/usr/bin/env python3
"""Benchmark: the simulated ksmd's full-scan time against the real ksmd's, per configuration,
with the reference cost profile and with this machine's (calibrated first).

The timing test (tests/test_fidelity.py) requires every configuration within 10 %
with the calibrated profile. This script prints, per configuration, the real
median over ``--rounds`` rounds, the simulated time with the reference profile
(the costs recorded on the development machine) and with the profile
``sysfs-emu calibrate`` measures here first, and the model's error with each:
on another CPU the reference is off wherever the work per batch matters, the
calibrated profile is not. A benchmark, not a test: the errors depend on this
CPU and its load. As in the test, ksmd runs at nice -20 while it is measured,
and its waits for a CPU are left out of the real times.

Needs root and KSM; it uses the real /sys/kernel/mm/ksm through
sysfs_emu.realksm.guard (every value restored, run left at 0).

Usage: .venv/bin/python bench/bench_scan_time.py [--rounds 3] [--costs FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sysfs_emu import costs  # noqa: E402
from sysfs_emu.realksm import calibrate, guard, ksmd_clock  # noqa: E402
from sysfs_emu.realksm.workload import start_workload, workload_processes  # noqa: E402
from tests import scantime  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="real measurements per configuration")
    parser.add_argument("--costs", default=None, metavar="FILE", help="a profile to use instead of calibrating")
    args = parser.parse_args()
    reason = guard.skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    configs = [(c, "CPU-sensitive") for c in scantime.CPU_SENSITIVE] + [(c, "sleep-bound") for c in scantime.SLEEP_BOUND]
    reference = costs.reference()
    with guard.real_ksm():
        calibrated = costs.load(args.costs) if args.costs else calibrate.measure()[0]
        print(f"reference:  {reference.origin}\ncalibrated: {calibrated.origin}")
        print(f"  tree search at {scantime.PAGES} pages: reference {reference.tree(scantime.PAGES) * 1e6:.2f} us, "
              f"calibrated {calibrated.tree(scantime.PAGES) * 1e6:.2f} us")
        print(f"full scan of {scantime.PAGES} unique pages, real (median of {args.rounds} rounds) vs simulated")
        print(f"{'pages_to_scan':>13} {'sleep_ms':>8} {'kind':>13} {'real ms':>9} {'reference':>10} {'error':>7} "
              f"{'calibrated':>10} {'error':>7}")
        with workload_processes() as procs, ksmd_clock.boosted():
            guard.write("run", 2)
            guard.write("run", 0)
            procs.append(start_workload([{"contents": list(range(100_000, 100_000 + scantime.PAGES))}]))
            guard.write("smart_scan", 0)
            for (pts, sleep_ms), kind in configs:
                real = statistics.median(scantime.real_scan_time(pts, sleep_ms, scans=16) for _ in range(args.rounds))
                ref = scantime.sim_scan_time(scantime.PAGES, pts, sleep_ms, cost=reference)
                cal = scantime.sim_scan_time(scantime.PAGES, pts, sleep_ms, cost=calibrated)
                print(f"{pts:>13} {sleep_ms:>8} {kind:>13} {real * 1000:>9.1f} {ref * 1000:>10.1f} "
                      f"{(ref - real) / real:>+7.1%} {cal * 1000:>10.1f} {(cal - real) / real:>+7.1%}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
