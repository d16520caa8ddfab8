"""The two systemd protocols the daemon speaks, in a few lines each: sd_notify(3) and journald's
native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL).

Both are a datagram on a Unix socket.  Speaking them directly instead of through
python-systemd keeps about 2 MB (its modules and their imports) out of a daemon that
runs for months; the real journald and systemd check them in the container test.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]*")
# logging's levels as syslog priorities (what journalctl -p filters on)
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def notify(message: str, address: str | None = None) -> bool:
    """Send ``message`` to systemd (NOTIFY_SOCKET, ``@`` for the abstract namespace); False when none listens."""
    address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto(message.encode("utf-8", errors="backslashreplace"), address)
        except OSError:
            return False
    return True


def encode_field(name: str, value: object) -> bytes:
    """One field of the native protocol: ``NAME=value\\n``, or with a length when the value has a newline."""
    data = value if isinstance(value, bytes) else str(value).encode("utf-8", errors="backslashreplace")
    key = name.encode("ascii")
    if b"\n" not in data:
        return key + b"=" + data + b"\n"
    return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"


def priority(levelno: int) -> int:
    for level, prio in _PRIORITY:
        if levelno >= level:
            return prio
    return 7


class JournalHandler(logging.Handler):
    """A logging handler that sends each record to journald with its ``extra=`` fields (upper-case names)."""

    def __init__(self, identifier: str, address: str = JOURNAL_SOCKET):
        super().__init__()
        self.identifier = identifier
        self.address = address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def fields(self, record: logging.LogRecord) -> bytes:
        parts = [encode_field("MESSAGE", self.format(record)), encode_field("PRIORITY", priority(record.levelno)),
                 encode_field("SYSLOG_IDENTIFIER", self.identifier), encode_field("LOGGER", record.name),
                 encode_field("CODE_FILE", record.pathname), encode_field("CODE_LINE", record.lineno),
                 encode_field("CODE_FUNC", record.funcName)]
        for name, value in record.__dict__.items():
            if _FIELD.fullmatch(name) and value is not None:
                parts.append(encode_field(name, value))
        return b"".join(parts)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.fields(record)
            try:
                self._socket.sendto(data, self.address)
            except OSError as e:
                if e.errno != 90:  # EMSGSIZE: too big for one datagram; the message cut to fit
                    raise
                record.msg, record.args = self.format(record)[:16000] + " [...]", None
                self._socket.sendto(self.fields(record), self.address)
        except Exception:  # a log that cannot be written never stops the daemon
            self.handleError(record)

    def close(self) -> None:
        self._socket.close()
        super().close()
