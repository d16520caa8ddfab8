"""The daemon's pidfile: written, locked while it runs, removed when it stops."""

from __future__ import annotations

import errno
import fcntl
import os

from ksmtuned_py.errors import UserError


#: How every "no daemon" answer of :func:`running_pid` begins (status shows only what follows).
NOT_RUNNING = "no ksmtuned-py daemon is running"


class PidfileError(UserError):
    pass


class NotRunning(UserError):
    pass


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else None


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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
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
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            os.close(fd)
            raise PidfileError(f"cannot write the pidfile {self.path}: {e.strerror}") from None
        self._fd = fd

    def release(self) -> None:
        """Remove the file (still holding the lock, so no one sees it half-gone), then unlock."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def running_pid(path: str) -> int:
    """The pid of the daemon holding ``path`` locked, or NotRunning with the reason."""
    try:
        # Followed if a link: the packaged unit's /run/ksmtune.pid points into
        # its RuntimeDirectory.  Only the daemon's own open refuses links.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotRunning(f"{NOT_RUNNING}: {path} does not exist") from None
    except OSError as e:
        raise NotRunning(f"cannot open the pidfile {path}: {e.strerror}") from None
    try:
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
    finally:
        os.close(fd)


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
        self._tmp = os.path.join(
            os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp"
        )

    def write(self, state: dict) -> None:
        """Replace the file with ``state``; OSError when that is impossible."""
        import json

        data = (json.dumps({"version": STATE_VERSION, **state}, sort_keys=True) + "\n").encode()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self._tmp, flags, 0o644)
        except FileExistsError:  # left by a killed daemon with our pid
            os.unlink(self._tmp)
            fd = os.open(self._tmp, flags, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask
            os.write(fd, data)
        except OSError:
            os.close(fd)
            os.unlink(self._tmp)
            raise
        os.close(fd)
        try:
            os.rename(self._tmp, self.path)
        except OSError:
            os.unlink(self._tmp)
            raise

    def remove(self) -> None:
        for path in (self.path, self._tmp):
            try:
                os.unlink(path)
            except OSError:
                pass


def read_state(path: str, pid: int) -> dict | None:
    """The state published by the daemon ``pid``, or None (missing, unreadable, another daemon's)."""
    import json

    try:
        with open(path, "rb") as f:
            state = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or state.get("pid") != pid:
        return None
    return state
