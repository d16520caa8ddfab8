"""The daemon as a real subprocess against a temporary root tree.

The tree has a fake proc/meminfo, plain files for sys/kernel/mm/ksm/*, and
real stand-in guest processes made visible as proc/PID symlinks to /proc/PID.
"""

from __future__ import annotations

import calendar
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ksmtuned_py.daemon import Daemon
from ksmtuned_py.debuglog import date_text
from tests.guests import stand_in_guests

DATE = r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d \S+ \d{4}"
DEBUG_LINE = re.compile(rf"^{DATE}: (.*)$")
KSM_FILES = {
    "run": "0",
    "pages_to_scan": "100",
    "sleep_millisecs": "20",
    "pages_shared": "0",
    "pages_sharing": "2560",
    "pages_unshared": "0",
    "pages_volatile": "0",
    "full_scans": "0",
    "general_profit": "10000000",
    "advisor_mode": "[none] scan-time",
}


def ksmtuned_py() -> list[str]:
    script = Path(sys.executable).parent / "ksmtuned-py"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ksmtuned_py.cli"]


@dataclass
class Host:
    """A temporary host tree and the daemon's files."""

    base: Path
    root: Path
    conf: Path
    pidfile: Path
    logfile: Path
    procs: list = field(default_factory=list)

    @property
    def ksm(self) -> Path:
        return self.root / "sys/kernel/mm/ksm"

    def knob(self, name: str) -> str:
        return (self.ksm / name).read_text()

    def set_meminfo(self, total: int, free: int, buffers: int = 0, cached: int = 0) -> None:
        tmp = self.root / "proc" / ".meminfo.tmp"
        tmp.write_text(
            f"MemTotal:       {total} kB\nMemFree:        {free} kB\n"
            f"MemAvailable:   {free} kB\nBuffers:        {buffers} kB\nCached:         {cached} kB\n"
        )
        tmp.rename(self.root / "proc" / "meminfo")

    def write_config(self, text: str = "", debug: bool = True, interval: float = 3600) -> None:
        head = f"KSM_MONITOR_INTERVAL={interval}\nPIDFILE={self.pidfile}\n"
        if debug:
            head += f"DEBUG=1\nLOGFILE={self.logfile}\n"
        self.conf.write_text(head + text)

    def link(self, pid: int) -> None:
        (self.root / "proc" / str(pid)).symlink_to(f"/proc/{pid}")

    def debug_lines(self) -> list[str]:
        """The log's lines without the date prefix (every line must have one)."""
        if not self.logfile.exists():
            return []
        out = []
        for line in self.logfile.read_text().splitlines():
            m = DEBUG_LINE.match(line)
            assert m, f"line without the date prefix: {line!r}"
            out.append(m.group(1))
        return out


@pytest.fixture
def host(tmp_path) -> Host:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    ksm = root / "sys/kernel/mm/ksm"
    ksm.mkdir(parents=True)
    for name, value in KSM_FILES.items():
        (ksm / name).write_text(value + "\n")
    h = Host(tmp_path, root, tmp_path / "ksmtuned.conf", tmp_path / "ksmtune.pid", tmp_path / "ksmtuned.log")
    h.set_meminfo(total=1000000, free=100000)  # thres 200000: free below it
    h.write_config()
    return h


