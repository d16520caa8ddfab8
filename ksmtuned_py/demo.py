"""``ksmtuned-py demo``: the daemon tuning KSM on a simulated host, no root and no KSM needed.

A simulated host (sysfs_emu's ``demo`` scenario: four 1 GiB guests starting a minute
apart on a 3 GiB host) is served as a file tree in a temporary directory, in this
process, at ``speed`` simulated seconds per wall second.  The real daemon,
``ksmtuned-py --root TMP --config TMP/ksmtuned.conf run``, runs against it as a
child process with ``KSM_MONITOR_INTERVAL=1`` and ``DEBUG=1``; the end of each cycle is
seen in its debug lines, and the row shown is that cycle's report, as the daemon
publishes it in its state file (what it read, decided and saved).
It ends by itself after ``cycles`` decisions (default 8: the guests start, KSM starts
and merges their OS images, the saving levels off; about 8 s at the default speed), or
at Ctrl-C, stopping the daemon and the simulation and removing the temporary directory;
then it says how to do the same by hand.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

from ksmtuned_py.errors import UserError
from ksmtuned_py.pidfile import read_state, state_path
from ksmtuned_py.report import human_bytes
from sysfs_emu.errors import EmuError
from sysfs_emu.units import format_clock

DEFAULT_SPEED = 60.0
DEFAULT_INTERVAL = 1.0
DEFAULT_CYCLES = 8  # by then the saving has levelled off (the demo scenario's story)
_DEBUG_LINE = re.compile(r"^.*?\d{4}: (.*)$")


def _memory_backed_dir() -> str | None:
    """/dev/shm when it is a writable tmpfs: replacing files there costs microseconds, not milliseconds."""
    from sysfs_emu.rootlock import filesystem_type

    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK) and filesystem_type(shm) == "tmpfs":
        return shm
    return None


class _Demo:
    def __init__(self, scenario: str, speed: float, interval: float, cycles: int | None,
                 duration: float | None, out: TextIO):
        self.scenario = scenario
        self.speed = speed
        self.interval = interval
        self.cycles = cycles
        self.duration = duration
        self.out = out
        self.tmp = Path(tempfile.mkdtemp(prefix="ksmtuned-py-demo-", dir=_memory_backed_dir()))
        self.root = self.tmp / "host"
        self.server = None
        self.thread: threading.Thread | None = None
        self.daemon: subprocess.Popen | None = None
        self.pidfile = self.tmp / "ksmtune.pid"
        self.state = Path(state_path(str(self.pidfile)))  # where the daemon publishes its last cycle
        self.decisions = 0
        self.cycles_shown = 0
        self.error: BaseException | None = None

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # --- the simulated host ---------------------------------------------------------

    def start_host(self) -> None:
        from sysfs_emu.cli import load_simulation
        from sysfs_emu.runner import Server

        sim, name = load_simulation(self.scenario)
        self.sim = sim
        self.server = Server(sim, self.root, speed=self.speed, duration=None, clean=True, scenario_name=name)

        def serve():
            try:
                self.server.run()
            except BaseException as exc:  # reported by the main thread
                self.error = exc
                if self.daemon is not None and self.daemon.poll() is None:
                    self.daemon.terminate()  # ends follow(): nothing left to show

        self.thread = threading.Thread(target=serve, name="sysfs-emu", daemon=True)
        self.thread.start()
        self.server.ready_event.wait(30)
        if self.error is not None:
            raise self.error
        story = sim.scenario.description or "A simulated host."
        self.say(f"ksmtuned-py demo: {story[:1].lower()}{story[1:]}")
        self.say(f"Simulated /sys and /proc in {self.root}; {self.speed:g} simulated seconds per second.")

    # --- the daemon -------------------------------------------------------------------

    def start_daemon(self) -> None:
        conf = self.tmp / "ksmtuned.conf"
        conf.write_text(
            "# written by ksmtuned-py demo\n"
            f"KSM_MONITOR_INTERVAL={self.interval:g}\n"
            "DEBUG=1\n"
            f"PIDFILE={self.pidfile}\n"
        )
        cmd = [sys.executable, "-m", "ksmtuned_py.cli", "--root", str(self.root), "--config", str(conf), "run"]
        env = dict(os.environ)
        env.pop("LOGFILE", None)
        env["PYTHONUNBUFFERED"] = "1"
        self.daemon = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       env=env, start_new_session=True)
        length = (f"{self.cycles} decisions, about {self.cycles * self.interval:.0f} s"
                  if self.cycles else "until Ctrl-C")
        self.say(f"The daemon (ksmtuned-py run) decides every {self.interval:g} s = "
                 f"{self.interval * self.speed:g} simulated seconds: {length}"
                 f"{' (Ctrl-C ends it sooner)' if self.cycles else ''}.")
        self.say()
        self.say(f"{'sim time':>8}  {'guests':>6}  {'committed':>10}  {'free':>10}  "
                 f"{'decision':<40} {'saved by KSM':>12}")

    def follow(self) -> int:
        """Show each cycle until the daemon ends, or ``cycles``/``duration`` is reached."""
        assert self.daemon is not None and self.daemon.stdout is not None
        for raw in self.daemon.stdout:
            line = raw.rstrip("\n")
            m = _DEBUG_LINE.match(line)
            text = m.group(1) if m else line
            if text.endswith("stop ksm") or text.startswith("KSMCTL start"):
                self.show(self.next_report())
            elif text.startswith(("total ", "sleep ", "thres ")):
                self.say(f"{'':>8}  daemon at start: {text}")
            elif text.startswith("committed ") or text.endswith((", boost", ", decay", "start ksm")):
                continue  # the cycle's own lines: its report says it all
            elif line.startswith("ksmtuned-py: INFO:"):
                continue  # the same decisions, already in the table
            elif text:
                self.say(f"{'':>8}  {text}")
            if self.done():
                return 0
        return self.daemon.wait()

    def next_report(self, timeout: float = 10.0) -> dict:
        """The report of the cycle that just ended, from the daemon's state.

        The daemon publishes it before the cycle's closing debug line, so it is there when
        the line is read; the wait is for a daemon that cannot write its state file.
        """
        deadline = time.monotonic() + timeout
        while True:
            state = read_state(str(self.state), self.daemon.pid) or {}
            report = state.get("last_decision")
            if report and report["cycles"] > self.cycles_shown:
                self.cycles_shown = report["cycles"]
                return report
            if time.monotonic() > deadline:
                raise UserError(f"demo: the daemon published no report of its cycle in {self.state}")
            time.sleep(0.005)

    def show(self, report: dict) -> None:
        self.decisions += 1
        if report["action"] == "stop":
            decision = "stop: enough free memory"
        else:
            decision = f"start: pages_to_scan {report['npages']}, sleep {report['sleep_ms']} ms"
        self.say(f"{format_clock(self.sim.now):>8}  {report['guests']:>6}  "
                 f"{human_bytes(report['committed_kb'] * 1024):>10}  {human_bytes(report['free_kb'] * 1024):>10}  "
                 f"{decision:<40} {human_bytes(report['saved_bytes'] or 0):>12}")

    def done(self) -> bool:
        if self.cycles is not None and self.decisions >= self.cycles:
            return True
        return self.duration is not None and self.sim.now >= self.duration

    # --- the end ----------------------------------------------------------------------

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if self.daemon is not None and self.daemon.stdout is not None:
            self.daemon.stdout.close()
        if self.server is not None:
            self.server.stop()
        if self.thread is not None:
            self.thread.join(timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)


def program(name: str) -> str:
    """How to run ``name`` from a shell: its name when PATH finds this installation's, else its path."""
    beside = Path(sys.executable).parent / name
    found = shutil.which(name)
    if found and (not beside.exists() or Path(found).resolve() == beside.resolve()):
        return name
    return str(beside) if beside.exists() else name


