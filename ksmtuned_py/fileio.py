"""Reading what the host and the admin give us, never blocking and never trusting its type or bytes.

Every file the daemon opens is expected to be a regular file (sysfs and procfs
attributes are regular files too).  Something else in its place — a directory, a
FIFO, a socket, a device, a symbolic link where none is followed — is refused
with :class:`NotRegularFile` naming what was found, and is never waited on: files
are opened with ``O_NONBLOCK``, so a FIFO without a writer (or without a reader)
cannot hang the daemon, not even against SIGTERM.

Numbers in those files are read as ASCII decimal only: ``str.isdigit()`` and
``int()`` also accept ``²``, ``١٢`` or ``1_000``, which no kernel prints.
"""

from __future__ import annotations

import errno
import os
import re
import stat

_DECIMAL = re.compile(rb"[+-]?[0-9]+")

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotRegularFile(OSError):
    """A path that holds something other than a regular file; ``strerror`` says what."""

    def __init__(self, path: str | os.PathLike, kind: str):
        super().__init__(errno.EINVAL, f"is {kind}, not a regular file", os.fspath(path))
        self.kind = kind


def kind_of(mode: int) -> str:
    """What a file's mode says it is: ``a directory``, ``a FIFO``, ... or ``a regular file``."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "a regular file" if stat.S_ISREG(mode) else "an unknown kind of file"


def open_regular(path: str | os.PathLike, flags: int, mode: int = 0o644, *, follow: bool = False,
                 devices: bool = False, dir_fd: int | None = None) -> int:
    """``os.open`` that never blocks and returns a descriptor only for a regular file.

    ``follow`` follows a symbolic link in the last component (else it is refused);
    ``devices`` also accepts a character device (``/dev/null`` as a log or config);
    ``dir_fd``: ``path`` is relative to that open directory (as for ``os.open``).
    Raises OSError, or NotRegularFile for anything else found at ``path``.
    """
    flags |= os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, mode, dir_fd=dir_fd)
    except OSError as e:
        # ENXIO: a FIFO with no reader, or a socket; ELOOP: a symbolic link not followed
        if e.errno in (errno.ENXIO, errno.ELOOP):
            _raise_if_not_regular(path, follow, dir_fd)
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):  # opened for reading: say it as a write would (EISDIR)
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not (stat.S_ISREG(st.st_mode) or (devices and stat.S_ISCHR(st.st_mode))):
            raise NotRegularFile(path, kind_of(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _raise_if_not_regular(path: str | os.PathLike, follow: bool, dir_fd: int | None = None) -> None:
    try:
        st = os.stat(path, follow_symlinks=follow, dir_fd=dir_fd)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        raise NotRegularFile(path, kind_of(st.st_mode)) from None


def read_regular(path: str | os.PathLike, limit: int = 1 << 16, *, follow: bool = False,
                 devices: bool = False, dir_fd: int | None = None) -> bytes:
    """At most ``limit`` bytes of a regular file (see :func:`open_regular`); OSError when impossible."""
    fd = open_regular(path, os.O_RDONLY, follow=follow, devices=devices, dir_fd=dir_fd)
    try:
        chunks, size = [], 0
        while size < limit:
            data = os.read(fd, min(limit - size, 1 << 16))
            if not data:
                break
            chunks.append(data)
            size += len(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


def decimal(text: str | bytes | None) -> int | None:
    """An optionally signed ASCII decimal integer (surrounding whitespace allowed), else None."""
    if text is None:
        return None
    raw = text.encode("ascii", errors="replace") if isinstance(text, str) else text
    raw = raw.strip(b" \t\n")
    return int(raw) if _DECIMAL.fullmatch(raw) else None


def natural(text: str | bytes | None) -> int | None:
    """:func:`decimal` without a sign: what /proc prints for a size, a time or a count."""
    if text is None:
        return None
    raw = (text.encode("ascii", errors="replace") if isinstance(text, str) else text).strip(b" \t\n")
    return int(raw) if raw.isdigit() else None  # bytes.isdigit(): ASCII digits only


def is_pid_name(name: str) -> bool:
    """A /proc entry that names a process: ASCII digits only (``²`` and ``١`` are not pids)."""
    return name.isascii() and name.isdigit()


def aside_path(path: str | os.PathLike) -> str:
    """Where :func:`replace_file` writes ``path``'s new contents before the rename."""
    path = os.fspath(path)
    return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")


def replace_file(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> os.stat_result:
    """Replace ``path`` with ``data`` atomically (written aside, then renamed); the new file's stat.

    The file aside is ``.NAME.PID.tmp`` in the same directory (a dot, and not ``.prom``: no
    reader of the directory takes it for the real one), made with ``mode`` whatever the
    umask; one left by a killed process with this pid is replaced.  On failure nothing is
    left but the old file, and OSError says why.
    """
    path = os.fspath(path)
    tmp = aside_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:
        os.unlink(tmp)
        fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:  # a short write (a full file system) must not leave half a file
                view = view[os.write(fd, view):]
            written = os.fstat(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return written
