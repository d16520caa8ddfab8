"""The real kernel's scan-time advisor follows sysfs_emu.advisor, step for step.

A real process maps 20000 distinct mergeable pages; the real ksmd runs with
``advisor_mode`` scan-time, a 2 s target and a small page range, and we record
``pages_to_scan`` after each of six full scans. Two independent checks:

1. *Measured inputs* (always): the test measures each scan's duration from user
   space and ksmd's CPU time from ``/proc/<ksmd>/schedstat`` (the same
   ``sum_exec_runtime`` the kernel's ``task_sched_runtime`` returns, in ns;
   ``utime+stime`` in ``stat`` only has clock-tick resolution, too coarse for a
   percentage of ~150 ms). The tolerance is the measurement uncertainty itself,
   bounded rigorously rather than guessed: a scan ends when ``full_scans`` is
   incremented, so the end lies between the start of the poll before the one
   that saw it and the end of that poll (1-2 ms); it starts after the
   previous end plus ``sleep_millisecs`` and before its first page shows in
   ``pages_scanned``; ksmd's CPU time at the end is read while ksmd is still
   asleep (it used only microseconds since the advisor read it). From these
   intervals the advisor's whole-second scan time and whole-percent CPU use
   are computed at both ends and every value in between is a candidate; the
   observed ``pages_to_scan`` must be one of the candidates' predictions at
   every step (the context carried forward is that of the candidates that
   matched). In addition :class:`ScanTimeAdvisor`, fed with the midpoints and
   chained on its own without looking at the kernel, must predict the exact
   sequence up to the first step whose interval straddles a rounding boundary
   (intervals are ~10 ms and ~0.4 ms wide, so this is rare; the test logs it).
2. *The kernel's own inputs* (when tracefs can be mounted): the
   ``ksm:ksm_advisor`` trace event gives the scan time and CPU percent the
   kernel computed; they must lie among the measured candidates, and fed to
   :func:`sysfs_emu.advisor.advise` with our own chained context they must
   give the traced and the sysfs ``pages_to_scan`` exactly; the scan time must
   equal the whole seconds between the ``ksm_start_scan`` and ``ksm_advisor``
   events (monotonic trace clock). The trace uses a private tracefs mount and
   instance, removed afterwards.

Runs in about 25 s. Every setting is restored by the ``real_ksm`` fixture
(``run`` left at 0); the workload process is killed in all cases.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sysfs_emu import Kernel
from sysfs_emu.advisor import ScanTimeAdvisor, advise, cpu_percent
from tests import realksm
from tests.fidelity_workload import start_workload, workload_processes

log = logging.getLogger(__name__)

pytestmark = pytest.mark.realksm

PAGES = 20000
SLEEP_MS = 20
MIN_PAGES = 100
MAX_PAGES = 2000
TARGET_S = 2
MAX_CPU = 70
SCANS = 6
SCAN_TIMEOUT_S = 30.0

# After a full scan ksmd sleeps at least sleep_millisecs before the next one starts.
GAP_MIN_S = SLEEP_MS / 1000
# The advisor reads the clock and ksmd's CPU time a few microseconds before
# full_scans is incremented.
ADVISOR_LEAD_S = 0.001
ADVISOR_LEAD_NS = 1_000_000
# CPU time ksmd uses from the advisor's reading until it sleeps (trace, return,
# unlock, schedule; interrupts included): microseconds, bounded generously.
ASLEEP_LEAD_NS = 200_000


def ksmd_pid() -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text() == "ksmd\n":
                    return int(entry.name)
    pytest.skip("no ksmd thread found")


def read_int(name: str) -> int:
    return int(realksm.read(name))


@dataclass(frozen=True)
class Bracket:
    """An instant known only to lie between two readings of the clock and of ksmd's CPU time."""

    t_lo: float
    t_hi: float
    cpu_lo: int
    cpu_hi: int

    @property
    def t_mid(self) -> float:
        return (self.t_lo + self.t_hi) / 2

    @property
    def cpu_mid(self) -> int:
        return (self.cpu_lo + self.cpu_hi) // 2


