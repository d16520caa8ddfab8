"""Helpers for tests of the sysfs-emu file tree: small scenarios and the CLI as a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.proctools import stop, wait_for  # noqa: F401 (the tree tests import them from here)

BIN = Path(sys.executable).parent
SYSFS_EMU = str(BIN / "sysfs-emu")
KSMTUNED_PY = str(BIN / "ksmtuned-py")

GUEST_CMDLINE = ["qemu-system-x86_64", "-enable-kvm", "-name", "guest=web-1", "-m", "512"]


def small_scenario(run: int = 1) -> dict:
    """A 1 GiB host with two guests sharing an OS image and one non-guest process."""
    return {
        "description": "test host",
        "host": {"memory": "1GiB", "cpus": 2, "uptime": "1h"},
        "ksm": {"pages_to_scan": 1000, "sleep_millisecs": 10, "run": run},
        "processes": [
            {"name": "qemu-system-x86", "cmdline": GUEST_CMDLINE, "regions": [
                {"pages": 3000, "fill": "pool", "pool": "debian"},
                {"pages": 1000, "fill": "unique"},
            ]},
            {"name": "qemu-system-x86", "cmdline": "qemu-system-x86_64 -enable-kvm -name guest=web-2",
             "start": "2s", "regions": [
                {"pages": 3000, "fill": "pool", "pool": "debian"},
                {"pages": 500, "fill": "zero"},
            ]},
            {"name": "sshd", "cmdline": ["/usr/sbin/sshd", "-D"],
             "regions": [{"pages": 300, "fill": "unique", "mergeable": False}]},
        ],
    }


def read(path: Path) -> str:
    return Path(path).read_text()


@contextlib.contextmanager
def served(root: Path, *args: str, stderr_path: Path | None = None):
    """``sysfs-emu run ARGS --root ROOT`` as a subprocess; stopped with SIGTERM (then killed) on exit."""
    err = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
    proc = subprocess.Popen([SYSFS_EMU, "run", *args, "--root", str(root)],
                            stdout=subprocess.DEVNULL, stderr=err)
    try:
        # state.json (with this run's pid) is written once the whole tree is in place.
        def ready():
            try:
                return json.loads((root / ".sysfs-emu/state.json").read_text())["pid"] == proc.pid
            except (OSError, ValueError, KeyError):
                return False

        wait_for(lambda: ready() or proc.poll() is not None, what="the tree to appear")
        if proc.poll() is not None:
            raise AssertionError(f"sysfs-emu exited with {proc.returncode}")
        yield proc
    finally:
        stop(proc)
        if stderr_path:
            err.close()


def cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run ``sysfs-emu ARGS`` to completion, capturing text output."""
    return subprocess.run([SYSFS_EMU, *args], capture_output=True, text=True, timeout=timeout, **kw)


def pids_with_arg(arg: str) -> list[int]:
    """Pids of live processes whose command line contains ``arg`` (leak checks)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if arg.encode() in argv:
            found.append(int(name))
    return found
