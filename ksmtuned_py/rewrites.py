"""The adaptive policy's rule for rewritten memory: a catch-up when guests break many merges at once.

A guest that rewrites merged memory with what it held (a reboot reloading its OS) breaks
many merges at once, and those pages merge again only after two visits, which the steady
probe, slowing as it finds nothing, would take hours to make.  So copy-on-write breaks of
``1/COW_SHARE`` of the merged pages in one interval start a catch-up, and it goes on while
they have not merged back, up to ``COW_MAX_SCANS`` full scans: smart_scan skips a page
that keeps failing to merge for up to 8 passes, and memory broken again and again becomes
such a page (a page's age only grows: it counts every visit that found it unmerged, over
all its reloads), so only 9 full scans are sure to visit every page once more.  One that
merged little back (memory rewritten with new contents) delays the next; breaks it left
unmerged, or that came while the next was delayed, get a catch-up when that wait is over
if they still have not merged back (the probe may have found them meanwhile), so skipped
pages are not left to the probe for good.

Breaks too few for a catch-up, again and again (guests that overwrite and restore parts
of their memory every few minutes), leave memory unmerged that no later break signals, and
smart_scan ages those pages so that the slowing probe hardly ever visits them.  So once the
breaks have stopped for ``SETTLE_QUIET_S``, if since the last settle they came
``SETTLE_EPISODES`` times after pages had merged again (memory restored to what it held: new
contents break once) and add up to ``1/COW_SHARE`` of the merged pages, the probe keeps
its quickest full scan for ``SETTLE_SCANS`` full scans (each page smart_scan skips is visited
in one of them; those since the last breaks count), and for as many more after any interval
that merged pages, up to ``SETTLE_MAX_SCANS``: the settle.

The kernel lowers pages_sharing for a broken merge only when ksmd visits the page again,
so what came back is judged by the merged count against what it was before the breaks.
The state lives in the policy's memo (``adaptive.Memo``: ``cow_*``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ksmtuned_py.ksmdpace import Interval, merged_pages
from ksmtuned_py.readings import Readings

if TYPE_CHECKING:  # adaptive imports this module
    from ksmtuned_py.adaptive import Memo

COW_SHARE = 10  # breaks of 1/10 of the merged pages in an interval: the guests rewrote memory, a catch-up ...
COW_MAX_SCANS = 9  # ... going on until 3/4 of them merged back, or it made this many full scans; ...
COW_PAYOFF = 4  # ... unless the last such catch-up merged back less than 1/4 of its breaks: then not ...
COW_RETRY_S = 1200.0  # ... for this long, twice as long after each such catch-up in a row
SETTLE_EPISODES = 3  # breaks this many times of memory that merged again in between (restored contents) ...
SETTLE_QUIET_S = 1800.0  # no breaks for this long after many: the settle, ...
SETTLE_SCANS = 9  # ... the probe at its quickest for this many full scans after the last that merged, ...
SETTLE_MAX_SCANS = 27  # ... and this many at most since the last breaks


def start(memo: Memo, readings: Readings, last: Interval | None, min_pages: int) -> str | None:
    """Why a catch-up starts for the last interval's breaks (noted in the memo), or None.

    For the steady scan only (a burst or catch-up scans anyway); at least ``min_pages``
    breaks; not while backing off.
    """
    if last is None or last.cow < max(min_pages, (memo.merged or 0) // COW_SHARE):
        return _later(memo, readings)
    _judge(memo, readings.time)
    if readings.time < memo.cow_retry_at:
        # Put off, not dropped: smart_scan may have been skipping the last ones' pages.
        if not memo.cow_left:
            memo.cow_base = memo.merged or 0
        memo.cow_left, memo.cow_left_at = memo.cow_left + last.cow, memo.cow_retry_at
        return None
    memo.cow_left, memo.cow_tries = 0, 0
    memo.cow_trigger, memo.cow_base = last.cow, memo.merged or 0
    memo.cow_from = readings.ksm.counters.get("full_scans", 0)
    return f"{last.cow} copy-on-write breaks (the guests rewrote merged memory)"


def count(memo: Memo, readings: Readings, last: Interval | None, min_pages: int) -> None:
    """Every cycle: the breaks since the last settle, and the running settle's progress."""
    if last is None:
        return
    full_scans = readings.ksm.counters.get("full_scans", 0)
    if memo.full_scans is not None and full_scans < memo.full_scans:
        # run=2 (another tool) unmerged everything and reset full_scans: counts from it start again
        memo.settle_to, memo.cow_seen_scans, memo.cow_from = 0, full_scans, full_scans
    memo.cow_since += last.cow
    if last.gain - last.cow >= min_pages:
        memo.cow_remerged = True
    if last.cow >= min_pages:
        memo.cow_seen_at, memo.cow_seen_scans = readings.time, full_scans
        memo.cow_episodes += memo.cow_remerged  # breaks of memory that merged again since the last ones
        memo.cow_remerged = False
    if memo.settle_to and last.gain >= min_pages and last.cow < min_pages:
        memo.settle_to = max(memo.settle_to, min(memo.cow_seen_scans + SETTLE_MAX_SCANS, full_scans + SETTLE_SCANS))


