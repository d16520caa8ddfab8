"""``sysfs-emu simulate``'s terminal text: a short table of each run's decisions, and the runs side by side."""

from __future__ import annotations

import math
from typing import Sequence

from sysfs_emu.simulate import INTERVAL
from sysfs_emu.units import format_bytes, format_clock

DECISION_WIDTH = 46
LABEL_WIDTH = 24


def decision_text(row) -> str:
    """``stop``, or ``start, boost: pages_to_scan 300, sleep 53 ms``: what the cycle decided and KSM runs at."""
    r = row.report
    if r.action != "start":
        return "stop"
    scan = "pages_to_scan by the advisor" if r.advisor_active else f"pages_to_scan {r.pages_to_scan}"
    level = f", {r.level}" if r.level else ""
    return f"start{level}: {scan}, sleep {r.sleep_millisecs} ms"


def shown_rows(rows: Sequence, every: float | None = None) -> list:
    """The rows the table shows: the first, each change of decision (or the first of each ``every``
    seconds), and the last."""
    shown = []
    for i, row in enumerate(rows):
        if i == 0 or i == len(rows) - 1:
            keep = True
        elif every is None:
            keep = row.decision() != rows[i - 1].decision()
        else:
            keep = math.floor(row.time_s / every + 1e-9) != math.floor(rows[i - 1].time_s / every + 1e-9)
        if keep:
            shown.append(row)
    return shown


def decision_table(rows: Sequence, every: float | None = None) -> list[str]:
    """The lines of one run's table (header first)."""
    lines = [f"{'time':>11}  {'guests':>6}  {'committed':>10}  {'free':>10}  {'decision':<{DECISION_WIDTH}} "
             f"{'saved':>10}"]
    for row in shown_rows(rows, every):
        r = row.report
        why = "" if row.cause == INTERVAL else f"  ({row.cause})"
        lines.append(f"{format_clock(r.time):>11}  {r.guests:>6}  {format_bytes(r.committed_kb * 1024):>10}  "
                     f"{format_bytes(r.free_kb * 1024):>10}  {decision_text(row):<{DECISION_WIDTH}} "
                     f"{format_bytes(row.saved_bytes):>10}{why}")
    return lines


def _when(seconds: float | None, never: str = "never") -> str:
    return never if seconds is None else format_clock(seconds)


def _cpu(summary: dict) -> str:
    return f"{summary['ksmd_cpu_seconds']:.1f} s ({summary['ksmd_cpu_percent']:.2g} %)"


COMPARISON = (
    ("saved at the end", lambda s: format_bytes(s["saved_bytes_end"])),
    ("saved on average", lambda s: format_bytes(s["saved_bytes_avg"])),
    ("saved at the peak", lambda s: format_bytes(s["saved_bytes_peak"])),
    ("  peak first at", lambda s: _when(s["saved_peak_at_s"], "-")),
    ("first 100 MiB at", lambda s: _when(s["time_to_100mib_s"])),
    ("90 % of the end at", lambda s: _when(s["time_to_90pct_s"], "-")),
    ("pages scanned", lambda s: f"{s['pages_scanned']:,}"),
    ("ksmd CPU time", _cpu),
    ("general_profit at the end", lambda s: format_bytes(s["general_profit_end"])),
)


def comparison_table(summaries: Sequence[dict]) -> list[str]:
    """The runs side by side, one column each: the figures of ``simsummary.summarize``."""
    cells = [[fmt(s) for s in summaries] for _, fmt in COMPARISON]
    widths = [max(len(s["name"]), *(len(row[i]) for row in cells)) for i, s in enumerate(summaries)]
    head = " " * LABEL_WIDTH + "  ".join(f"{s['name']:>{w}}" for s, w in zip(summaries, widths))
    lines = [head.rstrip()]
    for (label, _), row in zip(COMPARISON, cells):
        lines.append(f"{label:<{LABEL_WIDTH}}" + "  ".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    return lines
