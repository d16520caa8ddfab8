"""Real processes with mergeable memory of known contents, for measuring the real ksmd.

A workload process is a real child Python process that maps one anonymous
private area, lays its regions out in it (a ``thp`` region starts on a 2 MiB
boundary), fills it page by page with known contents, marks the mergeable
regions with ``madvise(MADV_MERGEABLE)`` and then obeys commands on its stdin
(rewrite pages, madvise a region, exit). Contents are the simulator's content
ids: content 0 is an empty (all-zero) page, content ``c > 0`` a page whose
first 8 bytes hold ``c`` and whose rest is zero, so equal ids are equal pages.

Transparent huge pages: the area is ``MADV_NOHUGEPAGE``, so every page is a
4 KiB page as in the simulator's plain regions; a ``thp`` region is
``MADV_HUGEPAGE`` while it is filled (each 2 MiB of it is faulted in as one
huge page) and ``MADV_NOHUGEPAGE`` afterwards, which keeps its huge pages but
keeps khugepaged from collapsing split ones back, something the simulator does
not model (:meth:`WorkloadProcess.region_use` shows whether the huge pages came).

Always use :func:`workload_processes` (or call ``stop``) so that no process
outlives its user.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sysfs_emu.errors import EmuError

HUGE_PAGES = 512  # 4 KiB pages in a 2 MiB huge page
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")

_BODY = r"""
import ctypes, json, mmap, struct, sys
spec = json.loads(sys.stdin.readline())
PAGE = mmap.PAGESIZE
HUGE = 512
starts, at = [], 0
for r in spec:
    if r["thp"]:
        at = -(-at // HUGE) * HUGE
    starts.append(at)
    at += len(r["contents"])
buf = mmap.mmap(-1, (at + HUGE) * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
pad = (-addr) % (HUGE * PAGE) // PAGE
starts = [s + pad for s in starts]
buf.madvise(mmap.MADV_NOHUGEPAGE)
for r, s in zip(spec, starts):
    if r["thp"] and r["contents"]:
        buf.madvise(mmap.MADV_HUGEPAGE, s * PAGE, len(r["contents"]) * PAGE)

def fill(first, contents):
    for i, c in enumerate(contents):
        off = (first + i) * PAGE
        buf[off:off + 8] = struct.pack("<q", c)  # a write: the page is faulted in

def advise(r, advice):
    if spec[r]["contents"]:
        buf.madvise(advice, starts[r] * PAGE, len(spec[r]["contents"]) * PAGE)

for r, s in zip(spec, starts):
    fill(s, r["contents"])
for i, r in enumerate(spec):
    if r["thp"]:
        advise(i, mmap.MADV_NOHUGEPAGE)
for i, r in enumerate(spec):
    if r["mergeable"]:
        advise(i, mmap.MADV_MERGEABLE)
sys.stdout.write("ready %d\n" % addr)
sys.stdout.write(json.dumps([addr + s * PAGE for s in starts]) + "\n")
sys.stdout.flush()
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "rewrite":
        fill(starts[cmd["region"]] + cmd["first"], cmd["contents"])
    elif cmd["op"] == "madvise":
        advise(cmd["region"], {"mergeable": mmap.MADV_MERGEABLE, "unmergeable": mmap.MADV_UNMERGEABLE}[cmd["advice"]])
    elif cmd["op"] == "exit":
        break
    sys.stdout.write("ok\n")
    sys.stdout.flush()
"""


class WorkloadError(EmuError):
    """A workload process did not start or did not obey."""


@dataclass
class RegionUse:
    """One region's memory as /proc/PID/smaps shows it, in kB."""

    rss: int = 0
    anon_huge: int = 0
    ksm: int = 0


@dataclass
class WorkloadProcess:
    """One running workload process."""

    process: subprocess.Popen
    regions: list[dict] = field(default_factory=list)
    addresses: list[int] = field(default_factory=list)  # where each region starts

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _command(self, cmd: dict) -> None:
        self.process.stdin.write(json.dumps(cmd) + "\n")
        self.process.stdin.flush()
        if self.process.stdout.readline() != "ok\n":
            raise WorkloadError(f"workload process {self.pid} did not obey {cmd['op']}")

    def rewrite(self, region: int, first: int, contents: list[int]) -> None:
        """Write new contents over pages of a region (breaks COW where merged)."""
        self._command({"op": "rewrite", "region": region, "first": first, "contents": [int(c) for c in contents]})

    def madvise(self, region: int, advice: str) -> None:
        """``madvise(MADV_MERGEABLE)`` (``advice`` "mergeable") or ``MADV_UNMERGEABLE`` ("unmergeable") on a region."""
        self._command({"op": "madvise", "region": region, "advice": advice})

    def ksm_stat(self) -> dict[str, str]:
        text = Path(f"/proc/{self.pid}/ksm_stat").read_text()
        out = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            out[key.rstrip(":")] = value.strip()
        return out

    def region_use(self) -> list[RegionUse]:
        """Each region's Rss, AnonHugePages and KSM from /proc/PID/smaps.

        smaps counts per mapping, and neighbouring regions with the same flags
        are one mapping: such a mapping counts for the first region it
        overlaps. The sum over the regions is exact.
        """
        spans = [(a, a + len(r["contents"]) * 4096) for a, r in zip(self.addresses, self.regions)]
        use = [RegionUse() for _ in spans]
        for start, end, values in _smaps_vmas(self.pid):
            for i, (a, b) in enumerate(spans):
                if start < b and end > a:
                    use[i].rss += values.get("Rss", 0)
                    use[i].anon_huge += values.get("AnonHugePages", 0)
                    use[i].ksm += values.get("KSM", 0)
                    break
        return use

    def memory_use(self) -> RegionUse:
        """The workload's memory as /proc/PID/smaps shows it: its regions' Rss, AnonHugePages and KSM, summed."""
        use = self.region_use()
        return RegionUse(sum(u.rss for u in use), sum(u.anon_huge for u in use), sum(u.ksm for u in use))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream:
                stream.close()


def _smaps_vmas(pid: int):
    """(start address, end address, {key: kB}) of each VMA in /proc/PID/smaps."""
    span, values = None, {}
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):
            if span is not None:
                yield *span, values
            span, values = tuple(int(x, 16) for x in head.split("-")), {}
        elif line.endswith(" kB"):
            values[head.rstrip(":")] = int(line.split()[1])
    if span is not None:
        yield *span, values


def thp_unavailable() -> str | None:
    """Why a process cannot get transparent huge pages with MADV_HUGEPAGE here, or None."""
    try:
        mode = THP_ENABLED.read_text()
    except OSError:
        return "the kernel has no transparent huge pages"
    if "[never]" in mode:
        return "transparent huge pages are disabled (enabled is never)"
    return None


def start_workload(regions: list[dict]) -> WorkloadProcess:
    """Start a process with ``regions`` = [{"contents": [ids...], "mergeable": bool, "thp": bool}]."""
    spec = [{"contents": [int(c) for c in r["contents"]], "mergeable": bool(r.get("mergeable", True)),
             "thp": bool(r.get("thp", False))} for r in regions]
    proc = subprocess.Popen([sys.executable, "-c", _BODY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    if not proc.stdout.readline().startswith("ready"):
        proc.kill()
        proc.wait()
        raise WorkloadError("workload process did not start")
    return WorkloadProcess(proc, spec, json.loads(proc.stdout.readline()))


@contextlib.contextmanager
def workload_processes():
    """Yield a list to which started workloads are appended; all are killed on exit."""
    started: list[WorkloadProcess] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.stop()


def foreign_mergeable(ours: set[int] = frozenset()) -> list[int]:
    """Processes other than ``ours`` whose memory KSM scans (they would skew the global counters)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/ksm_stat"):
        try:
            pid = int(stat.parent.name)
            if pid not in ours and "ksm_mergeable: yes" in stat.read_text():
                found.append(pid)
        except OSError:
            continue
    return found
