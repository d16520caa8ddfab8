#!/usr/bin/env python3
"""Probe the real /sys/kernel/mm/ksm with many writes and record a conformance table.

Every row is one write(2) of one input to one file, after the tunables were put
back to their defaults and the row's set-up writes were applied; it records the
errno (0 on success), the byte count write(2) returned, the file's text read
back, and every other tunable whose text changed. Rows in a ``state`` group run
while a helper process really has merged pages (``shared``: one KSM page with
many sharers; ``zero``: pages merged into the zero page with use_zero_pages 1),
and also record the counters before and after.

Usage (root, on a kernel with KSM):  python tools/probe_ksm_conformance.py [--out PATH]

The same row runner replays the table against the simulator
(``sysfs_emu.Kernel``); tests/test_conformance_live.py compares both live.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno as _errno
import gzip
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sysfs_emu.kernel import COUNTERS, FILES, TUNABLES, Kernel  # noqa: E402
from tests import realksm  # noqa: E402

TABLE_PATH = ROOT / "tests" / "data" / "ksm_conformance.json"
KSM_DIR = realksm.KSM_DIR
PAGE = os.sysconf("SC_PAGE_SIZE")

# Put-back order: the tests' restore order (advisor_mode first: it rewrites pages_to_scan), run last.
RESET_ORDER = (*realksm.RESTORE_ORDER, "run")
assert sorted(RESET_ORDER) == sorted(TUNABLES)

# ---- inputs ------------------------------------------------------------------

NUMBERS = [
    "0", "1", "2", "3", "5", "7", "100", "255", "256", "257", "1000", "65535",
    "2\n", "10\n", "256\n", "0\n", "1\n",
    "+7", "+0", "-0", "-1", "-5", "+-1", "-+1", "++1", "--1", "+", "-", "+\n", "-\n",
    " 7", "7 ", "7\t", "\t7", "7\n", "7\n\n", "\n7", "\n", "7\r\n", "7\r", " ", "\t", "\n\n",
    "0x10", "0X10", "0x", "010", "0010", "00", "1e3", "1.5", "1,5", "abc", "7a", "a7", "7 8",
    "\0", "7\0", "7\0junk", "7\n\0junk", "\x007", "1\0", "2\0junk",
    "2147483647", "2147483648", "-2147483647", "-2147483648", "-2147483649",
    "4294967295", "4294967296", "4294967297", "4294967301", "-4294967296",
    "9223372036854775807", "9223372036854775808",
    "-9223372036854775808", "-9223372036854775809",
    "18446744073709551615", "18446744073709551616", "18446744073709551621",
    "99999999999999999999", "99999999999999999999x", "99999999999999999999\n\n",
    "-99999999999999999999", "1" + "0" * 100,
]
WORDS = [
    "y", "Y", "n", "N", "t", "T", "f", "F", "on", "ON", "On", "off", "OFF", "oF", "o",
    "oN ", "of", "ok", "yes", "no", "true", "false", "1abc", "0abc", "2abc", "x", "y\n\n",
    "none", "scan-time", "none\n", "scan-time\n", "scan-time\n\n", "none\n\n", " none",
    "none ", "NONE", "Scan-time", "scan_time", "scan-time ", "[none]", "[scan-time]",
    "scan", "scan-timex", "none\r\n", "scan-time\0junk", "none\0", "sca\0n-time",
    "scan-time none", "\nnone",
]
LONG = [
    "0" * (PAGE - 1) + "7",  # exactly one page
    "0" * (PAGE - 1) + "7" + "junk",  # the tail past one page is never seen
    "0" * PAGE + "5",  # the store sees only zeros
    "7\n" + "x" * 5000,
    "7\n" + "\0" * 5000,
    "scan-time" + "\0" * 5000,
    "none\n" + "\0" * (PAGE - 5) + "scan-time",
    "y" * 5000,
]
ALL_INPUTS = NUMBERS + WORDS + LONG
MODE_INPUTS = [w for w in WORDS if "none" in w or "scan" in w] + [
    "", "1", "0", "scan-time" + "\0" * 5000, "none\n" + "\0" * (PAGE - 5) + "scan-time",
]
FEW = ["0", "1", "2", "7", "100", "7\n", "abc", "-1", "", "4294967296"]


@dataclass
class Row:
    file: str
    input: str
    setup: list[tuple[str, str]] = field(default_factory=list)
    state: str = "none"  # none | unique | zero | shared


def build_rows() -> list[Row]:
    """Every probe row, in the order they run (state groups last)."""
    rows: list[Row] = []
    for name in TUNABLES:
        rows += [Row(name, text) for text in ALL_INPUTS]
        rows.append(Row(name, ""))
    for name in COUNTERS:
        rows += [Row(name, text) for text in ("0", "1", "")]
    rows += [Row("no_such_file", text) for text in ("0", "")]
    # pages_to_scan is refused while the advisor is on.
    on = [("advisor_mode", "scan-time")]
    rows += [Row("pages_to_scan", text, on) for text in FEW + ["500", "y", "\0"]]
    # advisor_mode switches reset pages_to_scan (or not, when the mode is unchanged).
    for setup in (
        [("pages_to_scan", "1234")],
        [("advisor_min_pages_to_scan", "777"), ("advisor_mode", "scan-time"),
         ("advisor_min_pages_to_scan", "888")],
        [("advisor_min_pages_to_scan", "4294967301")],
        [("advisor_min_pages_to_scan", "0"), ("pages_to_scan", "9")],
        [("advisor_min_pages_to_scan", "18446744073709551615")],
    ):
        rows += [Row("advisor_mode", text, setup) for text in MODE_INPUTS]
    # The advisor knobs while the advisor is on: do they touch pages_to_scan?
    for name in ("advisor_min_pages_to_scan", "advisor_max_pages_to_scan",
                 "advisor_max_cpu", "advisor_target_scan_time"):
        rows += [Row(name, text, on) for text in ("1", "777", "0", "4294967301", "abc")]
    # Writing a value the knob already has, from non-default values.
    for name, value, inputs in (
        ("run", "1", ["0", "1", "2", "3", "1\n", ""]),
        ("run", "2", ["0", "1", "2", "2\n", "abc", ""]),
        ("max_page_sharing", "2", ["2", "256", "3", "1"]),
        ("merge_across_nodes", "0", ["0", "1", "2", "-0"]),
        ("use_zero_pages", "1", ["1", "0", "x", "on"]),
        ("smart_scan", "0", ["0", "1", "x", "off"]),
        ("sleep_millisecs", "0", ["0", "20", "abc"]),
        ("stable_node_chains_prune_millisecs", "0", ["0", "2000"]),
    ):
        rows += [Row(name, text, [(name, value)]) for text in inputs]
    # With pages scanned but none merged (every page different: rmap items, no KSM page).
    rows += [Row("max_page_sharing", t, state="unique") for t in ("100", "256")]
    rows += [Row("merge_across_nodes", t, state="unique") for t in ("0", "1")]
    rows += [Row("run", "2", state="unique")]
    # With pages merged into the zero page only (use_zero_pages 1).
    rows += [Row("max_page_sharing", t, state="zero") for t in ("256", "100", "2", "abc")]
    rows += [Row("merge_across_nodes", t, state="zero") for t in ("1", "0")]
    rows += [Row("run", "2", state="zero")]
    # With real KSM pages shared.
    rows += [Row("max_page_sharing", t, state="shared") for t in (
        "256", "256\n", "+256", "257", "2", "1", "0", "-1", "abc", "", "2147483648",
        "99999999999999999999x")]
    rows += [Row("merge_across_nodes", t, state="shared") for t in (
        "1", "1\n", "0", "2", "abc", "", "18446744073709551616")]
    rows += [Row(n, "7", state="shared") for n in ("pages_to_scan", "sleep_millisecs",
                                                   "use_zero_pages", "smart_scan")]
    rows += [Row("run", t, state="shared") for t in ("0", "3", "abc")]
    rows += [Row("run", t, state="shared") for t in ("2", "2")]  # unmerge, then again
    rows += [Row("max_page_sharing", "100", state="shared"),
             Row("merge_across_nodes", "0", state="shared")]
    return rows


def encode_input(text: str) -> str | list:
    """Long inputs are stored run-length encoded: [[chunk, count], ...]."""
    if len(text) <= 120:
        return text
    runs: list[list] = []
    for ch in text:
        if runs and runs[-1][0] == ch:
            runs[-1][1] += 1
        else:
            runs.append([ch, 1])
    parts: list[list] = []
    for ch, count in runs:  # short runs are kept as literal text
        if count < 8 and parts and parts[-1][1] == 1:
            parts[-1][0] += ch * count
        elif count < 8:
            parts.append([ch * count, 1])
        else:
            parts.append([ch, count])
    return parts


def decode_input(value: str | list) -> bytes:
    if isinstance(value, str):
        return value.encode("latin-1")
    return "".join(ch * count for ch, count in value).encode("latin-1")


# ---- targets -----------------------------------------------------------------


class Target(Protocol):
    def write(self, name: str, data: bytes) -> tuple[int, int | None]: ...

    def read(self, name: str) -> str: ...


class RealTarget:
    """The real /sys/kernel/mm/ksm (use only inside realksm.real_ksm())."""

    def write(self, name: str, data: bytes) -> tuple[int, int | None]:
        try:
            fd = os.open(KSM_DIR / name, os.O_WRONLY)
        except OSError as exc:
            return exc.errno, None
        try:
            return 0, os.write(fd, data)
        except OSError as exc:
            return exc.errno, None
        finally:
            os.close(fd)

    def read(self, name: str) -> str:
        return (KSM_DIR / name).read_text()


class SimTarget:
    """A sysfs_emu.Kernel behind the same interface."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def write(self, name: str, data: bytes) -> tuple[int, int | None]:
        try:
            return 0, self.kernel.write_attr(name, data)
        except OSError as exc:
            return exc.errno, None

    def read(self, name: str) -> str:
        return self.kernel.read_attr(name)


