"""The reference's DEBUG lines: ``<date>: <text>``, to LOGFILE or standard output."""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from typing import Callable, TextIO

from ksmtuned_py.fileio import open_regular

log = logging.getLogger(__name__)

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def date_text(t: float | None = None) -> str:
    """The time as date(1) prints it by default in the C locale: ``Sun Nov 22 07:46:00 UTC 2026``."""
    tm = time.localtime(t)
    return (
        f"{_DAYS[tm.tm_wday]} {_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {tm.tm_zone} {tm.tm_year}"
    )


def open_logfile(path: str) -> int:
    """Open for appending, never following a symlink, created mode 0640.

    A regular file or a character device (``/dev/null``); a FIFO, socket or
    directory is refused at once, never waited on.
    """
    return open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640, devices=True)


class ShortWrite(OSError):
    """Only part of a line fitted (a full file system); the part was taken back."""


def append_line(fd: int, data: bytes) -> None:
    """Append one whole line, or nothing: a short write is undone, so the log never holds half a line.

    With O_APPEND every write lands at the end; on a full file system the kernel
    writes what fits and returns the count, which must not be left there (the
    next line would be glued to it).  The size before the write tells where to
    cut it back.
    """
    before = os.fstat(fd).st_size
    written = os.write(fd, data)
    if written == len(data):
        return
    try:
        os.ftruncate(fd, before)
    except OSError:
        pass  # a device, or a file that cannot be cut: nothing more to do
    raise ShortWrite(errno.ENOSPC, os.strerror(errno.ENOSPC))


class DebugLog:
    """Writes debug lines when enabled; a log that cannot be written never stops the daemon."""

    def __init__(
        self,
        enabled: bool,
        logfile: str = "",
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.enabled = enabled
        self.logfile = logfile
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self._fd: int | None = None
        self._failed: str | None = None
        if enabled and logfile:
            self._open()

    def _open(self) -> None:
        """Open LOGFILE; a failure is reported once per change (recovery is reported by a line written)."""
        try:
            self._fd = open_logfile(self.logfile)
        except OSError as e:
            self._fd = None
            self._report(e)

    def _report(self, e: OSError) -> None:
        text = e.strerror or str(e)
        if text != self._failed:
            log.warning(
                "cannot write the debug log %s: %s; writing debug lines to standard output",
                self.logfile,
                text,
            )
            self._failed = text

    def _works_again(self) -> None:
        """A line reached LOGFILE: if it failed before, say once that it works again."""
        if self._failed:
            log.info("writing the debug log %s works again", self.logfile)
            self._failed = None

    def reconfigure(self, enabled: bool, logfile: str) -> None:
        """Apply new settings and reopen the log file (after logrotate or a reload)."""
        self.close()
        self.enabled = enabled
        self.logfile = logfile
        if enabled and logfile:
            self._open()

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def write(self, *lines: str) -> None:
        if not self.enabled:
            return
        for text in lines:
            line = f"{date_text(self.clock())}: {text}\n"
            if self.logfile:
                if self._fd is None:
                    self._open()
                if self._fd is not None:
                    try:
                        append_line(self._fd, line.encode("utf-8", errors="surrogateescape"))
                    except OSError as e:
                        self._report(e)
                        self.close()
                    else:
                        self._works_again()
                        continue
            # Like the reference's `echo >> LOGFILE || echo`: fall back to stdout.
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass
