"""A Simulation shown as a live file tree: ``sys/kernel/mm/ksm`` and ``proc`` under a root.

:class:`Tree` owns the files.  :meth:`Tree.sync` is one tick's worth of file work:

1. writes by other programs to ``sys/kernel/mm/ksm/*`` are found by comparing each
   file with the bytes this tree last put there, and applied through
   ``Kernel.write_attr``; a write the kernel refuses is reverted and logged with
   the errno the kernel would have returned;
2. every file whose text changed is replaced atomically (written under the state
   directory, then renamed into place), so a reader never sees half a value;
3. ``proc/PID`` directories appear (built aside, then renamed in whole) for new
   processes and go away for exited ones (``procdirs.py``, a part of the tree).

Everything created is listed in a manifest under ``.sysfs-emu/`` (``manifest.py``) so that a later
run (or ``--clean``) removes exactly what sysfs-emu made and nothing else.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sysfs_emu import procfs
from sysfs_emu.errors import OnceLog, TreeError, errno_text
from sysfs_emu.files import NotRegularFile, kind_of, read_regular_stat, replace_file
from sysfs_emu.kernel import ATTRS
from sysfs_emu.manifest import Manifest
from sysfs_emu.procdirs import PROC_FILES, ProcDirs, _Written  # noqa: F401 (PROC_FILES: the tree's files, for tests)

if TYPE_CHECKING:
    from sysfs_emu.simulation import Simulation

log = logging.getLogger(__name__)

KSM_DIR = "sys/kernel/mm/ksm"
STATE_DIR = ".sysfs-emu"

# The files of /sys/kernel/mm/ksm on Linux 6.18 and whether each can be written (0644) or not (0444).
KSM_ATTRS: dict[str, bool] = {attr.name: not attr.counter for attr in ATTRS}

HOST_PROC_FILES = ("meminfo", "stat", "uptime", "loadavg", "vmstat")
EMPTY_GRACE_S = 0.5  # how long a KSM file truncated by a writer is given for its write (wall time)
NODE_DIR = "sys/devices/system/node"
# The NUMA node lists (what doctor and numactl read): "0" on one node, "0-1" on two.
NODE_FILES = ("online", "possible", "has_memory")
# Directories the tree needs, parents first.
BASE_DIRS = ("proc", "sys", "sys/kernel", "sys/kernel/mm", KSM_DIR, "sys/devices", "sys/devices/system", NODE_DIR)


def _shown(data: bytes, limit: int = 40) -> str:
    """A written value for the log: its repr, cut (with its length) when long."""
    text = data.decode(errors="replace")
    if len(data) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(data)} bytes)"


def removed_top(root: Path, path: Path) -> Path:
    """The outermost missing directory on the way from ``root`` to the missing ``path``: what was removed."""
    while path.parent != root and not os.path.lexists(path.parent):
        path = path.parent
    return path


class Tree(ProcDirs):
    """The files of one simulated host under ``root``."""

    def __init__(self, sim: "Simulation", root: str | os.PathLike, owner: procfs.Owner | None = None):
        self.sim = sim
        self.root = Path(root)
        self.state_dir = self.root / STATE_DIR
        self.tmp_dir = self.state_dir / "tmp"
        self.scratch_dirs = [self.tmp_dir]  # made again when removed, as the tree's own (a server adds its queue)
        self.owner = owner or procfs.Owner.current()
        self.cpus = sim.cpus
        self._problems = OnceLog(log)
        self._written: dict[str, _Written] = {}
        # KSM files found empty (a writer truncates, then writes): rel -> ((inode, mtime), when first seen)
        self._pending_empty: dict[str, tuple[tuple[int, int], float]] = {}
        self._pids: dict[int, float] = {}  # pid -> start time of the process shown there
        self._hwm: dict[int, int] = {}
        self._tmp_seq = 0
        self._proc_key: tuple | None = None
        self._next_proc_refresh = 0.0
        self.manifest = Manifest(self.state_dir / "manifest.json")
        # The ksmd kernel thread, just below the simulated processes' pids, so tuners find its CPU time.
        self.ksmd_pid = sim.scenario.host.pid_base - 1
        self._manifest_unsaved = False  # a save failed: try again every tick
        self._failed_puts: set[str] = set()  # files a write failed for: written again at the next put

    # --- creation and removal -------------------------------------------------------

    def create(self) -> None:
        """Make the directories and every file; clear what an earlier run left."""
        # The scratch directory holds only half-made files of an earlier run that died.
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)
        previous = Manifest.load(self.manifest.path)
        wanted = [*BASE_DIRS]
        files = [f"{KSM_DIR}/{name}" for name in KSM_ATTRS] + [f"proc/{n}" for n in HOST_PROC_FILES] + \
            [f"{NODE_DIR}/{n}" for n in NODE_FILES]
        for rel in files:
            path = self.root / rel
            if os.path.lexists(path) and not previous.owns(rel):
                raise TreeError(f"{path} exists and was not made by sysfs-emu; use an empty directory")
        for rel in wanted:
            path = self.root / rel
            if path.is_symlink():
                raise TreeError(f"{path} is a symbolic link; sysfs-emu only writes into directories it can trust")
            if os.path.lexists(path) and not path.is_dir():
                raise TreeError(f"{path} exists and is not a directory; use an empty directory")
        # Process directories an earlier run left behind are stale: drop them.
        for pid in previous.pids:
            self._remove_pid_dir(pid)
        self.manifest.dirs = [d for d in previous.dirs if d in wanted]
        for rel in wanted:
            path = self.root / rel
            if not path.is_dir():
                path.mkdir()
                self.manifest.dirs.append(rel)
        self.manifest.files = files
        self.manifest.pids = []
        self._remove_pid_dir(self.ksmd_pid)
        self._add_ksmd_dir()
        self.manifest.save()
        self.sync(force=True)

    def remove(self) -> None:
        """Delete what sysfs-emu created (files, process dirs, then its directories if empty)."""
        self._remove_pid_dir(self.ksmd_pid)
        for pid in list(self._pids):
            self._remove_pid_dir(pid)
        for pid in self.manifest.pids:
            self._remove_pid_dir(pid)
        for rel in self.manifest.files:
            try:
                os.unlink(self.root / rel)
            except FileNotFoundError:
                pass
        for rel in sorted(self.manifest.dirs, key=lambda d: d.count("/"), reverse=True):
            try:
                os.rmdir(self.root / rel)
            except OSError:
                pass  # something not ours is inside: leave it
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        try:
            os.unlink(self.manifest.path)
        except FileNotFoundError:
            pass
        try:
            os.rmdir(self.state_dir)  # fails while a runner still keeps its lock there
        except OSError:
            pass
        self._written.clear()
        self._pids.clear()

    # --- one tick ---------------------------------------------------------------------

    def sync(self, force: bool = False) -> None:
        """Apply outside writes, then bring the files up to date with the simulation.

        ``force`` recomputes every process's files now instead of when due.
        """
        self.apply_writes()
        self._refresh_ksm()
        self._refresh_host()
        self._refresh_processes(force)

    def apply_writes(self) -> list[str]:
        """Find files under ``sys/kernel/mm/ksm`` written by others and apply them; return their names."""
        changed = []
        kernel = self.sim.kernel
        self.keep_dirs()
        for name in KSM_ATTRS:
            rel = f"{KSM_DIR}/{name}"
            mine = self._written.get(rel)
            if mine is None:
                continue
            found = self._read_back(rel)
            if found is None:
                continue
            st, data = found
            touched = (st.st_ino, st.st_mtime_ns) != (mine.ino, mine.mtime_ns)
            if data == mine.data and not touched:
                self._pending_empty.pop(rel, None)
                continue
            if not data and self._still_awaited(rel, st):
                continue
            self._pending_empty.pop(rel, None)
            before = mine.data.decode(errors="replace").rstrip("\n")
            try:
                kernel.write_attr(name, data)
            except OSError as exc:
                log.warning(
                    "%s: write %s refused with %s; value restored to %r",
                    rel, _shown(data), errno_text(exc.errno), kernel.read_attr(name).rstrip("\n"),
                )
                self._written.pop(rel)  # forces the rewrite below
            else:
                text = kernel.read_attr(name)
                after = text.rstrip("\n")
                # A knob rewritten with its own value (as ksmtuned does every cycle) is not news.
                level = logging.INFO if after != before else logging.DEBUG
                log.log(level, "%s: %s written by another program (was %r, now %r)",
                        rel, _shown(data), before, after)
                if text.encode() == data:
                    # The file already reads as the kernel would: keep it rather than
                    # rename a new one over it, so that a write racing this tick lands
                    # in the file the next tick reads instead of in a replaced one.
                    self._written[rel] = _Written(data, st.st_mode & 0o777, st.st_ino, st.st_mtime_ns)
                else:
                    self._written.pop(rel)
                changed.append(name)
        if changed or any(f"{KSM_DIR}/{n}" not in self._written for n in KSM_ATTRS):
            self._refresh_ksm()
        return changed

    def _still_awaited(self, rel: str, st: os.stat_result) -> bool:
        """Whether a KSM file found empty may still get its writer's write (a writer truncates, then writes).

        Restoring the file under a writer that has truncated it but not written yet loses
        its write (it lands in the replaced file), so an empty file is left for
        EMPTY_GRACE_S of wall time, a writer descheduled for a tick or two included; another
        truncation since the last look is another writer's, waited for afresh.
        """
        key, now = (st.st_ino, st.st_mtime_ns), time.monotonic()
        seen = self._pending_empty.get(rel)
        if seen is None or seen[0] != key:
            self._pending_empty[rel] = (key, now)
            return True
        return now - seen[1] < EMPTY_GRACE_S

    def _read_back(self, rel: str) -> tuple[os.stat_result, bytes] | None:
        """A KSM file's identity and bytes; None (after repairing or reporting it) when it is not one.

        Never blocks: a FIFO is not read but replaced, like a removed file, with the
        kernel's text (a rename replaces anything but a directory, and nothing
        written to a FIFO is kept); a directory is reported once and left alone.
        """
        path = self.root / rel
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                found = read_regular_stat(path, 1 << 20)
                self._problems.ok(rel, f"{path} can be read again")
                return found
        except FileNotFoundError:
            # Not said when a directory around it went (said once, at the next tick's start), nor
            # at the end of a damage already reported.
            if not self._dir_gone(path) and not self._problems.failing(("put", rel)):
                log.warning("%s was removed by another program; recreating it", path)
            self._written.pop(rel)
            return None
        except NotRegularFile:  # replaced between the two looks: see it next tick
            return None
        except OSError as exc:
            self._problems.fail(rel, f"cannot read {path}: {exc.strerror}")
            return None
        if stat.S_ISDIR(st.st_mode):
            self._problems.fail(("put", rel), self._damage(path, None))  # as _put words it: one line
        else:  # said once, like a directory: the restore may have to wait (a removed scratch directory)
            self._problems.fail(("put", rel), f"{path} was replaced by {kind_of(st.st_mode)} by another program; "
                                "restoring the file")
            self._written.pop(rel)
        return None

    def keep_dirs(self) -> None:
        """Make again the directories of ours that another program removed (the tree's, and its scratch space)."""
        wanted = [*BASE_DIRS, *(str(d.relative_to(self.root)) for d in self.scratch_dirs)]
        missing = [rel for rel in wanted if not os.path.lexists(self.root / rel)]
        # the directory that was removed, once, not each one that went with it
        for gone in dict.fromkeys(removed_top(self.root, self.root / rel) for rel in missing):
            log.warning("%s was removed by another program; recreating it", gone)
        for rel in missing:
            path = self.root / rel
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TreeError(f"{path} was removed by another program and cannot be made again: "
                                f"{exc.strerror}") from None
            prefix = rel + "/"
            for written in [r for r in self._written if r.startswith(prefix)]:
                del self._written[written]  # the files that were in it: write them again
            if rel == "proc":
                self._pids.clear()  # and the process directories

    def _refresh_ksm(self) -> None:
        texts = self.sim.kernel.read_all()  # one read of ksmd's counters for all 24 files
        for name, writable in KSM_ATTRS.items():
            self._put(f"{KSM_DIR}/{name}", texts[name].encode(), 0o644 if writable else 0o444)

    def _refresh_host(self) -> None:
        sim = self.sim
        live = list(sim.processes)
        uptime = float(sim.uptime)
        self._put("proc/meminfo", sim.meminfo().encode(), 0o444)
        self._put("proc/uptime", procfs.uptime_text(uptime, self.cpus).encode(), 0o444)
        self._put("proc/stat", procfs.host_stat_text(int(sim.boot_time), uptime, self.cpus,
                                                     len(live)).encode(), 0o444)
        last_pid = max((p.pid for p in live), default=1)
        self._put("proc/loadavg", procfs.loadavg_text(len(live) + 1, last_pid).encode(), 0o444)
        mem = sim.memory
        free_pages = sim.meminfo_kb()["MemFree"] * 1024 // sim.page_size
        self._put("proc/vmstat", procfs.vmstat_text(free_pages, int(mem.physical_pages()), mem.cow_ksm).encode(), 0o444)
        for fname, data in self._ksmd_texts().items():
            self._put(f"proc/{self.ksmd_pid}/{fname}", data, 0o444)
        nodes = mem.numa_nodes
        for name in NODE_FILES:
            self._put(f"{NODE_DIR}/{name}", (f"0-{nodes - 1}\n" if nodes > 1 else "0\n").encode(), 0o444)

    def _save_manifest(self) -> None:
        """Save the manifest; on failure (a full file system) say so once and try again next time."""
        try:
            self.manifest.save()
        except OSError as exc:
            self._manifest_unsaved = True
            if os.path.lexists(self.state_dir):  # else: said and made again at the next tick
                self._problems.fail("manifest", f"cannot write {self.manifest.path}: {exc.strerror}")
            return
        self._manifest_unsaved = False
        self._problems.ok("manifest", f"{self.manifest.path} is written again")

    # --- files --------------------------------------------------------------------------

    def _put(self, rel: str, data: bytes, mode: int) -> None:
        """Replace ``rel`` atomically with ``data`` unless it already holds exactly that.

        When another program put a directory there (a rename cannot replace one), or
        removed the directory around it, that is said once, naming the path, and the
        tree goes on: the file is written again once the path is free.
        """
        mine = self._written.get(rel)
        if mine is not None and mine.data == data and mine.mode == mode and rel not in self._failed_puts:
            return
        path = self.root / rel
        try:
            st = replace_file(path, data, mode, tmp=self.tmp_dir / f"f{self._next_seq()}")
        except OSError as exc:
            if not self._dir_gone(path):  # a removed directory of ours is said and made again next tick
                self._problems.fail(("put", rel), self._damage(path, exc))
            # Tried again even if the data goes back to what the file holds, so that the
            # problem, once said, is also said to be over.
            self._failed_puts.add(rel)
            return
        self._failed_puts.discard(rel)
        self._problems.ok(("put", rel), f"{path} is kept up to date again")
        self._written[rel] = _Written(data, mode, st.st_ino, st.st_mtime_ns)

    def _dir_gone(self, path: Path) -> bool:
        """Whether the directory holding ``path``, or the scratch directory, was removed (nothing else in its place)."""
        return not (os.path.lexists(path.parent) and os.path.lexists(self.tmp_dir))

    def _damage(self, path: Path, exc: OSError | None) -> str:
        """What another program did to ``path`` that keeps this tree from writing it, in words."""
        try:
            kind = kind_of(os.lstat(path).st_mode)
        except OSError:
            kind = None
        if kind == "a directory":
            return f"{path} was replaced by a directory by another program; it is not updated until that is removed"
        if not path.parent.is_dir():
            try:
                parent = f"replaced by {kind_of(os.lstat(path.parent).st_mode)}"
            except OSError:
                parent = "removed"
            return f"{path.parent} was {parent} by another program; {path.name} is written again when it is back"
        return f"cannot update {path}: {exc.strerror if exc else 'not a regular file'}"

    def _next_seq(self) -> int:
        self._tmp_seq += 1
        return self._tmp_seq
