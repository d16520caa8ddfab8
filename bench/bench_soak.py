#!/usr/bin/env python3
"""Soak benchmark: the real daemon tunes a churning simulated host for 30 simulated days.

What runs: a real ``ksmtuned-py run`` process (the daemon as installed, with DEBUG on
and its log, pidfile and published state) against a live sysfs-emu tree; the
host is a 640 MiB machine whose guests (64 MiB each: a shared OS image, their own
data, never-written RAM) start and stop every few hours and rewrite part of their
memory every 20 minutes, so that KSM is started, stopped, merges and unmerges
over and over.

Why the real daemon on the live tree, not ``sysfs-emu simulate``: the questions
are about the daemon's process (does its memory or its file-descriptor count grow
over tens of thousands of cycles?) and about what a reader of the files sees.
Why in lock-step, not at a fixed speed: the benchmark owns the simulation and its
tree, advances it one interval (60 simulated seconds), lets the daemon run one
cycle (SIGUSR1; the cycle's end is its sd_notify STATUS= on a socket of ours),
applies the daemon's writes, and only then reads the files. So every cycle sees a
tree that is not being rewritten, the invariants are checked on a consistent
snapshot, and the figures do not depend on this machine's speed or load.

Invariants, after every cycle, from the files as a reader sees them:
- no KSM counter is negative (general_profit may be: it is a difference);
- pages_sharing x page size never exceeds the guests' resident memory (counting
  guests that exited since ksmd's last full scan: their rmap items go then);
- the sum of the processes' ksm_merging_pages never exceeds pages_shared +
  pages_sharing, nor their ksm_zero_pages the global ksm_zero_pages, and both are
  equal once ksmd has completed two full scans since the last guest exited (as
  in the kernel, a dead process's merged pages are dropped by ksmd's next pass);
- each ksm_stat's ksm_process_profit = (merging + zero pages) x page size -
  rmap items x 64;
- the daemon's resident memory stays within 1 MB after the first simulated day,
  and its open file descriptors do not grow.

Usage: .venv/bin/python bench/bench_soak.py [--days 30] [--seed 1]
Exit status 1 when an invariant fails.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sysfs_emu import Simulation  # noqa: E402
from sysfs_emu.tree import Tree  # noqa: E402

DAEMON = Path(sys.executable).parent / "ksmtuned-py"
INTERVAL = 60.0
GUEST_PAGES = 16384  # 64 MiB
PAGE = 4096
RSS_LIMIT_KB = 1024
COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans", "pages_scanned",
            "pages_skipped", "ksm_zero_pages", "stable_node_chains", "stable_node_dups")


def guest(pid_id: int, rnd: random.Random) -> dict:
    image = rnd.choice(["debian-12", "ubuntu-24.04"])
    return {"name": "qemu-system-x86", "id": pid_id, "cmdline": f"qemu-system-x86_64 -name guest{pid_id} -m 64",
            "regions": [{"pages": 12000, "fill": "pool", "pool": image},
                        {"pages": 3000, "fill": "unique"},
                        {"pages": GUEST_PAGES - 15000, "fill": "zero"}]}


def churn_scenario(days: float, seed: int) -> dict:
    """The host and 30 days of starts, exits and rewrites (seeded: the same every run)."""
    rnd = random.Random(seed)
    live = list(range(7))
    next_id = 7
    events = []
    t = 0.0
    end = days * 86400
    next_churn = rnd.expovariate(1 / 7200)
    while True:
        t += 1200  # every 20 simulated minutes, a guest rewrites part of its memory
        if t >= end:
            break
        victim = rnd.choice(live)
        first = rnd.randrange(0, 12000 - 2000)
        events.append({"at": t, "rewrite": {"process": victim, "region": 0, "first": first, "pages": 2000,
                                             "fill": "unique"}})
        if t >= next_churn:  # and every two hours or so a guest starts or stops
            next_churn = t + rnd.expovariate(1 / 7200)
            if len(live) > 5 and (len(live) >= 9 or rnd.random() < 0.5):
                events.append({"at": t + 1, "exit": live.pop(rnd.randrange(len(live)))})
            else:
                events.append({"at": t + 1, "start": guest(next_id, rnd)})
                live.append(next_id)
                next_id += 1
    return {"description": "a churning 640 MiB host", "host": {"memory": "640MiB", "uptime": "1d"},
            "processes": [guest(i, rnd) for i in range(7)], "events": events}


@dataclass
class Soak:
    root: Path
    work: Path
    violations: list[str] = field(default_factory=list)
    checks: int = 0
    rss_kb: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    decisions: dict[str, int] = field(default_factory=dict)
    peak_saved: int = 0
    last_exit_scans: int | None = None  # full_scans when a guest was last seen gone
    seen: dict[int, int] = field(default_factory=dict)  # pid -> last VmRSS kB
    exited_kb: int = 0  # VmRSS of guests gone since ksmd's last two full scans

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def ksm(self) -> dict[str, int]:
        return {name: int(self.read(f"sys/kernel/mm/ksm/{name}")) for name in (*COUNTERS, "general_profit", "run")}

    def processes(self) -> dict[int, dict[str, int]]:
        found = {}
        for name in os.listdir(self.root / "proc"):
            if not name.isascii() or not name.isdigit():
                continue
            stat = dict(line.split(maxsplit=1) for line in self.read(f"proc/{name}/ksm_stat").splitlines())
            vmrss = next(int(x.split()[1]) for x in self.read(f"proc/{name}/status").splitlines()
                         if x.startswith("VmRSS:"))
            found[int(name)] = {**{k: int(v) for k, v in stat.items() if v.strip().lstrip("-").isdigit()},
                                "vmrss_kb": vmrss}
        return found

    def fail(self, when: float, what: str) -> None:
        if len(self.violations) < 20:
            print(f"  VIOLATION at {when / 86400:.3f} d: {what}", flush=True)
        self.violations.append(what)

    def check(self, when: float) -> None:
        k, procs = self.ksm(), self.processes()
        self.checks += 1
        for name in COUNTERS:
            if k[name] < 0:
                self.fail(when, f"{name} is {k[name]}")
        gone = set(self.seen) - set(procs)
        if gone:
            self.last_exit_scans = k["full_scans"]
            self.exited_kb += sum(self.seen.pop(pid) for pid in gone)
        self.seen.update({pid: p["vmrss_kb"] for pid, p in procs.items()})
        settled = self.last_exit_scans is None or k["full_scans"] >= self.last_exit_scans + 2
        if settled:
            self.exited_kb = 0
        guests_bytes = (sum(p["vmrss_kb"] for p in procs.values()) + self.exited_kb) * 1024
        if k["pages_sharing"] * PAGE > guests_bytes:
            self.fail(when, f"pages_sharing x page size {k['pages_sharing'] * PAGE} > guests' memory {guests_bytes}")
        merging = sum(p["ksm_merging_pages"] for p in procs.values())
        zero = sum(p["ksm_zero_pages"] for p in procs.values())
        shared = k["pages_shared"] + k["pages_sharing"]
        if merging > shared or zero > k["ksm_zero_pages"] or (settled and (merging, zero) != (shared, k["ksm_zero_pages"])):
            self.fail(when, f"processes' ksm_merging_pages {merging} / ksm_zero_pages {zero} vs pages_shared + "
                            f"pages_sharing {shared} / ksm_zero_pages {k['ksm_zero_pages']} (settled: {settled})")
        for pid, p in procs.items():
            profit = (p["ksm_merging_pages"] + p["ksm_zero_pages"]) * PAGE - p["ksm_rmap_items"] * 64
            if p["ksm_process_profit"] != profit:
                self.fail(when, f"pid {pid}: ksm_process_profit {p['ksm_process_profit']} != {profit}")
        self.peak_saved = max(self.peak_saved, k["pages_sharing"] * PAGE)


def daemon_figures(pid: int) -> tuple[int, int]:
    """(VmRSS kB, open fds) of the daemon once it waits in select() again (after its STATUS= it still closes
    the notify socket and returns from the cycle: counting then would count that socket)."""
    for _ in range(1000):
        if Path(f"/proc/{pid}/wchan").read_text() in ("do_select", "poll_schedule_timeout.constprop.0",
                                                       "poll_schedule_timeout"):
            break
        time.sleep(0.001)
    rss = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text().splitlines()
               if x.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def wait_status(sock: socket.socket, prefix: str) -> str:
    while True:
        msg = sock.recv(4096).decode(errors="replace")
        for line in msg.splitlines():
            if line.startswith(prefix):
                return line


def run(days: float, seed: int) -> int:
    base = Path(tempfile.mkdtemp(prefix="soak-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    root, work = base / "host", base / "daemon"
    work.mkdir()
    sim = Simulation(churn_scenario(days, seed), source="soak")
    tree = Tree(sim, root)
    tree.create()
    conf = work / "ksmtuned.conf"
    conf.write_text(f"KSM_MONITOR_INTERVAL=3600\nDEBUG=1\nLOGFILE={work}/ksmtuned.log\nPIDFILE={work}/ksmtune.pid\n")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(work / "notify"))
    sock.settimeout(120)
    err = open(work / "stderr", "wb")
    daemon = subprocess.Popen([str(DAEMON), "--root", str(root), "--config", str(conf), "run"],
                              env={**os.environ, "NOTIFY_SOCKET": str(work / "notify")},
                              stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    soak = Soak(root, work)
    started = time.monotonic()
    cycles = int(days * 86400 / INTERVAL)
    try:
        wait_status(sock, "READY=1")
        for n in range(1, cycles + 1):
            sim.advance(INTERVAL)
            tree.sync(force=True)
            daemon.send_signal(signal.SIGUSR1)
            status = wait_status(sock, "STATUS=")
            word = status.split(":", 1)[0].removeprefix("STATUS=")
            soak.decisions[word] = soak.decisions.get(word, 0) + 1
            tree.sync(force=True)  # the daemon's writes, applied through the kernel's rules
            soak.check(sim.now)
            if n % 60 == 0:  # every simulated hour
                rss, fds = daemon_figures(daemon.pid)
                soak.rss_kb.append(rss)
                soak.fds.append(fds)
            if n % 1440 == 0:
                print(f"day {n // 1440:>3}: {time.monotonic() - started:7.1f} s, daemon VmRSS {soak.rss_kb[-1]} kB, "
                      f"{soak.fds[-1]} fds, {len(sim.processes)} guests, "
                      f"pages_sharing {soak.ksm()['pages_sharing']}, violations {len(soak.violations)}", flush=True)
    except BaseException:
        daemon.kill()
        daemon.wait()
        shutil.rmtree(base)
        raise
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
        err.close()
        sock.close()
    wall = time.monotonic() - started
    log_lines = sum(1 for _ in open(work / "ksmtuned.log", "rb"))
    stderr = (work / "stderr").read_text(errors="replace")
    warm = soak.rss_kb[24:] or soak.rss_kb  # after the first simulated day
    print(f"\n{days:g} simulated days, {cycles} daemon cycles in lock-step, {wall:.0f} s of wall time "
          f"({wall / cycles * 1000:.1f} ms per cycle, simulation included)")
    print(f"guest events applied: {sim.events_applied}; daemon status: {soak.decisions}")
    print(f"invariant checks: {soak.checks}, violations: {len(soak.violations)}")
    print(f"daemon VmRSS: {soak.rss_kb[0]} kB after the first hour; after day 1 min {min(warm)} max {max(warm)} kB "
          f"(spread {max(warm) - min(warm)} kB, limit {RSS_LIMIT_KB}); open fds min {min(soak.fds)} max {max(soak.fds)}")
    print(f"peak saved {soak.peak_saved / 2**20:.1f} MiB; debug log {log_lines} lines; daemon exit status {code}; "
          f"tracebacks in its stderr: {stderr.count('Traceback')}")
    ok = (not soak.violations and max(warm) - min(warm) <= RSS_LIMIT_KB and max(soak.fds) == min(soak.fds)
          and code == 0 and "Traceback" not in stderr)
    shutil.rmtree(base)
    return 0 if ok else 1


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the daemon is stopped and the tree removed


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    return run(args.days, args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
