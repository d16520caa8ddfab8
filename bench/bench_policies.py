#!/usr/bin/env python3
"""Benchmark: ksmtuned's rule and KSM_POLICY=adaptive side by side on simulated hosts.

Each scenario runs twice from the same start, once per policy, through the daemon's own
cycle (ksmtuned_py.cycle.Cycle over a SimulationHost, one decision every
KSM_MONITOR_INTERVAL of simulated time and at every guest start and stop), and prints per scenario:

- the time-averaged saving: (pages_sharing + ksm_zero_pages) x page size right after each
  decision, each held until the next one (the same instants for both policies: every
  KSM_MONITOR_INTERVAL and whenever a guest starts or stops, as the libvirt hook retunes),
  from the first decision to the end; and the same for general_profit;
- ksmd's CPU time over the same period (from the first decision: before it ksmd runs as
  the scenario set it, whatever the policy), as the simulated ksmd accounts it (its cost
  model, measured on Linux 6.18);
- adaptive / ksmtuned for both, and whether the target holds: at least 95 % of the saving
  with at most a third of the CPU time.

The scenarios are the shipped ones (sysfs_emu/scenarios) and the held-out ones in
bench/scenarios, written to have other shapes and kept out of the policy's first tuning (see the README).
``--rate N/MS`` adds, for scale, ksmtuned's gate at a constant N pages every MS ms (no
bursts, no backing off): what a fixed scan rate keeps of the saving at a given CPU.
Usage: .venv/bin/python bench/bench_policies.py [--only NAME,...] [--duration T] [--json FILE] [--rate N/MS]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ksmtuned_py import config as configmod  # noqa: E402
from ksmtuned_py import policies  # noqa: E402
from ksmtuned_py.decision import START  # noqa: E402
from sysfs_emu.simsummary import time_average  # noqa: E402
from sysfs_emu.simulate import Simulate  # noqa: E402
from sysfs_emu.simulation import Simulation  # noqa: E402
from sysfs_emu.units import parse_duration  # noqa: E402

SHIPPED = REPO / "sysfs_emu" / "scenarios"
HELD_OUT = REPO / "bench" / "scenarios"
# How long each scenario runs: its own story's length (the studies measured 1.5 h; a day for the day).
DURATIONS = {"datacenter-day": 86400.0, "late-starters": 6 * 3600.0}
DEFAULT_DURATION = 3 * 3600.0
POLICIES = ("ksmtuned", "adaptive")


@dataclass
class Run:
    """One policy over one scenario."""

    avg_saved: float  # bytes
    avg_profit: float  # bytes
    cpu_s: float  # ksmd's CPU seconds
    final_saved: int
    cycles: int
    wall_s: float


class ConstantRate(policies.KsmtunedPolicy):
    """ksmtuned's gate (run or not), at a constant pages_to_scan and sleep_millisecs."""

    def __init__(self, config: configmod.Config, npages: int, sleep_ms: int):
        super().__init__(policies.ksmtuned_params(config), preamble=policies.start_preamble(config))
        self.rate = (npages, sleep_ms)

    def decide(self, readings):
        d = super().decide(readings)
        if d.action != START:
            return d
        return dataclasses.replace(d, npages=self.rate[0], npages_text="", sleep_ms=self.rate[1])


