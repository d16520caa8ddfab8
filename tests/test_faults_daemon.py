"""Faults and bad input for the daemon and its commands: one clear line, keep working, lose nothing.

Each test is one class of fault, met as a user meets it: a real daemon process on a
temporary host tree (plain files, never the real /sys/kernel/mm/ksm), with real
FIFOs, sockets, symlinks and directories in the wrong places, bytes that are not
UTF-8, and real mounts (a tiny full tmpfs, a read-only bind) in a private mount
namespace. A cycle is counted by the state the daemon publishes, which does not
depend on the debug log working.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import faultns
from tests.proctools import stop, wait_for

KSMTUNED_PY = str(Path(sys.executable).parent / "ksmtuned-py")
SYSFS_EMU = str(Path(sys.executable).parent / "sysfs-emu")
DATE = r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d \S+ \d{4}"
DEBUG_LINE = re.compile(rf"^{DATE}: \S.*$")
MEMINFO = b"MemTotal:        1000000 kB\nMemFree:          100000 kB\nBuffers:               0 kB\nCached:                0 kB\n"
KNOBS = {"run": "0", "pages_to_scan": "100", "sleep_millisecs": "20", "pages_sharing": "0",
         "general_profit": "0", "advisor_mode": "[none] scan-time"}
# free 100000 < thres 200000: every cycle boosts pages_to_scan by 300 (MAX is high): 300, 600, 900, ...
CONFIG = "KSM_MONITOR_INTERVAL=3600\nKSM_NPAGES_MAX=1000000\nDEBUG=1\n"

needs_namespaces = pytest.mark.skipif(faultns.skip_reason() is not None, reason=str(faultns.skip_reason()))


class Host:
    """A host tree, the daemon's config, pidfile and log under ``base``."""

    def __init__(self, base: Path, config: str = CONFIG, logfile: Path | None = None):
        self.base = base
        self.root = base / "root"
        self.ksm = self.root / "sys/kernel/mm/ksm"
        self.ksm.mkdir(parents=True)
        (self.root / "proc").mkdir()
        (self.root / "proc/meminfo").write_bytes(MEMINFO)
        for name, value in KNOBS.items():
            (self.ksm / name).write_text(value + "\n")
        self.conf = base / "ksmtuned.conf"
        self.pidfile = base / "ksmtune.pid"
        self.state = base / "ksmtune.state"
        self.logfile = logfile or base / "ksmtuned.log"
        self.write_config(config)

    def write_config(self, text: str = CONFIG) -> None:
        self.conf.write_text(f"PIDFILE={self.pidfile}\nLOGFILE={self.logfile}\n" + text)

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([KSMTUNED_PY, "--root", str(self.root), "--config", str(self.conf), *args],
                              capture_output=True, text=True, timeout=120, **kw)

    def knob(self, name: str) -> str:
        return (self.ksm / name).read_text()

    def cycles(self) -> int:
        """Cycles the daemon has published (0 before the first)."""
        try:
            last = json.loads(self.state.read_text()).get("last_decision")
        except (OSError, ValueError):
            return 0
        return last["cycles"] if last else 0


class Daemon:
    """``ksmtuned-py run`` on a host, in the test's namespace or in a MountNamespace; always reaped."""

    def __init__(self, host: Host, ns: faultns.MountNamespace | None = None):
        self.host = host
        self.out_path, self.err_path = host.base / f"stdout.{id(self)}", host.base / f"stderr.{id(self)}"
        out, err = open(self.out_path, "wb"), open(self.err_path, "wb")
        argv = [KSMTUNED_PY, "--root", str(host.root), "--config", str(host.conf), "run"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        start = ns.popen if ns else subprocess.Popen
        self.proc = start(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        out.close()
        err.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self) -> "Daemon":
        wait_for(lambda: self.host.state.exists() or self.proc.poll() is not None, what="the daemon to start")
        assert self.proc.poll() is None, self.stderr()
        return self

    def cycle(self) -> None:
        """SIGUSR1, and wait until that cycle is published."""
        n = self.host.cycles()
        self.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: self.host.cycles() > n or self.proc.poll() is not None, what=f"cycle {n + 1}")
        assert self.proc.poll() is None, self.stderr()

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop(self.proc, timeout=30)


@pytest.fixture
def host(tmp_path) -> Host:
    return Host(tmp_path)


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def start(host: Host, ns=None) -> Daemon:
        d = Daemon(host, ns)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
        d.proc.wait()


def one_line(r: subprocess.CompletedProcess) -> str:
    """The single line a failing command printed (no traceback)."""
    assert "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    return r.stderr.rstrip("\n")


# --- bytes that are not UTF-8 -----------------------------------------------------------------


