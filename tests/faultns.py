"""Real faults for the fault tests: a private mount namespace with tiny tmpfs mounts and read-only binds.

A :class:`MountNamespace` is held by one sleeping process (``unshare --mount
--propagation private``); commands run in it with ``nsenter``, and the test reads
and writes its files through ``/proc/HOLDER/root``, so nothing is ever mounted in
the test's own namespace. When the holder and the processes started in it are
gone, the kernel drops the namespace and its mounts: nothing is left behind even
when a test fails. The real /sys/kernel/mm/ksm is never involved.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def skip_reason() -> str | None:
    """Why private mount namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root: private mount namespaces with tmpfs and bind mounts"
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a mount namespace: {probe.stderr.strip()}"
    return None


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class MountNamespace:
    """A private mount namespace, alive while this object is (use it as a context manager)."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", "echo ready; exec sleep 86400"],
            stdout=subprocess.PIPE, preexec_fn=_die_with_parent)
        if self.holder.stdout.readline() != b"ready\n":
            self.close()
            raise RuntimeError("the mount namespace's holder did not start")
        self.started: list[subprocess.Popen] = []

    def __enter__(self) -> "MountNamespace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", *argv]

    def run(self, argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run ``argv`` to its end inside the namespace."""
        kw.setdefault("capture_output", True)
        kw.setdefault("timeout", 120)
        return subprocess.run(self._argv(argv), check=check, **kw)

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        """Start ``argv`` inside the namespace (nsenter execs it: the Popen's pid is the program's)."""
        proc = subprocess.Popen(self._argv(argv), preexec_fn=_die_with_parent, **kw)
        self.started.append(proc)
        return proc

    def path(self, path: str | os.PathLike) -> Path:
        """``path`` as seen inside the namespace (through the holder's root)."""
        return Path(f"/proc/{self.holder.pid}/root") / Path(path).relative_to("/")

    def mount_tmpfs(self, where: Path, size: str) -> None:
        self.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)])

    def bind_read_only(self, where: Path) -> None:
        self.run(["mount", "--bind", str(where), str(where)])
        self.run(["mount", "-o", "remount,bind,ro", str(where)])

    def remount_read_write(self, where: Path) -> None:
        self.run(["mount", "-o", "remount,bind,rw", str(where)])

    def fill(self, directory: Path) -> Path:
        """Fill the file system holding ``directory`` (in the namespace) with a file; returns it."""
        filler = self.path(directory) / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for size in (1 << 16, 4096, 1):  # big blocks, then what is left of the last page
                try:
                    while os.write(fd, b"\0" * size):
                        pass
                except OSError:
                    pass
        finally:
            os.close(fd)
        return filler

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()
        if self.holder.stdout:
            self.holder.stdout.close()


def make_fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(path).st_mode)
