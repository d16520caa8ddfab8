"""Stand-in guests that share memory copy-on-write with a twin, so their PSS differs from their RSS.

:func:`build` compiles ``tests/standin_guest.c`` statically (a static program maps no
library, so no page of it is shared with the rest of the machine and its PSS stays put
while other processes come and go); :func:`start` runs it under a given process name
(``kvm`` for Proxmox VE's guests) as several processes sharing one block of memory.
Always stop them (:meth:`Twins.stop`, or the PID namespace the test runs in).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.guests import stop_process

SOURCE = Path(__file__).with_name("standin_guest.c")


class Unavailable(Exception):
    """The stand-in cannot be built here (the message says why)."""


def build(directory: Path) -> Path:
    """The static stand-in program, compiled into ``directory``."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise Unavailable("no C compiler (gcc) to build the static stand-in guest")
    binary = directory / "standin-guest"
    got = subprocess.run([cc, "-static", "-O1", "-o", str(binary), str(SOURCE)], capture_output=True,
                         text=True)
    if got.returncode != 0:
        reason = (got.stderr.strip().splitlines() or ["failed"])[-1]
        raise Unavailable(f"cannot build a static program (libc6-dev's libc.a?): {reason}")
    return binary


@dataclass
class Twins:
    """One stand-in started as ``copies`` processes (the first one's children share its memory)."""

    process: subprocess.Popen
    pids: list[int]

    def stop(self) -> None:
        """SIGTERM the first copy (the others die with it), and reap it."""
        stop_process(self.process)


def start(binary: Path, name: str, shared_kib: int, private_kib: int, copies: int = 2) -> Twins:
    """Run the stand-in as ``name`` (its comm), in ``copies`` processes; returns once all are resident."""
    program = binary.with_name(name)
    if not program.exists():
        shutil.copy2(binary, program)  # the process name is the program file's name
    proc = subprocess.Popen([str(program), str(shared_kib), str(private_kib), str(copies)],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    pids = []
    for _ in range(copies):
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            proc.kill()
            proc.wait()
            raise RuntimeError(f"stand-in guest {name} did not start")
        pids.append(int(line))
    return Twins(proc, sorted(pids))
