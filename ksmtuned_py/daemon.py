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
from dataclasses import asdict
from typing import Callable, Mapping

from ksmtuned_py import config as configmod
from ksmtuned_py.debuglog import DebugLog
from ksmtuned_py.decision import START, Decision, Params, Tuner
from ksmtuned_py.knobs import Knobs, read_int
from ksmtuned_py.pidfile import Pidfile, StateFile, state_path
from ksmtuned_py.readings import PAGE_SIZE, GuestScanner, ReadingError, read_host, read_meminfo
from ksmtuned_py.report import CycleReport, human_bytes
from ksmtuned_py.service import Notifier

log = logging.getLogger(__name__)

CycleListener = Callable[[CycleReport], None]
_HANDLED = (signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


def _ignore(signum, frame) -> None:
    """Empty handler: the wakeup fd carries the signal to the main loop."""


def config_listeners(config: configmod.Config, root: str = "/") -> list[CycleListener]:
    """Cycle listeners the configuration asks for (rebuilt on every reload).

    Place for optional outputs driven by configuration keys, e.g. the
    Prometheus textfile writer when KSM_METRICS_TEXTFILE is set.
    """
    listeners: list[CycleListener] = []
    if config.metrics_textfile:
        from ksmtuned_py.metrics import TextfileWriter

        listeners.append(TextfileWriter(config.metrics_textfile, root))
    return listeners


def status_sentence(decision: Decision, advisor: bool, saved: int | None) -> str:
    """One line for systemctl status: what KSM does now and what it saves."""
    if decision.action == START:
        scan = "pages_to_scan by the kernel advisor" if advisor else f"pages_to_scan={decision.npages}"
        text = f"running: {scan} sleep={decision.sleep}ms"
    else:
        text = f"stopped: free {decision.free} kB > thres {decision.thres} kB"
    if saved is not None:
        text += f"; saved {human_bytes(saved)}"
    return text


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
        self.environ = environ
        self.notifier = notifier or Notifier()
        # Callables given a CycleReport after every cycle; errors are logged, never fatal.
        self.cycle_listeners: list[CycleListener] = []
        self._config_listeners: list[CycleListener] = []
        self.config: configmod.Config | None = None
        self.knobs = Knobs(root)
        self.debug: DebugLog | None = None
        self.scanner: GuestScanner | None = None
        self.tuner: Tuner | None = None
        self.pidfile: Pidfile | None = None
        self.state: StateFile | None = None  # published next to the pidfile while running
        self._state_failed: str | None = None
        self._reading_failed: str | None = None  # the last ReadingError logged
        self.last_report: CycleReport | None = None
        self._last_logged: tuple | None = None
        self._wakeup_r: int | None = None

    # --- set-up --------------------------------------------------------------------

    def _env(self) -> Mapping[str, str]:
        return os.environ if self.environ is None else self.environ

    def setup(self) -> None:
        """Read the configuration and the host; UserError when the daemon cannot run."""
        self.load_config()
        self.start_tuning()

    def load_config(self) -> None:
        """Read and check the configuration and that the kernel has KSM."""
        cfg = configmod.load(self.config_path, self._env())
        configmod.log_warnings(cfg)
        self.knobs.check()
        self.config = cfg
        self._apply_config(cfg)

    def start_tuning(self) -> None:
        """Open the debug log and compute the tuning (the first debug lines)."""
        mem = read_meminfo(self.root)
        self.debug = DebugLog(self.config.debug, self.config.logfile)
        self._retune(mem)

    def _apply_config(self, cfg: configmod.Config) -> None:
        old = self.scanner
        if old is None or old.pattern.pattern != cfg.process_regex or old.metric != cfg.memory_metric:
            self.scanner = GuestScanner(self.root, cfg.process_regex, cfg.memory_metric)
        self._config_listeners = config_listeners(cfg, self.root)

    def _retune(self, mem=None) -> None:
        """Recompute total, sleep and thres from MemTotal; npages starts at 0."""
        if mem is None:
            mem = read_meminfo(self.root)
        self.tuner = Tuner(Params.from_config(self.config), mem.total)
        self.debug.write(*self.tuner.tuning.debug_lines())

    def _ready_status(self) -> str:
        t = self.tuner.tuning
        return (
            f"ready: total {t.total} kB, thres {t.thres} kB, sleep {t.sleep}ms; "
            f"first cycle in {self.config.monitor_interval:g}s"
        )

    # --- one cycle -----------------------------------------------------------------

    def cycle(self) -> CycleReport | None:
        """Read, decide, write, report.  Returns None when the host could not be read."""
        started = time.time()
        t0 = time.monotonic()
        cfg = self.config
        try:
            reading = read_host(self.root, self.scanner, cfg.free_metric)
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
        d = self.tuner.decide(reading.free, reading.committed)
        self.debug.write(f"committed {d.committed} free {d.free}", *d.debug_lines_before_write())
        ok = self.knobs.apply(d)
        self.debug.write(*d.debug_lines_after_write())
        advisor = d.action == START and self.knobs.advisor
        sharing = read_int(self.knobs.dir, "pages_sharing")
        saved = sharing * PAGE_SIZE if sharing is not None else None
        status = status_sentence(d, advisor, saved)
        report = CycleReport(
            time=started,
            duration=time.monotonic() - t0,
            action=d.action,
            npages=d.npages,
            sleep_ms=d.sleep,
            free_kb=d.free,
            committed_kb=d.committed,
            thres_kb=d.thres,
            total_kb=d.total,
            guests=len(reading.guests),
            advisor_active=advisor,
            status=status,
            level=d.level,
            pages_sharing=sharing,
            saved_bytes=saved,
            general_profit=read_int(self.knobs.dir, "general_profit"),
            writes_ok=ok,
        )
        self._log_decision(d, report)
        self.notifier.status(status)
        self.last_report = report
        self._publish()
        for listener in [*self.cycle_listeners, *self._config_listeners]:
            try:
                listener(report)
            except Exception:  # a listener must never stop the daemon
                log.exception("cycle listener %r failed", listener)
        return report

    def _log_decision(self, d: Decision, report: CycleReport) -> None:
        key = (d.action, d.npages, d.sleep)
        # Changes are logged at INFO; a repeat of the same decision only at DEBUG.
        level = logging.INFO if key != self._last_logged else logging.DEBUG
        self._last_logged = key
        log.log(
            level,
            "%s ksm (%s); %d guests",
            d.action,
            report.status,
            report.guests,
            extra={
                "KSM_DECISION": d.action,
                "KSM_NPAGES": d.npages,
                "KSM_SLEEP": d.sleep,
                "KSM_FREE": d.free,
                "KSM_COMMITTED": d.committed,
                "KSM_THRES": d.thres,
            },
        )

    # --- the published state --------------------------------------------------------

    def state_dict(self) -> dict:
        """What ``status`` and ``adjust`` need to predict this daemon's next cycle."""
        t = self.tuner.tuning
        r = self.last_report
        return {
            "pid": os.getpid(),
            "config": self.config_path,
            "root": os.path.realpath(self.root),
            "npages": self.tuner.npages,
            "tuning": {"total": t.total, "sleep": t.sleep, "thres": t.thres, "thres_text": t.thres_text},
            "params": asdict(self.tuner.params),
            "last_decision": None if r is None else {
                "time": r.time, "action": r.action, "level": r.level, "npages": r.npages,
            },
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
            new = configmod.load(self.config_path, self._env())
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
        try:
            self.load_config()
            # The lock before any debug line: a refused second instance writes nothing.
            self.pidfile = Pidfile(self.config.pidfile)
            self.pidfile.acquire()
            try:
                self.start_tuning()
                self.state = StateFile(state_path(self.config.pidfile))
                self._publish()
                log.info(
                    "started: interval %gs, total %d kB, thres %d kB, sleep %dms",
                    self.config.monitor_interval,
                    self.tuner.tuning.total,
                    self.tuner.tuning.thres,
                    self.tuner.tuning.sleep,
                )
                self.notifier.ready(self._ready_status())
                self._loop()
            finally:
                self.notifier.stopping()
                if self.state is not None:
                    self.state.remove()
                self.pidfile.release()
                if self.debug:
                    self.debug.close()
        finally:
            self._restore_signals(old)
        log.info("stopped; KSM left as it is")
        return 0

    def _loop(self) -> None:
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
                    return
            for sig in signals:
                if sig == signal.SIGHUP:
                    self.reload()
                    cycle_now = True
                elif sig == signal.SIGUSR1:
                    cycle_now = True
            if cycle_now or time.monotonic() >= next_cycle:
                try:
                    self.cycle()
                except Exception:  # keep running; the next cycle may succeed
                    log.exception("cycle failed")
                # Like the reference, the next interval starts when the cycle ends.
                next_cycle = time.monotonic() + self.config.monitor_interval
