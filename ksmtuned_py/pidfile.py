"""The daemon's pidfile: written, locked while it runs, re-checked every cycle, removed when it stops.

A pidfile can be removed or replaced under a running daemon (a careless
``rm /run/*.pid``, a tmpfiles clean-up).  The daemon then writes it again at its
next cycle, so that ``retune``, ``status`` and logrotate keep finding it, and on
exit removes the file only while it is still its own.  What keeps two daemons
from tuning one KSM is not the pidfile but :mod:`ksmtuned_py.ksmlock`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat

from ksmtuned_py.errors import UserError
from ksmtuned_py.fileio import aside_path, decimal, kind_of, open_regular, read_regular, replace_file

log = logging.getLogger(__name__)


#: How every "no daemon" answer of :func:`running_pid` begins (status shows only what follows).
NOT_RUNNING = "no ksmtuned-py daemon is running"


class PidfileError(UserError):
    pass


class NotRunning(UserError):
    pass


def _read_pid(fd: int) -> int | None:
    """The pid a pidfile holds (a positive decimal number), or None."""
    pid = decimal(os.pread(fd, 64, 0))
    return pid if pid is not None and pid > 0 else None


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def is_reference_ksmtuned(pid: int) -> bool:
    """Whether ``pid`` runs the original bash ksmtuned (which writes but never locks the pidfile)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(arg) == b"ksmtuned" for arg in argv[:2])


