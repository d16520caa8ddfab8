"""Real stand-in guest processes for tests.

A stand-in is a real process whose name (``comm``) and command line look like a
qemu guest's, e.g. comm ``qemu-system-x86`` and command line
``qemu-system-x86_64 ... -enable-kvm``, so both the Debian rule (pgrep on the
command line) and the upstream rule (comm) see it. It touches ``resident_kib``
of anonymous memory so its RSS is known to be at least that, then sleeps until
it is stopped. Always use :func:`stand_in_guests` (or call ``stop``) so no
process outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass

_BODY = r"""
import ctypes, mmap, os, signal, sys
name = sys.argv[1].encode()[:15]
ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
size = int(sys.argv[2]) * 1024
if size:
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, size, mmap.PAGESIZE):
        buf[off] = 1
os.write(1, b"ready\n")
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    signal.pause()
"""


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM ``proc`` (SIGKILL after 5 s), reap it and close its stdout."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


@dataclass
class StandInGuest:
    process: subprocess.Popen
    comm: str
    argv0: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process)


def start_guest(
    comm: str = "qemu-system-x86",
    argv0: str = "qemu-system-x86_64",
    resident_kib: int = 0,
    extra_args: tuple[str, ...] = ("-name", "guest", "-enable-kvm"),
) -> StandInGuest:
    """Start one stand-in guest and wait until its memory is resident."""
    args = [argv0, "-c", _BODY, comm, str(resident_kib), *extra_args]
    # Python finds its standard library from argv[0] when that holds a slash;
    # PYTHONHOME points it at the real one whatever argv[0] pretends to be.
    env = dict(os.environ, PYTHONHOME=sys.base_prefix)
    proc = subprocess.Popen(args, executable=sys.executable, stdout=subprocess.PIPE, env=env)
    line = proc.stdout.readline()
    if line != b"ready\n":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"stand-in guest {comm} did not start")
    return StandInGuest(proc, comm, argv0)


@contextlib.contextmanager
def stand_in_guests(*specs: dict):
    """Start several stand-in guests; all are stopped on exit, even on failure."""
    started: list[StandInGuest] = []
    try:
        for spec in specs:
            started.append(start_guest(**spec))
        yield started
    finally:
        for guest in started:
            guest.stop()


def rss_kib(pid: int) -> int:
    """Resident set size in KiB as ``ps -o rsz=`` prints it: VmRSS of /proc/PID/status.

    Not /proc/PID/stat's rss: since Linux 6.2 that is an approximate read of
    per-CPU counters, hundreds of KiB off for a process that just touched its
    memory; status sums the counters (as ps, and so the reference, sees them).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0  # no VmRSS line: a zombie, which ps shows as 0
