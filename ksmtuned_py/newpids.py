"""Which processes may be new since the last scan, without listing /proc (:class:`NewPids`).

Listing /proc is a quarter of a cycle's cost on a host with 1,000 processes (the
kernel looks up an entry for each), and in most cycles nothing has started.  Two
readings of a few bytes say exactly when the listing can be skipped:

- the last field of /proc/loadavg is the last pid the kernel handed out in the
  reader's PID namespace; it hands them out in increasing order, wrapping at
  pid_max, so every process (and thread) started since the last scan has a pid
  after the last one then and up to the last one now: those few are looked at;
- the link count of /proc is a fixed number plus the count of processes on the
  host (threads are not counted).  A process given a pid of its choice (clone3's
  set_tid, or a write to ns_last_pid, as CRIU restores) is not after the cursor,
  but it is counted: when the processes the scanner knows are not that count, it
  lists /proc after all.

Only on a live procfs in the host's (initial) PID namespace, where the count is of
the very processes /proc lists; elsewhere every scan lists /proc.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROC_PID_INIT_INO = 0xEFFFFFFC  # the initial PID namespace's inode (include/linux/proc_ns.h)
MIN_PROBES = 64  # pids looked at one by one before listing /proc is cheaper (at least)


@dataclass(frozen=True, slots=True)
class Mark:
    """The kernel's pid cursor and the process count, read together."""

    last_pid: int  # the last pid handed out (/proc/loadavg)
    links: int  # /proc's link count: a fixed number plus the host's processes


class NewPids:
    """The pids handed out between scans, and whether the known processes are all there are."""

    def __init__(self, proc: str, live: bool):
        self._proc = proc
        self.enabled = live and _in_initial_pid_ns(proc)
        self._last: int | None = None  # the cursor at the previous scan
        self._fixed: int | None = None  # /proc's links less its processes, from a listing

    def mark(self) -> Mark | None:
        """The cursor and the count now; None when disabled or unreadable (then /proc is listed)."""
        if not self.enabled:
            return None
        try:
            with open(f"{self._proc}/loadavg", "rb") as f:
                last = int(f.read(128).split()[4])
            return Mark(last, os.stat(self._proc).st_nlink)
        except (OSError, ValueError, IndexError):
            return None

    def since(self, mark: Mark | None, known: int) -> range | None:
        """The pids handed out since the previous scan; None when /proc must be listed instead.

        Listed instead: the first scan, a cursor that went back (it wrapped at
        pid_max, or ns_last_pid was written), and more new pids than looking at
        each would be cheaper than a listing of ``known`` processes.
        """
        if mark is None or self._last is None or self._fixed is None or mark.last_pid < self._last:
            return None
        if mark.last_pid - self._last > max(MIN_PROBES, known // 4):
            return None
        return range(self._last + 1, mark.last_pid + 1)

    def complete(self, mark: Mark, known: int) -> bool:
        """Whether ``known`` processes are all the host has (then this scan needed no listing)."""
        if known != mark.links - self._fixed:
            return False
        self._last = mark.last_pid
        return True

    def listed(self, before: Mark | None, processes: int) -> None:
        """After a listing of ``processes`` pids that began at ``before``: the next scan starts there.

        The fixed part of the count is learnt only when nothing started or ended
        while /proc was listed (the same mark before and after).
        """
        self._last = None if before is None else before.last_pid
        if before is not None and self.mark() == before:
            self._fixed = before.links - processes

    def is_process(self, pid: int) -> bool:
        """Whether ``pid`` is a process (a thread group's leader), not one of its threads or gone.

        /proc/TID of a thread opens too (only the listing hides it): its status says whose it is.
        """
        try:
            fd = os.open(f"{self._proc}/{pid}/status", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            head = os.read(fd, 512)
        except OSError:
            return False
        finally:
            os.close(fd)
        for line in head.split(b"\n"):
            if line.startswith(b"Tgid:"):
                return line[5:].strip() == str(pid).encode()
        return False


def _in_initial_pid_ns(proc: str) -> bool:
    try:
        return os.stat(f"{proc}/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return False
