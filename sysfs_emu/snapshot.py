"""``sysfs-emu snapshot``: KSM counters, memory and KSM-using processes read from a root's files.

Reads only files, so it works on a served tree and on the real machine (``--root /``).
Its JSON uses ksmtuned-py's names (see ksmtuned_py/cycle.py and the README): the KSM files by
their names (a file of choices, advisor_mode, by the chosen one), memory in ``_kb``, bytes in
``_bytes``, a process's name as ``comm``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from sysfs_emu.errors import SnapshotError
from sysfs_emu.files import decimal, is_pid_name, read_regular
from sysfs_emu.kernel import saved_bytes
from sysfs_emu.pagearrays import PAGE_SIZE
from sysfs_emu.rootlock import holder_pid
from sysfs_emu.runner import read_state
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
    ksm = _ksm_files(ksm_dir)
    memory: dict[str, int] = {}
    for line in _text(root / "proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        value = decimal(rest.split()[0]) if key in MEMINFO_KEYS and rest.split() else None
        if value is not None:
            memory[MEMINFO_KEYS[key]] = value
    state = _served_state(root)
    page_size = state.get("page_size", PAGE_SIZE) if state else os.sysconf("SC_PAGE_SIZE")
    sharing = ksm.get("pages_sharing")
    zero = ksm.get("ksm_zero_pages")
    snap: dict[str, object] = {
        "root": str(root),
        "ksm": ksm,
        "memory": memory,
        "page_size": page_size,
        "saved_bytes": (saved_bytes(sharing, page_size, zero if isinstance(zero, int) else 0)
                        if isinstance(sharing, int) else None),
        "processes": _ksm_processes(root, page_size),
    }
    if state:
        snap["simulation"] = {k: state[k] for k in ("pid", "scenario", "speed", "cost_origin") if k in state}
        if "now" in state:
            snap["simulation"]["time"] = state["now"]  # simulated seconds, as a cycle's time
    return snap


def file_value(text: str) -> int | str:
    """A KSM file's value: a number, the chosen word of a list of choices (``[none] scan-time``), or the text."""
    number = decimal(text)
    if number is not None:
        return number
    chosen = [word[1:-1] for word in text.split() if word.startswith("[") and word.endswith("]")]
    return chosen[0] if len(chosen) == 1 else text


_STATE_TYPES = {"pid": int, "scenario": str, "speed": (int, float), "now": (int, float), "page_size": int,
                "cost_origin": str}


def _served_state(root: Path) -> dict | None:
    """The serving sysfs-emu's state.json, only the entries of the expected types (it is a file anyone can write)."""
    state = read_state(root) if holder_pid(root) is not None else None
    if not state:
        return None
    kept = {k: v for k, v in state.items() if k in _STATE_TYPES and isinstance(v, _STATE_TYPES[k])
            and not isinstance(v, bool) and (not isinstance(v, float) or math.isfinite(v))}
    if kept.get("page_size", PAGE_SIZE) <= 0:
        kept.pop("page_size")
    return kept


def _text(path: Path) -> str:
    """A file's text ('' when it cannot be read or is not a regular file); bytes that are not UTF-8 replaced."""
    try:
        return read_regular(path, 1 << 16).decode(errors="replace")
    except OSError:
        return ""


def _ksm_files(ksm_dir: Path) -> dict[str, object]:
    """Each KSM file's value (see :func:`file_value`)."""
    ksm: dict[str, object] = {}
    try:
        names = sorted(os.listdir(ksm_dir))
    except OSError as exc:
        raise SnapshotError(f"cannot list {ksm_dir}: {exc.strerror}") from None
    for entry in names:
        try:
            text = read_regular(ksm_dir / entry, 4096).decode(errors="replace").strip()
        except OSError:
            continue
        ksm[entry] = file_value(text)
    return ksm


def _ksm_processes(root: Path, page_size: int) -> list[dict]:
    """Processes whose ``ksm_merging_pages`` is readable, with name and resident size."""
    found = []
    proc = root / "proc"
    try:
        names = [n for n in os.listdir(proc) if is_pid_name(n)]
    except OSError:
        return found
    for name in sorted(names, key=int):
        base = proc / name
        merging = decimal(_text(base / "ksm_merging_pages"))
        statm = _text(base / "statm").split()
        rss = decimal(statm[1]) if len(statm) > 1 else None
        if merging is None or rss is None:
            continue
        comm = _text(base / "comm").rstrip("\n")
        if merging or root != Path("/"):
            found.append({"pid": int(name), "comm": comm, "rss_kb": rss * page_size // 1024,
                          "ksm_merging_pages": merging})
    return found


def format_snapshot(snap: dict) -> str:
    """The snapshot as a few aligned lines."""
    ksm = snap["ksm"]
    mem = snap["memory"]
    lines = []
    sim = snap.get("simulation")
    if sim:
        speed = f"{sim['speed']:g}x" if "speed" in sim else "unknown"
        lines.append(f"simulation  {sim.get('scenario')} at {format_clock(sim.get('time', 0))} simulated "
                     f"(speed {speed}, sysfs-emu pid {sim.get('pid')})")
        if sim.get("cost_origin"):
            lines.append(f"costs       {sim['cost_origin']}")

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
        lines.append(f"saved       {format_bytes(saved)} ((pages_sharing + ksm_zero_pages) x page size){extra}")
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