def tunables(target: Target) -> dict[str, str]:
    return {name: target.read(name) for name in TUNABLES}


def counters(target: Target) -> dict[str, int]:
    return {name: int(target.read(name)) for name in COUNTERS}


def reset(target: Target, defaults: dict[str, str]) -> None:
    """Put every tunable back to its default text."""
    current = tunables(target)
    for name in RESET_ORDER:
        if current[name] != defaults[name]:
            value = defaults[name].strip()
            if name == "advisor_mode":
                value = realksm.selected_mode(value)
            err, _ = target.write(name, value.encode())
            if err:
                raise RuntimeError(f"cannot put {name} back to {value}: {os.strerror(err)}")
            current = tunables(target)
    if current != {n: defaults[n] for n in TUNABLES}:
        raise RuntimeError(f"tunables not back at defaults: {current}")


def run_row(target: Target, row: Row, defaults: dict[str, str]) -> dict:
    """Reset, apply the set-up, do the one write; what happened."""
    reset(target, defaults)
    for name, value in row.setup:
        err, _ = target.write(name, value.encode())
        if err:
            raise RuntimeError(f"set-up {name}={value!r} failed: {os.strerror(err)}")
    before = tunables(target)
    state_before = counters(target) if row.state != "none" else None
    err, written = target.write(row.file, decode_input(encode_input(row.input)))
    after = tunables(target)
    result = {
        "errno": err,
        "errname": _errno.errorcode.get(err, "") if err else "",
        "written": written,
        "readback": after.get(row.file),
        "changed": {k: v for k, v in after.items() if k != row.file and v != before[k]},
    }
    if state_before is not None:
        result["counters_before"] = state_before
        result["counters_after"] = counters(target)
    return result


