"""The ``proc/PID`` directories of a :class:`~sysfs_emu.tree.Tree`: the simulated processes and ksmd.

A part of the tree (its mix-in :class:`ProcDirs`): a new process's directory is built
aside and renamed into place in whole, an exited one's renamed away and removed, and the
files of the others rewritten when the memory model's numbers moved.  The ksmd kernel
thread has a directory of its own, just below the processes' pids, so that a tuner reads
its CPU time as on Linux.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass

from sysfs_emu import procfs, procstats
from sysfs_emu.errors import TreeError

log = logging.getLogger("sysfs_emu.tree")  # the tree's own messages

PROC_FILES = ("comm", "cmdline", "stat", "statm", "status", "ksm_stat", "ksm_merging_pages", "smaps_rollup", "smaps")
KSMD_FILES = ("comm", "cmdline", "stat", "statm", "status", "ksm_stat")  # the ksmd kernel thread's


@dataclass(frozen=True)
class _ProcView:
    """One process's numbers, read once per refresh (each read is a pass over its pages)."""

    pid: int
    name: str
    cmdline: tuple[str, ...]
    start_time: float
    rss_pages: int
    vsz_pages: int
    page_size: int
    ksm_stat_text: str
    ksm_merging_pages: int
    rollup: procfs.Rollup
    vmas: tuple[procfs.Vma, ...]

    @classmethod
    def of(cls, proc, memory) -> "_ProcView":
        n = procstats.numbers(memory, proc.pid)
        return cls(
            pid=proc.pid, name=proc.name, cmdline=tuple(proc.cmdline), start_time=proc.start_time,
            rss_pages=int(n.rss_pages), vsz_pages=int(proc.vsz_pages), page_size=proc.page_size,
            ksm_stat_text=n.ksm_stat_text, ksm_merging_pages=int(n.ksm_merging_pages), rollup=n.rollup,
            vmas=n.vmas,
        )


@dataclass
class _Written:
    """What this tree last put in a file, and the file's identity right after."""

    data: bytes
    mode: int
    ino: int = 0
    mtime_ns: int = 0


