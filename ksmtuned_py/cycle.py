"""One tuning cycle: read the host, let the policy decide, write the knobs.

Every command that tunes or predicts runs this one cycle: the daemon (every interval),
``status`` and ``adjust`` (once), and ``sysfs-emu simulate`` (on a Simulation in
simulated time).  Its two parts are replaceable behind small interfaces, after oVirt
MOM's collectors, policy and controllers:

- a :class:`Host` gives :class:`~ksmtuned_py.readings.Readings` and takes writes of
  single KSM files (``filehost.FileHost``: the files under a root; ``simhost.SimulationHost``:
  a sysfs_emu Simulation);
- a :class:`Policy` turns readings (and its own state) into a :class:`Decision`
  (``policies.KsmtunedPolicy``, ksmtuned's rule, is the default).

Writing a decision is the same for every host and policy (:class:`KnobWriter`): the
reference's order ``pages_to_scan``, ``sleep_millisecs``, ``run``; ``pages_to_scan``
left alone while the kernel's advisor owns it; each failed write logged once per change.

One vocabulary for a cycle's data, everywhere in ksmtuned_py: memory in kB ends in
``_kb`` (``free_kb``, ``committed_kb``, ``thres_kb``, ``total_kb``), bytes in ``_bytes``,
milliseconds in ``_ms``; ``npages`` and ``sleep_ms`` are what the policy chose; the KSM
files keep their own names and units (``run``, ``pages_to_scan``, ``sleep_millisecs``,
``pages_sharing``, ``general_profit`` in bytes) and ``MemInfo`` its /proc/meminfo fields.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol

from ksmtuned_py.decision import START
from ksmtuned_py.knobs import KNOBS, KsmState, describe_error
from ksmtuned_py.readings import MemInfo, Readings
from ksmtuned_py.report import CycleReport, guest_reports, human_bytes, rates, unmerge_figures

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """What a policy wants of KSM for this cycle, and why."""

    action: str  # START (write the knobs, then run=1) or STOP (run=0)
    reason: str  # why, in one sentence
    total_kb: int  # the memory the policy counts with (ksmtuned: MemTotal at its start)
    npages: int | None = None  # pages_to_scan the policy holds, written on START (None: left as it is)
    sleep_ms: int | None = None  # sleep_millisecs, written on START (None: left as it is)
    level: str | None = None  # how it starts, in the policy's words (ksmtuned: boost or decay)
    npages_text: str = ""  # the exact text written to pages_to_scan when not str(npages) ("+64")
    thres_kb: int | None = None  # the free-memory threshold, for a policy that has one
    advisor_mode: str | None = None  # advisor_mode written first on START when it differs (None: left as it is)
    debug_before: tuple[str, ...] = ()  # the reference's DEBUG lines before the writes
    debug_after: tuple[str, ...] = ()  # and after them
    # The next cycle this many seconds after this one, when sooner than KSM_MONITOR_INTERVAL
    # (adaptive, while ksmd is near the end of a burst's scans); None: after the interval.
    next_cycle_s: float | None = None


class Host(Protocol):
    """Where a cycle reads and writes: the files under a root, or a simulation."""

    ksm_dir: str  # where the KSM files are, as messages name them
    page_size: int  # bytes per page, for pages_sharing -> bytes saved

    def read_meminfo(self) -> MemInfo:
        """/proc/meminfo alone (what a policy starts from); ReadingError when it cannot be read."""

    def read(self) -> Readings:
        """meminfo, the guests with their sizes, and the KSM files; ReadingError when impossible."""

    def read_knobs(self) -> KsmState:
        """The knobs and advisor_mode alone, as they read after the writes (no counters)."""

    def write_ksm(self, name: str, value: str) -> None:
        """One write of ``value`` and a newline to a KSM file; OSError when the kernel refuses it."""


class Policy(Protocol):
    """A tuning rule: from the readings and its own state, a decision; pure (no I/O, no clock)."""

    name: str
    npages: int | None  # pages_to_scan as the policy holds it now (None when it holds none)

    def start(self, meminfo: MemInfo) -> None:
        """Begin on this host, as the daemon does at start and reload.

        A policy asked to decide before it started starts from those readings (a fresh start).
        """

    def start_lines(self) -> list[str]:
        """The reference's DEBUG lines of the start (none for a policy that has none)."""

    def summary(self) -> str:
        """What the policy works with, for the ready status: ``total ... kB, thres ... kB, sleep ...ms``."""

    def describe(self) -> str:
        """What the policy does, in words, for simulate's plan ("ksmtuned's rule")."""

    def decide(self, readings: Readings) -> Decision:
        """This cycle's decision; it may change the policy's state (ksmtuned's npages)."""

    def state(self) -> dict:
        """The state to publish (JSON), from which ``policies.from_state`` rebuilds the policy."""


