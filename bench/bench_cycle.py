#!/usr/bin/env python3
"""Benchmark: CPU cost of one tuning cycle on a host with 1,000 processes.

Runs the bash reference (Debian's ksmtuned, its awk/pgrep/ps/date forks as it
does them) and `ksmtuned-py run` side by side, on identical inputs, each in a
private mount namespace over scratch files (tests/nsharness.py), on a host with
about 1,000 real processes (`sleep`s added to what runs, and a few stand-in qemu
guests), so both scan the same.  In the host's PID namespace, as a service runs:
there ksmtuned-py lists /proc only when the kernel's pid cursor and process count
say something it does not know may have started (ksmtuned_py/newpids.py; the
reference's forks between two cycles are such pids, looked at one by one).
``--pid-namespace`` runs both in a fresh PID namespace instead, as in a
container, where every cycle lists /proc. Each cycle is one
SIGUSR1; its cost is the daemon's CPU time including the children it reaped
(its own from /proc/PID/task/*/schedstat, to the nanosecond; its children's from
/proc/PID/stat cutime+cstime, in clock ticks; for the reference the loop subshell
that runs `adjust`), averaged over --cycles cycles, the two daemons alternating.
Prints both, and the ratio.

Also prints ksmtuned-py's guest scan alone, in this process: the first scan
(every process read in full) and later ones (known non-guests: only their comm
is re-read, from the file kept open, to notice an exec or a rename).

Needs root (namespaces, bind mounts) and Debian's ksmtuned package (fetched
into the test cache with apt-get download). Usage:
    .venv/bin/python bench/bench_cycle.py [--processes 1000] [--cycles 30] [--debug]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import nsharness  # noqa: E402
from tests.nsharness import Scratch  # noqa: E402

DAEMON = Path(sys.executable).parent / "ksmtuned-py"
TICK = os.sysconf("SC_CLK_TCK")
# Syscalls a daemon sleeps in between cycles (x86_64: select, poll, pselect6, ppoll, epoll_wait, epoll_pwait).
IDLE_SYSCALLS = {"7", "23", "232", "270", "271", "281"}


def children_seconds(pid: int) -> float:
    """cutime+cstime of ``pid``: the CPU of the children it reaped (clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[13:15]) / TICK


def run_ns(pid: int) -> int:
    """Nanoseconds on CPU of all threads of ``pid`` (schedstat; children not included)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return total


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@dataclass
class Bench:
    name: str
    scratch: Scratch
    proc: subprocess.Popen
    pid: int = 0  # the process that runs the cycles
    cpu: float = 0.0
    wall: float = 0.0
    first_cpu: float = 0.0
    own_ns: int = 0  # schedstat: exact, but without reaped children

    def idle(self) -> bool:
        if self.name == "reference":
            return nsharness.blocked_in_wait(self.pid)
        try:
            call = Path(f"/proc/{self.pid}/syscall").read_text().split()[0]
        except (OSError, IndexError):
            return False
        return state(self.pid) == "S" and call in IDLE_SYSCALLS

    def cycle(self) -> tuple[float, float]:
        """One SIGUSR1 cycle: (CPU seconds, wall seconds)."""
        run = self.scratch.ksm / "run"
        run.write_text("")  # both write run last in every cycle
        before, start, ns = children_seconds(self.pid), time.monotonic(), run_ns(self.pid)
        os.kill(self.pid, signal.SIGUSR1)
        nsharness.wait_until(lambda: run.stat().st_size > 0, 30, f"{self.name} to write run", 0.0005)
        nsharness.wait_until(self.idle, 30, f"{self.name} to go idle", 0.0005)
        wall = time.monotonic() - start
        time.sleep(0.02)  # let a daemon that went idle in a syscall we do not know settle
        own = run_ns(self.pid) - ns
        self.own_ns += own
        # Its own CPU to the nanosecond (schedstat), its reaped children's in clock ticks (utime and
        # stime are ticks too: over a few dozen cycles of 4 ms, one tick more or less is several per cent).
        return own / 1e9 + children_seconds(self.pid) - before, wall


def start_processes(count: int) -> list[subprocess.Popen]:
    """``count`` sleeps that die with this process, however it ends."""
    procs = []
    for _ in range(count):
        procs.append(subprocess.Popen(["sleep", "infinity"], stdin=subprocess.DEVNULL,
                                      preexec_fn=nsharness._die_with_parent))
    return procs


def count_processes() -> int:
    return sum(1 for e in os.listdir("/proc") if e.isdigit())


def scan_alone(repeat: int) -> list[str]:
    """ksmtuned-py's guest scan in this process: the first (cold) scan, then with the cache warm."""
    try:
        from ksmtuned_py import guestscan
    except ImportError as e:
        return [f"(guest scan alone not measured: {e})"]
    from ksmtuned_py.guestscan import raise_open_files_limit

    raise_open_files_limit()  # as the daemon does: a comm file kept open per process
    scanner = guestscan.GuestScanner("/")
    t0 = time.process_time()
    scanner.scan()
    first = time.process_time() - t0
    stat_reads, comm_reads = scanner.stats.stat_reads, scanner.stats.comm_reads
    t0 = time.process_time()
    for _ in range(repeat):
        scanner.scan()
    per = (time.process_time() - t0) / repeat
    return [
        f"  ksmtuned-py guest scan alone, first: {first * 1000:.2f} ms CPU, {stat_reads} stat reads",
        f"  ksmtuned-py guest scan alone, later (cache warm): {per * 1000:.2f} ms CPU, "
        f"{(scanner.stats.stat_reads - stat_reads) / repeat:.0f} stat reads and "
        f"{(scanner.stats.comm_reads - comm_reads) / repeat:.0f} comm reads per scan",
    ]