@dataclass(frozen=True)
class Scan:
    """One real full scan: when it started (an interval), when it ended, and its result."""

    start_lo: float
    start_hi: float
    end: Bracket
    pages_to_scan: int


def watch_scans(ksmd_cpu, count: int, timeout: float, start_lo: float, scanned_before: int) -> list[Scan]:
    """Poll full_scans and pages_scanned until ``count`` scans completed, bracketing each instant.

    A scan ends when full_scans is incremented (just after the advisor ran); it
    started before its first page was counted in pages_scanned, and not before
    ``start_lo`` (for the first scan: before run was set to 1; later: at least
    sleep_millisecs after the previous end).
    """
    scans: list[Scan] = []
    t_pre, c_pre = time.monotonic(), ksmd_cpu()
    seen = read_int("full_scans")
    mark, start_hi = scanned_before, None
    deadline = t_pre + timeout
    while len(scans) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"real ksmd completed {len(scans)} of {count} scans in {timeout} s")
        time.sleep(0.001)
        t0, c0 = time.monotonic(), ksmd_cpu()
        now = read_int("full_scans")
        if start_hi is None and read_int("pages_scanned") != mark:
            start_hi = time.monotonic()
        if now != seen:
            pages = read_int("pages_to_scan")
            c1 = ksmd_cpu()
            t1 = time.monotonic()
            assert now == seen + 1, f"missed a full scan ({seen} -> {now}): the poll was too slow"
            assert start_hi is not None, "a full scan ended without scanning a page"
            # The increment happened after the previous poll began (t_pre) and before now.
            t_lo = t_pre - ADVISOR_LEAD_S
            if t1 < t_lo + GAP_MIN_S:
                # ksmd was still asleep when c1 was read: it has used only the few
                # microseconds from the advisor's clock reading to its sleep since.
                end = Bracket(t_lo, t1, c1 - ASLEEP_LEAD_NS, c1)
            else:
                end = Bracket(t_lo, t1, c_pre - ADVISOR_LEAD_NS, c1)
            scans.append(Scan(start_lo, start_hi, end, pages))
            seen = now
            start_lo, start_hi, mark = end.t_lo + GAP_MIN_S, None, read_int("pages_scanned")
        t_pre, c_pre = t0, c0
    return scans


# ---- tracefs ----------------------------------------------------------------

ADVISOR_RE = re.compile(
    r"\s(\d+\.\d+): ksm_advisor: ksm scan time (\d+) pages_to_scan (\d+) cpu percent (\d+)"
)
START_RE = re.compile(r"\s(\d+\.\d+): ksm_start_scan: seq (\d+)")
EVENTS = ("ksm_advisor", "ksm_start_scan")


@dataclass(frozen=True)
class TracedAdvice:
    start: float
    at: float
    scan_time: int
    pages_to_scan: int
    cpu_percent: int


