"""etc/logrotate.d/ksmtuned-py with Debian's real logrotate against a running daemon."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests import debpkg
from tests.svc_daemon import RunningDaemon, make_host, wait_for

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "etc/logrotate.d/ksmtuned-py"
SHIPPED_LOG = "/var/log/ksmtuned"


@pytest.fixture(scope="module")
def logrotate() -> list[str]:
    """The logrotate command, from the host or from Debian's package unpacked in the cache."""
    for path in ("/usr/sbin/logrotate", "/sbin/logrotate"):
        if os.access(path, os.X_OK):
            return [path]
    try:
        root = debpkg.unpacked("logrotate")
        popt = debpkg.unpacked("libpopt0")  # logrotate's one library a minimal host lacks
    except debpkg.Unavailable as err:
        pytest.skip(str(err))
    libdirs = [str(p.parent) for p in popt.rglob("libpopt.so.0")]
    return ["env", f"LD_LIBRARY_PATH={':'.join(libdirs)}", str(root / "usr/sbin/logrotate")]


def config_for(host, tmp_path: Path) -> Path:
    """The shipped file with only its log path pointed at the test's."""
    text = SHIPPED.read_text()
    assert text.count(SHIPPED_LOG + " ") == 1
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text.replace(SHIPPED_LOG + " ", f"{host.logfile} "))
    conf.chmod(0o644)  # logrotate refuses group/world-writable configs
    return conf


def test_shipped_file_parses(logrotate: list[str], tmp_path: Path):
    got = subprocess.run([*logrotate, "-d", "-s", str(tmp_path / "state"), str(SHIPPED)],
                         capture_output=True, text=True, timeout=30)
    out = got.stdout + got.stderr
    assert got.returncode == 0, out
    assert "error" not in out.lower(), out
    assert f"considering log {SHIPPED_LOG}" in out
    assert "copytruncate" in SHIPPED.read_text().split()  # the sandbox's requirement


def test_rotation_keeps_the_daemon_writing_the_same_file(logrotate: list[str], tmp_path: Path):
    """copytruncate: the sandboxed service may write the log file, not create one, so it is never renamed."""
    host = make_host(tmp_path)
    conf = config_for(host, tmp_path)
    with RunningDaemon(host) as daemon:
        wait_for(lambda: host.logfile.exists() and "thres" in host.logfile.read_text(),
                 what="the start-up debug lines")
        first = host.logfile.read_text()
        inode = host.logfile.stat().st_ino
        got = subprocess.run([*logrotate, "-f", "-s", str(tmp_path / "state"), str(conf)],
                             capture_output=True, text=True, timeout=30)
        assert got.returncode == 0, got.stdout + got.stderr
        rotated = Path(f"{host.logfile}.1")  # delaycompress: the newest copy stays plain
        assert rotated.read_text() == first
        assert host.logfile.stat().st_ino == inode and host.logfile.read_text() == ""
        # No signal was sent: the daemon is still in its hour-long sleep.
        time.sleep(0.5)
        assert daemon.cycles() == 0 and "reloading" not in daemon.log_text()
        # Its next lines start the emptied file (O_APPEND: no hole before them).
        subprocess.run([*host.cli(), "retune"], check=True, capture_output=True, timeout=30)
        wait_for(lambda: "committed" in host.logfile.read_text(), what="the retune's cycle")
        new = host.logfile.read_text()
        assert new.startswith(new.lstrip("\0")) and "\0" not in new
        assert ": committed 0 free 100000\n" in new
        assert stat.S_IMODE(host.logfile.stat().st_mode) == 0o640
        assert daemon.proc.poll() is None


def test_rotation_signals_no_process(logrotate: list[str], tmp_path: Path):
    """The pidfile path is shared with the reference ksmtuned: rotation signals no one."""
    host = make_host(tmp_path)
    conf = config_for(host, tmp_path)
    assert "postrotate" not in conf.read_text() and "kill" not in conf.read_text()
    host.logfile.write_text("old line\n")
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        host.pidfile.write_text(f"{stranger.pid}\n")
        got = subprocess.run([*logrotate, "-f", "-s", str(tmp_path / "state"), str(conf)],
                             capture_output=True, text=True, timeout=30)
        assert got.returncode == 0, got.stdout + got.stderr
        assert Path(f"{host.logfile}.1").read_text() == "old line\n"
        time.sleep(0.2)
        assert stranger.poll() is None  # SIGHUP would have killed sleep
    finally:
        stranger.kill()
        stranger.wait()
