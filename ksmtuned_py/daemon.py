"""The daemon loop: read the host, decide, write the knobs, once per interval.

Signals never do work in their handlers: the handlers are empty and
``signal.set_wakeup_fd`` wakes the ``select`` in the main loop, which reads the
signal numbers from a pipe and acts on them in order.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from typing import Callable, Mapping

from ksmtuned_py import config as configmod
from ksmtuned_py import policies
from ksmtuned_py.cycle import Cycle, Policy, next_wait
from ksmtuned_py.debuglog import DebugLog
from ksmtuned_py.filehost import FileHost
from ksmtuned_py.knobs import require_ksm
from ksmtuned_py.ksmlock import KsmLock
from ksmtuned_py.notices import Notices
from ksmtuned_py.pidfile import Pidfile, StateFile, state_path
from ksmtuned_py.guestscan import GuestScanner, raise_open_files_limit
from ksmtuned_py.readings import ReadingError
from ksmtuned_py.report import CycleReport, report_dict
from ksmtuned_py.service import Notifier

log = logging.getLogger(__name__)

CycleListener = Callable[[CycleReport], None]
_HANDLED = (signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


def _ignore(signum, frame) -> None:
    """Empty handler: the wakeup fd carries the signal to the main loop."""


def config_listeners(config: configmod.Config) -> list[CycleListener]:
    """Cycle listeners the configuration asks for (rebuilt on every reload).

    Place for optional outputs driven by configuration keys, e.g. the
    Prometheus textfile writer when KSM_METRICS_TEXTFILE is set.
    """
    listeners: list[CycleListener] = []
    if config.metrics_textfile:
        from ksmtuned_py.metrics import TextfileWriter

        listeners.append(TextfileWriter(config.metrics_textfile, config.settings["KSM_MAX_CPU"].value
                                        if "KSM_MAX_CPU" in config.settings else None))
    return listeners


def close_listeners(listeners: list[CycleListener], keep: list[CycleListener] = ()) -> None:
    """Let listeners with a ``close`` (the metrics textfile) clean up, but those ``keep`` continues.

    A listener continues when a kept one has the same ``path()``: a reload that keeps
    KSM_METRICS_TEXTFILE keeps the file (no gap a scrape could fall into).
    """
    kept = {listener.path() for listener in keep if hasattr(listener, "path")}
    for listener in listeners:
        close = getattr(listener, "close", None)
        if close is None or (hasattr(listener, "path") and listener.path() in kept):
            continue
        try:
            close()
        except Exception:  # cleaning up must never stop the daemon from stopping
            log.exception("closing cycle listener %r failed", listener)


class Daemon:
    """One ksmtuned-py daemon; ``run()`` returns the exit status."""

    def __init__(
        self,
        config_path: str = configmod.DEFAULT_PATH,
        root: str = "/",
        environ: Mapping[str, str] | None = None,
        notifier: Notifier | None = None,
    ):
        self.config_path = config_path
        self.root = root
        self.real_root = os.path.realpath(root)  # published every cycle: resolved once
        self.environ = environ
        self.notifier = notifier or Notifier()
        # Callables given a CycleReport after every cycle; errors are logged, never fatal.
        self.cycle_listeners: list[CycleListener] = []
        self._config_listeners: list[CycleListener] = []
        self.config: configmod.Config | None = None
        self.debug: DebugLog | None = None
        self.scanner: GuestScanner | None = None
        self.host: FileHost | None = None
        self.tuning_cycle: Cycle | None = None  # the one cycle, over self.host and the policy
        self.pidfile: Pidfile | None = None
        self.ksm_path = None  # the KSM directory, found by load_config
        self.state: StateFile | None = None  # published next to the pidfile while running
        self._state_failed: str | None = None
        self._reading_failed: str | None = None  # the last ReadingError logged
        self.last_report: CycleReport | None = None
        self.notices = Notices()  # unmerge risk and other writers, said once per change
        self._last_logged: tuple | None = None
        self._wakeup_r: int | None = None

    @property
    def policy(self) -> Policy:
        return self.tuning_cycle.policy

    # --- set-up --------------------------------------------------------------------

    def _env(self) -> Mapping[str, str]:
        return os.environ if self.environ is None else self.environ

    def setup(self) -> None:
        """Read the configuration and the host; UserError when the daemon cannot run."""
        self.load_config()
        self.start_tuning()

    def load_config(self) -> None:
        """Read and check the configuration and that the kernel has KSM."""
        cfg = configmod.load(self.config_path, self._env(), root=self.root)
        configmod.log_warnings(cfg)
        self.ksm_path = require_ksm(self.root)
        if not cfg.file_found:
            log.warning("%s does not exist; using the environment and defaults", self.config_path)
        self.config = cfg
        self._apply_config(cfg)

    def start_tuning(self) -> None:
        """Open the debug log and start the policy (the first debug lines)."""
        policy = self._started_policy()  # MemTotal first: a host that cannot be read opens no log
        self.debug = DebugLog(self.config.debug, self.config.logfile)
        self.tuning_cycle = Cycle(self.host, policy, debug=self._debug, on_report=self._published)
        self.debug.write(*policy.start_lines())

    def _debug(self, *lines: str) -> None:
        self.debug.write(*lines)

    def _published(self, report: CycleReport) -> None:
        """The state with this cycle, before its closing debug line: who sees the line sees the state."""
        self.last_report = report
        self._publish()

    def _apply_config(self, cfg: configmod.Config) -> None:
        old = self.scanner
        if old is None or old.pattern.pattern != cfg.process_regex or old.metric != cfg.memory_metric:
            self.scanner = GuestScanner(self.root, cfg.process_regex, cfg.memory_metric)
            if old is not None:
                old.close()
        self.host = FileHost(self.root, self.scanner, cfg.free_metric, awk_sum=cfg.compat.proxmox)
        if self.tuning_cycle is not None:
            self.tuning_cycle.host = self.host
        old, self._config_listeners = self._config_listeners, config_listeners(cfg)
        close_listeners(old, keep=self._config_listeners)

    def _started_policy(self) -> Policy:
        """The configured policy, started on MemTotal now (ksmtuned's: tuning computed, npages 0)."""
        policy = policies.from_config(self.config)
        policy.start(self.host.read_meminfo())
        return policy

    def _retune(self) -> None:
        self.tuning_cycle.policy = self._started_policy()
        self.debug.write(*self.policy.start_lines())

    def _ready_status(self) -> str:
        return f"ready: {self.policy.summary()}; first cycle in {self.config.monitor_interval:g}s"

    # --- one cycle -----------------------------------------------------------------

    def cycle(self) -> CycleReport | None:
        """Read, decide, write, report.  Returns None when the host could not be read."""
        try:
            report = self.tuning_cycle.run()
        except ReadingError as e:
            # Logged once per change of the error, like a failing write: not every cycle.
            if str(e) != self._reading_failed:
                log.error("%s; skipping cycles until it can be read", e)
                self._reading_failed = str(e)
            else:
                log.debug("%s; skipping this cycle", e)
            self.notifier.status(f"error: {e}")
            return None
        if self._reading_failed:
            log.info("reading the host works again")
            self._reading_failed = None
        self._log_decision(report)
        self.notices(report)
        self.notifier.status(report.status)
        for listener in [*self.cycle_listeners, *self._config_listeners]:
            try:
                listener(report)
            except Exception:  # a listener must never stop the daemon
                log.exception("cycle listener %r failed", listener)
        return report

    def _log_decision(self, report: CycleReport) -> None:
        key = (report.action, report.npages, report.sleep_ms)
        # Changes are logged at INFO; a repeat of the same decision only at DEBUG.
        level = logging.INFO if key != self._last_logged else logging.DEBUG
        self._last_logged = key
        fields = {
            "KSM_DECISION": report.action,
            "KSM_NPAGES": report.npages,
            "KSM_SLEEP": report.sleep_ms,
            "KSM_FREE": report.free_kb,
            "KSM_COMMITTED": report.committed_kb,
            "KSM_THRES": report.thres_kb,
            "KSM_POLICY": report.policy,
            "KSM_LEVEL": report.level,
            "KSM_REASON": report.reason,
            "KSM_KSMD_CPU": None if report.ksmd_cpu_percent is None else round(report.ksmd_cpu_percent, 2),
        }
        # (a field the policy has no value for is left out, not sent as "None")
        log.log(level, "%s ksm (%s); %d guests", report.action, report.status, report.guests,
                extra={k: v for k, v in fields.items() if v is not None and v != ""})

    # --- the published state --------------------------------------------------------

    def state_dict(self) -> dict:
        """What ``status`` and ``adjust`` need to predict this daemon's next cycle (and ``demo`` to show the last)."""
        r = self.last_report
        return {
            "pid": os.getpid(),
            "config": self.config_path,
            "root": self.real_root,
            **self.policy.state(),
            "last_decision": None if r is None else report_dict(r),
            "other_writer": self.notices.other_writer,
            "updated": time.time(),
        }

    def _publish(self) -> None:
        """Replace the state file; a failure is logged once per change, never fatal."""
        if self.state is None:
            return
        try:
            self.state.write(self.state_dict())
        except OSError as e:
            problem = e.strerror or str(e)
            if problem != self._state_failed:
                log.warning("cannot write the state file %s: %s; status will not see npages",
                            self.state.path, problem)
                self._state_failed = problem
            return
        if self._state_failed:
            log.info("writing the state file %s works again", self.state.path)
            self._state_failed = None

    # --- reload --------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-read the configuration (keeping the old one if it is bad) and retune."""
        self.notifier.reloading()
        log.info("reloading %s", self.config_path)
        try:
            new = self._reloaded_config()
        except configmod.ConfigError as e:
            log.error("%s; keeping the previous configuration", e)
        else:
            configmod.log_warnings(new)
            if new.pidfile != self.config.pidfile:
                log.warning("PIDFILE changed to %s; that takes effect at the next start", new.pidfile)
            self.config = new
            self._apply_config(new)
        self.debug.reconfigure(self.config.debug, self.config.logfile)
        try:
            self._retune()
        except ReadingError as e:
            log.error("%s; keeping the previous tuning", e)
        self._publish()
        self.notifier.ready(self._ready_status())

    def _reloaded_config(self) -> configmod.Config:
        """The configuration on disk now; ConfigError for one that is broken, or gone since it was read."""
        new = configmod.load(self.config_path, self._env(), root=self.root)
        if self.config.file_found and not new.file_found:
            # Not the defaults in silence: a file that vanished is a mistake, like a broken one.
            raise configmod.ConfigError(f"{self.config_path} no longer exists")
        return new

    # --- the loop ------------------------------------------------------------------

    def _install_signals(self) -> dict:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup_r, self._wakeup_w = r, w
        old = {sig: signal.signal(sig, _ignore) for sig in _HANDLED}
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        return old

    def _restore_signals(self, old: dict) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        self._wakeup_r = None

    def _pending_signals(self, timeout: float) -> list[int]:
        # select() refuses huge timeouts; the loop simply waits again.
        ready, _, _ = select.select([self._wakeup_r], [], [], min(max(0.0, timeout), 3600.0))
        if not ready:
            return []
        signals: list[int] = []
        while True:
            try:
                data = os.read(self._wakeup_r, 512)
            except BlockingIOError:
                break
            if not data:
                break
            signals.extend(data)
        return signals

    def run(self) -> int:
        """Set up, write the pidfile, and loop until SIGTERM/SIGINT."""
        # Handlers first: a SIGUSR1 sent as soon as the pidfile appears must not kill us.
        old = self._install_signals()
        raise_open_files_limit()
        try:
            self.load_config()
            # The lock before any debug line: a refused second instance writes nothing.
            self.pidfile = Pidfile(self.config.pidfile)
            self.pidfile.acquire()
            ksm_lock = KsmLock(self.ksm_path)
            try:
                ksm_lock.acquire()  # one tuner per KSM, whatever its pidfile
                self.start_tuning()
                self.state = StateFile(state_path(self.config.pidfile))
                self._publish()
                log.info("started: interval %gs, %s; %s mode (%s)", self.config.monitor_interval,
                         self.policy.summary(), self.config.compat.mode, self.config.compat.why)
                self.notifier.ready(self._ready_status())
                status = self._loop()
            finally:
                self.notifier.stopping()
                close_listeners([*self.cycle_listeners, *self._config_listeners])
                if self.state is not None:
                    self.state.remove()
                self.pidfile.release()
                ksm_lock.release()
                if self.debug:
                    self.debug.close()
        finally:
            self._restore_signals(old)
        log.info("stopped; KSM left as it is")
        return status

    def _may_tune(self) -> bool:
        """Before a cycle: the pidfile is still ours (written again if it was removed); False: stop."""
        problem = self.pidfile.verify()
        if problem:
            log.error("%s; stopping, so that only one daemon tunes KSM", problem)
        return problem is None

    def _loop(self) -> int:
        """Cycles and signals until SIGTERM/SIGINT (exit status 0) or until another daemon took over (1)."""
        watchdog = self.notifier.watchdog_interval()
        next_cycle = time.monotonic() + self.config.monitor_interval
        next_ping = time.monotonic()
        while True:
            now = time.monotonic()
            if watchdog is not None and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + watchdog
            deadline = next_cycle if watchdog is None else min(next_cycle, next_ping)
            signals = self._pending_signals(deadline - now)
            cycle_now = False
            for sig in signals:
                if sig in (signal.SIGTERM, signal.SIGINT):
                    log.info("received %s, stopping", signal.Signals(sig).name)
                    return 0
            for sig in signals:
                if sig == signal.SIGHUP:
                    self.reload()
                    cycle_now = True
                elif sig == signal.SIGUSR1:
                    cycle_now = True
            if cycle_now or time.monotonic() >= next_cycle:
                if not self._may_tune():
                    return 1
                report = None
                try:
                    report = self.cycle()
                except Exception:  # keep running; the next cycle may succeed
                    log.exception("cycle failed")
                # Like the reference, the next interval starts when the cycle ends (sooner
                # when the policy asks: adaptive near the end of a burst's scans).
                next_cycle = time.monotonic() + next_wait(self.config.monitor_interval, report)
