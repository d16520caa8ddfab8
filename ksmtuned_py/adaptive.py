"""``KSM_POLICY=adaptive``: ksmtuned's gate, and a scan rate that follows what scanning returns.

Whether KSM runs is ksmtuned's rule (``decision.py``): it runs while the guests plus the
threshold do not fit in memory, or free memory is short.  How fast ksmd scans is this
module's: a rule over what the last interval cost and returned, pure (no I/O, no clock:
time comes in the readings), so the same readings always give the same decision.

- **Burst.** When KSM first starts, ksmd scans so that a full scan of the guests' pages
  takes a little less than an interval (``BURST_SHARE``), for two full scans (a page merges
  on its second visit), and longer while pages still merge and change.  A guest that starts
  before those scans are done (or while the gate interrupted them) joins the burst.
- **Catch-up.** When a guest starts (the libvirt hook's retune, or the scan seeing a new
  guest) or the guests' memory grows, two full scans at that rate but within
  ``CATCH_UP_CPU`` of a CPU: a new guest is a small part of what a full scan visits.  Then
  on into the next pass as far as the new guests' memory: mm/ksm.c puts a new process just
  behind the cursor, so its second visit comes that far into the pass after the two.
- **Sooner decisions.** ksmd can only be stopped at a decision: while a burst or catch-up
  scans, the next one comes after ``RECHECK_SHARE`` of the interval (the daemon and
  simulate honour ``Decision.next_cycle_s``), so its scans go on at most that long once done.
- **Steady.** Once a full scan adds no savings, it backs off: a full scan takes
  ``IDLE_SCAN_S[0]``, twice as long after each quiet interval, up to ``IDLE_SCAN_S[1]``,
  and never faster than ksmtuned's slowest (``KSM_NPAGES_MIN`` pages every sleep).
  That slow scan is the probe for new duplicates: when it merges pages again, it goes back
  to its quickest (a catch-up would rescan every guest twice for pages it is finding anyway).
  Copy-on-write breaks (``cow_ksm``: guests writing to merged pages) bring the probe back
  to its quickest, since the guests' memory changed.
- **Rewrites.** Copy-on-write breaks of a tenth of the merged pages in one interval (a
  guest that reboots reloads its OS over merged memory) start a catch-up; breaks of memory
  that merged again, again and again, a settle once they stop (``rewrites.py``).
- **Finishing.** Where free memory was short, merging is what makes the gate stop KSM: a
  burst or catch-up whose last interval merged pages finishes its full scans first.
- **Budget.** Never faster than ``KSM_MAX_CPU`` percent of one CPU allows, from ksmd's
  measured CPU time per page scanned (and, before there is one, a pessimistic cost of
  pages not merged yet), and slower at once when the last interval went over it.
- **The advisor.** While the kernel's scan-time advisor sets ``pages_to_scan``, the policy
  leaves it alone (the cycle does not write it) and keeps ``run`` and ``sleep_millisecs``.

The gain of scanning is ``pages_sharing + ksm_zero_pages`` (memory merged), counted with
the copy-on-write breaks added back, so that merges undone in the same interval still
count as what scanning found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ksmtuned_py import config as configmod
from ksmtuned_py import rewrites
from ksmtuned_py.cycle import Decision
from ksmtuned_py.decision import START, STOP, Params, Tuner, Tuning
from ksmtuned_py.ksmdpace import (TICK_S, Interval, batch, guest_pages, interval, merged_pages, resume_into,
                                  scan_time, track_passes, volatile_share)
from ksmtuned_py.readings import MemInfo, Readings

BURST, CATCH_UP, STEADY, ADVISOR = "burst", "catch-up", "steady", "advisor"
STARTS = "ksm starts"
BURST_SHARE = 0.8  # a full scan while merging takes 0.8 of KSM_MONITOR_INTERVAL, CPU allowing ...
BURST_SCAN_S = 5.0  # ... and at least this long
IDLE_SCAN_S = (900.0, 8 * 3600.0)  # a full scan once scans stop paying: from, doubling up to
BURST_SCANS = 2  # full scans a burst makes at least
UNMERGED_PAGE_COST_S = 12e-6  # CPU per page not merged yet, before ksmd's own cost is measured
MIN_GAIN_PAGES = 256  # 1 MiB merged in an interval: scanning paid
REBURST_SHARE = 1000  # ... and 1/1000 of what is merged
TAIL_YIELD = 0.01  # after its scans, a burst goes on while 1 page in 100 scanned merged ...
TAIL_VOLATILE = 0.05  # ... and 5 % of the pages KSM tracks change between scans (they may merge yet)
GROWTH = 0.02  # the guests' memory grew by 2 % since the last catch-up: new pages to scan ...
GROWTH_MIN_KB = 16384  # ... and by 16 MiB at least (what RSS wobbles by on a small host)
CATCH_UP_CPU = 0.05  # a catch-up scans with at most this share of one CPU
RECHECK_SHARE = 1 / 6  # while a burst or catch-up scans, the next decision after 1/6 of the interval ...
RECHECK_MIN_S = 5.0  # ... or this, if longer: its scans go on at most that long after they are done
RATE_HOLD = 0.25  # a burst or catch-up keeps its batch while the rate moves less than this
COW_QUIET = 2  # copy-on-write breaks bring the steady scan back to at most 4 x IDLE_SCAN_S[0]


@dataclass
class Memo:
    """What the policy remembers of the last cycle (published as JSON with the daemon's state)."""

    time: float | None = None
    cpu_s: float | None = None  # ksmd's CPU time since boot
    scanned: int | None = None  # pages_scanned
    full_scans: int | None = None
    merged: int | None = None  # pages_sharing + ksm_zero_pages
    cow: int | None = None  # cow_ksm
    guests: list[int] = field(default_factory=list)  # pids
    committed_kb: int = 0  # the guests' memory when the last burst began (lowered as it falls)
    mode: str = STOP
    scans_left: int = 0  # full scans the burst or catch-up still makes
    pending: str = BURST  # which of them
    quiet: int = 0  # intervals in a row without gain (the steady scan slows with each)
    page_cost_s: float | None = None  # ksmd's CPU seconds per page scanned, as last measured
    # Where ksmd's cursor is: pages_scanned at the first decision after its last pass ended, and
    # the pages of the pass before (None until seen).  A new guest's memory goes in just behind
    # the cursor (mm/ksm.c's ksm_enter), so its second visit comes that far into the pass after next.
    wrap_scanned: int | None = None
    pass_pages: int | None = None
    resume_into: int = 0  # pages into the pass after the burst's or catch-up's full scans where it ends
    resume_pages: int | None = None  # pages_scanned at which it ends, once its full scans are done
    started: bool = False  # KSM ran under this policy (a restart after the gate closed is no new start)
    cow_trigger: int = 0  # the breaks that started the running catch-up (0: something else did; rewrites.py)
    cow_base: int = 0  # pages_sharing + ksm_zero_pages when it started
    cow_from: int = 0  # full_scans when it started
    cow_misses: int = 0  # such catch-ups in a row that merged back little
    cow_retry_at: float = 0.0  # no catch-up for copy-on-write breaks before this time
    cow_left: int = 0  # breaks left unmerged by the last such catch-up, or come while backing off ...
    cow_left_at: float = 0.0  # ... caught up with at this time, if still not merged back
    cow_tries: int = 0  # such later catch-ups in a row (each waits twice as long)
    cow_since: int = 0  # breaks since the last settle (rewrites.py), and when an interval last had some:
    cow_seen_at: float = 0.0  # a settle once they stop, ...
    cow_seen_scans: int = 0  # (full_scans then)
    cow_episodes: int = 0  # ... if they came this often after pages merged again (cow_remerged)
    cow_remerged: bool = False
    settle_to: int = 0  # full_scans until which the settle keeps the probe at its quickest (0: none)
    finishing: bool = False  # a burst or catch-up goes on past the gate's stop, to the end of its full scans


class AdaptivePolicy:
    """ksmtuned's gate; a scan rate from ksmd's measured cost and gain (see the module's text)."""

    name = "adaptive"
    params: tuple[str, ...] = ("max_cpu",)  # what a spec may give (adaptive:max_cpu=5); the instance's are ksmtuned's
    uses_config = True  # ksmtuned's KSM_* values are its gate, KSM_MAX_CPU its budget

    def __init__(self, params: Params, max_cpu: int = 20, tuning: Tuning | None = None,
                 memo: Memo | None = None, npages: int | None = None, sleep_ms: int | None = None,
                 interval_s: float = 60.0, spec_max_cpu: bool = False):
        self.params = params
        self.max_cpu = max_cpu  # percent of one CPU
        self._spec_max_cpu = spec_max_cpu  # max_cpu came from a spec, not KSM_MAX_CPU
        self.interval_s = interval_s  # KSM_MONITOR_INTERVAL: a burst's full scan ends just before a decision
        self.tuner: Tuner | None = None if tuning is None else Tuner(params, tuning.total, 0, tuning)
        self.memo = memo or Memo()
        self._npages = npages
        self._sleep_ms = sleep_ms

    @classmethod
    def from_config(cls, config: configmod.Config, max_cpu: int | None = None) -> "AdaptivePolicy":
        """From the configuration; ``max_cpu`` (a spec's) instead of KSM_MAX_CPU when given (1 to 100)."""
        from ksmtuned_py.policies import PolicySpecError, ksmtuned_params

        if max_cpu is not None and not 1 <= max_cpu <= 100:
            raise PolicySpecError(f"policy adaptive: max_cpu is a percentage of one CPU, 1 to 100, not {max_cpu}")
        budget = int(config["KSM_MAX_CPU"]) if max_cpu is None else max_cpu
        return cls(ksmtuned_params(config), budget, interval_s=float(config.monitor_interval),
                   spec_max_cpu=max_cpu is not None)

    @property
    def spec(self) -> str:
        return f"{self.name}:max_cpu={self.max_cpu}" if self._spec_max_cpu else self.name

    @classmethod
    def from_state(cls, state: dict) -> "AdaptivePolicy":
        """The policy a daemon published; KeyError, TypeError or ValueError when the state is not one."""
        memo = Memo(**state["memo"])
        return cls(Params(**state["params"]), int(state["max_cpu"]), Tuning(**state["tuning"]), memo,
                   state.get("npages"), state.get("sleep_ms"), float(state.get("interval_s", 60.0)))

    @property
    def npages(self) -> int | None:
        return self._npages

    def start(self, meminfo: MemInfo) -> None:
        """ksmtuned's tuning from MemTotal (sleep and thres); a burst at the first start of KSM."""
        self.tuner = Tuner(self.params, meminfo.total)
        self.memo = Memo()

    def start_lines(self) -> list[str]:
        return self.tuner.tuning.debug_lines() if self.tuner is not None else []

    def describe(self) -> str:
        """What the policy does, in words (simulate's plan)."""
        return f"the adaptive policy (ksmtuned's start and stop; ksmd within {self.max_cpu}% of a CPU)"

    def summary(self) -> str:
        t = self.tuner.tuning
        return f"total {t.total} kB, thres {t.thres} kB, sleep {t.sleep}ms, ksmd at most {self.max_cpu}% of a CPU"

    def state(self) -> dict:
        return {"policy": self.name, "npages": self._npages, "sleep_ms": self._sleep_ms,
                "max_cpu": self.max_cpu, "interval_s": self.interval_s, "tuning": asdict(self.tuner.tuning),
                "params": asdict(self.params),
                "memo": asdict(self.memo)}

    # --- the decision ---------------------------------------------------------------------

    def decide(self, readings: Readings) -> Decision:
        if self.tuner is None:
            self.start(readings.meminfo)
        last = interval(self.memo, readings)
        gate = self.tuner.decide(readings.free_kb, readings.committed_kb)  # ksmtuned's rule, for run
        # (Under the advisor there are no full scans of the policy's own to finish.)
        finishing = gate.action == STOP and not readings.ksm.advisor_active and self._may_finish(readings, last)
        self.memo.finishing = finishing
        if gate.action == STOP and not finishing:
            return self._stop(gate.reason(), readings, last)
        if readings.ksm.advisor_active:
            self.memo = replace(remember(self.memo, readings), mode=ADVISOR)
            why = ("advisor: the kernel's scan-time advisor sets pages_to_scan (within its advisor_max_cpu); "
                   f"sleep {self.tuner.tuning.sleep} ms as ksmtuned's")
            return self._decision(START, why, readings, last, ADVISOR, sleep_ms=self.tuner.tuning.sleep)
        track_passes(self.memo, readings)
        guests = self.memo.guests
        mode, why = self._mode(self.memo, readings, last, finishing)
        if finishing:
            if mode == STEADY:  # its full scans are done: now the rule's stop
                return self._stop(gate.reason(), readings, last)
            why = (f"{why}, finished although the rule would stop KSM now ({gate.reason()}): "
                   "its first pass is paid for, and pages merge only on the second")
        rate, limit = self._rate(mode, readings, last)
        if mode == self.memo.mode:
            rate = self._held_rate(mode, rate, limit)
        npages, sleep_ms = batch(rate, self.tuner.tuning.sleep, max(1, self.params.npages_min))
        self.memo.mode = mode
        self.memo = remember(self.memo, readings)
        if finishing:  # guests that start meanwhile are new when the rule runs KSM again
            self.memo.guests = guests
        reason = (f"{why}; pages_to_scan {npages}, sleep {sleep_ms} ms: about {rate:.0f} pages/s, "
                  f"a full scan in {scan_time(guest_pages(readings) / rate)}{limit}")
        return self._decision(START, reason, readings, last, mode, npages, sleep_ms)

    def _stop(self, reason: str, readings: Readings, last: Interval | None) -> Decision:
        # The guests are not remembered: those that start while KSM is stopped are new when it runs again.
        self.memo = replace(remember(self.memo, readings), mode=STOP, guests=self.memo.guests, finishing=False)
        return self._decision(STOP, reason, readings, last, None)

    def _may_finish(self, readings: Readings, last: Interval | None) -> bool:
        """Whether a burst or catch-up still scanning goes on past the gate's stop.

        Where free memory was short, merging is what frees the memory that closes the gate:
        stopping then, in the pass that merges the pages the one before checksummed, throws
        that pass away.  When nothing was merging (free memory came back on its own), or a
        guest left, the rule's stop stands.  (A guest's memory shrinking is no sign: with
        use_zero_pages, merging itself lowers it, as an empty page merged is no longer resident.)
        """
        memo = self.memo
        if memo.mode not in (BURST, CATCH_UP):
            return False
        if not memo.finishing and (last is None or last.gain <= 0):
            return False
        return set(memo.guests) <= {g.pid for g in readings.guests}

    def _held_rate(self, mode: str, rate: float, limit: str) -> float:
        """The last decision's rate, while a burst or catch-up's new one is within RATE_HOLD of it.

        ksmd's cost per page, measured over a sooner cycle's few seconds, wobbles by tens of
        per cent: holding the rate keeps the knobs (and the log) still.  Never held up where
        the CPU budget lowers it.
        """
        if mode not in (BURST, CATCH_UP) or not self._npages or not self._sleep_ms:
            return rate
        held = self._npages / (self._sleep_ms / 1000 + TICK_S)
        if abs(rate / held - 1) >= RATE_HOLD or (limit and rate < held):
            return rate
        return held

    def _next_cycle_s(self, level: str | None) -> float | None:
        """Sooner than the interval while a burst or catch-up scans (ksmd can only be stopped at a decision)."""
        if level not in (BURST, CATCH_UP):
            return None
        return min(self.interval_s, max(RECHECK_MIN_S, self.interval_s * RECHECK_SHARE))

    def _decision(self, action: str, reason: str, readings: Readings, last: Interval | None, level: str | None,
                  npages: int | None = None, sleep_ms: int | None = None) -> Decision:
        """The decision, with its debug lines: the readings, and what was decided and why."""
        t = self.tuner.tuning
        if npages is not None:
            self._npages = npages
        if sleep_ms is not None:
            self._sleep_ms = sleep_ms
        cpu = "" if last is None or last.cpu_share is None else f" ksmd cpu {last.cpu_share * 100:.1f}%"
        before = (f"committed {readings.committed_kb} free {readings.free_kb}{cpu}",)
        if action == STOP:
            return Decision(STOP, reason, t.total, npages=self._npages, sleep_ms=t.sleep, thres_kb=t.thres,
                            debug_before=before, debug_after=(f"adaptive: stop ksm: {reason}",))
        return Decision(START, reason, t.total, npages=npages, sleep_ms=sleep_ms, level=level, thres_kb=t.thres,
                        next_cycle_s=self._next_cycle_s(level), debug_before=before,
                        debug_after=(f"adaptive: {reason}", f"KSMCTL start {npages or 'advisor'} {sleep_ms}"))

    def _mode(self, memo: Memo, readings: Readings, last: Interval | None,
              finishing: bool = False) -> tuple[str, str]:
        """Burst, catch-up or steady, and why; updates the memo's scan and quiet counts.

        ``finishing``: the gate would stop KSM; a running burst or catch-up only ends its
        full scans (nothing new starts, nothing is prolonged).
        """
        rewrites.count(memo, readings, last, MIN_GAIN_PAGES)
        trigger = None if finishing else self._trigger(memo, readings)
        if trigger:
            memo.cow_trigger = 0  # a catch-up for another reason
        elif memo.mode == STEADY:
            trigger = rewrites.start(memo, readings, last, MIN_GAIN_PAGES)
        if trigger:
            # A guest that starts during a burst's scans (or while the gate interrupted them) joins the burst.
            bursting = memo.pending == BURST and memo.scans_left > 0
            mode = BURST if trigger == STARTS or bursting else CATCH_UP
            memo.scans_left, memo.quiet, memo.committed_kb, memo.pending = \
                BURST_SCANS, 0, readings.committed_kb, mode
            memo.resume_into, memo.resume_pages = resume_into(memo, readings, new_guests=trigger != STARTS), None
            return mode, f"{mode}: {trigger}"
        gain = 0 if last is None else last.gain
        was_left = memo.scans_left
        memo.scans_left = max(0, memo.scans_left - (0 if last is None else last.full_scans))
        if memo.scans_left > 0:  # (also scans the gate interrupted)
            return memo.pending, f"{memo.pending}: {memo.scans_left} more full scan{'s' if memo.scans_left > 1 else ''}"
        if was_left and memo.resume_into and memo.wrap_scanned is not None:
            memo.resume_pages = memo.wrap_scanned + memo.resume_into  # its full scans just ended
        scanned = readings.ksm.counters.get("pages_scanned")
        if memo.mode in (BURST, CATCH_UP) and memo.resume_pages is not None and scanned is not None:
            if scanned < memo.resume_pages:
                return memo.mode, (f"{memo.mode}: its full scans are done; {memo.resume_pages - scanned} more "
                                   "pages, to the guests that started behind ksmd's cursor")
            memo.resume_pages = None
        if memo.mode in (BURST, CATCH_UP) and not finishing:
            if last is not None and last.scanned and gain / last.scanned >= TAIL_YIELD and \
                    volatile_share(readings) >= TAIL_VOLATILE:
                memo.scans_left = 1
                return memo.mode, (f"{memo.mode}: still merging ({gain} pages in the last interval) "
                                   f"while {readings.ksm.counters.get('pages_volatile', 0)} pages change")
            behind = rewrites.not_back(memo, readings)
            if behind:
                memo.scans_left, memo.resume_into = 1, 0  # whole passes now: the breaks are anywhere
                return memo.mode, f"{memo.mode}: {behind} of the copy-on-write breaks not merged back yet"
            memo.quiet = 0
            return STEADY, f"steady: the {memo.mode}'s full scans are done"
        if gain >= max(MIN_GAIN_PAGES, (merged_pages(readings) or 0) // REBURST_SHARE):
            memo.quiet = 0
            # The breaks count as merged: pages_sharing drops only when ksmd visits a broken merge again.
            back = f" (with its {last.cow} copy-on-write breaks counted back)" if last is not None and last.cow else ""
            return STEADY, f"steady: the last interval merged {gain} pages{back}, probing at the quickest again"
        if last is not None and last.cow >= MIN_GAIN_PAGES:
            memo.quiet = min(memo.quiet, COW_QUIET)
            return STEADY, f"steady: {last.cow} copy-on-write breaks, probing again sooner"
        settle = rewrites.settling(memo, readings, MIN_GAIN_PAGES)
        memo.quiet = 0 if settle else memo.quiet + 1
        return STEADY, settle or "steady: full scans add no savings"

    @staticmethod
    def _trigger(memo: Memo, readings: Readings) -> str | None:
        """Why a burst starts now (KSM starts, a guest started, the guests' memory grew), or None."""
        new = sorted({g.pid for g in readings.guests} - set(memo.guests))
        grown = readings.committed_kb - memo.committed_kb >= max(memo.committed_kb * GROWTH, GROWTH_MIN_KB)
        memo.committed_kb = min(memo.committed_kb, readings.committed_kb)
        if memo.full_scans is None or not memo.started:
            memo.started = True
            return STARTS
        if new:
            return f"guest {', '.join(map(str, new[:3]))}{' ...' if len(new) > 3 else ''} started"
        if grown:
            return f"the guests' memory grew to {readings.committed_kb} kB"
        return None

    def _rate(self, mode: str, readings: Readings, last: Interval | None) -> tuple[float, str]:
        """Pages per second for ``mode`` within the CPU budget; and what limited it, in words."""
        pages = guest_pages(readings)
        budget = self.max_cpu / 100
        if mode in (BURST, CATCH_UP):
            # A full scan in a little less than an interval: the burst's scans end before a
            # decision, which can then stop them (ksmd cannot be stopped between decisions).
            seconds = max(BURST_SCAN_S, BURST_SHARE * self.interval_s)
            rate = pages / seconds
        else:
            rate = pages / min(IDLE_SCAN_S[1], IDLE_SCAN_S[0] * 2 ** min(self.memo.quiet, 30))
            rate = min(rate, max(1, self.params.npages_min) / (self.tuner.tuning.sleep / 1000 + TICK_S))
        cost = self._page_cost(readings, last)
        limit = ""
        if mode == CATCH_UP and rate * cost > min(budget, CATCH_UP_CPU):
            # a guest's pages are a small part of what a full scan visits: a share of the budget
            rate = min(budget, CATCH_UP_CPU) / cost
            limit = f" (catching up with {min(budget, CATCH_UP_CPU) * 100:.0f}% of a CPU at {cost * 1e6:.1f} us a page)"
        if rate * cost > budget:
            rate = budget / cost
            limit = f" (held to {self.max_cpu}% of a CPU at {cost * 1e6:.1f} us a page)"
        if last is not None and last.cpu_share is not None and last.cpu_share > budget and self.memo.scanned:
            rate = min(rate, last.scanned / last.seconds * budget / last.cpu_share)
            limit = f" (ksmd used {last.cpu_share * 100:.0f}% of a CPU, over {self.max_cpu}%)"
        return max(rate, 1.0), limit

    def _page_cost(self, readings: Readings, last: Interval | None) -> float:
        """CPU seconds a page scanned costs: measured, and never below what unmerged pages may cost."""
        if last is not None and last.cpu_s is not None and last.scanned >= 1000:
            measured, before = last.cpu_s / last.scanned, self.memo.page_cost_s
            # A sooner cycle's few seconds weigh as that share of an interval: its measure is noisier.
            weight = min(1.0, last.seconds / self.interval_s) if self.interval_s > 0 else 1.0
            self.memo.page_cost_s = measured if before is None else before + weight * (measured - before)
        pages = guest_pages(readings)
        merged = readings.ksm.counters.get("pages_sharing", 0) + readings.ksm.counters.get("pages_shared", 0)
        unmerged = max(0.0, 1 - merged / pages)
        return max(self.memo.page_cost_s or 0.0, UNMERGED_PAGE_COST_S * unmerged, 1e-7)


def remember(memo: Memo, readings: Readings) -> Memo:
    """The memo after this cycle: today's counters for the next interval."""
    c = readings.ksm.counters
    return replace(memo, time=readings.time, cpu_s=readings.ksmd_cpu_seconds, scanned=c.get("pages_scanned"),
                   full_scans=c.get("full_scans"), merged=merged_pages(readings), cow=readings.cow_ksm,
                   guests=[g.pid for g in readings.guests])

