"""What ``ksmtuned-py doctor`` reads of the host: one survey for every check, and the finding it reports.

The survey is status's snapshot (the KSM files, the guests and their figures) and every
process's comm, command line and ``ksm_stat``, read once below the root; nothing is written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ksmtuned_py import config as configmod
from ksmtuned_py import procinfo
from ksmtuned_py.knobs import check_root, ksm_dir, read_knob

WARNING, INFO = "warning", "info"
#: Processes that look like qemu/KVM guests, by program or arguments.
GUEST_LIKE_PROGRAMS = re.compile(r"^(qemu-system-.+|qemu-kvm|kvm|qemu:.+)$")
#: Other programs known to write /sys/kernel/mm/ksm.
OTHER_TUNERS = {"ksmtuned": "the reference ksmtuned", "tuned": "tuned", "virt-handler": "KubeVirt's virt-handler",
                "momd": "oVirt MOM"}


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str  # WARNING or INFO
    evidence: str  # one sentence, with the numbers
    action: str  # what to do
    subject: str = ""  # the guest or process it is about, if any


@dataclass
class Process:
    """One process as the survey saw it."""

    pid: int
    comm: str
    argv: list[str]
    ksm: procinfo.KsmStat | None
    kthread: bool = False

    @property
    def program(self) -> str:
        return os.path.basename(self.argv[0]) if self.argv else ""


@dataclass
class Host:
    """What the checks look at: status's snapshot and every process."""

    root: str
    config: configmod.Config
    has_ksm: bool
    status: dict = field(default_factory=dict)  # status.collect()'s snapshot (empty without KSM)
    processes: list[Process] = field(default_factory=list)

    @property
    def proc(self) -> str:
        return os.path.join(self.root, "proc")

    def knob_text(self, name: str) -> str | None:
        return read_knob(ksm_dir(self.root), name)

    def guests(self) -> list[dict]:
        return self.status.get("guests", [])

    def argv(self, pid: int) -> list[str]:
        """A surveyed process's command line ([] if it was not seen)."""
        return next((p.argv for p in self.processes if p.pid == pid), [])


def survey(cfg: configmod.Config, root: str = "/") -> Host:
    """Read the host once for every check."""
    from ksmtuned_py.status import collect

    check_root(root)  # a mistyped --root is an error, not a kernel without KSM
    host = Host(root, cfg, os.path.isdir(ksm_dir(root)))
    if host.has_ksm:
        host.status = collect(cfg, root)
    host.processes = list(_processes(host.proc))
    return host


def _processes(proc: str):
    try:
        names = os.listdir(proc)
    except OSError:
        return
    for name in sorted((n for n in names if n.isdigit()), key=int):
        comm = procinfo.read_bytes(f"{proc}/{name}/comm", 64)
        if comm is None:
            continue
        stat = procinfo.read_bytes(f"{proc}/{name}/stat", 4096) or b""
        fields = stat[stat.rfind(b")") + 2:].split()
        kthread = len(fields) > 6 and fields[6].isdigit() and bool(int(fields[6]) & 0x00200000)
        pid = int(name)
        yield Process(pid, comm.decode("utf-8", errors="replace").removesuffix("\n"),
                      procinfo.read_cmdline(proc, pid), procinfo.read_ksm_stat(proc, pid), kthread)
