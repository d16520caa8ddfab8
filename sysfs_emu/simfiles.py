"""``sysfs-emu simulate --out DIR``: summary.json, timeline.csv and (with matplotlib) timeline.png.

- ``summary.json``: a list with one object per run (``simsummary.summarize``'s figures,
  the settings used, the scenario and the duration);
- ``timeline.csv``: one row per cycle and run, the columns of :data:`CSV_COLUMNS`
  (an empty cell where a value does not apply, e.g. ``level`` on stop);
- ``timeline.png``: saved memory and pages_to_scan over time, one line per run.

Each file is written whole under a temporary name and renamed into place.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sysfs_emu.errors import EmuError
from sysfs_emu.files import replace_file

CSV_COLUMNS = (
    "run_name", "time_s", "cause", "decision", "level", "run", "pages_to_scan", "sleep_millisecs", "npages",
    "sleep_ms", "pages_shared", "pages_sharing", "ksm_zero_pages", "saved_bytes", "general_profit",
    "pages_scanned", "full_scans", "ksmd_cpu_seconds", "free_kb", "committed_kb", "thres_kb", "guests", "reason",
)
PLOT_HINT = "pip install 'ksmtuned-py[plot]'"


class OutputError(EmuError):
    """The output directory or a file in it cannot be written."""


def summary_document(results, scenario_name: str, duration: float) -> list[dict]:
    """summary.json's content: one object per run."""
    return [{**r.summary, "scenario": scenario_name, "duration_s": duration} for r in results if r.summary]


def timeline_document(results) -> list[dict]:
    """Every cycle of every run, in run order: the rows of timeline.csv with all of each cycle's report."""
    return [row.as_dict() for r in results for row in r.rows]


def timeline_csv(timeline: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in timeline:
        writer.writerow(["" if row.get(c) is None else row[c] for c in CSV_COLUMNS])
    return out.getvalue()


def write_all(directory: Path, summary: list[dict], timeline: list[dict]) -> tuple[list[Path], str | None]:
    """Write the three files; returns the paths written and a note when the picture could not be drawn."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in (("summary.json", json.dumps(summary, indent=2) + "\n"),
                           ("timeline.csv", timeline_csv(timeline))):
            replace_file(directory / name, text.encode())
            written.append(directory / name)
        note = None
        try:
            from sysfs_emu.simplot import timeline_png
        except ImportError:
            note = f"timeline.png not written: matplotlib is not installed ({PLOT_HINT})"
        else:
            replace_file(directory / "timeline.png", timeline_png(timeline))
            written.append(directory / "timeline.png")
    except OSError as exc:
        where = exc.filename or directory
        raise OutputError(f"cannot write the results to {where}: {exc.strerror or exc}") from None
    return written, note