class KsmTrace:
    """A private tracefs instance recording ksm:ksm_start_scan and ksm:ksm_advisor."""

    def __init__(self) -> None:
        self.mount: str | None = None
        self.instance: Path | None = None
        self.reason = ""

    def __enter__(self) -> KsmTrace:
        try:
            self.mount = tempfile.mkdtemp(prefix="ksmtuned-py-trace.")
            subprocess.run(
                ["mount", "-t", "tracefs", "nodev", self.mount], check=True, capture_output=True, text=True
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            self.reason = f"cannot mount tracefs: {getattr(exc, 'stderr', '') or exc}".strip()
            self._unmount()
            return self
        try:
            instance = Path(self.mount, "instances", f"ksmtuned-py-advisor-{os.getpid()}")
            instance.mkdir()
            self.instance = instance
            (instance / "trace_clock").write_text("mono")
            for event in EVENTS:
                (instance / "events" / "ksm" / event / "enable").write_text("1")
        except OSError as exc:
            self.reason = f"no ksm trace events: {exc}"
            self._cleanup()
        return self

    @property
    def available(self) -> bool:
        return self.instance is not None

    def advisor_runs(self) -> list[TracedAdvice]:
        text = (self.instance / "trace").read_text()
        starts: list[float] = []
        runs: list[TracedAdvice] = []
        for line in text.splitlines():
            if m := START_RE.search(line):
                starts.append(float(m.group(1)))
            elif m := ADVISOR_RE.search(line):
                at, scan_time, pages, pct = float(m.group(1)), *map(int, m.group(2, 3, 4))
                runs.append(TracedAdvice(starts[-1], at, scan_time, pages, pct))
        return runs

    def _unmount(self) -> None:
        if self.mount:
            if os.path.ismount(self.mount):
                subprocess.run(["umount", self.mount], check=False)
            with contextlib.suppress(OSError):
                os.rmdir(self.mount)
            self.mount = None

    def _cleanup(self) -> None:
        if self.instance is not None:
            for event in EVENTS:
                with contextlib.suppress(OSError):
                    (self.instance / "events" / "ksm" / event / "enable").write_text("0")
            with contextlib.suppress(OSError):
                self.instance.rmdir()
            self.instance = None
        self._unmount()

    def __exit__(self, *exc) -> None:
        self._cleanup()


# ---- predictions ------------------------------------------------------------


def scan_time_candidates(lo_s: float, hi_s: float) -> set[int]:
    return {max(1, n) for n in range(math.floor(max(lo_s, 0.0)), math.floor(hi_s) + 1)}


def cpu_percent_candidates(diff_lo_ns: int, diff_hi_ns: int, scan_time: int) -> set[int]:
    lo = cpu_percent(max(diff_lo_ns, 0), 0, scan_time)
    hi = cpu_percent(diff_hi_ns, 0, scan_time)
    return set(range(lo, hi + 1))


@dataclass(frozen=True)
class State:
    """The advisor context a consistent explanation of the observations has reached."""

    pages_to_scan: int
    scan_time: int
    change: int


def advise_from(state: State, scan_time: int, cpu_pct: int):
    """The advisor's next step from ``state`` with this test's settings."""
    return advise(state.pages_to_scan, scan_time, cpu_pct, state.scan_time, state.change,
                  target_scan_time=TARGET_S, max_cpu=MAX_CPU, max_pages_to_scan=MAX_PAGES)


def test_real_advisor_follows_the_formula(real_ksm):
    pid = ksmd_pid()
    stat = Path(f"/proc/{pid}/schedstat")
    if not stat.exists():
        pytest.skip("kernel without schedstat: ksmd's CPU time in ns is not readable")

    def ksmd_cpu() -> int:
        return int(stat.read_text().split()[0])

    with KsmTrace() as trace, workload_processes() as procs:
        procs.append(start_workload([{"contents": list(range(1, PAGES + 1))}]))
        # A clean start: nothing merged, the scan cursor back at the head.
        realksm.write("run", 2)
        realksm.write("run", 0)
        realksm.write("smart_scan", 0)  # the same work in every scan
        realksm.write("sleep_millisecs", SLEEP_MS)
        realksm.write("advisor_max_cpu", MAX_CPU)
        realksm.write("advisor_min_pages_to_scan", MIN_PAGES)
        realksm.write("advisor_max_pages_to_scan", MAX_PAGES)
        realksm.write("advisor_target_scan_time", TARGET_S)
        realksm.write("advisor_mode", "scan-time")
        assert read_int("pages_to_scan") == MIN_PAGES

        scanned_before = read_int("pages_scanned")
        t_run = time.monotonic()
        realksm.write("run", 1)  # wakes ksmd: the first scan starts at once
        try:
            scans = watch_scans(ksmd_cpu, SCANS, SCAN_TIMEOUT_S, t_run, scanned_before)
        finally:
            realksm.write("run", 0)
        trace_ok, trace_reason = trace.available, trace.reason
        traced = trace.advisor_runs() if trace_ok else []

    observed = [e.pages_to_scan for e in scans]
    log.info("real pages_to_scan after each scan: %s", observed)

    # ---- 1. measured inputs -------------------------------------------------
    # (a) every step explained by some value inside the measurement brackets
    states = {State(MIN_PAGES, 0, 0)}
    measured_inputs: list[set[tuple[int, int]]] = []
    ambiguous_from: int | None = None
    prev = None
    for k, scan in enumerate(scans):
        dur_lo, dur_hi = scan.end.t_lo - scan.start_hi, scan.end.t_hi - scan.start_lo
        if prev is None:
            cpu_lo, cpu_hi = scan.end.cpu_lo, scan.end.cpu_hi  # baseline 0 after the reset
        else:
            cpu_lo = scan.end.cpu_lo - prev.end.cpu_hi
            cpu_hi = scan.end.cpu_hi - prev.end.cpu_lo
        inputs = {
            (t, c)
            for t in scan_time_candidates(dur_lo, dur_hi)
            for c in cpu_percent_candidates(cpu_lo, cpu_hi, t)
        }
        measured_inputs.append(inputs)
        next_states = set()
        predictions = set()
        for state in states:
            for scan_time, pct in inputs:
                advice = advise_from(state, scan_time, pct)
                predictions.add(advice.pages_to_scan)
                if advice.pages_to_scan == scan.pages_to_scan:
                    next_states.add(State(advice.pages_to_scan, scan_time, advice.change))
        assert next_states, (
            f"scan {k + 1}: the kernel set pages_to_scan {scan.pages_to_scan}, the advisor predicts "
            f"{sorted(predictions)} for scan time {dur_lo:.3f}..{dur_hi:.3f} s and ksmd CPU "
            f"{cpu_lo / 1e6:.1f}..{cpu_hi / 1e6:.1f} ms (observed so far {observed[: k + 1]})"
        )
        log.info(
            "scan %d: %.3f..%.3f s, CPU %.1f..%.1f ms -> inputs %s, predictions %s, kernel %d",
            k + 1,
            dur_lo,
            dur_hi,
            cpu_lo / 1e6,
            cpu_hi / 1e6,
            sorted(inputs),
            sorted(predictions),
            scan.pages_to_scan,
        )
        if ambiguous_from is None and (len(predictions) > 1 or len(next_states) > 1):
            ambiguous_from = k
        states = next_states
        prev = scan

    # (b) the advisor API fed with the midpoint estimates, on its own
    kernel = Kernel()
    for name, value in (
        ("advisor_max_cpu", MAX_CPU),
        ("advisor_min_pages_to_scan", MIN_PAGES),
        ("advisor_max_pages_to_scan", MAX_PAGES),
        ("advisor_target_scan_time", TARGET_S),
        ("advisor_mode", "scan-time"),
    ):
        kernel.write_attr(name, f"{value}\n")
    advisor = ScanTimeAdvisor()
    predicted = []
    for scan in scans:
        advisor.start_scan((scan.start_lo + scan.start_hi) / 2, kernel)
        predicted.append(advisor.on_full_scan(scan.end.t_mid, scan.end.cpu_mid / 1e9, kernel))
    exact_until = len(scans) if ambiguous_from is None else ambiguous_from
    log.info("midpoint prediction %s; brackets unambiguous for the first %d scans", predicted, exact_until)
    assert predicted[:exact_until] == observed[:exact_until]

    # ---- 2. the kernel's own inputs ------------------------------------------
    if not trace_ok:
        log.warning("ksm_advisor trace not checked: %s", trace_reason)
        return
    assert [t.pages_to_scan for t in traced] == observed
    # the kernel's own scan time and CPU percent lie inside our measurement brackets
    assert all((t.scan_time, t.cpu_percent) in m for t, m in zip(traced, measured_inputs, strict=True))
    state = State(MIN_PAGES, 0, 0)
    for t in traced:
        seconds = t.at - t.start
        if abs(seconds - round(seconds)) > 0.001:  # not within a clock read of a boundary
            assert t.scan_time == max(1, math.floor(seconds)), t
        advice = advise_from(state, t.scan_time, t.cpu_percent)
        log.info("traced %s -> %s", t, advice)
        assert advice.pages_to_scan == t.pages_to_scan, (t, advice)
        state = State(advice.pages_to_scan, advice.scan_time, advice.change)
