"""timeline.png: saved memory and ksmd's CPU over time, one line per run (needs matplotlib: the plot extra)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

from matplotlib.figure import Figure  # noqa: E402  (after choosing the backend)

GIB = 1 << 30
MIB = 1 << 20


def _time_axis(seconds: list[float]) -> tuple[float, str]:
    """The unit of the time axis: hours for runs of three hours or more, else minutes."""
    return (3600.0, "hours") if seconds and max(seconds) >= 3 * 3600 else (60.0, "minutes")


def cpu_percent(rows: list[dict]) -> list[float]:
    """ksmd's CPU from each row to the next, in per cent of one CPU (the last row repeats the one before).

    What a decision costs shows between it and the next: pages_to_scan alone would draw 64
    pages every 53 ms and 64 every 3 s as one line.
    """
    out = []
    for a, b in zip(rows, rows[1:]):
        dt, before, after = b["time_s"] - a["time_s"], a.get("ksmd_cpu_seconds"), b.get("ksmd_cpu_seconds")
        out.append(0.0 if dt <= 0 or before is None or after is None else max(0.0, (after - before) / dt * 100))
    return out + out[-1:] if out else [0.0] * len(rows)


def timeline_png(timeline: list[dict]) -> bytes:
    """The picture of ``timeline`` (the rows of timeline.csv) as PNG bytes."""
    runs: dict[str, list[dict]] = {}
    for row in timeline:
        runs.setdefault(row["run_name"], []).append(row)
    unit, unit_name = _time_axis([row["time_s"] for row in timeline])
    peak = max((row["saved_bytes"] or 0 for row in timeline), default=0)
    scale, scale_name = (GIB, "GiB") if peak >= GIB else (MIB, "MiB")
    fig = Figure(figsize=(9, 6), dpi=100)
    saved_ax, scan_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for name, rows in runs.items():
        t = [row["time_s"] / unit for row in rows]
        saved_ax.plot(t, [(row["saved_bytes"] or 0) / scale for row in rows], label=name, drawstyle="steps-post")
        scan_ax.plot(t, cpu_percent(rows), label=name, drawstyle="steps-post")
    saved_ax.set_ylabel(f"saved ({scale_name})\npages_sharing + ksm_zero_pages")
    saved_ax.set_title("KSM: memory saved and ksmd's CPU, at each cycle")
    saved_ax.legend(loc="best", fontsize="small")
    saved_ax.grid(True, alpha=0.3)
    scan_ax.set_yscale("symlog", linthresh=0.01)  # a slow probe's 0.01 % and a burst's 20 % both readable
    scan_ax.set_ylabel("ksmd CPU\n(% of one CPU)")
    scan_ax.set_xlabel(f"simulated time ({unit_name})")
    scan_ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()
