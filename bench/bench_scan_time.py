#!/usr/bin/env python3
"""Benchmark: the simulated ksmd's full-scan time against the real ksmd's, per configuration.

The timing test (tests/test_fidelity.py) checks only the configurations whose
time is set by sleeps and jiffies, which the model predicts on any CPU.  This
script measures all of them, the CPU-sensitive ones included (work per batch
that crosses ticks, or no sleep at all), where the model's per-page costs —
measured on one CPU — meet this machine's CPU: it prints, per configuration,
the real median over ``--rounds`` rounds, the simulated time and the model's
error.  A benchmark, not a test: the error depends on this CPU and its load.

Needs root and KSM; it uses the real /sys/kernel/mm/ksm through
tests/realksm.py (every value restored, run left at 0).

Usage: .venv/bin/python bench/bench_scan_time.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import realksm, scantime  # noqa: E402
from tests.fidelity_workload import start_workload, workload_processes  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="real measurements per configuration")
    args = parser.parse_args()
    reason = realksm.skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    configs = [(c, "sleep-bound") for c in scantime.SLEEP_BOUND] + [(c, "CPU-sensitive") for c in scantime.CPU_SENSITIVE]
    print(f"full scan of {scantime.PAGES} unique pages, real (median of {args.rounds} rounds) vs simulated")
    print(f"{'pages_to_scan':>13} {'sleep_ms':>8} {'kind':>13} {'real ms':>9} {'sim ms':>8} {'error':>7}")
    with realksm.real_ksm(), workload_processes() as procs:
        realksm.write("run", 2)
        realksm.write("run", 0)
        procs.append(start_workload([{"contents": list(range(100_000, 100_000 + scantime.PAGES))}]))
        realksm.write("smart_scan", 0)
        for (pts, sleep_ms), kind in configs:
            real = statistics.median(scantime.real_scan_time(pts, sleep_ms) for _ in range(args.rounds))
            sim = scantime.sim_scan_time(scantime.PAGES, pts, sleep_ms)
            print(f"{pts:>13} {sleep_ms:>8} {kind:>13} {real * 1000:>9.1f} {sim * 1000:>8.1f} "
                  f"{(sim - real) / real:>+7.1%}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
