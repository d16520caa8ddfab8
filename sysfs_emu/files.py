"""Replacing a file atomically: a reader sees the old contents or the new, never a part."""

from __future__ import annotations

import os
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
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return st