def run(path: Path, policy: str, duration: float, environ: dict[str, str]) -> Run:
    sim = Simulation.from_yaml(path)
    if policy.startswith("rate:"):
        config = configmod.load(os.devnull, environ=environ)
        npages, sleep_ms = (int(v) for v in policy[5:].split("/"))
        loop = Simulate(sim, config, policy=ConstantRate(config, npages, sleep_ms), name=policy)
    else:
        config = configmod.load(os.devnull, environ={**environ, "KSM_POLICY": policy})
        loop = Simulate(sim, config)
    t0 = time.monotonic()
    cpu0 = None
    samples: list[tuple[float, int, int]] = []  # (time, saved bytes, general_profit) right after each cycle
    for _row in loop.rows(duration):
        if cpu0 is None:  # the period starts with the first decision: before it, ksmd ran as the scenario set it
            cpu0 = sim.ksmd.cpu_time
        c = sim.kernel.counters()
        samples.append((sim.now, (c["pages_sharing"] + c["ksm_zero_pages"]) * sim.page_size, c["general_profit"]))
    cpu = sim.ksmd.cpu_time - (cpu0 or 0.0)
    if sim.now < duration:  # the last cycle's knobs hold to the end of the period
        sim.advance(duration - sim.now)
        cpu = sim.ksmd.cpu_time - (cpu0 or 0.0)
    # Time-weighted: each sample holds until the next cycle (cycles come every interval, sooner when the
    # policy asks, and when a guest starts or stops, as the libvirt hook's retune makes them), the last
    # one until the end.
    held = samples + [(duration, *samples[-1][1:])] if samples and duration > samples[-1][0] else samples
    times = [t for t, _, _ in held]
    saved = time_average(times, [s for _, s, _ in held]) if len(held) > 1 else 0.0
    profit = time_average(times, [p for _, _, p in held]) if len(held) > 1 else 0.0
    last = samples[-1][1] if samples else 0
    return Run(saved, profit, cpu, last, len(samples),
               time.monotonic() - t0)


def ratio(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def verdict(k: Run, a: Run) -> str:
    saving_ok = a.avg_saved >= 0.95 * k.avg_saved
    cpu_ok = a.cpu_s <= k.cpu_s / 3 + 1e-6
    return "meets" if saving_ok and cpu_ok else "MISSES"


def mib(x: float) -> str:
    return f"{x / 2**20:10.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--duration", help="simulated time for every scenario (default: per scenario)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--rate", metavar="N/MS", help="also ksmtuned's gate at a constant N pages every MS ms")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a configuration value for both policies (e.g. KSM_THRES_COEF=90)")
    args = parser.parse_args()
    paths = sorted(SHIPPED.glob("*.yaml")) + sorted(HELD_OUT.glob("*.yaml"))
    if args.only:
        wanted = set(args.only.split(","))
        paths = [p for p in paths if p.stem in wanted]
    print(f"{'scenario':<26} {'set':<8} {'time':>5} {'ksmtuned MiB':>12} {'adaptive MiB':>12} {'saving':>7} "
          f"{'ksmtuned cpu':>12} {'adaptive cpu':>12} {'cpu':>6}  target")
    rows = []
    for path in paths:
        duration = parse_duration(args.duration) if args.duration else DURATIONS.get(path.stem, DEFAULT_DURATION)
        environ = dict(item.split("=", 1) for item in args.set)
        runs = {p: run(path, p, duration, environ) for p in POLICIES}
        k, a = runs["ksmtuned"], runs["adaptive"]
        s_ratio, c_ratio = ratio(a.avg_saved, k.avg_saved), ratio(a.cpu_s, k.cpu_s)
        kind = "shipped" if path.parent == SHIPPED else "held-out"
        print(f"{path.stem:<26} {kind:<8} {duration / 3600:4.1f}h {mib(k.avg_saved):>12} {mib(a.avg_saved):>12} "
              f"{'-' if s_ratio is None else f'{s_ratio * 100:6.1f}%':>7} {k.cpu_s:11.1f}s {a.cpu_s:11.1f}s "
              f"{'-' if c_ratio is None else f'{c_ratio:6.2f}':>6}  {verdict(k, a)}", flush=True)
        if args.rate:
            r = run(path, f"rate:{args.rate}", duration, environ)
            s_rate, c_rate = ratio(r.avg_saved, k.avg_saved), ratio(r.cpu_s, k.cpu_s)
            print(f"  {args.rate} constant under ksmtuned's gate: {r.avg_saved / 2**20:.1f} MiB"
                  f"{'' if s_rate is None else f' ({s_rate * 100:.1f} %)'}, ksmd {r.cpu_s:.1f} s"
                  f"{'' if c_rate is None else f' ({c_rate:.2f})'}", flush=True)
        rows.append({"scenario": path.stem, "set": kind, "duration_s": duration,
                     **{f"{p}_{key}": getattr(r, key) for p, r in runs.items() for key in vars(r)}})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
