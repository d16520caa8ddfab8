"""Fetch a Debian package into the test cache and unpack it, never installing it.

``unpacked("ksmtuned")`` returns the directory the package was unpacked into
(``apt-get download`` + ``dpkg -x``), reusing an earlier download. It raises
:class:`Unavailable` with the reason when apt cannot get the package, so the
caller can skip with that reason.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

from tests.conftest import CACHE_DIR


class Unavailable(Exception):
    """The package cannot be fetched here; the message says why."""


def unpacked(package: str, cache: Path = CACHE_DIR) -> Path:
    """Directory holding the unpacked files of ``package``."""
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} not found: cannot fetch Debian package {package}")
    base = cache / "debs" / package
    root = base / "root"
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (base / ".done").exists():
            return root
        for old in base.glob("*.deb"):
            old.unlink()
        got = subprocess.run(
            ["apt-get", "download", "-q", package],
            cwd=base, capture_output=True, text=True,
        )
        debs = sorted(base.glob("*.deb"))
        if got.returncode != 0 or not debs:
            reason = (got.stderr.strip().splitlines() or ["no .deb downloaded"])[-1]
            raise Unavailable(f"apt-get download {package} failed: {reason}")
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["dpkg", "-x", str(debs[-1]), str(root)], check=True)
        (base / ".done").touch()
    return root


def file_or_skip(package: str, relpath: str) -> Path:
    """``relpath`` inside the unpacked ``package``; skips the calling test with the reason when unavailable."""
    import pytest

    try:
        root = unpacked(package)
    except Unavailable as err:
        pytest.skip(str(err))
    path = root / relpath
    if not path.is_file():
        pytest.skip(f"{path} missing from the unpacked {package} package")
    return path
