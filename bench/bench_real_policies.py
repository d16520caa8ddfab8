#!/usr/bin/env python3
"""Benchmark: ksmtuned's rule and KSM_POLICY=adaptive side by side on the real kernel.

Real processes with mergeable memory (stand-in guests named like qemu, tests/ksm_guests.py:
an OS image shared by all, empty pages, pages of their own), the real ksmd, its CPU time
from the ksmd thread's /proc/PID/stat (the policy's own reading) and schedstat (to the
nanosecond, for the figures).  Each policy gets the same fresh start: KSM unmerged
(run=2), new guests, then the daemon's own cycle (ksmtuned_py.cycle.Cycle, in this
process, against the real root) every --interval seconds for --duration seconds.  The
real /sys/kernel/mm/ksm is used only through tests/realksm.py: locked, and every value
put back (run 0) afterwards, also on failure.

This machine has far more memory than the guests use, so ksmtuned's rule would never
start KSM.  The host the rule sees is therefore scaled to the guests (everything else is
real): MemTotal = the guests' RSS / 0.9, and free memory = 5 % of that plus what KSM
has merged, so the rule starts KSM and boosts while memory is short, then decays once
merging has freed enough, as on a host full of guests.

Prints, per policy, the time-averaged saving ((pages_sharing + ksm_zero_pages) x page
size right after each decision, holding until the next: decisions come every
--interval, sooner when the policy asks, as in the daemon) and ksmd's CPU time over the
same period, and the ratios.  Needs root and KSM.  Usage:
    .venv/bin/python bench/bench_real_policies.py [--interval 20] [--duration 900] [--guests 4] [--rounds 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ksmtuned_py import config as configmod  # noqa: E402
from ksmtuned_py import policies, procinfo  # noqa: E402
from ksmtuned_py.cycle import Cycle, next_wait  # noqa: E402
from ksmtuned_py.filehost import FileHost  # noqa: E402
from ksmtuned_py.readings import MemInfo, Readings  # noqa: E402
from sysfs_emu.simsummary import time_average  # noqa: E402
from tests import realksm  # noqa: E402
from tests.ksm_guests import ksm_guests  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


class ScaledHost(FileHost):
    """The real host, but with the memory size the rule sees scaled to the guests (see the module's text)."""

    def _scaled(self, readings: Readings) -> Readings:
        total = max(int(readings.committed_kb / 0.9), 1)
        c = readings.ksm.counters
        saved_kb = (c.get("pages_sharing", 0) + c.get("ksm_zero_pages", 0)) * PAGE // 1024
        free = total // 20 + saved_kb
        mem = MemInfo(total=total, free=free, buffers=0, cached=0, available=free, swap_free=0)
        return dataclasses.replace(readings, meminfo=mem, free_kb=free)

    def read(self) -> Readings:
        return self._scaled(super().read())

    def read_meminfo(self) -> MemInfo:
        return self.read().meminfo


def guest_specs(count: int, pages: int) -> list[dict]:
    """An OS image (3/8 of each guest) shared by all, 1/8 empty pages, the rest each guest's own."""
    image = [1_000_000 + i for i in range(pages * 3 // 8)]
    specs = []
    for g in range(count):
        own = [int.from_bytes(os.urandom(7), "little") + 1 for _ in range(pages - len(image) - pages // 8)]
        specs.append({"name": f"bench-{g}", "contents": image + [0] * (pages // 8) + own})
    return specs


def ksmd_schedstat_s(pid: int) -> float:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def run_policy(name: str, args) -> dict:
    """One policy from a fresh start; its saving and ksmd's CPU time."""
    realksm.unmerge_all()
    cfg = configmod.load(os.devnull, environ={"KSM_POLICY": name, "KSM_MONITOR_INTERVAL": str(args.interval)})
    with ksm_guests(*guest_specs(args.guests, args.pages)):
        host = ScaledHost.from_config("/", cfg)
        policy = policies.from_config(cfg)
        policy.start(host.read_meminfo())
        cycle = Cycle(host, policy)
        first = cycle.run()
        ksmd = host.scanner.ksmd_pid
        cpu0, sched0, t0 = first.ksmd_cpu_seconds, ksmd_schedstat_s(ksmd), time.monotonic()
        times, saved, levels = [t0], [(first.pages_sharing or 0) + (first.ksm_zero_pages or 0)], {}
        next_at = t0 + next_wait(args.interval, first)  # as the daemon: sooner when the policy asks
        while time.monotonic() - t0 < args.duration:
            time.sleep(max(0.0, next_at - time.monotonic()))
            report = cycle.run()
            next_at = time.monotonic() + next_wait(args.interval, report)
            times.append(time.monotonic())
            saved.append((report.pages_sharing or 0) + (report.ksm_zero_pages or 0))
            if args.trace:
                print(f"    {time.monotonic() - t0:6.0f} s {report.level or 'stop':<8} pages_to_scan {report.pages_to_scan} "
                      f"sleep {report.sleep_millisecs} ms, ksmd {report.ksmd_cpu_percent or 0:.1f}% of a CPU, "
                      f"saved {saved[-1] * PAGE / 2**20:.1f} MiB", flush=True)
            levels[report.level or "stop"] = levels.get(report.level or "stop", 0) + 1
        cpu = procinfo.ksmd_cpu_seconds("/proc", ksmd) - cpu0
        sched = ksmd_schedstat_s(ksmd) - sched0
        host.scanner.close()
    realksm.unmerge_all()
    return {"policy": name, "avg_saved_bytes": time_average(times, saved) * PAGE, "final_saved_bytes": saved[-1] * PAGE,
            "ksmd_cpu_s": cpu, "ksmd_schedstat_s": sched, "cycles": len(saved), "levels": levels}


def foreign_mergeable() -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/ksm_stat"):
        try:
            if "ksm_mergeable: yes" in stat.read_text():
                found.append(int(stat.parent.name))
        except OSError:
            continue
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=20.0, help="seconds between decisions")
    parser.add_argument("--duration", type=float, default=900.0, help="seconds per policy")
    parser.add_argument("--guests", type=int, default=4)
    parser.add_argument("--pages", type=int, default=32768, help="pages per guest (32768: 128 MiB)")
    parser.add_argument("--rounds", type=int, default=1, help="ksmtuned, adaptive; twice: then adaptive, ksmtuned")
    parser.add_argument("--trace", action="store_true", help="print every cycle")
    args = parser.parse_args()
    reason = realksm.skip_reason()
    if reason:
        print(f"bench_real_policies: cannot run: {reason}", file=sys.stderr)
        return 2
    results = []
    with realksm.real_ksm():
        others = foreign_mergeable()
        if others:
            print(f"bench_real_policies: other processes have mergeable memory (pids {others}); "
                  "their pages would count in KSM's global counters", file=sys.stderr)
            return 2
        order = ["ksmtuned", "adaptive"]
        for r in range(args.rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                res = run_policy(name, args)
                results.append(res)
                print(f"  {name:<9} saved on average {res['avg_saved_bytes'] / 2**20:7.1f} MiB "
                      f"(at the end {res['final_saved_bytes'] / 2**20:.1f} MiB), ksmd CPU {res['ksmd_cpu_s']:.2f} s "
                      f"(schedstat {res['ksmd_schedstat_s']:.3f} s), {res['cycles']} cycles {res['levels']}",
                      flush=True)
    by = {name: [r for r in results if r["policy"] == name] for name in order}
    k_saved = sum(r["avg_saved_bytes"] for r in by["ksmtuned"]) / len(by["ksmtuned"])
    a_saved = sum(r["avg_saved_bytes"] for r in by["adaptive"]) / len(by["adaptive"])
    k_cpu = sum(r["ksmd_schedstat_s"] for r in by["ksmtuned"]) / len(by["ksmtuned"])
    a_cpu = sum(r["ksmd_schedstat_s"] for r in by["adaptive"]) / len(by["adaptive"])
    print(f"adaptive / ksmtuned: saving {a_saved / k_saved * 100:.1f} %, ksmd CPU {a_cpu / k_cpu:.2f} "
          f"({'meets' if a_saved >= 0.95 * k_saved and a_cpu <= k_cpu / 3 else 'MISSES'} the target: "
          "at least 95 % of the saving with at most a third of the CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