class DaemonProcess:
    """A running `ksmtuned-py run`; always stopped by the fixture."""

    def __init__(self, host: Host, env: dict | None = None, args: tuple = ()):
        self.host = host
        self.proc = subprocess.Popen(
            [*ksmtuned_py(), "--root", str(host.root), "--config", str(host.conf), *args, "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None},
        )
        self.stdout = ""
        self.stderr = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, debug_lines: bool = True) -> "DaemonProcess":
        wait_for(lambda: self.host.pidfile.exists() and self.host.pidfile.read_text().strip() == str(self.pid)
                 or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.finish()
        if debug_lines and f"LOGFILE={self.host.logfile}" in self.host.conf.read_text():
            # the start-up debug lines follow the pidfile
            wait_for(lambda: any(x.startswith("thres ") for x in self.host.debug_lines()))
        return self

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def cycles(self) -> int:
        return sum(1 for line in self.host.debug_lines() if line.startswith("committed "))

    def kick(self, sig: int = signal.SIGUSR1) -> list[str]:
        """Send a signal that runs a cycle; wait for it; return that cycle's debug lines."""
        before = len(self.host.debug_lines())
        n = self.cycles()
        self.send(sig)
        wait_for(lambda: self.cycles() > n and _cycle_done(self.host.debug_lines()))
        return self.host.debug_lines()[before:]

    def finish(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.stdout += out
        self.stderr += err
        return self.proc.returncode


def _cycle_done(lines: list[str]) -> bool:
    last = lines[-1] if lines else ""
    return last.startswith("KSMCTL start") or last.endswith("stop ksm")


def wait_for(cond, timeout: float = 10.0, step: float = 0.02) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(step)
    raise AssertionError("timed out waiting for a condition")


@pytest.fixture
def daemons():
    started: list[DaemonProcess] = []

    def start(host: Host, **kw) -> DaemonProcess:
        d = DaemonProcess(host, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
        d.proc.communicate()


# --- start-up, the interval, SIGUSR1 ------------------------------------------------------


def test_first_cycle_one_interval_after_start(host, daemons):
    # 3 s: one interval (not none, not two) stays clear of a loaded machine's delays
    host.write_config(interval=3.0)
    d = daemons(host).wait_ready()
    started = time.monotonic()
    assert host.debug_lines() == ["total 1000000", "sleep 167", "thres 200000"]
    wait_for(lambda: _cycle_done(host.debug_lines()), timeout=30)
    elapsed = time.monotonic() - started
    assert 2.7 <= elapsed < 6
    assert host.debug_lines()[3:] == [
        "committed 0 free 100000",
        "200000 > 1000000, start ksm",
        "100000 < 200000, boost",
        "KSMCTL start 300 167",
    ]
    assert (host.knob("pages_to_scan"), host.knob("sleep_millisecs"), host.knob("run")) == (
        "300\n", "167\n", "1\n")
    assert d.finish() == 0


def test_sigusr1_runs_a_cycle_now_with_real_guests(host, daemons):
    # thres 2048 kB; total 60000 kB: guests of 64 MiB push committed + thres over total
    host.write_config("KSM_THRES_COEF=0\n")
    host.set_meminfo(total=60000, free=50000)
    d = daemons(host).wait_ready()
    assert d.cycles() == 0
    with stand_in_guests({"resident_kib": 65536}, {"comm": "qemu:vm2", "resident_kib": 1024},
                         {"comm": "bash", "resident_kib": 65536}) as (g1, g2, other):
        for g in (g1, g2, other):
            host.link(g.pid)
        lines = d.kick()
        committed = int(lines[0].split()[1])
        assert lines[0] == f"committed {committed} free 50000"
        assert committed >= 65536 + 1024 and committed < 65536 * 2  # the bash one is not a guest
        assert lines[1:] == [
            f"{committed + 2048} > 60000, start ksm",
            "50000 > 2048, decay",
            "KSMCTL start 64 2796",
        ]
        assert host.knob("run") == "1\n" and host.knob("pages_to_scan") == "64\n"
        host.set_meminfo(total=60000, free=1000)
        assert d.kick()[-2:] == ["1000 < 2048, boost", "KSMCTL start 364 2796"]
    # the guests are gone (their proc entries dangle): stop, npages kept
    host.set_meminfo(total=60000, free=50000)
    assert d.kick() == ["committed 0 free 50000", "2048 < 60000 and free > 2048, stop ksm"]
    assert host.knob("run") == "0\n" and host.knob("pages_to_scan") == "364\n"
    host.set_meminfo(total=60000, free=1000)
    assert d.kick()[-1] == "KSMCTL start 664 2796"
    assert d.finish() == 0


def test_signed_values_are_written_and_logged_as_written(host, daemons):
    # The reference copies these with x=$VAR: "+64" reaches pages_to_scan and the log as "+64".
    host.write_config("KSM_NPAGES_MIN=+64\nKSM_NPAGES_MAX='+400'\nKSM_THRES_COEF=0\n"
                      "KSM_THRES_CONST=\" +300000\"\nKSM_NPAGES_BOOST=+300\nKSM_NPAGES_DECAY=-1000\n")
    host.set_meminfo(total=300000, free=100000)  # thres >= total: always start
    d = daemons(host).wait_ready()
    assert host.debug_lines() == ["total 300000", "sleep 559", "thres +300000"]
    assert d.kick() == ["committed 0 free 100000", "300000 > 300000, start ksm",
                        "100000 <  +300000, boost", "KSMCTL start 300 559"]
    assert d.kick()[-1] == "KSMCTL start +400 559"  # 600 clamped to MAX
    assert host.knob("pages_to_scan") == "+400\n"
    host.set_meminfo(total=300000, free=400000)
    assert d.kick()[-2:] == ["400000 >  +300000, decay", "KSMCTL start +64 559"]  # -600: MIN
    assert host.knob("pages_to_scan") == "+64\n"
    host.set_meminfo(total=300000, free=100000)
    assert d.kick()[-1] == "KSMCTL start 364 559"
    assert host.knob("pages_to_scan") == "364\n"
    assert d.finish() == 0


def test_sigusr1_restarts_the_interval(host, daemons):
    host.write_config(interval=1.5)
    d = daemons(host).wait_ready()
    time.sleep(1.0)
    d.kick()
    t = time.monotonic()
    wait_for(lambda: d.cycles() == 2, timeout=5)
    assert time.monotonic() - t >= 1.2  # not 0.5 s after the kick: the interval restarted
    assert d.finish() == 0


# --- SIGHUP -----------------------------------------------------------------------------------


def test_sighup_rereads_a_good_config_and_retunes(host, daemons):
    d = daemons(host).wait_ready()
    assert d.kick()[-1] == "KSMCTL start 300 167"
    host.write_config("KSM_NPAGES_BOOST=100\nKSM_SLEEP_MSEC=20\n")
    lines = d.kick(signal.SIGHUP)
    # tuning recomputed, npages back to 0, the new boost used, at once
    assert lines == [
        "total 1000000",
        "sleep 335",
        "thres 200000",
        "committed 0 free 100000",
        "200000 > 1000000, start ksm",
        "100000 < 200000, boost",
        "KSMCTL start 100 335",
    ]
    assert d.finish() == 0
    assert f"reloading {host.conf}" in d.stderr


def test_sighup_with_a_bad_config_keeps_the_old_one(host, daemons):
    d = daemons(host).wait_ready()
    d.kick()
    host.write_config("KSM_NPAGES_BOOST=$(touch /tmp/pwned)\n")
    lines = d.kick(signal.SIGHUP)
    assert lines[-1] == "KSMCTL start 300 167"  # old boost, npages reset by the retune
    assert lines[:3] == ["total 1000000", "sleep 167", "thres 200000"]
    assert d.proc.poll() is None
    assert d.finish() == 0
    assert (
        f"ksmtuned-py: ERROR: {host.conf}:5: command substitution '$(' is not allowed; expected a "
        "literal value (the file is parsed, never executed); keeping the previous configuration"
    ) in d.stderr.splitlines()


def test_sighup_reopens_the_log_after_rotation(host, daemons):
    d = daemons(host).wait_ready()
    d.kick()
    rotated = host.logfile.with_suffix(".1")
    host.logfile.rename(rotated)
    n = len(rotated.read_text().splitlines())
    d.send(signal.SIGHUP)
    wait_for(lambda: _cycle_done(host.debug_lines()))
    assert len(rotated.read_text().splitlines()) == n  # nothing more written to the old file
    assert host.debug_lines()[0] == "total 1000000"
    assert d.finish() == 0


# --- stopping, the pidfile ---------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_exit_0_leaving_ksm_as_is(host, daemons, sig):
    d = daemons(host).wait_ready()
    d.kick()
    assert d.finish(sig) == 0
    assert not host.pidfile.exists()
    assert host.knob("run") == "1\n" and host.knob("pages_to_scan") == "300\n"
    assert "Traceback" not in d.stderr
    assert d.stderr.splitlines()[-1] == "ksmtuned-py: INFO: stopped; KSM left as it is"


def test_a_second_instance_is_refused(host, daemons):
    first = daemons(host).wait_ready()
    log = host.logfile.read_text()
    second = daemons(host)
    assert second.proc.wait(timeout=10) == 1
    assert host.logfile.read_text() == log  # the refused instance wrote no debug line
    second.finish()
    assert second.stderr.splitlines()[-1] == (
        f"ksmtuned-py: another ksmtuned-py is already running (pid {first.pid}, {host.pidfile} is locked)"
    )
    assert host.pidfile.read_text() == f"{first.pid}\n"
    assert first.proc.poll() is None
    assert first.finish() == 0


def test_a_stale_pidfile_is_taken_over(host, daemons):
    host.pidfile.write_text("999999999\n")
    d = daemons(host).wait_ready()
    assert host.pidfile.read_text() == f"{d.pid}\n"
    assert d.finish() == 0
    assert not host.pidfile.exists()


def test_without_a_config_file_it_runs_on_the_defaults_and_warns(host, daemons):
    """As the reference does (it sources the file only if it exists), but saying so."""
    host.conf.unlink()
    d = daemons(host, env={"PIDFILE": str(host.pidfile)}).wait_ready(debug_lines=False)
    assert d.finish() == 0
    assert (f"ksmtuned-py: WARNING: {host.conf} does not exist; using the environment and the defaults "
            "(as ksmtuned does)") in d.stderr.splitlines()


def test_no_ksm_directory_is_a_clear_error(host, daemons):
    for f in host.ksm.iterdir():
        f.unlink()
    host.ksm.rmdir()
    d = daemons(host)
    assert d.proc.wait(timeout=10) == 69
    d.finish()
    assert d.stderr.splitlines() == [
        f"ksmtuned-py: the kernel has no KSM (CONFIG_KSM): {host.ksm} does not exist"
    ]
    assert not host.pidfile.exists()


def test_a_bad_config_refuses_to_start_with_ex_config(host, daemons):
    host.conf.write_text("KSM_NPAGES_MAX=100\necho oops\n")
    d = daemons(host)
    assert d.proc.wait(timeout=10) == 78
    d.finish()
    assert d.stderr == (
        f"ksmtuned-py: {host.conf}:2: expected KEY=value, export KEY=value, a # comment or a "
        "blank line, found 'echo oops'\n"
    )
    assert not host.pidfile.exists()


# --- the advisor, failing writes ------------------------------------------------------------


def test_advisor_keeps_pages_to_scan_and_says_so_once(host, daemons):
    (host.ksm / "advisor_mode").write_text("none [scan-time]\n")
    d = daemons(host).wait_ready()
    for _ in range(3):
        assert d.kick()[-1].startswith("KSMCTL start")
    assert host.knob("pages_to_scan") == "100\n"  # the advisor's, untouched
    assert (host.knob("sleep_millisecs"), host.knob("run")) == ("167\n", "1\n")
    (host.ksm / "advisor_mode").write_text("[none] scan-time\n")
    d.kick()
    assert host.knob("pages_to_scan") == "1200\n"
    assert d.finish() == 0
    assert d.stderr.count("advisor_mode=scan-time") == 1
    assert d.stderr.count("KSM advisor is off; tuning pages_to_scan again") == 1
    assert "cannot write" not in d.stderr


def test_failing_writes_are_logged_once_per_change(host, daemons):
    host.write_config("KSM_NPAGES_MIN=100\nKSM_NPAGES_MAX=100\n")
    (host.ksm / "pages_to_scan").unlink()
    (host.ksm / "pages_to_scan").mkdir()  # EISDIR
    (host.ksm / "sleep_millisecs").unlink()  # ENOENT: never created
    d = daemons(host).wait_ready()
    for _ in range(3):
        assert d.kick()[-1] == "KSMCTL start 100 167"
    assert host.knob("run") == "1\n"  # the daemon carried on
    assert not (host.ksm / "sleep_millisecs").exists()
    (host.ksm / "pages_to_scan").rmdir()
    (host.ksm / "pages_to_scan").write_text("5\n")
    d.kick()
    assert host.knob("pages_to_scan") == "100\n"
    assert d.finish() == 0
    err = d.stderr.splitlines()
    assert err.count(
        f"ksmtuned-py: ERROR: cannot write 100 to {host.ksm}/pages_to_scan: EISDIR (Is a directory)"
    ) == 1
    assert err.count(
        f"ksmtuned-py: ERROR: cannot write 167 to {host.ksm}/sleep_millisecs: "
        "ENOENT (No such file or directory)"
    ) == 1
    assert err.count(f"ksmtuned-py: INFO: writing {host.ksm}/pages_to_scan works again (100)") == 1


def test_a_meminfo_error_is_logged_once_per_change(host, daemons, tmp_path):
    # Each failed cycle sends STATUS=error: ... to the notify socket: that counts the cycles.
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(5)
    meminfo = host.root / "proc/meminfo"
    try:
        d = daemons(host, env={"NOTIFY_SOCKET": sock_path}).wait_ready()

        def failed_cycle() -> str:
            d.send(signal.SIGUSR1)
            while True:
                msg = sock.recv(4096).decode()
                if msg.startswith("STATUS=error: "):
                    return msg

        meminfo.unlink()
        for _ in range(3):
            assert failed_cycle() == f"STATUS=error: cannot read {meminfo}: No such file or directory"
        meminfo.write_text("MemTotal: 1000000 kB\n")
        for _ in range(2):
            assert failed_cycle() == f"STATUS=error: {meminfo} has no MemFree, Buffers, Cached"
        host.set_meminfo(total=1000000, free=100000)
        assert d.kick()[-1] == "KSMCTL start 300 167"
        meminfo.unlink()
        failed_cycle()
        assert d.finish() == 0
    finally:
        sock.close()
    errors = [line for line in d.stderr.splitlines() if "ERROR" in line or "works again" in line]
    assert errors == [
        f"ksmtuned-py: ERROR: cannot read {meminfo}: No such file or directory; "
        "skipping cycles until it can be read",
        f"ksmtuned-py: ERROR: {meminfo} has no MemFree, Buffers, Cached; skipping cycles until it can be read",
        "ksmtuned-py: INFO: reading the host works again",
        f"ksmtuned-py: ERROR: cannot read {meminfo}: No such file or directory; "
        "skipping cycles until it can be read",
    ]


# --- the debug log ---------------------------------------------------------------------------


def test_debug_to_stdout_without_logfile(host, daemons):
    host.write_config("DEBUG=yes\n", debug=False)
    d = daemons(host).wait_ready()
    d.send(signal.SIGUSR1)
    wait_for(lambda: host.knob("run") == "1\n")
    time.sleep(0.2)
    assert d.finish() == 0
    lines = d.stdout.splitlines()
    assert [DEBUG_LINE.match(x).group(1) for x in lines] == [
        "total 1000000", "sleep 167", "thres 200000", "committed 0 free 100000",
        "200000 > 1000000, start ksm", "100000 < 200000, boost", "KSMCTL start 300 167",
    ]


def test_no_debug_lines_without_debug(host, daemons):
    host.write_config(debug=False)
    d = daemons(host).wait_ready()
    d.send(signal.SIGUSR1)
    wait_for(lambda: host.knob("run") == "1\n")
    assert d.finish() == 0
    assert d.stdout == "" and not host.logfile.exists()


def test_logfile_is_created_0640_and_never_follows_a_symlink(host, daemons, tmp_path):
    d = daemons(host).wait_ready()
    assert host.logfile.stat().st_mode & 0o777 == 0o640
    d.finish()
    host.logfile.unlink()
    target = tmp_path / "target"
    target.write_text("")
    host.logfile.symlink_to(target)
    d = daemons(host).wait_ready(debug_lines=False)
    d.send(signal.SIGUSR1)
    wait_for(lambda: host.knob("run") == "1\n")
    time.sleep(0.2)
    assert d.finish() == 0
    assert target.read_text() == ""  # not followed
    assert "KSMCTL start 300 167" in d.stdout  # fell back to standard output
    assert d.stderr.count(f"cannot write the debug log {host.logfile}") == 1


def test_date_prefix_is_dates_default_output():
    t = 1795500000.0
    out = subprocess.run(["date", "-d", f"@{int(t)}"], capture_output=True, text=True,
                         env={**os.environ, "LC_ALL": "C"}, check=True).stdout.strip()
    assert date_text(t) == out
    # a single-digit day is padded with a space, as date does
    t2 = float(calendar.timegm((2026, 12, 5, 7, 8, 9)))
    out2 = subprocess.run(["date", "-d", f"@{int(t2)}"], capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C", "TZ": "Europe/Paris"}, check=True).stdout.strip()
    os.environ["TZ"] = "Europe/Paris"
    time.tzset()
    try:
        assert date_text(t2) == out2
    finally:
        del os.environ["TZ"]
        time.tzset()


# --- systemd notifications and the watchdog, through a real socket ------------------------------


def test_sd_notify_messages_and_watchdog(host, daemons, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(5)
    try:
        d = daemons(host, env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"}).wait_ready()

        def until(pred):
            seen = []
            while True:
                msg = sock.recv(4096).decode()
                seen.append(msg)
                if pred(msg):
                    return seen

        first = until(lambda m: m.startswith("READY=1"))
        assert first[-1] == (
            "READY=1\nSTATUS=ready: total 1000000 kB, thres 200000 kB, sleep 167ms; first cycle in 3600s"
        )
        pings = until(lambda m: m == "WATCHDOG=1")
        # every 0.2 s (half of WatchdogSec), not every 0.4 s: the median of several gaps,
        # which a late ping on a loaded machine does not move
        stamps = [time.monotonic()]
        for _ in range(7):
            until(lambda m: m == "WATCHDOG=1")
            stamps.append(time.monotonic())
        gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
        assert 0.1 < gaps[len(gaps) // 2] < 0.3, gaps
        d.send(signal.SIGUSR1)
        msgs = until(lambda m: m.startswith("STATUS=running"))
        assert msgs[-1] == "STATUS=running: pages_to_scan=300 sleep=167ms; saved 10.0 MiB"
        d.send(signal.SIGHUP)
        msgs = until(lambda m: m.startswith("READY=1"))
        assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in msgs)
        d.send(signal.SIGTERM)
        until(lambda m: m == "STOPPING=1")
        assert d.finish() == 0
        assert pings
    finally:
        sock.close()


# --- in-process: cycle listeners and journald fields --------------------------------------------


def test_cycle_report_goes_to_every_listener_and_log_fields(host, caplog):
    daemon = Daemon(str(host.conf), str(host.root), environ={})
    daemon.setup()
    got = []
    daemon.cycle_listeners.append(got.append)
    daemon.cycle_listeners.append(lambda r: 1 / 0)  # a broken listener is logged, not fatal
    with caplog.at_level(logging.INFO):
        report = daemon.cycle()
        daemon.cycle()
    assert got[0] is report and len(got) == 2
    assert (report.action, report.npages, report.sleep_ms, report.free_kb, report.committed_kb,
            report.thres_kb, report.total_kb, report.guests, report.advisor_active, report.level) == (
        "start", 300, 167, 100000, 0, 200000, 1000000, 0, False, "boost")
    assert report.saved_bytes == 2560 * os.sysconf("SC_PAGE_SIZE")
    assert report.general_profit == 10000000 and report.writes_ok
    assert report.status == "running: pages_to_scan=300 sleep=167ms; saved 10.0 MiB"
    assert 0 <= report.duration < 5 and abs(report.time - time.time()) < 60
    decisions = [r for r in caplog.records if hasattr(r, "KSM_DECISION")]
    assert [(r.KSM_DECISION, r.KSM_NPAGES, r.KSM_SLEEP, r.KSM_FREE, r.KSM_COMMITTED, r.KSM_THRES)
            for r in decisions] == [("start", 300, 167, 100000, 0, 200000), ("start", 600, 167, 100000, 0, 200000)]
    assert any("cycle listener" in r.getMessage() for r in caplog.records)
    daemon.debug.close()


def test_reload_in_process_applies_new_keys_and_keeps_the_pidfile(host, caplog):
    daemon = Daemon(str(host.conf), str(host.root), environ={})
    daemon.setup()
    scanner = daemon.scanner
    daemon.cycle()
    host.write_config(f"PIDFILE={host.base}/other.pid\n")  # the later PIDFILE line wins
    with caplog.at_level(logging.INFO):
        daemon.reload()
    assert daemon.scanner is scanner  # same rule: the process cache is kept
    assert f"PIDFILE changed to {host.base}/other.pid; that takes effect at the next start" in caplog.text
    assert daemon.policy.npages == 0
    host.write_config("KSM_PROCESS_REGEX=^kvm$\nKSM_FREE_METRIC=available\nKSM_MEMORY_METRIC=pss\n")
    daemon.reload()
    assert daemon.scanner is not scanner
    assert (daemon.scanner.pattern.pattern, daemon.scanner.metric) == ("^kvm$", "pss")
    host.set_meminfo(total=2000000, free=100000)
    report = daemon.cycle()
    assert (report.total_kb, report.thres_kb) == (1000000, 200000)  # total is read at (re)load only
    daemon.reload()
    assert daemon.cycle().total_kb == 2000000
    daemon.debug.close()


def test_the_original_ksmtuned_holding_the_pidfile_is_not_taken_over(host, daemons, tmp_path):
    """The bash ksmtuned writes PIDFILE without a lock: do not run two tuners at once."""
    script = tmp_path / "ksmtuned"
    script.write_text("sleep 60\n")
    fake = subprocess.Popen(["bash", str(script)])  # shows in ps as the original does
    try:
        host.pidfile.write_text(f"{fake.pid}\n")
        d = daemons(host)
        assert d.proc.wait(timeout=10) == 1
        d.finish()
        assert d.stderr.splitlines()[-1] == (
            f"ksmtuned-py: the original ksmtuned is running (pid {fake.pid}, {host.pidfile}); "
            "stop it first (systemctl disable --now ksmtuned)"
        )
        r = subprocess.run([*ksmtuned_py(), "--config", str(host.conf), "retune"],
                           capture_output=True, text=True)
        assert r.returncode == 1
        assert r.stderr == (
            f"ksmtuned-py: {host.pidfile} belongs to the original ksmtuned (pid {fake.pid}), "
            f"not ksmtuned-py; retune it with: kill -USR1 {fake.pid}\n"
        )
        assert host.pidfile.read_text() == f"{fake.pid}\n"  # left as it was
    finally:
        fake.kill()
        fake.wait()