def by_hand(scenario: str, speed: float) -> str:
    """The commands that do what the demo did, in two terminals (runnable as printed)."""
    tree = "/dev/shm/ksm-demo" if _memory_backed_dir() else "/tmp/ksm-demo"
    emu, tuner = program("sysfs-emu"), program("ksmtuned-py")
    return (f"By hand, in two terminals (the README's 'Two terminals'):\n"
            f"  {emu} run {scenario} --root {tree} --speed {speed:g} --clean\n"
            f"  printf 'KSM_MONITOR_INTERVAL=1\\nDEBUG=1\\nPIDFILE={tree}.pid\\n' > {tree}.conf\n"
            f"  {tuner} --root {tree} --config {tree}.conf run")


def run_demo(*, scenario: str = "demo", speed: float = DEFAULT_SPEED,
             interval: float = DEFAULT_INTERVAL, cycles: int | None = DEFAULT_CYCLES,
             duration: float | None = None, out: TextIO | None = None) -> int:
    """Run the demo; returns the exit status (0 when stopped by Ctrl-C or the limits)."""
    demo = _Demo(scenario, speed, interval, cycles, duration, out or sys.stdout)
    previous = signal.getsignal(signal.SIGTERM)
    # The simulator's own log (knob writes, lag notes) would interleave with the table.
    emu_log = logging.getLogger("sysfs_emu")
    emu_level = emu_log.level
    emu_log.setLevel(logging.ERROR)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        demo.start_host()
        demo.start_daemon()
        status = demo.follow()
    except KeyboardInterrupt:  # Ctrl-C: the normal way to end the demo
        status = 0
    except EmuError as e:  # the simulator refused the host (its one-line message)
        raise UserError(f"demo: the simulated host cannot start: {e}") from None
    finally:
        try:
            demo.stop()
        except KeyboardInterrupt:  # a second Ctrl-C while cleaning up: finish cleaning anyway
            demo.stop()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
        emu_log.setLevel(emu_level)
    if demo.error is not None and not isinstance(demo.error, KeyboardInterrupt):
        demo.say(f"ksmtuned-py demo: the simulated host failed: {demo.error}")
        return 1
    demo.say()
    shown = f"{demo.decisions} decisions shown" if demo.decisions else "no decision shown"
    demo.say(f"Demo ended ({shown}); the temporary host was removed.")
    demo.say(by_hand(scenario, speed))
    if status not in (0, -signal.SIGTERM):
        return status
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run_demo())
