"""Guarded access to the real /sys/kernel/mm/ksm.

Every user goes through :func:`real_ksm`: it serialises users across processes
with a lock file, records every writable value, and on exit (even on failure)
unmerges everything (``run`` 2), puts every value back and leaves ``run`` at 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from sysfs_emu.errors import EmuError

KSM_DIR = Path("/sys/kernel/mm/ksm")
LOCK_PATH = Path("/run/lock/ksmtuned-py-realksm.lock")

# Restore order matters: advisor_mode rewrites pages_to_scan, and
# max_page_sharing / merge_across_nodes answer EBUSY while pages are shared.
RESTORE_ORDER = (
    "advisor_mode",
    "advisor_max_cpu",
    "advisor_max_pages_to_scan",
    "advisor_min_pages_to_scan",
    "advisor_target_scan_time",
    "max_page_sharing",
    "merge_across_nodes",
    "pages_to_scan",
    "sleep_millisecs",
    "smart_scan",
    "stable_node_chains_prune_millisecs",
    "use_zero_pages",
)


class RealKsmError(EmuError):
    """The real KSM cannot be used here, or could not be put back as it was."""


def skip_reason() -> str | None:
    """Why the real KSM cannot be used here, or None when it can."""
    if not KSM_DIR.is_dir():
        return "the kernel has no KSM (/sys/kernel/mm/ksm missing)"
    if os.geteuid() != 0:
        return "needs root to write /sys/kernel/mm/ksm"
    return None


def read(name: str) -> str:
    return (KSM_DIR / name).read_text()


def read_counter(name: str) -> int:
    return int(read(name))


def write(name: str, value: str | int | bytes) -> None:
    """Write one attribute with a single write(2); OSError carries the errno."""
    data = value if isinstance(value, bytes) else str(value).encode()
    fd = os.open(KSM_DIR / name, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def selected_mode(text: str) -> str:
    """'[none] scan-time' -> 'none'."""
    return text[text.index("[") + 1 : text.index("]")]


def snapshot() -> dict[str, str]:
    values = {}
    for name in RESTORE_ORDER:
        path = KSM_DIR / name
        if path.exists():
            text = path.read_text().strip()
            values[name] = selected_mode(text) if name == "advisor_mode" else text
    return values


def unmerge_all() -> None:
    """run=2 unmerges every page; run=0 afterwards stops ksmd."""
    write("run", 2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if read("pages_shared").strip() == "0" and read("ksm_zero_pages").strip() == "0":
            break
        time.sleep(0.05)
    write("run", 0)


def restore(values: dict[str, str]) -> None:
    unmerge_all()
    errors = []
    for name in RESTORE_ORDER:
        if name in values:
            try:
                write(name, values[name])
            except OSError as exc:  # keep going: restore as much as possible
                errors.append(f"{name}={values[name]}: {exc}")
    write("run", 0)
    if errors:
        raise RealKsmError("could not restore real KSM settings: " + "; ".join(errors))


@contextlib.contextmanager
def locked():
    """The real KSM's lock, without changing anything: for tests that must see KSM left alone by others."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield KSM_DIR


@contextlib.contextmanager
def real_ksm():
    """Exclusive use of the real KSM; every value is put back afterwards (RealKsmError if it cannot be used)."""
    reason = skip_reason()
    if reason:
        raise RealKsmError(f"the real KSM cannot be used: {reason}")
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = snapshot()
        try:
            yield KSM_DIR
        finally:
            restore(saved)
