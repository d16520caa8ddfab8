"""Real processes with known memory contents, for sysfs-emu capture's tests.

A process maps one anonymous area and places each region of pages at a 2 MiB boundary
of it, with untouched pages between regions (so every mergeable region is a mapping
of its own, starting on a huge-page boundary); a region with ``thp`` is advised
MADV_HUGEPAGE before it is touched, so transparent huge pages back it where the
kernel allows them, the others MADV_NOHUGEPAGE. Contents are content ids as in
tests/fidelity_workload.py: 0 is an empty page, ``c > 0`` a page whose first 8 bytes
hold ``c`` (equal ids are equal pages). Mergeable regions are advised
MADV_MERGEABLE once filled. The process then waits for its standard input to close.

Always use :func:`workloads` so that no process outlives a test.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

MARK = "ksmtuned-py-capture-workload"  # in every workload's command line, to find them in a capture

_BODY = r"""
import ctypes, json, mmap, struct, sys
name, merge_any, spec = json.loads(sys.stdin.readline())
if name:
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: the comm
if merge_any:
    ctypes.CDLL(None).prctl(67, 1, 0, 0, 0)  # PR_SET_MEMORY_MERGE: every anonymous mapping is mergeable
PAGE, HUGE = mmap.PAGESIZE, 512
starts, at = [], 0
for r in spec:
    at = -(-at // HUGE) * HUGE
    starts.append(at)
    at += max(len(r["contents"]), 1) + 1  # a page of gap: the next region starts a mapping of its own
buf = mmap.mmap(-1, (at + 2 * HUGE) * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
view = ctypes.c_char.from_buffer(buf)
pad = (-ctypes.addressof(view)) % (HUGE * PAGE) // PAGE
del view
starts = [s + pad for s in starts]
buf.madvise(mmap.MADV_NOHUGEPAGE)
for r, s in zip(spec, starts):
    if r.get("thp") and r["contents"]:
        buf.madvise(mmap.MADV_HUGEPAGE, s * PAGE, len(r["contents"]) * PAGE)
for r, s in zip(spec, starts):
    for i, c in enumerate(r["contents"]):
        off = (s + i) * PAGE
        buf[off:off + 8] = struct.pack("<q", c)  # a write: the page is faulted in
for r, s in zip(spec, starts):
    if r.get("mergeable", True) and r["contents"]:
        buf.madvise(mmap.MADV_MERGEABLE, s * PAGE, len(r["contents"]) * PAGE)
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.read()
"""


def start(regions: list[dict], name: str = "", merge_any: bool = False) -> subprocess.Popen:
    """A workload process with ``regions`` = [{"contents": [ids], "thp": bool, "mergeable": bool}];
    ``name`` is its comm (default: python's); ``merge_any``: prctl(PR_SET_MEMORY_MERGE) first."""
    proc = subprocess.Popen([sys.executable, "-c", _BODY, MARK], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    proc.stdin.write(json.dumps([name, merge_any, regions]) + "\n")
    proc.stdin.flush()
    if proc.stdout.readline() != "ready\n":
        proc.kill()
        proc.wait()
        raise RuntimeError("capture workload did not start")
    return proc


@contextlib.contextmanager
def workloads():
    """Yield a list to which started workloads are appended; all are killed and reaped on exit."""
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                stream.close()


def thp_available() -> bool:
    """Transparent huge pages can back a region advised MADV_HUGEPAGE."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False
