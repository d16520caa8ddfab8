"""``sysfs-emu snapshot``: KSM counters, memory and KSM-using processes read from a root's files.

Reads only files, so it works on a served tree and on the real machine (``--root /``).
Its JSON uses ksmtuned-py's names (see ksmtuned_py/cycle.py and the README): the KSM files by
their names (a file of choices, advisor_mode, by the chosen one), memory in ``_kb``, bytes in
``_bytes``, a process's name as ``comm``.
"""

from __future__ import annotations

import os
from pathlib import Path

from sysfs_emu.errors import SnapshotError
from sysfs_emu.kernel import saved_bytes
from sysfs_emu.runner import holder_pid, read_state
from sysfs_emu.tree import KSM_DIR
from sysfs_emu.units import format_bytes, format_clock

#: /proc/meminfo's lines shown, and their names in the snapshot (kB).
MEMINFO_KEYS = {"MemTotal": "mem_total_kb", "MemFree": "mem_free_kb", "MemAvailable": "mem_available_kb",
                "Buffers": "buffers_kb", "Cached": "cached_kb"}


def take_snapshot(root: str | os.PathLike) -> dict:
    """A dict of what the files under ``root`` say now."""
    root = Path(root)
    ksm_dir = root / KSM_DIR
    if not ksm_dir.is_dir():
        raise SnapshotError(f"{ksm_dir} does not exist: nothing is served under {root} "
                            "(start one with 'sysfs-emu run --root DIR')")
    ksm: dict[str, object] = {}
    for entry in sorted(os.listdir(ksm_dir)):
        try:
            text = (ksm_dir / entry).read_text().strip()
        except OSError:
            continue
        ksm[entry] = file_value(text)
    memory: dict[str, int] = {}
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in MEMINFO_KEYS and rest.split():
                memory[MEMINFO_KEYS[key]] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    state = read_state(root) if holder_pid(root) is not None else None
    page_size = int(state.get("page_size", 4096)) if state else os.sysconf("SC_PAGE_SIZE")
    sharing = ksm.get("pages_sharing")
    snap: dict[str, object] = {
        "root": str(root),
        "ksm": ksm,
        "memory": memory,
        "page_size": page_size,
        "saved_bytes": saved_bytes(sharing, page_size) if isinstance(sharing, int) else None,
        "processes": _ksm_processes(root, page_size),
    }
    if state:
        snap["simulation"] = {k: state[k] for k in ("pid", "scenario", "speed") if k in state}
        if "now" in state:
            snap["simulation"]["time"] = state["now"]  # simulated seconds, as a cycle's time
    return snap


def file_value(text: str) -> int | str:
    """A KSM file's value: a number, the chosen word of a list of choices (``[none] scan-time``), or the text."""
    if text.lstrip("-").isdigit():
        return int(text)
    chosen = [word[1:-1] for word in text.split() if word.startswith("[") and word.endswith("]")]
    return chosen[0] if len(chosen) == 1 else text


def _ksm_processes(root: Path, page_size: int) -> list[dict]:
    """Processes whose ``ksm_merging_pages`` is readable, with name and resident size."""
    found = []
    proc = root / "proc"
    try:
        names = [n for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return found
    for name in sorted(names, key=int):
        base = proc / name
        try:
            merging = int((base / "ksm_merging_pages").read_text())
            comm = (base / "comm").read_text().rstrip("\n")
            rss_kb = int((base / "statm").read_text().split()[1]) * page_size // 1024
        except (OSError, ValueError, IndexError):
            continue
        if merging or root != Path("/"):
            found.append({"pid": int(name), "comm": comm, "rss_kb": rss_kb, "ksm_merging_pages": merging})
    return found


def format_snapshot(snap: dict) -> str:
    """The snapshot as a few aligned lines."""
    ksm = snap["ksm"]
    mem = snap["memory"]
    lines = []
    sim = snap.get("simulation")
    if sim:
        lines.append(f"simulation  {sim.get('scenario')} at {format_clock(sim.get('time', 0))} simulated "
                     f"(speed {sim.get('speed'):g}x, sysfs-emu pid {sim.get('pid')})")

    def get(name):
        return ksm.get(name, "-")

    lines.append(f"ksmd        run {get('run')}, pages_to_scan {get('pages_to_scan')}, "
                 f"sleep_millisecs {get('sleep_millisecs')}, full_scans {get('full_scans')}")
    lines.append(f"pages       shared {get('pages_shared')}, sharing {get('pages_sharing')}, "
                 f"unshared {get('pages_unshared')}, volatile {get('pages_volatile')}, "
                 f"zero {get('ksm_zero_pages')}")
    saved = snap.get("saved_bytes")
    profit = ksm.get("general_profit")
    if saved is not None:
        extra = f", general_profit {format_bytes(profit)}" if isinstance(profit, int) else ""
        lines.append(f"saved       {format_bytes(saved)} (pages_sharing x page size){extra}")
    if mem:
        names = {snapshot_name: meminfo for meminfo, snapshot_name in MEMINFO_KEYS.items()}
        parts = [f"{names[k]} {format_bytes(v * 1024)}" for k, v in mem.items()]
        lines.append("memory      " + ", ".join(parts))
    procs = snap.get("processes") or []
    lines.append(f"processes   {len(procs)}")
    for p in procs:
        lines.append(f"  {p['pid']:>7}  {p['comm']:<16} rss {format_bytes(p['rss_kb'] * 1024):>10}  "
                     f"merging {p['ksm_merging_pages']} pages")
    return "\n".join(lines) + "\n"
