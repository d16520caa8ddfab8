"""Benchmark of sysfs-emu capture: GiB of guest memory captured per second, and its memory (not a test).

Starts guest-like processes (default 4 of 512 MiB: half an OS image they share, a
quarter empty pages, a quarter their own pages; mergeable), captures them with
``sysfs-emu capture`` without sampling and with ``--sample 8``, each ``--repeat``
times, and prints the medians: GiB of captured memory per second of wall time, and
the capture process's peak RSS above that of a capture with nothing to read (which
bounds what a bigger host needs: the figure per captured page, times 16.8 million
pages for a 64 GiB host). Needs root.

Usage: sudo python bench/bench_capture.py [--guests G] [--mib M] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import capture_workload  # noqa: E402

SYSFS_EMU = str(Path(sys.executable).parent / "sysfs-emu")
PAGES_64_GIB = 64 * 2**30 // 4096


def run_capture(out: Path, *args: str) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in bytes, its output) of one ``sysfs-emu capture``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([SYSFS_EMU, "capture", "--out", str(out), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"capture failed: {stderr}")
    return wall, usage.ru_maxrss * 1024, stdout


def guest(i: int, pages: int) -> list[dict]:
    image = pages // 2
    empty = pages // 4
    own = pages - image - empty
    return [{"contents": list(range(1000, 1000 + image))}, {"contents": [0] * empty},
            {"contents": list(range(10_000_000 * (i + 1), 10_000_000 * (i + 1) + own))}]


def main() -> int:
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=4)
    parser.add_argument("--mib", type=int, default=512, help="MiB per guest (default 512)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pages = args.mib * 256
    with tempfile.TemporaryDirectory() as tmp, capture_workload.workloads() as procs:
        out = Path(tmp)
        base = statistics.median(run_capture(out / "none.yaml", "--guests-only")[1] for _ in range(args.repeat))
        for i in range(args.guests):
            procs.append(capture_workload.start(guest(i, pages)))
        total = args.guests * pages
        print(f"{args.guests} processes of {args.mib} MiB: {total * 4096 / 2**30:.1f} GiB to capture; "
              f"a capture with nothing to read peaks at {base / 2**20:.0f} MiB")
        for label, extra in (("every page", ()), ("--sample 8", ("--sample", "8"))):
            runs = [run_capture(out / "host.yaml", *extra) for _ in range(args.repeat)]
            wall = statistics.median(r[0] for r in runs)
            rss = statistics.median(r[1] for r in runs)
            captured = int(runs[0][2].split(" pages")[0].split()[-1].replace(",", ""))
            per_page = max(rss - base, 0) / captured
            print(f"  {label:10s}: {captured * 4096 / 2**30 / wall:5.2f} GiB/s of wall time (median of "
                  f"{args.repeat}: {wall:.1f} s for {captured:,} pages; slowest {max(r[0] for r in runs):.1f} s); "
                  f"peak RSS {rss / 2**20:.0f} MiB, {per_page:.1f} bytes per captured page above the base "
                  f"(a 64 GiB host: about {(base + per_page * PAGES_64_GIB) / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
