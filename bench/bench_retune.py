#!/usr/bin/env python3
"""Benchmark: from the libvirt hook being called to the knobs written (a script, not a test).

A real `ksmtuned-py run` tunes a small fake host tree (plain files for /proc/meminfo and
/sys/kernel/mm/ksm, PIDFILE in the same temporary directory; free memory below the
threshold, so every cycle writes pages_to_scan, sleep_millisecs, then run=1). Each run
sets the tree's ``run`` file to 0, then starts one of:

- ``hook``: the shipped hook (etc/libvirt/hooks/qemu.d/ksmtuned-py) as libvirt runs it
  (``HOOK guest1 started begin -``, a domain XML on stdin), the config naming PIDFILE
  plainly: the hook reads PIDFILE and sends SIGUSR1 itself;
- ``hook via retune``: the same hook with PIDFILE written in a form it leaves to
  ksmtuned-py (``PIDFILE=\\/...``: the same path to ksmtuned-py's parser): it runs
  ``ksmtuned-py retune`` in the background, which is what the hook always did before;
- ``ksmtuned-py retune``: the command itself, run directly;
- ``kill -USR1`` (this process's os.kill): the daemon's own reaction, for reference;

and times from just before the start to the daemon closing the ``run`` file after
writing it (inotify IN_CLOSE_WRITE). The variants alternate run by run, so a busy
machine slows them alike; compare them side by side. Prints p50, p99 and the maximum.

    .venv/bin/python bench/bench_retune.py [-n 200] [--only hook --only 'kill -USR1']
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOOK = REPO / "etc/libvirt/hooks/qemu.d/ksmtuned-py"
KSMTUNED_PY = Path(sys.executable).parent / "ksmtuned-py"
MEMINFO = ("MemTotal:        2097152 kB\nMemFree:          100000 kB\nMemAvailable:     100000 kB\n"
           "Buffers:               0 kB\nCached:                0 kB\n")
KNOBS = {"run": 0, "pages_to_scan": 100, "sleep_millisecs": 20, "pages_sharing": 0}
XML = "<domain type='kvm'><name>guest1</name></domain>\n"
IN_CLOSE_WRITE, IN_NONBLOCK, IN_CLOEXEC = 0x8, 0o4000, 0o2000000


class CloseWrites:
    """inotify on a directory: the names of files closed after writing."""

    def __init__(self, directory: Path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, str(directory).encode(), IN_CLOSE_WRITE) < 0:
            raise OSError(ctypes.get_errno(), "inotify")

    def names(self, timeout: float) -> list[str]:
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        data, names, at = os.read(self.fd, 65536), [], 0
        while at < len(data):
            _wd, _mask, _cookie, size = struct.unpack_from("iIII", data, at)
            names.append(data[at + 16:at + 16 + size].rstrip(b"\0").decode())
            at += 16 + size
        return names

    def drain(self) -> None:
        while self.names(0):
            pass

    def wait_for(self, name: str, timeout: float = 5.0) -> float:
        """perf_counter() when ``name`` is closed after a write (TimeoutError after ``timeout``)."""
        deadline = time.perf_counter() + timeout
        while (left := deadline - time.perf_counter()) > 0:
            if name in self.names(left):
                return time.perf_counter()
        raise TimeoutError(f"{name} not written within {timeout} s")


def make_host(base: Path) -> tuple[Path, Path, Path]:
    """(root, plain config, config the hook leaves to ksmtuned-py)."""
    root = base / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/meminfo").write_text(MEMINFO)
    ksm = root / "sys/kernel/mm/ksm"
    ksm.mkdir(parents=True)
    for name, value in KNOBS.items():
        (ksm / name).write_text(f"{value}\n")
    pidfile = base / "ksmtune.pid"
    plain, unplain = base / "plain.conf", base / "unplain.conf"
    plain.write_text(f"KSM_MONITOR_INTERVAL=3600\nPIDFILE={pidfile}\n")
    unplain.write_text(f"KSM_MONITOR_INTERVAL=3600\nPIDFILE=\\{pidfile}\n")
    return root, plain, unplain


def start_daemon(root: Path, conf: Path, pidfile: Path) -> subprocess.Popen:
    proc = subprocess.Popen([str(KSMTUNED_PY), "--root", str(root), "--config", str(conf), "run"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if int(pidfile.read_text()) == proc.pid:
                return proc
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    proc.kill()
    raise RuntimeError("the daemon did not start")


def variants(daemon: subprocess.Popen, plain: Path, unplain: Path) -> dict:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KSMTUNED_PY": str(KSMTUNED_PY)}

    def hook(conf: Path):
        def run():
            return subprocess.Popen([str(HOOK), "guest1", "started", "begin", "-"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, env=dict(env, KSMTUNED_PY_CONFIG=str(conf)))
        return run

    def retune():
        return subprocess.Popen([str(KSMTUNED_PY), "--config", str(plain), "retune"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def kill():
        os.kill(daemon.pid, signal.SIGUSR1)

    return {"hook": hook(plain), "hook via retune": hook(unplain), "ksmtuned-py retune": retune,
            "kill -USR1": kill}


def measure(start, ksm: Path, watch: CloseWrites) -> float:
    (ksm / "run").write_text("0\n")
    watch.drain()
    t0 = time.perf_counter()
    proc = start()
    if proc is not None and proc.stdin is not None:
        proc.stdin.write(XML.encode())
        proc.stdin.close()
    t1 = watch.wait_for("run")
    if proc is not None:
        proc.wait(timeout=10)
    time.sleep(0.15)  # a background `ksmtuned-py retune` ends; the machine settles
    watch.drain()
    return (t1 - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200, help="runs of each variant")
    ap.add_argument("--only", action="append", default=None, metavar="VARIANT",
                    help="run only this variant (repeatable): hook, 'hook via retune', 'ksmtuned-py retune', "
                         "'kill -USR1'")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-retune-") as tmp:
        root, plain, unplain = make_host(Path(tmp))
        daemon = start_daemon(root, plain, Path(tmp) / "ksmtune.pid")
        try:
            ksm = root / "sys/kernel/mm/ksm"
            watch = CloseWrites(ksm)
            runs = variants(daemon, plain, unplain)
            runs = {name: run for name, run in runs.items() if args.only is None or name in args.only}
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(args.n):
                for name, start in runs.items():
                    times[name].append(measure(start, ksm, watch))
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)
    print(f"from the start to the knobs written, {args.n} runs each (ms):")
    print(f"{'':20} {'p50':>7} {'p99':>7} {'max':>7}")
    for name, values in times.items():
        values.sort()
        p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
        print(f"{name:20} {statistics.median(values):7.1f} {p99:7.1f} {values[-1]:7.1f}")


if __name__ == "__main__":
    main()
