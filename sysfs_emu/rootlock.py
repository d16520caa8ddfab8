"""The lock that lets one sysfs-emu serve a root, and who holds it.

``<root>/.sysfs-emu/lock`` is held (flock) while a sysfs-emu serves the root and holds its
pid; ``snapshot`` and ``event`` ask it who serves a root, the runner takes it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from sysfs_emu.errors import ServeError
from sysfs_emu.files import decimal
from sysfs_emu.tree import STATE_DIR

log = logging.getLogger(__name__)


def state_dir(root: Path) -> Path:
    return root / STATE_DIR


class RootLock:
    """An exclusive flock on ``<root>/.sysfs-emu/lock``: one sysfs-emu per root."""

    def __init__(self, root: Path):
        self.root = root
        self.path = state_dir(root) / "lock"
        self._fd: int | None = None
        self.created_root = False
        self.created_state_dir = False

    def acquire(self) -> None:
        root = self.root
        if os.path.lexists(root) and not root.is_dir():
            raise ServeError(f"{root} is not a directory")
        try:
            if not root.exists():
                root.mkdir(parents=True)
                self.created_root = True
            state = state_dir(root)
            if not state.is_dir():
                state.mkdir()
                self.created_state_dir = True
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except PermissionError:
            raise ServeError(f"{root} is not writable (permission denied)") from None
        except OSError as exc:
            raise ServeError(f"cannot use {root}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ServeError(f"{root} is already served by another sysfs-emu (pid {other})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def verify(self) -> bool:
        """Lock ``lock`` again if it was removed or replaced under us; False when another sysfs-emu took it."""
        try:
            if self._same_file(os.stat(self.path, follow_symlinks=False)):
                return True
        except FileNotFoundError:
            pass
        old, self._fd = self._fd, None
        try:
            self.acquire()
        except ServeError:
            self._fd = old
            return False
        if old is not None:
            os.close(old)
        log.warning("%s was removed or replaced by another program; locked again", self.path)
        return True

    def _same_file(self, st: os.stat_result) -> bool:
        mine = os.fstat(self._fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self, remove: bool = False) -> None:
        if self._fd is None:
            return
        if remove:
            try:
                if self._same_file(os.stat(self.path, follow_symlinks=False)):  # never another's
                    os.unlink(self.path)
            except OSError:
                pass
        os.close(self._fd)
        self._fd = None


def filesystem_type(path: str | os.PathLike) -> str | None:
    """The type of the file system holding ``path`` (from /proc/self/mounts), or None."""
    target = os.fsencode(os.path.realpath(path))
    best, kind = b"", None
    try:
        with open("/proc/self/mounts", "rb") as f:  # bytes: a mount point need not be UTF-8
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace(b"\\040", b" ")
        inside = target == mnt or target.startswith(mnt.rstrip(b"/") + b"/")
        if inside and len(mnt) >= len(best):
            best, kind = mnt, parts[2].decode("ascii", errors="replace")
    return kind


def holder_pid(root: Path) -> int | None:
    """The pid of the sysfs-emu serving ``root``, or None when none does."""
    path = state_dir(root) / "lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = decimal(os.pread(fd, 32, 0))
            return pid if pid is not None and pid > 0 else None
        return None
    finally:
        os.close(fd)
