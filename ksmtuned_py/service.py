"""The daemon's side of systemd: sd_notify messages and where logs go."""

from __future__ import annotations

import logging
import os
import sys

from ksmtuned_py import journal

log = logging.getLogger(__name__)


def stderr_is_journal() -> bool:
    """True when standard error is connected to the journal (sd_journal_stream_fd).

    systemd sets JOURNAL_STREAM=DEVICE:INODE for a service whose output goes
    to the journal; comparing it with stderr tells a service apart from a
    command run from a shell that merely inherited the variable.
    """
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    try:
        st = os.fstat(2)
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError):
        return False


def configure_logging(verbose: bool = False) -> None:
    """Operational logs: the journal under systemd, else standard error.

    In the journal, the ``extra=`` fields of a record whose names are valid
    journal field names (upper case, digits, ``_``) become fields of the entry:
    the daemon logs each decision with KSM_DECISION, KSM_NPAGES, KSM_SLEEP,
    KSM_FREE, KSM_COMMITTED and KSM_THRES, so
    ``journalctl -u ksmtuned-py KSM_DECISION=start -o json`` filters on them.
    """
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if stderr_is_journal():
        handler: logging.Handler = journal.JournalHandler("ksmtuned-py")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("ksmtuned-py: %(levelname)s: %(message)s"))
    handler.addFilter(EncodableMessages())
    root.addHandler(handler)


class EncodableMessages(logging.Filter):
    """Bytes that are not UTF-8 in a message (a path from the config, kept as surrogate escapes) as ``\\xff``.

    The journal (and a strict UTF-8 stream) refuses such a message, and logging
    would print a traceback instead of it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any("\ud800" <= c <= "\udfff" for c in message):
            record.msg, record.args = "".join(map(_escaped, message)), None
        return True


def _escaped(c: str) -> str:
    if "\udc80" <= c <= "\udcff":
        return f"\\x{ord(c) - 0xdc00:02x}"  # surrogateescape: one byte
    return f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c


class Notifier:
    """sd_notify(3) messages; every call is a no-op outside systemd."""

    def _send(self, *lines: str) -> None:
        text = "\n".join(lines)
        if not text.isascii():  # a path may hold non-UTF-8 bytes
            text = "".join(map(_escaped, text))
        journal.notify(text)

    def ready(self, status: str) -> None:
        self._send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def reloading(self) -> None:
        usec = int(_monotonic_usec())
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec=), or None."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 1e6 / 2
        except ValueError:
            return None


def _monotonic_usec() -> float:
    import time

    return time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6
