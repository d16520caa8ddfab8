#!/usr/bin/env python3
"""Benchmark: resident memory of an idle `ksmtuned-py run` (target: under 16 MB).

Starts the daemon with DEBUG on and a long interval, reads its VmRSS (and
VmHWM, Pss) once it has started, again after a few cycles (SIGUSR1) over this
host's real process list, and prints the figures and the heaviest imports
(``python -X importtime``). Exit status 1 when the idle VmRSS is over the target.

As root the daemon runs in a private mount namespace over scratch copies of
/etc/ksmtuned.conf, /proc/meminfo, /sys/kernel/mm/ksm and /run (it never
touches the real KSM knobs); otherwise against a --root tree in a temporary
directory. ``--metrics`` sets KSM_METRICS_TEXTFILE; ``--plain`` runs the checkout with
python -S, as a package install runs (an editable install adds an import hook to every
start). Usage: .venv/bin/python bench/bench_idle_rss.py [--cycles N] [--processes N] [--metrics] [--plain]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import nsharness  # noqa: E402
from tests.nsharness import Scratch  # noqa: E402

DAEMON = Path(sys.executable).parent / "ksmtuned-py"
TARGET_KB = 16 * 1024
CONFIG = "KSM_MONITOR_INTERVAL=3600\nDEBUG=1\nLOGFILE={log}\n{extra}"


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def pss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def figures(pid: int) -> str:
    pss = pss_kb(pid)
    return (f"VmRSS {status_kb(pid, 'VmRSS') / 1024:.1f} MB, VmHWM {status_kb(pid, 'VmHWM') / 1024:.1f} MB"
            + (f", Pss {pss / 1024:.1f} MB" if pss is not None else ""))


def heaviest_imports(count: int = 12) -> list[str]:
    """What `ksmtuned-py run` imports, heaviest first (python -X importtime, microseconds)."""
    code = "import ksmtuned_py.entry, ksmtuned_py.daemon, ksmtuned_py.service"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                          capture_output=True, text=True, cwd=REPO)
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m.group(2)), int(m.group(1)), len(m.group(3)) // 2, m.group(4)))
    lines = [f"{len(rows)} modules imported by `ksmtuned-py run`; heaviest (cumulative us, self us, module):"]
    for cum, own, depth, name in sorted(rows, reverse=True)[:count]:
        lines.append(f"  {cum:>8} {own:>8}  {'  ' * depth}{name}")
    return lines


def daemon_argv(plain: bool) -> tuple[list[str], dict[str, str]]:
    """The daemon's command line and environment: the venv's script, or the checkout without site's hooks.

    An editable install's import hook (a .pth run at start) loads pathlib and importlib.util
    into every Python process of the venv; a package or a plain ``pip install .`` has none,
    which ``plain`` approximates by running the checkout with ``python -S``.
    """
    env = dict(nsharness.CLEAN_ENV)
    if not plain:
        return [str(DAEMON), "run"], env
    env["PYTHONPATH"] = str(REPO)
    return [sys.executable, "-S", "-c", "import sys; from ksmtuned_py.entry import main; sys.exit(main())",
            "run"], env


def start_daemon(tmp: Path, metrics: bool = False, plain: bool = False) -> tuple[subprocess.Popen, Scratch | None, Path]:
    """The daemon, started over scratch files; returns (process, scratch, log path)."""
    argv, env = daemon_argv(plain)
    if nsharness.skip_reason() is None:
        scratch = Scratch.create(tmp / "scratch")
        extra = "KSM_METRICS_TEXTFILE=/run/ksmtuned-py.prom\n" if metrics else ""
        scratch.write_conf(CONFIG.format(log="/run/ksmtuned.log", extra=extra))
        out = open(tmp / "stderr", "w")
        proc = nsharness.start_in_namespace(scratch, argv, env=env, stdout=out, stderr=out)
        return proc, scratch, scratch.log
    # Not root: a --root tree with the files the daemon reads.
    root = tmp / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/meminfo").write_text(nsharness.meminfo_text(16 << 20, 8 << 20, 100000, 2000000))
    ksm = root / "sys/kernel/mm/ksm"
    ksm.mkdir(parents=True)
    for name, value in nsharness.KSM_FILES.items():
        (ksm / name).write_text(value + "\n")
    log = tmp / "ksmtuned.log"
    conf = tmp / "ksmtuned.conf"
    metrics_line = f"KSM_METRICS_TEXTFILE={tmp / 'ksmtuned-py.prom'}\n" if metrics else ""
    conf.write_text(CONFIG.format(log=log, extra=f"PIDFILE={tmp / 'ksmtune.pid'}\n{metrics_line}"))
    out = open(tmp / "stderr", "w")
    proc = subprocess.Popen([*argv[:-1], "--root", str(root), "--config", str(conf), "run"],
                            stdout=out, stderr=out, start_new_session=True, env=env)
    return proc, None, log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5, help="SIGUSR1 cycles before the second reading")
    parser.add_argument("--processes", type=int, default=1000,
                        help="processes on the host during the cycles (sleeps are started up to this count)")
    parser.add_argument("--metrics", action="store_true",
                        help="with KSM_METRICS_TEXTFILE set (the metrics file written every cycle)")
    parser.add_argument("--plain", action="store_true",
                        help="run the checkout with python -S, without the editable install's import hook "
                             "(as a package install runs)")
    args = parser.parse_args()
    if not DAEMON.exists():
        print(f"{DAEMON} missing: install the project into the venv first", file=sys.stderr)
        return 2
    filler: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="ksmtuned-rss-") as tmp_name:
        tmp = Path(tmp_name)
        proc, scratch, log = start_daemon(tmp, args.metrics, args.plain)
        try:
            present = sum(1 for e in os.listdir("/proc") if e.isdigit())
            for _ in range(max(args.processes - present, 0)):  # so the scanner's cache is full-sized
                filler.append(subprocess.Popen(["sleep", "infinity"], stdin=subprocess.DEVNULL))
            def lines() -> int:
                return len(log.read_text().splitlines()) if log.exists() else 0

            nsharness.wait_until(lambda: lines() >= 3, 20, "the daemon's start lines")
            nsharness.wait_until(lambda: nsharness.handles(proc.pid, signal.SIGUSR1), 10, "the signal handler")
            time.sleep(0.5)
            idle = status_kb(proc.pid, "VmRSS")
            where = "real /proc of this host" if scratch else "a --root tree (not root)"
            how = ", python -S from the checkout" if args.plain else ""
            how += ", KSM_METRICS_TEXTFILE set" if args.metrics else ""
            print(f"ksmtuned-py run{how}, idle after start ({where}): {figures(proc.pid)}")
            for _ in range(args.cycles):
                before = lines()
                os.kill(proc.pid, signal.SIGUSR1)
                nsharness.wait_until(lambda: lines() >= before + 2 and not log.read_text().endswith(
                    "start ksm\n"), 10, "a cycle's DEBUG lines")
                time.sleep(0.05)
            time.sleep(0.5)
            after = status_kb(proc.pid, "VmRSS")
            processes = sum(1 for e in os.listdir("/proc") if e.isdigit())
            print(f"idle after {args.cycles} cycles over {processes} processes: {figures(proc.pid)}")
        finally:
            nsharness.kill_group(proc)
            for p in filler:
                p.kill()
            for p in filler:
                p.wait()
    verdict = "under" if max(idle, after) < TARGET_KB else "OVER"
    print(f"target: VmRSS < {TARGET_KB // 1024} MB -> {verdict} "
          f"({max(idle, after) / 1024:.1f} MB)")
    for line in heaviest_imports():
        print(line)
    return 0 if max(idle, after) < TARGET_KB else 1


if __name__ == "__main__":
    sys.exit(main())
