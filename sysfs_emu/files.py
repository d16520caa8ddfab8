"""Files of the tree: replacing one atomically (a reader sees the old contents or the new, never a
part), and reading what other programs put there without blocking or trusting its type or bytes."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def replace_file(path: Path, data: bytes, mode: int = 0o644, tmp: Path | None = None) -> os.stat_result:
    """Write ``data`` to ``tmp`` (default ``.NAME.tmp`` beside ``path``) with ``mode``, then rename it over ``path``.

    Returns the new file's stat: its inode and mtime tell a later write by
    another program apart from this one.
    """
    tmp = tmp if tmp is not None else path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, _FLAGS, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full file system must not also keep half a file aside
        raise
    return st


# --- reading what other programs put in the tree -------------------------------------------

_DECIMAL = re.compile(rb"[+-]?[0-9]+")


class NotRegularFile(OSError):
    """Something other than a regular file where one is expected; ``kind`` says what."""

    def __init__(self, path: str | os.PathLike, kind: str):
        super().__init__(errno.EINVAL, f"is {kind}, not a regular file", os.fspath(path))
        self.kind = kind


def kind_of(mode: int) -> str:
    """``a directory``, ``a FIFO``, ``a socket``, ``a symbolic link``, ``a device`` or ``a regular file``."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a regular file"


def read_regular(path: str | os.PathLike, limit: int = 1 << 20) -> bytes:
    """At most ``limit`` bytes of the regular file at ``path`` (not followed if a symlink), never blocking.

    OSError when it cannot be read; IsADirectoryError for a directory, NotRegularFile
    for a FIFO, socket, device or symbolic link (a FIFO is never waited on).
    """
    return read_regular_stat(path, limit)[1]


def read_regular_stat(path: str | os.PathLike, limit: int = 1 << 20) -> tuple[os.stat_result, bytes]:
    """:func:`read_regular`, with the file's stat taken on the descriptor read (its identity for that data)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symbolic link; a socket
            raise NotRegularFile(path, kind_of(os.lstat(path).st_mode)) from None
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, kind_of(st.st_mode))
        chunks, size = [], 0
        while size < limit and (data := os.read(fd, min(limit - size, 1 << 16))):
            chunks.append(data)
            size += len(data)
        return st, b"".join(chunks)
    finally:
        os.close(fd)


def decimal(text: str | bytes | None) -> int | None:
    """An optionally signed ASCII decimal integer (surrounding whitespace allowed), else None.

    Not ``int()``: it also takes ``١٢`` and ``1_000``, and ``str.isdigit()`` passes ``²``.
    """
    if text is None:
        return None
    raw = text.encode("ascii", errors="replace") if isinstance(text, str) else text
    raw = raw.strip(b" \t\n")
    return int(raw) if _DECIMAL.fullmatch(raw) else None


def is_pid_name(name: str) -> bool:
    """A /proc entry that names a process: ASCII digits only."""
    return name.isascii() and name.isdigit()
