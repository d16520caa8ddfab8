"""``sysfs-emu simulate``: ksmtuned-py's decision driven in simulated time, no files, no daemon.

Each cycle advances the Simulation by ``KSM_MONITOR_INTERVAL`` seconds, reads free
and committed memory from it the way the daemon reads /proc, asks ksmtuned_py's
pure :class:`~ksmtuned_py.decision.Tuner`, and writes the knobs through
``Kernel.write_attr`` in the daemon's order.  The result answers "what would these
settings save on my host, and how fast" in seconds of wall time.
"""

from __future__ import annotations

import errno
import re
from dataclasses import asdict, dataclass

from ksmtuned_py.decision import START, Params, Tuner
from sysfs_emu import procstats


@dataclass(frozen=True)
class Cycle:
    """One decision and the host right after it."""

    time: float  # simulated seconds
    guests: int
    committed_kb: int
    free_kb: int
    action: str  # start / stop
    level: str | None  # boost / decay on start
    pages_to_scan: int
    sleep_ms: int
    run: int
    pages_sharing: int
    saved_bytes: int
    general_profit: int

    def as_dict(self) -> dict:
        return asdict(self)


class Simulate:
    """The daemon's loop in simulated time over a Simulation."""

    def __init__(self, sim, config):
        self.sim = sim
        self.config = config
        self.interval = float(config.monitor_interval)
        self.pattern = re.compile(config.process_regex)
        self.tuner = Tuner(Params.from_config(config), sim.mem_total_kb)
        self.advisor_noted = False

    def readings(self) -> tuple[int, int, int]:
        """(free kB, committed kB, guests) as the daemon computes them."""
        mem = self.sim.meminfo_kb()
        if self.config.free_metric == "available":
            free = mem["MemAvailable"]
        else:
            free = mem["MemFree"] + mem["Buffers"] + mem["Cached"]
        guests = [p for p in self.sim.processes if self.pattern.search(p.name)]
        committed = sum(self._guest_kb(p) for p in guests)
        return free, committed, len(guests)

    def _guest_kb(self, proc) -> int:
        """RSS in kB (the reference), or PSS with KSM_MEMORY_METRIC=pss, as the daemon reads them."""
        if self.config.memory_metric == "pss":
            fast = procstats.numbers(getattr(self.sim, "memory", None), proc.pid)
            if fast is not None:
                return fast.rollup.pss
        return proc.rss_pages * proc.page_size // 1024

    def _write(self, name: str, value: int) -> bool:
        try:
            self.sim.kernel.write_attr(name, f"{value}\n")
            return True
        except OSError as exc:
            if name == "pages_to_scan" and exc.errno == errno.EINVAL:
                self.advisor_noted = True
                return False
            raise

    def cycle(self) -> Cycle:
        self.sim.advance(self.interval)
        free, committed, guests = self.readings()
        d = self.tuner.decide(free, committed)
        if d.action == START:
            if "[scan-time]" not in self.sim.kernel.read_attr("advisor_mode"):
                self._write("pages_to_scan", d.npages)
            else:
                self.advisor_noted = True
            self._write("sleep_millisecs", d.sleep)
            self._write("run", 1)
        else:
            self._write("run", 0)
        k = self.sim.kernel
        sharing = int(k.read_attr("pages_sharing"))
        return Cycle(
            time=self.sim.now, guests=guests, committed_kb=committed, free_kb=free,
            action=d.action, level=d.level, pages_to_scan=int(k.read_attr("pages_to_scan")),
            sleep_ms=int(k.read_attr("sleep_millisecs")), run=int(k.read_attr("run")),
            pages_sharing=sharing, saved_bytes=sharing * self.sim.page_size,
            general_profit=int(k.read_attr("general_profit")),
        )