@dataclass(frozen=True)
class Writes:
    """What writing one decision did."""

    done: tuple[str, ...]  # "name=value", in the order written (failed ones too)
    ok: bool  # every write succeeded
    advisor_active: bool  # pages_to_scan was left to the kernel's advisor


class KnobWriter:
    """Writes decisions to a host's knobs, remembering failures so a repeat is logged once."""

    def __init__(self) -> None:
        self._failures: dict[str, str] = {}  # knob -> how its last write failed
        self._advisor: bool | None = None

    def apply(self, host: Host, decision: Decision, ksm: KsmState) -> Writes:
        """The reference's order: pages_to_scan, sleep_millisecs, run=1; or run=0."""
        if decision.action != START:
            return self._writes(host, [("run", "0")], advisor=False)
        values = []
        if decision.advisor_mode is not None and decision.advisor_mode != ksm.advisor_mode:
            # Written first: switching the advisor resets pages_to_scan (mm/ksm.c's advisor_mode_store).
            values.append(("advisor_mode", decision.advisor_mode))
            ksm = replace(ksm, advisor_mode=decision.advisor_mode)
        advisor = self._advisor_active(ksm)
        if decision.npages is not None and not advisor:
            # the text, as the reference echoes it (e.g. "+64" when clamped to KSM_NPAGES_MIN=+64)
            values.append(("pages_to_scan", decision.npages_text or str(decision.npages)))
        if decision.sleep_ms is not None:
            values.append(("sleep_millisecs", str(decision.sleep_ms)))
        values.append(("run", "1"))
        return self._writes(host, values, advisor)

    def _writes(self, host: Host, values: list[tuple[str, str]], advisor: bool) -> Writes:
        ok = [self._write(host, name, value) for name, value in values]
        return Writes(tuple(f"{n}={v}" for n, v in values), all(ok), advisor)

    def _write(self, host: Host, name: str, value: str) -> bool:
        """Write one knob; log a failure once per kind of failure (not once per value written)."""
        where = f"{host.ksm_dir}/{name}"
        try:
            host.write_ksm(name, value)
        except OSError as e:
            problem = describe_error(e)
            if self._failures.get(name) != problem:
                log.error("cannot write %s to %s: %s", value, where, problem)
                self._failures[name] = problem
            else:
                log.debug("cannot write %s to %s: %s (again)", value, where, problem)
            return False
        if name in self._failures:
            log.info("writing %s works again (%s)", where, value)
            del self._failures[name]
        return True

    def _advisor_active(self, ksm: KsmState) -> bool:
        """Is the advisor active now?  Logs each change once."""
        active = ksm.advisor_active
        if active != self._advisor:
            if active:
                log.info(
                    "the kernel's KSM advisor (advisor_mode=scan-time) sets pages_to_scan; "
                    "leaving it to the advisor and tuning only run and sleep_millisecs"
                )
            elif self._advisor:
                log.info("the kernel's KSM advisor is off; tuning pages_to_scan again")
            self._advisor = active
        return active


def _no_debug(*lines: str) -> None:
    """Where the debug lines go when nobody wants them."""


def _no_report(report: CycleReport) -> None:
    """What happens to a report before the closing debug line when nobody asks for more."""


class Cycle:
    """The one cycle, over a host and a policy (both may be replaced between cycles)."""

    def __init__(self, host: Host, policy: Policy, debug: Callable[..., None] = _no_debug,
                 on_report: Callable[[CycleReport], None] = _no_report):
        self.host = host
        self.policy = policy
        self.debug = debug  # called with the reference's DEBUG lines as they happen
        # Called with the report before the cycle's closing DEBUG line, so that whoever
        # sees that line sees what on_report did (the daemon publishes its state there).
        self.on_report = on_report
        self.writer = KnobWriter()
        self.cycles = 0  # cycles run so far
        self.previous: Readings | None = None  # the last cycle's readings (for rates over the interval)
        self.after: KsmState | None = None  # the KSM files right after the last cycle's writes

    def decide(self) -> tuple[Readings, Decision]:
        """Read the host and decide, writing nothing (``status``, ``adjust --dry-run``)."""
        readings = self.host.read()
        return readings, self.policy.decide(readings)

    def run(self) -> CycleReport:
        """Read, decide, write; the report says what happened.  ReadingError when the host cannot be read."""
        t0 = time.monotonic()
        readings, decision = self.decide()
        others = changed_knobs(self.after, readings.ksm)
        self.debug(*decision.debug_before)
        writes = self.writer.apply(self.host, decision, readings.ksm)
        # The counters are the readings' (a write of run 0 or 1 changes none of them); only what
        # the writes may have changed is read again (advisor_mode resets pages_to_scan, for one).
        knobs = self.host.read_knobs()
        after = replace(readings.ksm, knobs=knobs.knobs, advisor_mode=knobs.advisor_mode)
        self.cycles += 1
        report = make_report(readings, decision, writes, after, self.host.page_size,
                             duration=time.monotonic() - t0, cycles=self.cycles, previous=self.previous,
                             policy=getattr(self.policy, "name", ""), knobs_changed=others)
        self.previous, self.after = readings, after
        self.on_report(report)
        self.debug(*decision.debug_after)
        return report


