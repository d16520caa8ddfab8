"""Real processes with mergeable memory, for the fidelity tests against the real ksmd.

A workload process is a real child Python process that maps one anonymous
private area (transparent huge pages off, so every page is a 4 KiB page as in
the simulator), fills it page by page with known contents, marks the
mergeable regions with ``madvise(MADV_MERGEABLE)`` and then obeys commands on
its stdin (rewrite pages, exit). Contents are the simulator's content ids:
content 0 is an empty (all-zero) page, content ``c > 0`` is a page whose first
8 bytes hold ``c`` and whose rest is zero, so equal ids are equal pages.

Always use :func:`workload_processes` (or call ``stop``) so that no process
outlives a test.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

KSM_DIR = Path("/sys/kernel/mm/ksm")

_BODY = r"""
import json, mmap, struct, sys
spec = json.loads(sys.stdin.readline())
PAGE = mmap.PAGESIZE
sizes = [len(r["contents"]) for r in spec]
total = sum(sizes)
buf = mmap.mmap(-1, max(total, 1) * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
buf.madvise(mmap.MADV_NOHUGEPAGE)
starts, at = [], 0
for n in sizes:
    starts.append(at)
    at += n

def fill(first, contents):
    for i, c in enumerate(contents):
        off = (first + i) * PAGE
        buf[off:off + 8] = struct.pack("<q", c)  # a write: the page is faulted in

for region, start in zip(spec, starts):
    fill(start, region["contents"])
for region, start, n in zip(spec, starts, sizes):
    if region.get("mergeable", True) and n:
        buf.madvise(mmap.MADV_MERGEABLE, start * PAGE, n * PAGE)
sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "rewrite":
        fill(starts[cmd["region"]] + cmd["first"], cmd["contents"])
    elif cmd["op"] == "exit":
        break
    sys.stdout.write("ok\n")
    sys.stdout.flush()
"""


@dataclass
class WorkloadProcess:
    """One running workload process."""

    process: subprocess.Popen
    regions: list[dict] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _command(self, cmd: dict) -> None:
        self.process.stdin.write(json.dumps(cmd) + "\n")
        self.process.stdin.flush()
        if self.process.stdout.readline() != "ok\n":
            raise RuntimeError(f"workload process {self.pid} did not obey {cmd['op']}")

    def rewrite(self, region: int, first: int, contents: list[int]) -> None:
        """Write new contents over pages of a region (breaks COW where merged)."""
        self._command({"op": "rewrite", "region": region, "first": first, "contents": list(contents)})

    def ksm_stat(self) -> dict[str, str]:
        text = Path(f"/proc/{self.pid}/ksm_stat").read_text()
        out = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            out[key.rstrip(":")] = value.strip()
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream:
                stream.close()


def start_workload(regions: list[dict]) -> WorkloadProcess:
    """Start a process with ``regions`` = [{"contents": [ids...], "mergeable": bool}]."""
    spec = [{"contents": [int(c) for c in r["contents"]], "mergeable": bool(r.get("mergeable", True))} for r in regions]
    proc = subprocess.Popen(
        [sys.executable, "-c", _BODY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    if proc.stdout.readline() != "ready\n":
        proc.kill()
        proc.wait()
        raise RuntimeError("workload process did not start")
    return WorkloadProcess(proc, spec)


@contextlib.contextmanager
def workload_processes():
    """Yield a list to which started workloads are appended; all are killed on exit."""
    started: list[WorkloadProcess] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.stop()


def read_counter(name: str) -> int:
    return int((KSM_DIR / name).read_text())


def wait_full_scans(target: int, timeout: float = 30.0) -> None:
    """Wait until the real ksmd has completed ``target`` full scans."""
    deadline = time.monotonic() + timeout
    while read_counter("full_scans") < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"real ksmd did not reach {target} full scans in {timeout} s")
        time.sleep(0.002)
