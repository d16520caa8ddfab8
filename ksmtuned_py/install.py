"""`ksmtuned-py install`: put the service files where systemd, logrotate and libvirt look.

Installed (paths under ``--destdir``, default ``/``):

- ``UNITDIR/ksmtuned-py.service`` and ``UNITDIR/ksmtuned-py-ksm.service``
  (UNITDIR defaults to /etc/systemd/system, the place for units no package
  manager owns; packagers pass ``--unitdir /usr/lib/systemd/system``)
- ``/etc/ksmtuned.conf``, only when there is none (an existing one, e.g. the
  reference ksmtuned's, is compatible and is never overwritten)
- ``/etc/logrotate.d/ksmtuned-py``
- ``/etc/libvirt/hooks/qemu.d/ksmtuned-py`` (executable), when libvirt is there: by default
  on the live system (``--destdir /``) only when ``/etc/libvirt`` exists, always below
  another ``--destdir`` (a package ships it whatever the build machine has)
- ``/etc/tmpfiles.d/ksmtuned-py.conf`` (the reference's pidfile path as a
  link to the service's, and the debug log the sandbox may write)
- the man pages and the bash, zsh and fish completions under /usr/local/share

The units and the hook name ``/usr/sbin/ksmtuned-py``; when the program lives
elsewhere (a virtual environment) that path is replaced by ``--exec`` (default:
the ksmtuned-py being run).  Every file is written to a temporary name and
renamed into place, so a half-written file is never seen.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ksmtuned_py.errors import UserError

#: The program path the shipped units and hook name.
SHIPPED_EXEC = "/usr/sbin/ksmtuned-py"
DEFAULT_UNITDIR = "/etc/systemd/system"
DATA_NAME = "ksmtuned-py"
#: Where the man pages and completions go: the local administrator's tree.
LOCAL_SHARE = "/usr/local/share"
MAN_PAGES = ("ksmtuned-py.8", "ksmtuned.conf.5", "sysfs-emu.1")
#: (source in completions/, target under LOCAL_SHARE) for each shell and command.
COMPLETIONS = tuple(
    pair for prog in ("ksmtuned-py", "sysfs-emu") for pair in (
        (f"{prog}.bash", f"bash-completion/completions/{prog}"),
        (f"_{prog}", f"zsh/site-functions/_{prog}"),
        (f"{prog}.fish", f"fish/vendor_completions.d/{prog}.fish"),
    )
)


@dataclass(frozen=True)
class Item:
    """One shipped file: where it is in the source tree, where it goes, its mode."""

    source: str
    target: str
    mode: int
    names_exec: bool = False
    keep_existing: bool = False
    libvirt: bool = False  # the libvirt hook: skipped where there is no libvirt


@dataclass(frozen=True)
class Action:
    """What install did with one file."""

    path: Path
    verb: str  # "installed" | "kept" | "skipped"
    note: str = ""  # why, for a skipped file

    def __str__(self) -> str:
        why = {"kept": " (exists, not overwritten)", "skipped": f" ({self.note})"}.get(self.verb, "")
        return f"{self.verb} {self.path}{why}"


def items(unitdir: str = DEFAULT_UNITDIR) -> list[Item]:
    return [
        Item("systemd/ksmtuned-py.service", f"{unitdir}/ksmtuned-py.service", 0o644, names_exec=True),
        Item("systemd/ksmtuned-py-ksm.service", f"{unitdir}/ksmtuned-py-ksm.service", 0o644,
             names_exec=True),
        Item("etc/ksmtuned.conf", "/etc/ksmtuned.conf", 0o644, keep_existing=True),
        Item("etc/logrotate.d/ksmtuned-py", "/etc/logrotate.d/ksmtuned-py", 0o644),
        Item("etc/libvirt/hooks/qemu.d/ksmtuned-py", "/etc/libvirt/hooks/qemu.d/ksmtuned-py", 0o755,
             names_exec=True, libvirt=True),
        Item("etc/tmpfiles.d/ksmtuned-py.conf", "/etc/tmpfiles.d/ksmtuned-py.conf", 0o644),
        *(Item(f"man/{page}", f"{LOCAL_SHARE}/man/man{page.rsplit('.', 1)[1]}/{page}", 0o644)
          for page in MAN_PAGES),
        *(Item(f"completions/{src}", f"{LOCAL_SHARE}/{dst}", 0o644) for src, dst in COMPLETIONS),
    ]


def data_dir() -> Path:
    """Where the shipped files are: the wheel's share/ksmtuned-py, else the source checkout."""
    candidates = [
        Path(sys.prefix) / "share" / DATA_NAME,
        Path(__file__).resolve().parent.parent,
    ]
    for base in candidates:
        if (base / "systemd" / "ksmtuned-py.service").is_file():
            return base
    raise UserError("cannot find the service files to install (looked in "
                    + ", ".join(str(c) for c in candidates) + ")")


