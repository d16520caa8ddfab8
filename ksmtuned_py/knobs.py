"""The KSM files: their names, what a cycle reads of them, and the files under <root>/sys/kernel/mm/ksm."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Callable

from ksmtuned_py.errors import EX_NOINPUT, EX_UNAVAILABLE, UserError
from ksmtuned_py.fileio import NotRegularFile, decimal, open_regular, read_regular

KSM_DIR = "sys/kernel/mm/ksm"

#: The knobs a policy sets (the reference writes them pages_to_scan, sleep_millisecs, run: see cycle.py).
KNOBS = ("run", "pages_to_scan", "sleep_millisecs")
#: The read-only counters, in the order ``status`` shows them (each kernel has a subset).
COUNTERS = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
    "pages_scanned",
    "pages_skipped",
    "ksm_zero_pages",
    "stable_node_chains",
    "stable_node_dups",
    "general_profit",
)


class NoKsmError(UserError):
    exit_code = EX_UNAVAILABLE


@dataclass(frozen=True)
class KsmState:
    """The KSM files a cycle reads, as numbers; a file this kernel lacks (or that cannot be read) is left out."""

    knobs: dict[str, int] = field(default_factory=dict)  # run, pages_to_scan, sleep_millisecs
    counters: dict[str, int] = field(default_factory=dict)  # of COUNTERS, those the kernel has
    advisor_mode: str | None = None  # the chosen mode ("none", "scan-time"); None before Linux 6.9

    @property
    def advisor_active(self) -> bool:
        """The kernel's advisor sets pages_to_scan (advisor_mode ``[scan-time]``)."""
        return self.advisor_mode == "scan-time"

    @property
    def merged_pages(self) -> int | None:
        """The pages KSM saves: pages_sharing + ksm_zero_pages (None without pages_sharing).

        With ``use_zero_pages`` an empty page is merged into the zero page and counted in
        ksm_zero_pages, not pages_sharing: the kernel's documentation counts both as saved.
        """
        sharing = self.counters.get("pages_sharing")
        return None if sharing is None else sharing + self.counters.get("ksm_zero_pages", 0)

    def saved_bytes(self, page_size: int) -> int | None:
        """The memory KSM saves: :attr:`merged_pages` x the page size (None without pages_sharing)."""
        merged = self.merged_pages
        return None if merged is None else merged * page_size

    def get(self, name: str) -> int | None:
        """A knob's or a counter's value, None when the kernel has no such file."""
        return self.knobs.get(name, self.counters.get(name))

    @classmethod
    def from_texts(cls, read: Callable[[str], str | None], counters: bool = True) -> "KsmState":
        """Parse what ``read(name)`` returns for each file (its text, or None when missing).

        ``counters=False``: the knobs and advisor_mode alone (what a cycle's writes may change).
        """
        knobs = {n: v for n in KNOBS if (v := _int(read(n))) is not None}
        counters = {n: v for n in COUNTERS if (v := _int(read(n))) is not None} if counters else {}
        return cls(knobs, counters, chosen_mode(read("advisor_mode")))


def _int(text: str | None) -> int | None:
    return decimal(text)


def chosen_mode(text: str | None) -> str | None:
    """``none [scan-time]`` -> ``scan-time`` (the bracketed word; the text itself when none is)."""
    if not text or not text.strip():
        return None
    chosen = [w.strip("[]") for w in text.split() if w.startswith("[")]
    return chosen[0] if chosen else text.strip()


# --- the files under a root -----------------------------------------------------------


def ksm_dir(root: str | os.PathLike = "/") -> str:
    return os.path.join(root, KSM_DIR)


def require_ksm(root: str | os.PathLike = "/") -> str:
    """The KSM directory, or NoKsmError when the kernel has none (UserError when the root itself is missing)."""
    check_root(root)
    path = ksm_dir(root)
    if not os.path.isdir(path):
        raise NoKsmError(f"the kernel has no KSM (CONFIG_KSM): {path} does not exist")
    return path


def check_root(root: str | os.PathLike) -> None:
    """UserError when ``--root`` names nothing to read: not "no KSM" but a wrong path."""
    if os.path.isdir(root):
        return
    what = "is not a directory" if os.path.lexists(root) else "does not exist"
    raise UserError(f"the root directory {root} {what} (--root)", EX_NOINPUT)


def read_knob(directory: str | os.PathLike, name: str) -> str | None:
    """A KSM file's text without the newline, or None when it cannot be read (or is not a regular file)."""
    try:
        return read_regular(os.path.join(directory, name), 4096).decode("ascii", errors="replace").strip()
    except OSError:
        return None


def read_ksm_state(directory: str | os.PathLike, counters: bool = True) -> KsmState:
    """The KSM files, each opened relative to the directory opened once (15 files, every cycle)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return KsmState.from_texts(lambda name: None)
    try:
        return KsmState.from_texts(lambda name: _read_in(dir_fd, name), counters)
    finally:
        os.close(dir_fd)


def _read_in(dir_fd: int, name: str) -> str | None:
    """:func:`read_knob` relative to an open directory (no path to walk for each of the files)."""
    try:
        return read_regular(name, 4096, dir_fd=dir_fd).decode("ascii", errors="replace").strip()
    except OSError:
        return None


def write_knob(directory: str | os.PathLike, name: str, value: int | str) -> None:
    """Write ``value`` followed by a newline, as ``echo VALUE > FILE`` does; OSError on failure.

    Never blocks (a FIFO in place of a knob is refused, not waited on): O_TRUNC
    only acts on the regular file the type check then requires.
    """
    fd = open_regular(os.path.join(directory, name), os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, f"{value}\n".encode())
    finally:
        os.close(fd)


def describe_error(e: OSError) -> str:
    if isinstance(e, NotRegularFile):
        return e.strerror
    name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "error"
    return f"{name} ({e.strerror or e})"
