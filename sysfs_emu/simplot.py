"""timeline.png: saved memory and pages_to_scan over time, one line per run (needs matplotlib: the plot extra)."""

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
        # what ksmd scans per batch: pages_to_scan while KSM runs, nothing while it is stopped
        scan = [row["pages_to_scan"] if row["run"] == 1 else 0 for row in rows]
        scan_ax.plot(t, scan, label=name, drawstyle="steps-post")
    saved_ax.set_ylabel(f"saved ({scale_name})")
    saved_ax.set_title("KSM: memory saved (pages_sharing) and pages_to_scan, at each cycle")
    saved_ax.legend(loc="best", fontsize="small")
    saved_ax.grid(True, alpha=0.3)
    scan_ax.set_yscale("symlog", linthresh=10)  # 100 and 30,000 pages both readable
    scan_ax.set_ylabel("pages_to_scan\n(0 while KSM is off)")
    scan_ax.set_xlabel(f"simulated time ({unit_name})")
    scan_ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()