def test_bytes_that_are_not_utf8_in_meminfo_and_the_config(host, daemons):
    (host.root / "proc/meminfo").write_bytes(MEMINFO + b"Weird\xff:  12 kB\n\xfe\xff\n")
    host.conf.write_bytes(f"PIDFILE={host.pidfile}\n# a comment \xe9\xff\n".encode("latin-1")
                          + f"LOGFILE={host.base}/".encode() + b"log-\xff.txt\n" + CONFIG.encode())
    d = daemons(host).ready()
    d.cycle()
    d.cycle()
    assert host.knob("pages_to_scan") == "600\n"
    d.proc.send_signal(signal.SIGHUP)  # re-reads the same bytes: still alive, retuned
    wait_for(lambda: host.cycles() == 3, what="the reload's cycle")
    for cmd in (("status",), ("adjust",), ("metrics", "--textfile", str(host.base))):
        r = host.cli(*cmd)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (cmd, r.stderr)
    assert d.stop() == 0
    log = (host.base / os.fsdecode(b"log-\xff.txt")).read_bytes().decode().splitlines()
    assert [x.split(": ", 1)[1] for x in log if "KSMCTL" in x] == [
        "KSMCTL start 300 167", "KSMCTL start 600 167", "KSMCTL start 300 167"]
    assert "Traceback" not in d.stderr() and "ERROR" not in d.stderr()
    # a value that is not UTF-8 is named as its bytes, on one line
    host.conf.write_bytes(b"KSM_NPAGES_BOOST=\xff1\n")
    r = host.cli("check-config")
    assert r.returncode == 78
    assert one_line(r) == f"ksmtuned-py: {host.conf}:1: KSM_NPAGES_BOOST: invalid value '\\xff1'; expected an integer"


def test_a_message_with_bytes_that_are_not_utf8_is_escaped_for_the_journal():
    import logging

    from ksmtuned_py.service import EncodableMessages

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "cannot write the debug log %s",
                               (os.fsdecode(b"/var/log/\xff.log"),), None)
    assert EncodableMessages().filter(record)
    assert record.getMessage() == "cannot write the debug log /var/log/\\xff.log"
    record.getMessage().encode("utf-8")  # what the journal's sendv needs


# --- things that look like numbers but are not --------------------------------------------------