def inside(args) -> int:
    """The benchmark proper (in the host's PID namespace, or as the first process of a fresh one)."""
    from tests.guests import stand_in_guests

    filler = start_processes(max(args.processes - count_processes() - args.guests - 4, 0))
    guests_spec = [{"resident_kib": 8192, "extra_args": ("-name", f"g{i}", "-enable-kvm")}
                   for i in range(args.guests)]
    benches: list[Bench] = []
    try:
        # The scratch /run, knobs and meminfo on a tmpfs, as /run and sysfs are on a real host (a
        # disk file system would make every state-file rename and knob write cost milliseconds).
        scratch_dir = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
        with stand_in_guests(*guests_spec), tempfile.TemporaryDirectory(dir=scratch_dir, prefix="ksmtuned-bench-") as tmp:
            conf = "KSM_MONITOR_INTERVAL=3600\n"
            if args.debug:
                conf += "DEBUG=1\nLOGFILE=/run/ksmtuned.log\n"
            # A small MemTotal, so committed + thres > total: every cycle takes the
            # longer path (boost or decay, then three writes).
            meminfo = nsharness.meminfo_text(40000, 1000, 500, 500)
            for name, argv in (("reference", ["bash", str(args.reference)]),
                               ("ksmtuned-py", [str(DAEMON), "run"])):
                scratch = Scratch.create(Path(tmp) / name)
                scratch.write_conf(conf)
                scratch.write_meminfo(meminfo)
                out = open(scratch.stderr, "w")
                proc = nsharness.start_in_namespace(scratch, argv, stdout=out, stderr=out,
                                                    preexec_fn=nsharness._die_with_parent)
                benches.append(Bench(name, scratch, proc))
            for b in benches:
                b.pid = nsharness.wait_until(b.scratch.pid, 20, f"{b.name}'s pidfile")
                nsharness.wait_until(lambda: nsharness.handles(b.pid, signal.SIGUSR1), 20,
                                     f"{b.name} to handle SIGUSR1")
                nsharness.wait_until(b.idle, 20, f"{b.name} to go idle")
            where = "a fresh PID namespace" if args.pid_namespace else "the host's PID namespace"
            print(f"{count_processes()} processes in {where} ({args.guests} stand-in guests); "
                  f"{args.cycles} cycles each, DEBUG {'on' if args.debug else 'off'}", flush=True)
            for b in benches:
                b.first_cpu, _ = b.cycle()  # the first cycle fills ksmtuned-py's cache
                b.own_ns = 0
            for _ in range(args.cycles):
                for b in benches:
                    cpu, wall = b.cycle()
                    b.cpu += cpu
                    b.wall += wall
            for b in benches:
                print(f"  {b.name:<12} {b.cpu / args.cycles * 1000:7.2f} ms CPU per cycle "
                      f"(wall {b.wall / args.cycles * 1000:6.2f} ms; first cycle {b.first_cpu * 1000:.0f} ms CPU; "
                      f"the daemon process alone, without children: {b.own_ns / args.cycles / 1e6:.2f} ms)")
            ref, py = benches
            print(f"  ksmtuned-py keeps {len(os.listdir(f'/proc/{py.pid}/fd'))} files open "
                  "(a comm file per known process)")
            if py.cpu > 0:
                print(f"  ratio: the reference's cycle costs {ref.cpu / py.cpu:.1f}x ksmtuned-py's CPU")
            else:
                print(f"  ratio: ksmtuned-py used less than one clock tick over {args.cycles} cycles")
            for line in scan_alone(args.cycles):
                print(line)
    finally:
        for b in benches:
            nsharness.kill_group(b.proc)
        for p in filler:
            p.kill()
        for p in filler:
            p.wait()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=1000, help="processes in the namespace")
    parser.add_argument("--guests", type=int, default=4, help="stand-in qemu guests among them")
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--debug", action="store_true", help="DEBUG=1 (the reference then forks date too)")
    parser.add_argument("--pid-namespace", action="store_true",
                        help="run both in a fresh PID namespace (as in a container: every cycle lists /proc)")
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside(args)
    reason = nsharness.skip_reason()
    if reason:
        print(f"bench_cycle: cannot run: {reason}", file=sys.stderr)
        return 2
    if not DAEMON.exists():
        print(f"bench_cycle: {DAEMON} missing: install the project into the venv", file=sys.stderr)
        return 2
    from tests import debpkg

    try:
        reference = debpkg.unpacked("ksmtuned") / "usr/sbin/ksmtuned"
    except debpkg.Unavailable as e:
        print(f"bench_cycle: cannot run: {e}", file=sys.stderr)
        return 2
    argv = [sys.executable, str(Path(__file__).resolve()), "--inside", "--reference", str(reference),
            "--processes", str(args.processes), "--guests", str(args.guests), "--cycles", str(args.cycles)]
    argv += ["--debug"] if args.debug else []
    argv += ["--pid-namespace"] if args.pid_namespace else []
    if args.pid_namespace:
        done = nsharness.run_isolated(argv, timeout=600, cwd=REPO)
    else:  # a private mount namespace still: the scratch files are mounted over the host's paths
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", *argv], timeout=600, cwd=REPO,
                              preexec_fn=nsharness._die_with_parent)
    leaks = nsharness.host_mount_leaks()
    if leaks:
        print("mounts left behind:\n" + "\n".join(leaks), file=sys.stderr)
        return 1
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