# ---- real merged pages -----------------------------------------------------------

_HELPER = r"""
import mmap, sys
page = mmap.PAGESIZE
n, kind = int(sys.argv[1]), sys.argv[2]
buf = mmap.mmap(-1, n * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
buf.madvise(mmap.MADV_MERGEABLE)
fill = (b"\0" if kind == "zero" else b"\x5a") * page
for i in range(n):
    buf[i * page:(i + 1) * page] = fill
    if kind == "unique":
        buf[i * page:i * page + 8] = i.to_bytes(8, "little")
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.read()
"""


@contextlib.contextmanager
def merged_pages(target: RealTarget, kind: str, pages: int = 64) -> Iterator[dict]:
    """A helper process whose pages ksmd has merged; stopped (and waited for) on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HELPER, str(pages), kind],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        if proc.stdout.readline() != b"ready\n":
            raise RuntimeError("merge helper did not start")
        writes = [("pages_to_scan", "10000"), ("sleep_millisecs", "0")]
        if kind == "zero":
            writes.append(("use_zero_pages", "1"))
        writes.append(("run", "1"))
        for name, value in writes:
            err, _ = target.write(name, value.encode())
            if err:
                raise RuntimeError(f"{name}={value}: {os.strerror(err)}")
        deadline = time.monotonic() + 30
        while True:
            c = counters(target)
            done = {
                "zero": c["ksm_zero_pages"] >= pages,
                "shared": c["pages_shared"] > 0,
                "unique": c["pages_unshared"] + c["pages_volatile"] >= pages,
            }[kind]
            if done and c["full_scans"] >= 3:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ksmd did not merge the helper's pages: {c}")
            time.sleep(0.01)
        target.write("run", b"0")
        yield counters(target)
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def run_real(rows: list[Row], defaults: dict[str, str]) -> list[dict]:
    """Run the rows on the real kernel (caller holds realksm.real_ksm())."""
    target = RealTarget()
    results: list[dict] = []
    i = 0
    while i < len(rows):
        state = rows[i].state
        j = i
        while j < len(rows) and rows[j].state == state:
            j += 1
        if state == "none":
            results += [run_row(target, row, defaults) for row in rows[i:j]]
        else:
            reset(target, defaults)
            with merged_pages(target, state):
                results += [run_row(target, row, defaults) for row in rows[i:j]]
            realksm.unmerge_all()
        i = j
    reset(target, defaults)
    return results


class RecordedEngine:
    """Stands in for the memory model: counters as recorded, busy while pages are shared."""

    def __init__(self, counters: dict[str, int]) -> None:
        self._counters = dict(counters)
        self.calls: list[str] = []

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def busy(self) -> bool:
        self.calls.append("busy")
        return self._counters["pages_shared"] > 0

    def unmerge_all(self) -> None:
        self.calls.append("unmerge_all")

    def advisor_reset(self) -> None:
        self.calls.append("advisor_reset")


def run_sim(row: Row, counters_before: dict[str, int] | None, defaults: dict[str, str]) -> dict:
    """One row on a fresh simulated kernel (with a recorded-counter engine for state rows)."""
    kernel = Kernel()
    if counters_before is not None:
        kernel.engine = RecordedEngine(counters_before)
    result = run_row(SimTarget(kernel), row, defaults)
    result.pop("counters_before", None)
    result.pop("counters_after", None)
    return result


def sim_differences(rows: list[Row], answers: list[dict], defaults: dict[str, str]) -> list[str]:
    """One line per row where the simulator answers otherwise than ``answers`` (live or recorded)."""
    differ = []
    for row, want in zip(rows, answers, strict=True):
        got = run_sim(row, want.get("counters_before"), defaults)
        want = {key: want[key] for key in got}
        if got != want:
            differ.append(f"{row.file} <- {row.input[:40]!r} setup={row.setup} state={row.state}:"
                          f" real {want} sim {got}")
    return differ


# ---- table file ------------------------------------------------------------------


def row_from_json(entry: dict) -> Row:
    return Row(entry["file"], decode_input(entry["input"]).decode("latin-1"),
               [tuple(s) for s in entry["setup"]], entry["state"])


def load_table(path: Path = TABLE_PATH) -> dict:
    return json.loads(path.read_text())


def read_defaults_file(path: Path) -> dict[str, str]:
    """'name<TAB>text' lines, as `for f in *; do printf '%s\\t%s\\n' $f "$(cat $f)"; done` gives."""
    values = {}
    for line in path.read_text().splitlines():
        name, _, text = line.partition("\t")
        values[name] = text + "\n"
    if sorted(values) != sorted(FILES):
        raise SystemExit(f"probe_ksm_conformance: {path} does not list the {len(FILES)} files")
    return values


def dump_table(table: dict) -> str:
    """JSON with one row per line, so diffs between recordings stay readable."""
    head = {k: v for k, v in table.items() if k != "rows"}
    text = json.dumps(head, indent=1)[:-2] + ',\n "rows": [\n'
    text += ",\n".join("  " + json.dumps(row) for row in table["rows"])
    return text + "\n ]\n}\n"


def kernel_config(names: tuple[str, ...]) -> dict[str, str]:
    """Selected build options of the running kernel, from /boot/config-* when present."""
    path = Path("/boot") / f"config-{platform.release()}"
    found: dict[str, str] = {}
    text = ""
    if path.exists():
        text = path.read_text()
    elif Path("/proc/config.gz").exists():
        text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    if text:
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key in names:
                found[key] = value
    return found


def probe(out: Path, defaults_file: Path | None = None) -> None:
    reason = realksm.skip_reason()
    if reason:
        sys.exit(f"probe_ksm_conformance: {reason}")
    rows = build_rows()
    with realksm.real_ksm():
        found = {name: realksm.read(name) for name in FILES}
        if defaults_file:
            defaults = read_defaults_file(defaults_file)
        elif int(found["pages_scanned"]) == 0 and int(found["full_scans"]) == 0:
            defaults = found  # nothing has run since boot: these are the boot defaults
        elif out.exists():
            defaults = load_table(out)["defaults"]
        else:
            sys.exit("probe_ksm_conformance: ksmd has run since boot, so the boot defaults are"
                     " unknown; pass --defaults FILE recorded right after boot")
        started = time.monotonic()
        results = run_real(rows, defaults)
        elapsed = time.monotonic() - started
    table = {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "page_size": PAGE,
        "config": kernel_config(("CONFIG_NUMA", "CONFIG_HZ", "CONFIG_KSM")),
        "numa_nodes": len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))),
        "recorded": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "probe_seconds": round(elapsed, 2),
        "defaults": defaults,
        "rows": [
            {"file": r.file, "input": encode_input(r.input), "setup": [list(s) for s in r.setup],
             "state": r.state, **res}
            for r, res in zip(rows, results)
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_table(table))
    print(f"{len(rows)} rows in {elapsed:.1f}s -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TABLE_PATH)
    parser.add_argument("--defaults", type=Path, help="boot values, 'name<TAB>text' lines")
    args = parser.parse_args()
    probe(args.out, args.defaults)


if __name__ == "__main__":
    main()