def settling(memo: Memo, readings: Readings, min_pages: int) -> str | None:
    """Why the steady probe stays at its quickest (the settle, starting or going on), or None."""
    full_scans = readings.ksm.counters.get("full_scans", 0)
    if memo.settle_to and full_scans < memo.settle_to:
        return f"steady: settling, {_scans(memo.settle_to - full_scans, 'more ')} for the pages smart_scan skips"
    memo.settle_to = 0
    quiet_s = readings.time - memo.cow_seen_at
    if memo.cow_episodes < SETTLE_EPISODES or memo.cow_since < max(min_pages, (memo.merged or 0) // COW_SHARE) \
            or quiet_s < SETTLE_QUIET_S:
        return None
    since, memo.cow_since, memo.cow_episodes = memo.cow_since, 0, 0
    if full_scans - memo.cow_seen_scans >= SETTLE_SCANS:
        return None  # a catch-up for them made those full scans already
    memo.settle_to = memo.cow_seen_scans + SETTLE_SCANS
    return (f"steady: {since} copy-on-write breaks, none for {quiet_s / 60:.0f} min: settling, "
            f"{_scans(memo.settle_to - full_scans)} at the quickest for the pages smart_scan skips")


def _scans(n: int, more: str = "") -> str:
    return f"{n} {more}full scan{'s' if n != 1 else ''}"


def _later(memo: Memo, readings: Readings) -> str | None:
    """The catch-up for breaks left unmerged or put off, once their wait is over, if still not back."""
    merged = merged_pages(readings)
    if not memo.cow_left or merged is None or readings.time < memo.cow_left_at:
        return None
    behind, left, memo.cow_left = memo.cow_base - merged, memo.cow_left, 0
    if behind * COW_PAYOFF <= left:
        memo.cow_tries = 0  # the probe merged them back meanwhile
        return None
    memo.cow_trigger, memo.cow_tries = behind, memo.cow_tries + 1
    memo.cow_from = readings.ksm.counters.get("full_scans", 0)
    return f"{behind} copy-on-write breaks not merged back yet"


def not_back(memo: Memo, readings: Readings) -> int:
    """Breaks the running catch-up for them has not merged back yet, while it may go on (0: it ends)."""
    merged = merged_pages(readings)
    if not memo.cow_trigger or merged is None:
        return 0
    behind = memo.cow_base - merged
    if behind * COW_PAYOFF <= memo.cow_trigger:
        return 0
    if readings.ksm.counters.get("full_scans", 0) - memo.cow_from < COW_MAX_SCANS:
        return behind
    # It ends with them not back: try again later, in case smart_scan was skipping their pages.
    memo.cow_left = behind
    memo.cow_left_at = readings.time + COW_RETRY_S * 2 ** min(memo.cow_tries, 10)
    return 0


def _judge(memo: Memo, now: float) -> None:
    """Whether the last catch-up for breaks paid, judged when breaks come again: back off if not.

    By the merged count before these breaks (``memo.merged``), since pages may merge back
    under the probe just after the catch-up.
    """
    if not memo.cow_trigger:
        return
    lost = max(0, memo.cow_base - (memo.merged or 0))
    if (memo.cow_trigger - lost) * COW_PAYOFF < memo.cow_trigger:
        memo.cow_misses += 1
        memo.cow_retry_at = now + COW_RETRY_S * 2 ** min(memo.cow_misses - 1, 10)
    else:
        memo.cow_misses, memo.cow_retry_at = 0, 0.0
    memo.cow_trigger = 0
