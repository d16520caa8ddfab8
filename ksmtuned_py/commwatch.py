"""The comm files of known processes, kept open and re-read in one pass (a live procfs only).

An open /proc/PID/comm follows its process through exec and renames (prctl
PR_SET_NAME) and answers ESRCH once the process is gone, even when a new
process has taken its pid.  So re-reading it tells exactly whether a known
process still has the name it had, with one pread(2) and no path lookup.
:meth:`CommWatch.changed` does that for every watched process at once: the
reads and the comparison run in C (``map`` and list equality), so a host with
1,000 unchanged processes costs about the 1,000 system calls and nothing more.
"""

from __future__ import annotations

import os
from itertools import repeat

COMM_SIZE = 64  # more than TASK_COMM_LEN (16) and a newline


def _pread(fd: int) -> bytes | None:
    try:
        return os.pread(fd, COMM_SIZE, 0)
    except OSError:
        return None


class CommWatch:
    """Open comm files by /proc entry name, with the bytes each last read."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self._fds: list[int] = []
        self._raws: list[bytes | None] = []
        self._at: dict[str, int] = {}  # name -> position in the three lists

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._at

    def names(self):
        """The watched names (a set-like view)."""
        return self._at.keys()

    def add(self, name: str, fd: int, raw: bytes) -> None:
        """Watch ``fd`` (an open comm file of process ``name``), which read ``raw``; the watch closes it."""
        self.discard(name)
        self._at[name] = len(self._names)
        self._names.append(name)
        self._fds.append(fd)
        self._raws.append(raw)

    def update(self, name: str, raw: bytes) -> None:
        """The comm ``name`` now reads, accepted as its own (a kernel thread renaming itself)."""
        self._raws[self._at[name]] = raw

    def discard(self, name: str) -> None:
        """Stop watching ``name`` and close its file (nothing when it is not watched)."""
        i = self._at.pop(name, None)
        if i is None:
            return
        os.close(self._fds[i])
        last = len(self._names) - 1
        if i != last:  # the last one fills the hole
            self._names[i], self._fds[i], self._raws[i] = self._names[last], self._fds[last], self._raws[last]
            self._at[self._names[i]] = i
        del self._names[last], self._fds[last], self._raws[last]

    def changed(self) -> list[tuple[str, bytes | None]]:
        """(name, what its comm reads now, None when the process is gone) of every watched one that changed."""
        try:
            raws = list(map(os.pread, self._fds, repeat(COMM_SIZE), repeat(0)))
        except OSError:  # one is gone: read them one by one
            raws = [_pread(fd) for fd in self._fds]
        if raws == self._raws:
            return []
        return [(self._names[i], raw) for i, (raw, old) in enumerate(zip(raws, self._raws)) if raw != old]

    def close(self) -> None:
        for name in list(self._at):
            self.discard(name)
