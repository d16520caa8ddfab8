"""Writing the decision to <root>/sys/kernel/mm/ksm, as the reference's KSMCTL does."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from ksmtuned_py.decision import START, Decision
from ksmtuned_py.errors import EX_UNAVAILABLE, UserError

log = logging.getLogger(__name__)

KSM_DIR = "sys/kernel/mm/ksm"


class NoKsmError(UserError):
    exit_code = EX_UNAVAILABLE


def ksm_dir(root: str | os.PathLike = "/") -> Path:
    return Path(root, KSM_DIR)


def require_ksm(root: str | os.PathLike = "/") -> Path:
    """The KSM directory, or NoKsmError when the kernel has none."""
    path = ksm_dir(root)
    if not path.is_dir():
        raise NoKsmError(f"the kernel has no KSM (CONFIG_KSM): {path} does not exist")
    return path


def read_knob(directory: Path, name: str) -> str | None:
    """A KSM file's text without the newline, or None when it cannot be read."""
    try:
        with open(directory / name, "rb") as f:
            return f.read().decode("ascii", errors="replace").strip()
    except OSError:
        return None


def read_int(directory: Path, name: str) -> int | None:
    text = read_knob(directory, name)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def advisor_active(directory: Path) -> bool:
    """True while the kernel's advisor (advisor_mode ``[scan-time]``) owns pages_to_scan."""
    text = read_knob(directory, "advisor_mode")
    return text is not None and "[scan-time]" in text


def write_knob(directory: Path, name: str, value: int | str) -> None:
    """Write ``value`` followed by a newline, as ``echo VALUE > FILE`` does; OSError on failure."""
    fd = os.open(directory / name, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.write(fd, f"{value}\n".encode())
    finally:
        os.close(fd)


def describe_error(e: OSError) -> str:
    name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "error"
    return f"{name} ({e.strerror or e})"


class Knobs:
    """The KSM knobs of one root, remembering failures so a repeat is logged once."""

    def __init__(self, root: str | os.PathLike = "/"):
        self.root = root
        self.dir = ksm_dir(root)
        self._failures: dict[str, tuple[int, str]] = {}
        self._advisor: bool | None = None

    def check(self) -> None:
        require_ksm(self.root)

    def read(self, name: str) -> str | None:
        return read_knob(self.dir, name)

    def advisor_active(self) -> bool:
        """Is the advisor active now?  Logs each change once."""
        active = advisor_active(self.dir)
        if active != self._advisor:
            if active:
                log.info(
                    "the kernel's KSM advisor (advisor_mode=scan-time) sets pages_to_scan; "
                    "leaving it to the advisor and tuning only run and sleep_millisecs"
                )
            elif self._advisor:
                log.info("the kernel's KSM advisor is off; tuning pages_to_scan again")
            self._advisor = active
        return active

    def write(self, name: str, value: int | str) -> bool:
        """Write one knob; log a failure once per change of value or error."""
        try:
            write_knob(self.dir, name, value)
        except OSError as e:
            problem = describe_error(e)
            if self._failures.get(name) != (value, problem):
                log.error("cannot write %s to %s: %s", value, self.dir / name, problem)
                self._failures[name] = (value, problem)
            return False
        if name in self._failures:
            log.info("writing %s works again (%s)", self.dir / name, value)
            del self._failures[name]
        return True

    def apply(self, decision: Decision) -> bool:
        """The reference's order: pages_to_scan, sleep_millisecs, run=1; or run=0. True if all written."""
        if decision.action != START:
            return self.write("run", 0)
        ok = True
        if not self.advisor_active():
            # the text, as the reference echoes it (e.g. "+64" when clamped to KSM_NPAGES_MIN=+64)
            ok = self.write("pages_to_scan", decision.npages_text) and ok
        ok = self.write("sleep_millisecs", decision.sleep) and ok
        ok = self.write("run", 1) and ok
        return ok

    @property
    def advisor(self) -> bool:
        return bool(self._advisor)
