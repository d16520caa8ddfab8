"""Run daemons in private mount namespaces over scratch files, inside one PID namespace.

The differential test and the benchmarks run ksmtuned (the bash reference) and
ksmtuned-py side by side on identical inputs. Each daemon gets its own
:class:`Scratch` set: a fake ``/proc/meminfo``, a directory of plain files
named like ``/sys/kernel/mm/ksm``, its own ``/run`` (pidfile and log) and its
own ``/etc/ksmtuned.conf``; :func:`start_in_namespace` bind-mounts them in a
private mount namespace (``unshare -m --propagation private``) and only then
starts the daemon, refusing to start it when the fake KSM directory is not in
place, so the real ``/sys/kernel/mm/ksm`` is never written.

All of it runs under :func:`isolated_command`: a fresh PID namespace with its
own ``/proc``. There both daemons see exactly the stand-in guests the test
starts (no guest of another test running on the same host), and when the
namespace's first process ends the kernel kills every process left in it, so
no daemon, ``sleep`` or guest can outlive the run, and with the processes go
their mount namespaces.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.proctools import wait_for

# Paths the daemons' namespaces cover with scratch files; none of them may be
# covered in the host's mount table once a run is over.
COVERED_PATHS = ("/etc/ksmtuned.conf", "/etc", "/proc/meminfo", "/sys/kernel/mm/ksm", "/run", "/var/run")

# Plausible contents for a Linux 6.x /sys/kernel/mm/ksm, advisor off.
KSM_FILES = {
    "advisor_max_cpu": "70",
    "advisor_max_pages_to_scan": "30000",
    "advisor_min_pages_to_scan": "500",
    "advisor_mode": "[none] scan-time",
    "advisor_target_scan_time": "200",
    "full_scans": "0",
    "general_profit": "0",
    "ksm_zero_pages": "0",
    "max_page_sharing": "256",
    "merge_across_nodes": "1",
    "pages_scanned": "0",
    "pages_shared": "0",
    "pages_sharing": "0",
    "pages_skipped": "0",
    "pages_to_scan": "100",
    "pages_unshared": "0",
    "pages_volatile": "0",
    "run": "0",
    "sleep_millisecs": "20",
    "smart_scan": "1",
    "stable_node_chains": "0",
    "stable_node_chains_prune_millisecs": "2000",
    "stable_node_dups": "0",
    "use_zero_pages": "0",
}

KNOBS = ("run", "pages_to_scan", "sleep_millisecs")

_PR_SET_PDEATHSIG = 1


def skip_reason() -> str | None:
    """Why daemons cannot be run in private namespaces here, or None."""
    if os.geteuid() != 0:
        return "needs root: private mount and PID namespaces with bind mounts"
    for tool in ("unshare", "mount", "nsenter", "stat"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if not Path("/sys/kernel/mm/ksm").is_dir():
        return "no /sys/kernel/mm/ksm to bind a scratch directory over (kernel without CONFIG_KSM)"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", "--mount-proc", "true"],
        capture_output=True, text=True,
    )
    if probe.returncode != 0:
        return f"cannot create PID and mount namespaces: {probe.stderr.strip()}"
    return None


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the process that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def isolated_command(argv: list[str]) -> list[str]:
    """``argv`` run as the first process of a new PID namespace with its own /proc."""
    return [
        "unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
        "--mount-proc", *argv,
    ]


def run_isolated(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` in a new PID namespace; everything it started dies with it."""
    proc = subprocess.Popen(isolated_command(argv), preexec_fn=_die_with_parent, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # --kill-child takes the namespace's first process, the kernel the rest
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(proc.args, timeout, output=out, stderr=err) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def host_mount_leaks() -> list[str]:
    """Mount points in this process's mount table that cover one of COVERED_PATHS."""
    leaks = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mount_point = fields[4].encode().decode("unicode_escape")
            if mount_point in COVERED_PATHS:
                leaks.append(line.strip())
    return leaks


def meminfo_text(total: int, free: int, buffers: int, cached: int) -> str:
    """A /proc/meminfo with the given kB figures and plausible other lines."""
    rows = [
        ("MemTotal", total), ("MemFree", free), ("MemAvailable", free + buffers + cached // 2),
        ("Buffers", buffers), ("Cached", cached), ("SwapCached", 0),
        ("Active", cached // 2), ("Inactive", cached - cached // 2),
        ("Shmem", cached // 8), ("SwapTotal", 0), ("SwapFree", 0),
        ("AnonPages", max(total - free - buffers - cached, 0)), ("Mapped", cached // 4),
        ("Slab", buffers // 2 + 1), ("CommitLimit", total // 2), ("Committed_AS", total // 3),
        ("HugePages_Total", 0), ("Hugepagesize", 2048),
    ]
    lines = []
    for key, value in rows:
        unit = "" if key.startswith("HugePages_") else " kB"
        lines.append(f"{key + ':':<16}{value:>8}{unit}")
    return "\n".join(lines) + "\n"


def _rewrite(path: Path, text: str) -> None:
    """Replace a file's contents in place: a bind mount holds on to the inode."""
    with open(path, "r+" if path.exists() else "w") as f:
        f.truncate(0)
        f.write(text)


@dataclass
class Scratch:
    """One daemon's scratch files, bind-mounted over the real paths in its namespace."""

    base: Path
    debug_to_stdout: bool = False  # the config sets no LOGFILE: DEBUG lines go to stdout

    @property
    def meminfo(self) -> Path:
        return self.base / "meminfo"

    @property
    def ksm(self) -> Path:
        return self.base / "ksm"

    @property
    def run(self) -> Path:
        return self.base / "run"

    @property
    def conf(self) -> Path:
        return self.base / "ksmtuned.conf"

    @property
    def log(self) -> Path:
        """The daemon's LOGFILE when the config says LOGFILE=/run/ksmtuned.log."""
        return self.run / "ksmtuned.log"

    @property
    def stdout(self) -> Path:
        return self.base / "stdout"

    @property
    def stderr(self) -> Path:
        return self.base / "stderr"

    @property
    def pidfile(self) -> Path:
        return self.run / "ksmtune.pid"

    @classmethod
    def create(cls, base: Path) -> "Scratch":
        resolved = str(base.resolve())
        if any(resolved == p or resolved.startswith(p + "/") for p in COVERED_PATHS):
            raise ValueError(f"scratch directory {base} lies under a path it will be mounted over")
        scratch = cls(base)
        for d in (base / "ksm", base / "run", base / "etc-upper", base / "etc-work"):
            d.mkdir(parents=True, exist_ok=True)
        (base / "etc-upper" / "ksmtuned.conf").write_text("")  # bind target when /etc has none
        scratch.reset_ksm()
        scratch.write_meminfo(meminfo_text(16 * 1024 * 1024, 8 * 1024 * 1024, 100000, 2000000))
        scratch.write_conf("")
        return scratch

    def reset_ksm(self) -> None:
        for name, value in KSM_FILES.items():
            _rewrite(self.ksm / name, value + "\n")

    def reset_run(self) -> None:
        shutil.rmtree(self.run)
        self.run.mkdir()

    def write_meminfo(self, text: str) -> None:
        _rewrite(self.meminfo, text)

    def write_conf(self, text: str) -> None:
        _rewrite(self.conf, text)

    def knobs(self) -> tuple[str, ...]:
        """First token of run, pages_to_scan, sleep_millisecs (a sysfs write is one token)."""
        values = []
        for name in KNOBS:
            tokens = (self.ksm / name).read_text().split()
            values.append(tokens[0] if tokens else "")
        return tuple(values)

    def log_lines(self) -> list[str]:
        """Complete DEBUG lines written so far (LOGFILE, or stdout without one)."""
        try:
            text = (self.stdout if self.debug_to_stdout else self.log).read_text()
            return text[:text.rfind("\n") + 1].splitlines()
        except FileNotFoundError:
            return []

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None


_MOUNT_SCRIPT = r"""
set -e
S="$1"; shift
mount --bind "$S/meminfo" /proc/meminfo
mount --bind "$S/ksm" /sys/kernel/mm/ksm
mount --bind "$S/run" /run
if [ ! -L /var/run ]; then mount --bind "$S/run" /var/run; fi
if [ ! -e /etc/ksmtuned.conf ]; then
    mount -t overlay overlay -o "lowerdir=/etc,upperdir=$S/etc-upper,workdir=$S/etc-work" /etc
fi
mount --bind "$S/ksmtuned.conf" /etc/ksmtuned.conf
# Never start a daemon that could reach the real KSM knobs or the real meminfo.
[ "$(stat -c %d:%i /sys/kernel/mm/ksm)" = "$(stat -c %d:%i "$S/ksm")" ] || exit 97
[ "$(stat -c %d:%i /proc/meminfo)" = "$(stat -c %d:%i "$S/meminfo")" ] || exit 97
[ "$(stat -c %d:%i /run)" = "$(stat -c %d:%i "$S/run")" ] || exit 97
exec "$@"
"""

# The environment the daemons start with: no KSM_* or systemd variables leaking in.
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}


def start_in_namespace(scratch: Scratch, argv: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Start ``argv`` in a private mount namespace over ``scratch``, in its own process group."""
    cmd = ["unshare", "--mount", "--propagation", "private",
           "sh", "-c", _MOUNT_SCRIPT, "mount-scratch", str(scratch.base), *argv]
    return subprocess.Popen(
        cmd, env=dict(CLEAN_ENV if env is None else env), start_new_session=True,
        stdin=subprocess.DEVNULL, **kwargs,
    )


def in_namespace_of(pid: int, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` in the mount namespace of process ``pid`` (e.g. a retune command)."""
    kwargs.setdefault("env", dict(CLEAN_ENV))
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "--", *argv], **kwargs)


def kill_group(proc: subprocess.Popen, pgid: int | None = None) -> None:
    """SIGKILL the whole process group ``proc`` leads (daemon, its subshells, their sleeps)."""
    try:
        os.killpg(pgid or proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def handles(pid: int, sig: int) -> bool:
    """Whether process ``pid`` catches ``sig`` or blocks it (to take it with sigwait)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("SigCgt:", "SigBlk:")) and int(line.split()[1], 16) >> (sig - 1) & 1:
                    return True
    except OSError:
        pass
    return False


def blocked_in_wait(pid: int) -> bool:
    """Whether ``pid`` (a bash loop) is blocked waiting for a child, as in ``wait $!``."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        syscall = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    # 61 = wait4 on x86_64, 260 = wait4 on arm64/generic; also accept the wchan name.
    if not children:
        return False
    if syscall and syscall[0] in ("61", "260"):
        return True
    try:
        return Path(f"/proc/{pid}/wchan").read_text().strip() == "do_wait"
    except OSError:
        return False


def wait_until(predicate, timeout: float, what: str, interval: float = 0.005):
    """Poll ``predicate`` until it returns a true value; TimeoutError naming ``what``."""
    return wait_for(predicate, timeout, interval, what, error=TimeoutError)

