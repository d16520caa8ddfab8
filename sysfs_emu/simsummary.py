"""What a run of ``sysfs-emu simulate`` comes to: figures computed from its timeline alone.

Every figure is read off the run's cycles (what the daemon itself would have seen),
so it can be checked against ``timeline.csv``:

- ``saved_bytes_end``: the saving (``pages_sharing + ksm_zero_pages`` x page size) at the last cycle;
  ``saved_bytes_avg`` its mean over time from the first cycle to the run's end (each
  cycle's saving holds until the next cycle, which comes sooner while a policy asks so,
  the last one to the end), ``saved_bytes_peak`` the largest,
  first seen at ``saved_peak_at_s``;
- ``time_to_100mib_s``: the first cycle that saw at least 100 MiB saved (None: never),
  ``time_to_90pct_s`` the first that saw 90 % of the end's saving (None when it is 0);
- ``pages_scanned``, ``full_scans`` and ``ksmd_cpu_seconds`` at the last cycle (all
  start at 0 with the scenario); the CPU time is the simulated ksmd's own work at its
  cost model's per-page costs, whose origin the summary names (``cost_origin``), and
  ``ksmd_cpu_percent`` that time as a share of one CPU over the run;
- ``decisions``: how many times the policy's decision changed, plus one.
"""

from __future__ import annotations

from typing import Sequence

MIB = 1 << 20
FIRST_SAVING_BYTES = 100 * MIB
SHARE_OF_END = 0.9


def first_time(rows: Sequence, at_least: float) -> float | None:
    """The time of the first row that saves at least ``at_least`` bytes, or None."""
    return next((r.time_s for r in rows if r.saved_bytes >= at_least), None)


def time_average(times: Sequence[float], values: Sequence[float]) -> float:
    """The mean over time of a value read at ``times``: each reading holds until the next one."""
    span = times[-1] - times[0]
    if span <= 0:
        return sum(values) / len(values)
    return sum(v * (b - a) for v, a, b in zip(values, times, times[1:])) / span


def summarize(rows: Sequence, settings: dict, cost_origin: str, end_s: float | None = None) -> dict:
    """The figures of one run (see the module's doc) from its rows, which must not be empty;
    ``end_s``: when the run ended (default: at its last cycle)."""
    last = rows[-1]
    saved = [r.saved_bytes for r in rows]
    times = [r.time_s for r in rows]
    if end_s is not None and end_s > last.time_s:
        times, held = [*times, end_s], [*saved, saved[-1]]
    else:
        held = saved
    peak = max(saved)
    end = last.saved_bytes
    return {
        "name": last.run_name,
        "cycles": len(rows),
        "end_s": last.time_s,
        "saved_bytes_end": end,
        "saved_bytes_avg": round(time_average(times, held)),
        "saved_bytes_peak": peak,
        "saved_peak_at_s": first_time(rows, peak) if peak else None,
        "time_to_100mib_s": first_time(rows, FIRST_SAVING_BYTES),
        "time_to_90pct_s": first_time(rows, SHARE_OF_END * end) if end > 0 else None,
        "pages_shared_end": last.pages_shared,
        "pages_sharing_end": last.report.pages_sharing,
        "general_profit_end": last.report.general_profit,
        "pages_scanned": last.report.pages_scanned,
        "full_scans": last.full_scans,
        "ksmd_cpu_seconds": round(last.ksmd_cpu_seconds, 6),
        "ksmd_cpu_percent": round(100 * last.ksmd_cpu_seconds / last.time_s, 4) if last.time_s else 0.0,
        "decisions": sum(1 for a, b in zip(rows, rows[1:]) if a.decision() != b.decision()) + 1,
        "cost_origin": cost_origin,
        "settings": settings,
    }