class ProcDirs:
    """The process directories of a Tree (which has ``root``, ``sim``, ``tmp_dir``, ``_pids``, ``_written``)."""

    def _refresh_processes(self, force: bool = False) -> None:
        """New and exited processes at once; the others' numbers when memory changed.

        Per-process numbers cost a pass over the process's pages, so they are
        recomputed only when the memory model's totals moved, and at most about
        every four times as long as the last recomputation took (under a fifth
        of the time on a big host while ksmd merges).
        """
        live = {proc.pid: proc for proc in self.sim.processes}
        changed = False
        for pid in [p for p in self._pids if p not in live or self._pids[p] != live[p].start_time]:
            self._remove_pid_dir(pid)
            changed = True
        for pid in [p for p in self._pids if not (self.root / "proc" / str(p)).is_dir()]:
            log.warning("%s was removed by another program; recreating it", self.root / "proc" / str(pid))
            self._forget_pid(pid)
        for pid, proc in live.items():
            if pid not in self._pids:
                changed |= self._add_pid_dir(proc, self._proc_texts(self._view(proc)))
        if changed or self._manifest_unsaved:
            self.manifest.pids = sorted([*self._pids, self.ksmd_pid])
            self._save_manifest()
        key = self._memory_key()
        now = time.monotonic()
        if not force and key == self._proc_key:
            return
        if not force and now < self._next_proc_refresh:
            return
        for pid, proc in live.items():
            if pid in self._pids:
                for fname, data in self._proc_texts(self._view(proc)).items():
                    self._put(f"proc/{pid}/{fname}", data, 0o444)
        self._proc_key = key
        self._next_proc_refresh = now + 4 * (time.monotonic() - now)

    def _memory_key(self) -> tuple:
        """A value that moves whenever a process's resident or KSM numbers can have changed."""
        return self.sim.state_key(), tuple(sorted(self._pids.items()))

    def _view(self, proc) -> _ProcView:
        return _ProcView.of(proc, self.sim.memory)

    def _proc_texts(self, proc: "_ProcView") -> dict[str, bytes]:
        hwm = max(self._hwm.get(proc.pid, 0), proc.rss_pages)
        self._hwm[proc.pid] = hwm
        return {
            "comm": procfs.comm_text(proc.name).encode(),
            "cmdline": procfs.cmdline_bytes(list(proc.cmdline)),
            "stat": procfs.stat_text(proc).encode(),
            "statm": procfs.statm_text(proc).encode(),
            "status": procfs.status_text(proc, self.owner, hwm).encode(),
            "ksm_stat": proc.ksm_stat_text.encode(),
            "ksm_merging_pages": f"{proc.ksm_merging_pages}\n".encode(),
            "smaps_rollup": procfs.smaps_rollup_text(proc.rollup, proc.vsz_pages, proc.page_size).encode(),
            "smaps": procfs.smaps_text(proc.vmas).encode(),
        }

    def _ksmd_texts(self) -> dict[str, bytes]:
        """The ksmd kernel thread's files: its CPU time as the simulated ksmd accounts it."""
        pid, cpu = self.ksmd_pid, self.sim.ksmd.cpu_time
        return {"comm": b"ksmd\n", "cmdline": b"", "stat": procfs.kthread_stat_text(pid, "ksmd", cpu).encode(),
                "statm": b"0 0 0 0 0 0 0\n", "status": procfs.kthread_status_text(pid, "ksmd").encode(),
                "ksm_stat": b""}

    def _add_ksmd_dir(self) -> None:
        """``proc/PID`` of ksmd, built aside and renamed into place like a process's."""
        target = self.root / "proc" / str(self.ksmd_pid)
        if os.path.lexists(target):
            raise TreeError(f"{target} exists and was not made by sysfs-emu; use an empty directory")
        build = self.tmp_dir / "new-ksmd"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        texts = self._ksmd_texts()
        for fname, data in texts.items():
            (build / fname).write_bytes(data)
            os.chmod(build / fname, 0o444)
        os.chmod(build, 0o555)
        os.rename(build, target)
        for fname, data in texts.items():
            st = os.stat(target / fname)
            self._written[f"proc/{self.ksmd_pid}/{fname}"] = _Written(data, 0o444, st.st_ino, st.st_mtime_ns)
        self.manifest.pids = [self.ksmd_pid]

    def _add_pid_dir(self, proc, texts: dict[str, bytes]) -> bool:
        """Build ``proc/PID`` aside and rename it into place, so it appears complete."""
        target = self.root / "proc" / str(proc.pid)
        if os.path.lexists(target):
            self._problems.fail(("pid", proc.pid, proc.start_time), f"{target} exists and was not made by sysfs-emu; "
                                f"process {proc.name} (pid {proc.pid}) is not shown")
            return False
        build = self.tmp_dir / f"new-{proc.pid}"
        try:
            shutil.rmtree(build, ignore_errors=True)
            build.mkdir()
            for fname, data in texts.items():
                path = build / fname
                path.write_bytes(data)
                os.chmod(path, 0o444)
            os.chmod(build, 0o755)
            os.rename(build, target)
        except OSError as exc:
            shutil.rmtree(build, ignore_errors=True)
            if not self._dir_gone(target):
                self._problems.fail(("pid", proc.pid, proc.start_time), f"cannot make {target}: {exc.strerror}; "
                                    f"process {proc.name} (pid {proc.pid}) is not shown")
            return False
        self._problems.ok(("pid", proc.pid, proc.start_time), f"{target} is free again; process {proc.name} (pid {proc.pid}) is shown")
        for fname, data in texts.items():
            st = os.stat(target / fname)
            self._written[f"proc/{proc.pid}/{fname}"] = _Written(data, 0o444, st.st_ino, st.st_mtime_ns)
        self._pids[proc.pid] = proc.start_time
        return True

    def _forget_pid(self, pid: int) -> None:
        """Forget what was written for ``pid``, so that its directory is made afresh."""
        self._pids.pop(pid, None)
        for fname in (*PROC_FILES, *KSMD_FILES):
            self._written.pop(f"proc/{pid}/{fname}", None)

    def _remove_pid_dir(self, pid: int) -> None:
        target = self.root / "proc" / str(pid)
        self._forget_pid(pid)
        self._hwm.pop(pid, None)
        if not target.is_dir() or target.is_symlink():
            return
        gone = self.tmp_dir / f"gone-{pid}-{self._next_seq()}"
        try:
            os.rename(target, gone)
        except OSError as exc:
            log.warning("cannot remove %s: %s", target, exc)
            return
        shutil.rmtree(gone, ignore_errors=True)