def next_wait(interval: float, report: CycleReport | None) -> float:
    """Seconds to the next cycle: the interval, or the sooner cycle the last decision asked for."""
    if report is None or report.next_cycle_s is None:
        return interval
    return min(interval, max(1.0, report.next_cycle_s))


def make_report(readings: Readings, decision: Decision, writes: Writes, after: KsmState, page_size: int,
                duration: float, cycles: int, previous: Readings | None = None, policy: str = "",
                knobs_changed: tuple[str, ...] = ()) -> CycleReport:
    """The report of a cycle: its readings, its decision, and the KSM files right after the writes."""
    saved = after.saved_bytes(page_size)
    advisor = decision.action == START and writes.advisor_active
    cpu_percent, cow_rate = rates(previous, readings)
    need, room = unmerge_figures(readings, page_size)
    return CycleReport(
        time=readings.time,
        duration=duration,
        cycles=cycles,
        action=decision.action,
        level=decision.level,
        reason=decision.reason,
        npages=decision.npages,
        sleep_ms=decision.sleep_ms,
        free_kb=readings.free_kb,
        committed_kb=readings.committed_kb,
        thres_kb=decision.thres_kb,
        total_kb=decision.total_kb,
        guests=len(readings.guests),
        advisor_active=advisor,
        status=status_sentence(decision, readings.free_kb, advisor, saved),
        writes=writes.done,
        writes_ok=writes.ok,
        run=after.get("run"),
        pages_to_scan=after.get("pages_to_scan"),
        sleep_millisecs=after.get("sleep_millisecs"),
        pages_sharing=after.get("pages_sharing"),
        saved_bytes=saved,
        general_profit=after.get("general_profit"),
        ksm_zero_pages=after.get("ksm_zero_pages"),
        pages_scanned=after.get("pages_scanned"),
        policy=policy,
        ksmd_cpu_seconds=readings.ksmd_cpu_seconds,
        ksmd_cpu_percent=cpu_percent,
        cow_ksm=readings.cow_ksm,
        cow_ksm_per_second=cow_rate,
        unmerge_need_bytes=need,
        unmerge_room_bytes=room,
        per_guest=guest_reports(readings.guests),
        knobs_changed=knobs_changed,
        next_cycle_s=decision.next_cycle_s,
    )


def changed_knobs(after: KsmState | None, now: KsmState) -> tuple[str, ...]:
    """The knobs that changed since the last cycle's writes (another program wrote them): ``name old -> new``.

    pages_to_scan is the kernel's own while its scan-time advisor runs, so it is not compared then.
    """
    if after is None:
        return ()
    out = []
    for name in KNOBS:
        if name == "pages_to_scan" and (after.advisor_active or now.advisor_active):
            continue
        old, new = after.knobs.get(name), now.knobs.get(name)
        if old is not None and new is not None and old != new:
            out.append(f"{name} {old} -> {new}")
    return tuple(out)


def status_sentence(decision: Decision, free_kb: int, advisor: bool, saved_bytes: int | None) -> str:
    """One line for systemctl status: what KSM does now and what it saves."""
    if decision.action == START:
        if advisor:
            scan = "pages_to_scan by the kernel advisor"
        elif decision.npages is None:
            scan = "pages_to_scan as it is"
        else:
            scan = f"pages_to_scan={decision.npages}"
        sleep = "" if decision.sleep_ms is None else f" sleep={decision.sleep_ms}ms"
        text = f"running: {scan}{sleep}"
    elif decision.thres_kb is not None:
        text = f"stopped: free {free_kb} kB > thres {decision.thres_kb} kB"
    else:
        text = f"stopped: {decision.reason}"
    if saved_bytes is not None:
        text += f"; saved {human_bytes(saved_bytes)}"
    return text
