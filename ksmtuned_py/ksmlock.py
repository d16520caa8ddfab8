"""One tuner per KSM: the daemon holds an flock on the KSM directory itself while it runs.

The pidfile cannot guarantee that two daemons never tune at once: it can be removed
or replaced under a running daemon, and two daemons may be given different
PIDFILEs.  The KSM directory (``/sys/kernel/mm/ksm``) can be neither removed nor
replaced, and is the very thing the lock protects, so a second daemon is refused
whatever its configuration.  flock(2) locks go with the daemon's open file: the
kernel drops them when it exits, however it exits.  The original ksmtuned does
not lock it; the pidfile check stays for that one.
"""

from __future__ import annotations

import fcntl
import os

from ksmtuned_py.errors import UserError
from ksmtuned_py.fileio import decimal


class KsmBusy(UserError):
    """Another daemon already tunes this KSM."""


class KsmLock:
    """An exclusive flock on the KSM directory, for the life of the daemon."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock the directory; KsmBusy naming the holder when another daemon has it."""
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise UserError(f"cannot open {self.directory}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(os.fstat(fd))
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise KsmBusy(f"another ksmtuned-py{who} already tunes {self.directory} "
                          "(it holds the KSM directory's lock); stop it first") from None
        except OSError as e:
            os.close(fd)
            raise UserError(f"cannot lock {self.directory}: {e.strerror}") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_holder(st: os.stat_result, locks: str = "/proc/locks") -> int | None:
    """The pid holding an flock on the file ``st`` describes, from /proc/locks; None when unknown."""
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}".encode()
    try:
        with open(locks, "rb") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    for line in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 12921 00:16:3788 0 EOF" (a "->" marks a waiter)
        fields = line.split()
        if len(fields) >= 6 and b"->" not in fields and fields[1] == b"FLOCK" and fields[5] == want:
            return decimal(fields[4])
    return None