def test_a_proc_entry_that_looks_like_a_number_is_not_a_process(host, daemons, tmp_path):
    for name in ("²", "١٢", "1_0"):  # str.isdigit() / int() accept these; no kernel has such pids
        (host.root / "proc" / name).mkdir()
        (host.root / "proc" / name / "stat").write_text("1 (qemu-kvm) S 1 1 1 0 -1 0 " + "0 " * 40 + "\n")
    (host.ksm / "pages_sharing").write_text("²\n")  # nor is this a counter: left out
    d = daemons(host).ready()
    d.cycle()
    assert host.knob("run") == "1\n" and host.knob("pages_to_scan") == "300\n"
    r = host.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["guests"] == [] and "pages_sharing" not in status["ksm"]
    for cmd in (("adjust",), ("metrics", "--textfile", str(tmp_path))):
        r = host.cli(*cmd)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (cmd, r.stderr)
    r = subprocess.run([SYSFS_EMU, "snapshot", "--root", str(host.root)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "sharing ²" in r.stdout
    assert d.stop() == 0 and "Traceback" not in d.stderr()


# --- a full file system under LOGFILE --------------------------------------------------------------


@needs_namespaces
def test_a_full_file_system_under_the_log_never_tears_a_line(tmp_path, daemons):
    logdir = tmp_path / "log"
    logdir.mkdir()
    host = Host(tmp_path, logfile=logdir / "ksmtuned.log")
    with faultns.MountNamespace() as ns:
        ns.mount_tmpfs(logdir, "64k")
        inside = ns.path(host.logfile)
        # a line of an earlier run: the log's page is partly used, so that when the disk is full
        # the room left in that page takes part of a line (a short write), not none of it
        inside.write_bytes(b"Thu Jan  1 00:00:00 UTC 1970: an earlier line\n")
        filler = ns.fill(logdir)
        d = daemons(host, ns).ready()
        for _ in range(30):  # about 4000 bytes of lines: some must not fit
            d.cycle()
        assert "cannot write the debug log" in d.stderr()
        filler.unlink()
        for _ in range(3):
            d.cycle()
        assert d.stop() == 0
        log_lines = inside.read_text().splitlines()
    out_lines = d.stdout().splitlines()
    for line in log_lines + out_lines:
        assert DEBUG_LINE.match(line), f"torn or merged line: {line!r}"
    # nothing lost: every cycle's lines are in the log or, while it was full, on standard output
    ksmctl = [line.split(": ", 1)[1] for line in log_lines + out_lines if "KSMCTL" in line]
    assert sorted(ksmctl, key=lambda x: int(x.split()[2])) == [f"KSMCTL start {300 * n} 167" for n in range(1, 34)]
    assert out_lines and log_lines[-1].endswith("KSMCTL start 9900 167")
    err = d.stderr().splitlines()
    assert [x for x in err if "debug log" in x] == [
        f"ksmtuned-py: WARNING: cannot write the debug log {host.logfile}: No space left on device; "
        "writing debug lines to standard output",
        f"ksmtuned-py: INFO: writing the debug log {host.logfile} works again",
    ]


# --- something other than a regular file where one is expected ------------------------------------


def test_fifos_sockets_and_symlinks_as_knobs_never_block(host, daemons):
    faultns.make_fifo(host.ksm / "run")  # no reader, no writer: open(2) would wait for ever
    faultns.make_fifo(host.ksm / "advisor_mode")
    (host.ksm / "sleep_millisecs").unlink()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(host.ksm / "sleep_millisecs"))
    (host.base / "elsewhere").write_text("100\n")
    (host.ksm / "pages_to_scan").unlink()
    (host.ksm / "pages_to_scan").symlink_to(host.base / "elsewhere")
    try:
        d = daemons(host).ready()
        d.cycle()
        d.cycle()
        r = host.cli("status")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("KSM:        unknown (run=None), pages_to_scan None, sleep_millisecs None")
        r = host.cli("adjust", "--apply")
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert d.stop() == 0  # SIGTERM is heard: nothing blocks
    finally:
        sock.close()
    assert (host.base / "elsewhere").read_text() == "100\n"  # the symlink was not followed
    errors = [x for x in d.stderr().splitlines() if "ERROR" in x]
    assert errors == [
        f"ksmtuned-py: ERROR: cannot write 300 to {host.ksm}/pages_to_scan: is a symbolic link, not a regular file",
        f"ksmtuned-py: ERROR: cannot write 167 to {host.ksm}/sleep_millisecs: is a socket, not a regular file",
        f"ksmtuned-py: ERROR: cannot write 1 to {host.ksm}/run: is a FIFO, not a regular file",
    ]


def test_fifos_and_directories_as_meminfo_config_log_and_pidfile(host, daemons):
    meminfo = host.root / "proc/meminfo"
    faultns.make_fifo(meminfo)
    r = host.cli("status")
    assert (r.returncode, one_line(r)) == (1, f"ksmtuned-py: cannot read {meminfo}: is a FIFO, not a regular file")
    meminfo.unlink()
    meminfo.write_bytes(MEMINFO)
    # the log as a FIFO: the lines go to standard output, said once
    faultns.make_fifo(host.logfile)
    d = daemons(host).ready()
    d.cycle()
    assert d.stop() == 0
    assert "KSMCTL start 300 167" in d.stdout()
    assert d.stderr().count(f"cannot write the debug log {host.logfile}: is a FIFO, not a regular file") == 1
    # the pidfile as a directory or a FIFO: every command says so in one line
    for make in (Path.mkdir, faultns.make_fifo):
        make(host.pidfile)
        for cmd in (("retune",), ("run",)):
            r = host.cli(*cmd)
            assert r.returncode == 1, (cmd, r.stderr)
            assert one_line(r).startswith(f"ksmtuned-py: cannot open the pidfile {host.pidfile}: ")
        for cmd in (("status",), ("adjust",)):  # no daemon to take npages from: a fresh start
            r = host.cli(*cmd)
            assert r.returncode == 0 and "Traceback" not in r.stderr, (cmd, r.stderr)
        # status wraps its lines at 79 columns: compare the words
        shown = " ".join(host.cli("status").stdout.split())
        assert f"daemon: not running (cannot open the pidfile {host.pidfile}: " in shown
        host.pidfile.rmdir() if host.pidfile.is_dir() else host.pidfile.unlink()
    # the config as a FIFO or a directory: one line, EX_CONFIG
    host.conf.unlink()
    for make, what in ((faultns.make_fifo, "is a FIFO, not a regular file"), (Path.mkdir, "is a directory")):
        make(host.conf)
        r = host.cli("run")
        assert (r.returncode, one_line(r)) == (78, f"ksmtuned-py: cannot read {host.conf}: {what}")
        host.conf.rmdir() if host.conf.is_dir() else host.conf.unlink()


# --- the pidfile removed or replaced while the daemon runs ---------------------------------------


def test_a_removed_pidfile_lets_no_second_daemon_tune(host, daemons, tmp_path):
    first = daemons(host).ready()
    host.pidfile.unlink()
    second = daemons(host)
    assert second.proc.wait(timeout=60) == 1
    assert second.stderr().splitlines()[-1] == (
        f"ksmtuned-py: another ksmtuned-py (pid {first.pid}) already tunes {host.ksm} "
        "(it holds the KSM directory's lock); stop it first")
    assert not host.pidfile.exists()  # the refused one removed only its own
    # another PIDFILE is no way round it either
    other = Host(tmp_path / "other")
    other.root = host.root
    other.ksm = host.ksm
    third = daemons(other)
    assert third.proc.wait(timeout=60) == 1
    assert "already tunes" in third.stderr()
    # the first writes its pidfile again at its next cycle: retune and status find it
    first.cycle()
    assert host.pidfile.read_text() == f"{first.pid}\n"
    r = host.cli("retune")
    assert r.returncode == 0 and r.stdout == f"asked ksmtuned-py (pid {first.pid}) to retune\n"
    # overwritten with another pid: put right at the next cycle
    host.pidfile.write_text("12345\n")
    first.cycle()
    assert host.pidfile.read_text() == f"{first.pid}\n"
    assert first.stop() == 0
    assert not host.pidfile.exists()
    assert first.stderr().count(f"the pidfile {host.pidfile} was removed while the daemon ran; "
                                f"wrote pid {first.pid} into it again") == 1
    assert first.stderr().count(f"the pidfile {host.pidfile} was overwritten; wrote pid {first.pid} into it again") == 1


_HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\n".encode())
print("locked", flush=True)
time.sleep(3600)
"""


def test_a_daemon_never_deletes_a_pidfile_that_is_not_its_own(host, daemons):
    d = daemons(host).ready()
    d.cycle()
    host.pidfile.unlink()
    # another process takes the path and locks it, as a ksmtuned-py with that pidfile would
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(host.pidfile)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        run_before = host.knob("pages_to_scan")
        d.proc.send_signal(signal.SIGUSR1)
        assert d.proc.wait(timeout=60) == 1  # it stops instead of tuning next to the other
        assert host.knob("pages_to_scan") == run_before
        assert host.pidfile.read_text() == f"{holder.pid}\n"  # not deleted
        assert (f"ksmtuned-py: ERROR: another ksmtuned-py (pid {holder.pid}) holds the pidfile {host.pidfile} "
                "now; stopping, so that only one daemon tunes KSM") in d.stderr().splitlines()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


# --- quiet surprises ---------------------------------------------------------------------------------


def test_a_config_deleted_before_sighup_is_kept_and_said(host, daemons):
    host.write_config(CONFIG + "KSM_NPAGES_BOOST=100\n")
    d = daemons(host).ready()
    d.cycle()
    assert host.knob("pages_to_scan") == "100\n"
    host.conf.unlink()
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: host.cycles() == 2, what="the reload's cycle")
    assert host.knob("pages_to_scan") == "100\n"  # the previous BOOST, not the default 300
    assert d.stop() == 0
    assert (f"ksmtuned-py: ERROR: {host.conf} no longer exists; keeping the previous configuration"
            in d.stderr().splitlines())


@needs_namespaces
def test_a_knob_that_keeps_failing_is_logged_once_per_kind_of_failure(host, daemons):
    with faultns.MountNamespace() as ns:
        ns.bind_read_only(host.ksm)  # EROFS for every write, whatever the value
        d = daemons(host, ns).ready()
        for _ in range(4):  # pages_to_scan 300, 600, 900, 1200: a new value each time
            d.cycle()
        ns.remount_read_write(host.ksm)
        d.cycle()
        assert host.knob("pages_to_scan") == "1500\n"
        assert d.stop() == 0
    lines = [x for x in d.stderr().splitlines() if "cannot write" in x or "works again" in x]
    assert lines == [
        f"ksmtuned-py: ERROR: cannot write 300 to {host.ksm}/pages_to_scan: EROFS (Read-only file system)",
        f"ksmtuned-py: ERROR: cannot write 167 to {host.ksm}/sleep_millisecs: EROFS (Read-only file system)",
        f"ksmtuned-py: ERROR: cannot write 1 to {host.ksm}/run: EROFS (Read-only file system)",
        f"ksmtuned-py: INFO: writing {host.ksm}/pages_to_scan works again (1500)",
        f"ksmtuned-py: INFO: writing {host.ksm}/sleep_millisecs works again (167)",
        f"ksmtuned-py: INFO: writing {host.ksm}/run works again (1)",
    ]


def test_a_root_that_does_not_exist_is_not_a_kernel_without_ksm(host):
    missing = host.base / "no-such-root"
    for cmd in (("status",), ("adjust",), ("run",), ("ksm", "start"), ("metrics", "--textfile", str(host.base))):
        r = subprocess.run([KSMTUNED_PY, "--root", str(missing), "--config", str(host.conf), *cmd],
                           capture_output=True, text=True, timeout=120)
        assert (r.returncode, one_line(r)) == (66, f"ksmtuned-py: the root directory {missing} does not exist (--root)")
