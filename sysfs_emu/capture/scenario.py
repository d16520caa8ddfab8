"""The scenario a capture writes: the host's memory, the KSM settings, the processes and their regions.

Each mergeable mapping becomes one region per run of pages with the same huge-page
backing (``fill: captured`` with the entries of the content id file, ``thp: true``
where transparent huge pages back it); pages not resident are left out (ksmd does not
scan them). The rest of a process's resident memory (file pages, memory ksmd does not
scan, pages skipped while read) is one region that is not mergeable, so the process's
RSS, and the guests' committed memory, are as they were.

The host's own memory is what /proc/meminfo leaves once the captured processes' pages
are counted as if KSM had merged none of them (the simulation starts unmerged):
``used = MemTotal - MemFree - Buffers - Cached - (their pages - what KSM saves now)``.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from sysfs_emu.capture import procs
from sysfs_emu.capture.pages import PAGE, MappingPages
from sysfs_emu.capture.procs import CaptureError, ProcessInfo
from sysfs_emu.files import replace_file


@dataclass
class ProcessCapture:
    """One process captured: what /proc said of it and its mergeable mappings' pages."""

    info: ProcessInfo
    is_guest: bool
    parts: list[MappingPages]


def counted(n: int, word: str) -> str:
    """``1 process``, ``3 processes``, ``2 guests``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _runs(flags: np.ndarray):
    """(start, length, value) of each run of equal values in a bool array."""
    if flags.size == 0:
        return
    edges = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
    starts = np.r_[0, edges]
    ends = np.r_[edges, flags.size]
    for a, b in zip(starts, ends):
        yield int(a), int(b - a), bool(flags[a])


def _regions(c: ProcessCapture, ids_name: str, index: int) -> tuple[list[dict], int]:
    """The process's regions and the next free index of the content id file."""
    regions = []
    for part in c.parts:
        thp = part.concat("thp", bool)
        for start, length, huge in _runs(thp):
            region = {"pages": length, "fill": "captured", "ids": ids_name, "index": index + start}
            if huge:
                region["thp"] = True
            regions.append(region)
        index += thp.size
    captured = sum(p.pages for p in c.parts)
    rest = c.info.rss_kb * 1024 // PAGE - captured
    if rest > 0:
        regions.append({"pages": rest, "fill": "zero", "mergeable": False})
    return regions, index


def _name(comm: str) -> str:
    """A comm as a scenario name: never empty, no '/' (kernel names may have one)."""
    return comm.replace("/", "_").replace("\n", " ").replace("\0", "") or "?"


def _host(resident_pages: int, ksm_counters: dict[str, int]) -> dict:
    mi = procs.meminfo_kb()
    total, free = mi["MemTotal"] * 1024, mi["MemFree"] * 1024
    buffers, cached = mi.get("Buffers", 0) * 1024, mi.get("Cached", 0) * 1024
    resident = resident_pages * PAGE
    saved = (ksm_counters.get("pages_sharing", 0) + ksm_counters.get("ksm_zero_pages", 0)) * PAGE
    used = total - free - buffers - cached - max(resident - saved, 0)
    used = max(0, min(used, total - resident))
    cached = max(0, min(cached, total - used - buffers))
    buffers = max(0, min(buffers, total - used - cached))
    uptime, btime = procs.uptime_and_boot_time()
    return {"memory": total, "used": used, "buffers": buffers, "cached": cached,
            "swap": mi.get("SwapTotal", 0) * 1024, "uptime": round(uptime, 3), "boot_time": btime,
            "cpus": os.cpu_count() or 1}


def _ksm_counters() -> dict[str, int]:
    out = {}
    for name in ("pages_sharing", "ksm_zero_pages"):
        try:
            out[name] = int((procs.KSM_DIR / name).read_text())
        except (OSError, ValueError):
            pass
    return out


def build(captured: list[ProcessCapture], ids_name: str, report) -> dict:
    """The scenario mapping."""
    processes, index = [], 0
    for i, c in enumerate(captured):
        regions, index = _regions(c, ids_name, index)
        # no mergeable_all for prctl's merge-any: the kernel marked its mappings mg already, and the
        # region that stands for the rest of the RSS must stay out of ksmd's reach
        entry = {"name": _name(c.info.comm), "id": i, "cmdline": c.info.cmdline, "regions": regions}
        processes.append(entry)
    resident = sum(r["pages"] for p in processes for r in p["regions"])
    sampled = "" if report.sample == 1 else f", 1 page in {report.sample} read"
    return {
        "description": f"{socket.gethostname()} as sysfs-emu capture saw it on "
                       f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: {counted(len(captured), 'process')} "
                       f"({counted(sum(c.is_guest for c in captured), 'guest')}){sampled}",
        "host": _host(resident, _ksm_counters()),
        "ksm": procs.ksm_settings(),
        "processes": processes,
    }


def _comment(report, ids_name: str) -> str:
    lines = [
        "sysfs-emu scenario written by 'sysfs-emu capture'.",
        f"{counted(report.processes, 'process')} ({counted(report.guests, 'guest')}): {report.pages} pages of "
        "mergeable memory, "
        f"{report.read_pages} read" + ("" if report.sample == 1 else f" (1 in {report.sample}, the rest inferred)")
        + f", {report.empty_pages} empty, {report.thp_pages} in transparent huge pages; "
        f"{report.skipped_pages} skipped (changed or vanished while read).",
        f"Page contents are content ids in {ids_name} (0: an empty page; equal ids: equal pages), made with a",
        "random key that was never written: the files tell which pages are equal, not what they hold.",
    ]
    return "".join(f"# {line}\n" for line in lines)


def write_capture(out: Path, ids_path: Path, captured: list[ProcessCapture], ids: np.ndarray, sample: int,
                  report) -> None:
    """The content id file, then the YAML (each replaced whole)."""
    scenario = build(captured, ids_path.name, report)
    tmp = ids_path.with_name(f".{ids_path.name}.tmp.npy")
    try:
        np.save(tmp, ids)
        os.replace(tmp, ids_path)
        text = _comment(report, ids_path.name) + yaml.safe_dump(scenario, sort_keys=False, width=120,
                                                               default_flow_style=None)
        replace_file(out, text.encode())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CaptureError(f"cannot write the capture to {exc.filename or out}: {exc.strerror or exc}") from None
