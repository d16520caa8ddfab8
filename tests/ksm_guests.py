"""Real stand-in guests whose memory KSM can (or cannot) merge, for status, metrics and doctor tests.

Like tests/guests.py, a stand-in is a real process named and started like a qemu guest
(comm ``qemu-system-x86`` and ``qemu-system-x86_64 -name guest=NAME`` by default), but its
memory is one area filled with the contents given (as in tests/fidelity_workload.py:
content 0 is an empty page, ``c`` a page starting with ``c``; by default 256 pages no
other process has) and set up as asked:

- ``mergeable``: ``madvise(MADV_MERGEABLE)`` (as qemu does unless ``-machine mem-merge=off``);
- ``shared``: ``MAP_SHARED`` memory (as a shared memory backend), which KSM cannot merge;
- ``thp``: ``MADV_HUGEPAGE`` (transparent huge pages, where the kernel allows them);
- ``merge_any``: ``prctl(PR_SET_MEMORY_MERGE)``.

Always use :func:`ksm_guests` so no process outlives the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

from tests.guests import StandInGuest

_BODY = r"""
import ctypes, json, mmap, os, signal, struct, sys
spec = json.loads(sys.stdin.readline())
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, ctypes.c_char_p(spec["comm"].encode()[:15]), 0, 0, 0)  # PR_SET_NAME
if spec["merge_any"] and libc.prctl(67, 1, 0, 0, 0) != 0:  # PR_SET_MEMORY_MERGE
    sys.exit("PR_SET_MEMORY_MERGE failed")
PAGE = mmap.PAGESIZE
contents = spec["contents"]
flags = (mmap.MAP_SHARED if spec["shared"] else mmap.MAP_PRIVATE) | mmap.MAP_ANONYMOUS
if spec["thp"]:  # 2 MiB aligned, so that whole huge pages fit
    raw = mmap.mmap(-1, len(contents) * PAGE + (2 << 20), flags=flags)
    buf = raw
else:
    buf = mmap.mmap(-1, max(len(contents), 1) * PAGE, flags=flags)
buf.madvise(mmap.MADV_HUGEPAGE if spec["thp"] else mmap.MADV_NOHUGEPAGE)
for i, c in enumerate(contents):
    buf[i * PAGE:i * PAGE + 8] = struct.pack("<q", c)
if spec["mergeable"]:
    buf.madvise(mmap.MADV_MERGEABLE)
os.write(1, b"ready\n")
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    signal.pause()
"""


def start_ksm_guest(name: str = "guest", contents: list[int] | None = None, *, comm: str = "qemu-system-x86",
                    argv0: str = "qemu-system-x86_64", args: tuple[str, ...] | None = None,
                    mergeable: bool = True, shared: bool = False, thp: bool = False,
                    merge_any: bool = False) -> StandInGuest:
    """Start one stand-in guest with its memory resident and set up; wait until it is."""
    # By default pages no other process has (the real ksmd may be merging other tests' pages)
    default = [int.from_bytes(os.urandom(7), "little") + 1 for _ in range(256)]
    spec = {"comm": comm, "contents": list(contents if contents is not None else default),
            "mergeable": mergeable, "shared": shared, "thp": thp, "merge_any": merge_any}
    extra = args if args is not None else ("-name", f"guest={name},debug-threads=on", "-enable-kvm")
    env = dict(os.environ, PYTHONHOME=sys.base_prefix)
    proc = subprocess.Popen([argv0, "-c", _BODY, *extra], executable=sys.executable,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    proc.stdin.write(json.dumps(spec).encode() + b"\n")  # (too long for an argument)
    proc.stdin.close()
    if proc.stdout.readline() != b"ready\n":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"stand-in guest {name} did not start")
    return StandInGuest(proc, comm, argv0)


@contextlib.contextmanager
def ksm_guests(*specs: dict):
    """Start several (keyword arguments of :func:`start_ksm_guest` each); all stopped on exit."""
    started: list[StandInGuest] = []
    try:
        for spec in specs:
            started.append(start_ksm_guest(**spec))
        yield started
    finally:
        for guest in started:
            guest.stop()
