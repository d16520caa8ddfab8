"""A real ksmtuned-py daemon on a small fake host tree, for the service-integration tests.

The tree has ``proc/meminfo`` and ``sys/kernel/mm/ksm`` files (plain files, so
the real KSM is never touched) and the config puts PIDFILE and LOGFILE in the
temporary directory.  The monitor interval is long, so every cycle seen in a
test was caused by a signal (retune or reload).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests import proctools

KSMTUNED_PY = Path(sys.executable).parent / "ksmtuned-py"

MEMINFO = (
    "MemTotal:        2097152 kB\n"
    "MemFree:          100000 kB\n"
    "MemAvailable:     100000 kB\n"
    "Buffers:               0 kB\n"
    "Cached:                0 kB\n"
)
KNOBS = {"run": 0, "pages_to_scan": 100, "sleep_millisecs": 20, "pages_sharing": 0,
         "general_profit": 0, "pages_scanned": 0, "ksm_zero_pages": 0}


@dataclass
class FakeHost:
    base: Path

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def ksm(self) -> Path:
        return self.root / "sys/kernel/mm/ksm"

    @property
    def config(self) -> Path:
        return self.base / "ksmtuned.conf"

    @property
    def pidfile(self) -> Path:
        return self.base / "ksmtune.pid"

    @property
    def logfile(self) -> Path:
        return self.base / "ksmtuned.log"

    def knob(self, name: str) -> str:
        return (self.ksm / name).read_text().strip()

    def cli(self) -> list[str]:
        return [str(KSMTUNED_PY), "--root", str(self.root), "--config", str(self.config)]


def make_host(base: Path, extra_config: str = "") -> FakeHost:
    host = FakeHost(base)
    (host.root / "proc").mkdir(parents=True)
    (host.root / "proc/meminfo").write_text(MEMINFO)
    host.ksm.mkdir(parents=True)
    for name, value in KNOBS.items():
        (host.ksm / name).write_text(f"{value}\n")
    host.config.write_text(
        "KSM_MONITOR_INTERVAL=3600\n"
        f"PIDFILE={host.pidfile}\n"
        f"LOGFILE={host.logfile}\n"
        "DEBUG=1\n" + extra_config
    )
    return host


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    proctools.wait_for(predicate, timeout=timeout, what=what)


class RunningDaemon:
    """``with RunningDaemon(host) as d:`` — started, pidfile written; stopped and reaped after."""

    def __init__(self, host: FakeHost):
        self.host = host
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "RunningDaemon":
        if not KSMTUNED_PY.is_file():
            raise RuntimeError(f"{KSMTUNED_PY} missing: install the project first")
        self.stderr = open(self.host.base / "daemon.stderr", "w")
        self.proc = subprocess.Popen([*self.host.cli(), "run"], stdin=subprocess.DEVNULL,
                                     stdout=self.stderr, stderr=self.stderr)
        try:
            wait_for(lambda: self._pidfile_pid() == self.proc.pid or self.proc.poll() is not None,
                     what="the daemon's pidfile")
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited: " + self.log_text())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _pidfile_pid(self) -> int | None:
        try:
            return int(self.host.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def log_text(self) -> str:
        return (self.host.base / "daemon.stderr").read_text()

    def cycles(self) -> int:
        """Cycles written to the debug log so far (its rotated copies included)."""
        total = 0
        for path in self.host.base.glob(self.host.logfile.name + "*"):
            total += sum(1 for line in path.read_text().splitlines() if ": committed " in line)
        return total

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            proctools.stop(self.proc, timeout=10)
        self.stderr.close()