def default_exec() -> str:
    """The ksmtuned-py program being run, as an absolute path."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "ksmtuned-py" and argv0.is_file():
        return os.path.abspath(argv0)
    beside = Path(sys.executable).parent / "ksmtuned-py"
    if beside.is_file():
        return str(beside)
    return SHIPPED_EXEC


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents as 0755, whatever the umask."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir()
        d.chmod(0o755)


def _write_atomic(path: Path, data: bytes, mode: int, *, replace: bool) -> bool:
    """Write ``data`` to ``path`` via a temporary file; False when it exists and not ``replace``."""
    _make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        if replace:
            os.rename(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails when the file exists
            except FileExistsError:
                return False
        return True
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def libvirt_hook_skipped(destdir: str | os.PathLike, wanted: bool | None,
                         libvirt_dir: str = "/etc/libvirt") -> str | None:
    """Why the libvirt hook is not installed, or None when it is (``wanted`` None: decide)."""
    if wanted is not None:
        return None if wanted else "--no-libvirt-hook"
    if Path(destdir).resolve() != Path("/"):
        return None  # packaging or a chroot: ship it whatever this machine has
    if Path(libvirt_dir).is_dir():
        return None
    return f"no {libvirt_dir}: libvirt is not installed; --libvirt-hook installs the hook anyway"


def install(destdir: str | os.PathLike = "/", unitdir: str = DEFAULT_UNITDIR,
            exec_path: str | None = None, source: Path | None = None,
            libvirt_hook: bool | None = None) -> list[Action]:
    """Install every shipped file under ``destdir``; returns what was done.

    ``libvirt_hook``: True or False installs the hook or not; None installs it below a
    destdir other than ``/``, and on the live system only when /etc/libvirt exists.
    """
    if not Path(unitdir).is_absolute():
        raise UserError(f"--unitdir {unitdir}: must be an absolute path")
    exec_path = exec_path or default_exec()
    if not Path(exec_path).is_absolute():
        raise UserError(f"--exec {exec_path}: must be an absolute path")
    source = source or data_dir()
    root = Path(destdir)
    actions: list[Action] = []
    skip_hook = libvirt_hook_skipped(destdir, libvirt_hook)
    for item in items(unitdir):
        if item.libvirt and skip_hook:
            actions.append(Action(root / item.target.lstrip("/"), "skipped", skip_hook))
            continue
        data = (source / item.source).read_bytes()
        if item.names_exec and exec_path != SHIPPED_EXEC:
            data = data.replace(SHIPPED_EXEC.encode(), exec_path.encode())
        target = root / item.target.lstrip("/")
        try:
            wrote = _write_atomic(target, data, item.mode, replace=not item.keep_existing)
        except OSError as err:
            raise UserError(f"cannot install {target}: {err.strerror}") from None
        actions.append(Action(target, "installed" if wrote else "kept"))
    return actions


#: Directories the service's sandbox (ProtectHome=yes) hides from it.
_HIDDEN = ("/home", "/root", "/run/user")


def hidden_by_sandbox(exec_path: str) -> list[str]:
    """The program and its interpreter paths that ProtectHome=yes would hide."""
    paths = [exec_path]
    try:
        with open(exec_path, "rb") as script:
            first = script.readline(4096)
        if first.startswith(b"#!"):
            interpreter = first[2:].split()[0].decode()
            paths += [interpreter, os.path.realpath(interpreter)]
    except (OSError, IndexError, UnicodeDecodeError):
        pass
    hidden = []
    for path in paths:
        if any(path == d or path.startswith(d + "/") for d in _HIDDEN) and path not in hidden:
            hidden.append(path)
    return hidden


NEXT_STEPS = """\
Next: systemd-tmpfiles --create /etc/tmpfiles.d/ksmtuned-py.conf && systemctl daemon-reload
      systemctl enable --now ksmtuned-py.service
(ksmtuned-py.service conflicts with ksmtuned.service: starting one stops the other.)"""
