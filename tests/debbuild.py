"""The packages built from this checkout by scripts/build-packages, once per test session.

``built()`` runs ``scripts/build-packages --rpm --outdir DIR`` the first time
and returns what it made; later calls (from another test module) reuse it.
It raises :class:`Unavailable` with the reason when the build tools are
missing (scripts/setup installs them), so callers can skip with it.  A build
takes seconds, so it is not cached between sessions: every run packages the
code as it is.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("dpkg-buildpackage", "dh", "dh_python3", "lintian", "rpmbuild", "dpkg-deb", "rpm")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(Exception):
    """The packages cannot be built here; the message says why."""


@dataclass(frozen=True)
class Built:
    outdir: Path
    log: str  # what build-packages printed

    def deb(self, package: str) -> Path:
        return _one(self.outdir.glob(f"{package}_*_all.deb"), package)

    def rpm(self, package: str) -> Path:
        return _one(self.outdir.glob(f"{package}-[0-9]*.noarch.rpm"), package)

    @property
    def lintian(self) -> str:
        return (self.outdir / "lintian.txt").read_text()


def _one(paths, what: str) -> Path:
    found = sorted(paths)
    if len(found) != 1:
        raise AssertionError(f"expected one package {what}, found {[p.name for p in found]}")
    return found[0]


@functools.lru_cache(maxsize=None)
def built() -> Built:
    missing = [t for t in TOOLS if shutil.which(t, path=SYSTEM_PATH) is None]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not found: run scripts/setup (debhelper, dh-python, "
                          "pybuild-plugin-pyproject, lintian, rpm)")
    outdir = Path(tempfile.mkdtemp(prefix="ksmtuned-py-packages-"))
    atexit.register(shutil.rmtree, outdir, ignore_errors=True)
    got = subprocess.run([str(REPO / "scripts/build-packages"), "--rpm", "--outdir", str(outdir)],
                         capture_output=True, text=True, timeout=900)
    if got.returncode != 0:
        raise AssertionError(f"scripts/build-packages failed ({got.returncode}):\n{got.stdout}{got.stderr}")
    return Built(outdir, got.stdout + got.stderr)


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def deb_files(deb: Path) -> set[str]:
    """The regular files and links in the package, as absolute paths."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    files = set()
    for line in out.splitlines():
        mode, path = line.split()[0], line.split(None, 5)[5].split(" -> ")[0]
        if not mode.startswith("d"):
            files.add(path[1:])  # "./usr/..." -> "/usr/..."
    return files


def deb_control_file(deb: Path, name: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["dpkg-deb", "-e", str(deb), d], check=True)
        path = Path(d) / name
        return path.read_text() if path.exists() else ""


def deb_file_text(deb: Path, path: str) -> str:
    return subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -xOf - .{path}", shell=True,
                          capture_output=True, text=True, check=True).stdout


def rpm_query(rpm: Path, *args: str) -> str:
    return subprocess.run(["rpm", "-qp", *args, str(rpm)], capture_output=True, text=True,
                          check=True).stdout