class Pidfile:
    """Holds an fcntl lock on the pidfile for the life of the daemon."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Create/lock the pidfile and write our pid; a stale file is taken over."""
        try:
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise PidfileError(f"cannot open the pidfile {self.path}: {e.strerror}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise PidfileError(f"cannot lock the pidfile {self.path}: {e.strerror}") from None
            try:
                other = _read_pid(fd)
            except OSError:
                other = None
            os.close(fd)
            who = f"pid {other}, " if other else ""
            raise PidfileError(
                f"another ksmtuned-py is already running ({who}{self.path} is locked)"
            ) from None
        try:
            old = _read_pid(fd)
        except OSError:
            old = None
        if old and old != os.getpid() and is_reference_ksmtuned(old):
            os.close(fd)
            raise PidfileError(
                f"the original ksmtuned is running (pid {old}, {self.path}); "
                "stop it first (systemctl disable --now ksmtuned)"
            )
        try:
            _write_pid(fd)
        except OSError as e:
            os.close(fd)
            raise PidfileError(f"cannot write the pidfile {self.path}: {e.strerror}") from None
        self._fd = fd
        self._problem: str | None = None

    def release(self) -> None:
        """Remove the file if it is still ours (holding the lock, so no one sees it half-gone), then unlock."""
        if self._fd is None:
            return
        try:
            if _same_file(os.stat(self.path, follow_symlinks=False), os.fstat(self._fd)):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    # --- every cycle: still ours? ------------------------------------------------------

    def verify(self) -> str | None:
        """Make sure ``path`` is still this daemon's locked pidfile, writing it again if it was removed.

        Returns None when the daemon may go on, or why it must stop: another
        daemon (a ksmtuned-py, or the original ksmtuned) holds the path now.
        Anything else (a directory put there, an unreadable path) is warned about
        once and the daemon goes on: its KSM lock still keeps it the only tuner.
        """
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return self._replace("was removed", os.O_CREAT | os.O_EXCL)
        except OSError as e:
            return self._warn(f"cannot check the pidfile {self.path}: {e.strerror}")
        if _same_file(st, os.fstat(self._fd)):
            if _read_pid(self._fd) != os.getpid():
                try:
                    _write_pid(self._fd)
                except OSError as e:
                    return self._warn(f"the pidfile {self.path} was overwritten and cannot be written again: "
                                      f"{e.strerror}")
                log.warning("the pidfile %s was overwritten; wrote pid %d into it again", self.path, os.getpid())
            self._problem = None
            return None
        if not stat.S_ISREG(st.st_mode):
            return self._warn(f"the pidfile {self.path} was replaced by {kind_of(st.st_mode)}; "
                              "retune and status cannot find this daemon until it is removed")
        return self._replace("was replaced by another file", 0)

    def _replace(self, what: str, create: int) -> str | None:
        """Take the file now at ``path`` (or a new one) as ours, unless another daemon holds it."""
        try:
            fd = open_regular(self.path, os.O_RDWR | create, 0o644)
        except OSError as e:
            return self._warn(f"the pidfile {self.path} {what} and cannot be written again: {e.strerror}")
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = _read_pid(fd)
            os.close(fd)
            return f"another ksmtuned-py (pid {other or 'unknown'}) holds the pidfile {self.path} now"
        other = _read_pid(fd)
        if other and other != os.getpid() and is_reference_ksmtuned(other):
            os.close(fd)
            return f"the original ksmtuned (pid {other}) wrote the pidfile {self.path}: it tunes KSM now"
        try:
            _write_pid(fd)
        except OSError as e:
            os.close(fd)
            return self._warn(f"the pidfile {self.path} {what} and cannot be written again: {e.strerror}")
        os.close(self._fd)  # the old file's lock goes with it
        self._fd = fd
        self._problem = None
        log.warning("the pidfile %s %s while the daemon ran; wrote pid %d into it again", self.path, what, os.getpid())
        return None

    def _warn(self, problem: str) -> None:
        """Log ``problem`` once (until it changes); the daemon goes on."""
        if problem != self._problem:
            log.warning("%s", problem)
            self._problem = problem
        return None


def running_pid(path: str) -> int:
    """The pid of the daemon holding ``path`` locked, or NotRunning with the reason."""
    try:
        # Followed if a link: the packaged unit's /run/ksmtune.pid points into
        # its RuntimeDirectory.  Only the daemon's own open refuses links.
        fd = open_regular(path, os.O_RDONLY, follow=True)
    except FileNotFoundError:
        raise NotRunning(f"{NOT_RUNNING}: {path} does not exist") from None
    except OSError as e:
        raise NotRunning(f"cannot open the pidfile {path}: {e.strerror}") from None
    try:
        return _locking_pid(fd, path)
    except OSError as e:
        raise NotRunning(f"cannot read the pidfile {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _locking_pid(fd: int, path: str) -> int:
    """The pid in the pidfile open on ``fd`` when a daemon holds its lock; NotRunning otherwise."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise NotRunning(f"cannot check the pidfile {path}: {e.strerror}") from None
    else:
        pid = _read_pid(fd)
        if pid and is_reference_ksmtuned(pid):
            raise NotRunning(
                f"{path} belongs to the original ksmtuned (pid {pid}), not ksmtuned-py; "
                f"retune it with: kill -USR1 {pid}"
            )
        raise NotRunning(f"{NOT_RUNNING}: {path} is stale (not locked)")
    pid = _read_pid(fd)
    if pid is None:
        raise NotRunning(f"the pidfile {path} holds no pid")
    return pid


# --- the daemon's published state, next to the pidfile ----------------------------------

STATE_VERSION = 1


def state_path(pidfile: str) -> str:
    """Where the daemon publishes its state: ``/run/ksmtune.pid`` -> ``/run/ksmtune.state``."""
    base = pidfile[:-4] if pidfile.endswith(".pid") and len(os.path.basename(pidfile)) > 4 else pidfile
    return base + ".state"


class StateFile:
    """The running daemon's small state (npages, tuning, last decision) as JSON, replaced atomically.

    Written 0644 (``status`` and ``adjust`` may run as any user) through a
    temporary file in the same directory and a rename, so a reader sees the old
    or the new state, never a part; removed when the daemon stops.
    """

    def __init__(self, path: str):
        self.path = path
        self._tmp = aside_path(path)  # left by a kill between write and rename: removed at the stop
        self._mine: os.stat_result | None = None  # the file last renamed into place

    def write(self, state: dict) -> None:
        """Replace the file with ``state``; OSError when that is impossible."""
        import json

        data = (json.dumps({"version": STATE_VERSION, **state}, sort_keys=True) + "\n").encode()
        self._mine = replace_file(self.path, data, 0o644)

    def remove(self) -> None:
        """Remove the state file if it is still the one this daemon wrote, and any temporary file."""
        try:
            if self._mine is not None and _same_file(os.stat(self.path, follow_symlinks=False), self._mine):
                os.unlink(self.path)
        except OSError:
            pass
        try:
            os.unlink(self._tmp)
        except OSError:
            pass


def read_state(path: str, pid: int) -> dict | None:
    """The state published by the daemon ``pid``, or None (missing, unreadable, another daemon's)."""
    import json

    try:
        state = json.loads(read_regular(path, 1 << 20))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or state.get("pid") != pid:
        return None
    return state
