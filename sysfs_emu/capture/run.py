"""Capturing the host: choosing the processes, reading their mergeable mappings, writing the scenario."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from sysfs_emu.capture import procs
from sysfs_emu.capture.ids import assign_ids
from sysfs_emu.capture.pages import (
    PAGE, Hasher, MappingPages, PageReader, ZeroBudget, read_mapping, zero_page_frames,
)
from sysfs_emu.capture.procs import CaptureError, Gone, ProcessInfo
from sysfs_emu.capture.scenario import ProcessCapture, write_capture
from sysfs_emu.progress import Progress

MAX_SAMPLE = 512  # one page in a 2 MiB huge page at least


@dataclass
class CaptureReport:
    """What a capture found and wrote."""

    yaml_path: Path
    ids_path: Path
    sample: int
    processes: int = 0
    guests: int = 0
    pages: int = 0  # resident candidate pages captured (inferred ones included)
    read_pages: int = 0  # of which read
    empty_pages: int = 0
    thp_pages: int = 0
    skipped_pages: int = 0  # changed or vanished while read
    exited: int = 0  # processes that exited while read
    seconds: float = 0.0
    names: list[str] = field(default_factory=list)

    @property
    def bytes_per_second(self) -> float:
        return self.pages * PAGE / self.seconds if self.seconds > 0 else 0.0


def _chosen(infos: list[ProcessInfo], guest: re.Pattern, guests_only: bool) -> list[tuple[ProcessInfo, bool]]:
    """(process, is_guest) of those to capture: the guests, and every mergeable process unless guests only."""
    chosen = []
    for info in infos:
        is_guest = bool(guest.search(info.comm))
        if is_guest or (info.mergeable and not guests_only):
            chosen.append((info, is_guest))
    return chosen


def _read_process(info: ProcessInfo, hasher: Hasher, zero_pfns, sample: int, progress) -> list[MappingPages]:
    """The captured pages of each mergeable mapping of a process (Gone when it exited meanwhile)."""
    reader = PageReader(info.pid, hasher, zero_pfns)
    try:
        budget = ZeroBudget(info.ksm_zero_pages)
        return [read_mapping(reader, m, sample, budget, progress) for m in info.mappings if m.mergeable]
    finally:
        reader.close()


def capture(out: Path, sample: int = 1, guests_only: bool = False, guest_regex: str | None = None,
            show_progress: bool = True) -> CaptureReport:
    """Capture this host into ``out`` (a YAML file) and the content id file beside it."""
    from ksmtuned_py import config as configmod

    if not 1 <= sample <= MAX_SAMPLE:
        raise CaptureError(f"--sample must be from 1 to {MAX_SAMPLE}, got {sample}")
    page = os.sysconf("SC_PAGE_SIZE")
    if page != PAGE:  # e.g. arm64 or ppc64le kernels with 64 KiB pages: every offset and count would be wrong
        raise CaptureError(f"capture reads memory in 4 KiB pages, as the simulator models them; "
                           f"this kernel's pages are {page // 1024} KiB")
    if os.geteuid() != 0:
        raise CaptureError("capture needs root: it reads other processes' memory through /proc/PID/pagemap "
                           "and /proc/PID/mem")
    if not out.parent.is_dir():
        raise CaptureError(f"cannot write {out}: no directory {out.parent}")
    guest = re.compile(guest_regex or configmod.UPSTREAM_PROCESS_REGEX)
    ids_path = out.with_name(out.name.removesuffix(".yaml").removesuffix(".yml") + ".ids.npy")
    report = CaptureReport(out, ids_path, sample)
    started = time.monotonic()
    chosen = _chosen(procs.processes(), guest, guests_only)
    total = sum((m.end - m.start) // PAGE for info, _ in chosen for m in info.mappings if m.mergeable)
    bar = Progress(total, "capturing") if show_progress else None
    done = [0]

    def advanced(n: int) -> None:
        done[0] += n
        if bar is not None:
            bar.update(done[0], f"{done[0] * PAGE >> 30} of {total * PAGE >> 30} GiB of address space")

    hasher, zero_pfns = Hasher(os.urandom(32)), zero_page_frames()
    captured = []
    try:
        for info, is_guest in chosen:
            try:
                parts = _read_process(info, hasher, zero_pfns, sample, advanced)
            except Gone:
                report.exited += 1
                continue
            captured.append(ProcessCapture(info, is_guest, parts))
    finally:
        hasher.close()  # the key goes with it
        if bar is not None:
            bar.close()
    ids = assign_ids([p for c in captured for p in c.parts], sample)
    _count(report, captured, ids)
    write_capture(out, ids_path, captured, ids, sample, report)
    report.seconds = time.monotonic() - started
    return report


def _count(report: CaptureReport, captured: list[ProcessCapture], ids) -> None:
    report.processes = len(captured)
    report.guests = sum(c.is_guest for c in captured)
    report.names = [c.info.comm for c in captured]
    report.pages = int(ids.size)
    report.empty_pages = int((ids == 0).sum())
    for c in captured:
        for part in c.parts:
            report.read_pages += part.read_pages
            report.skipped_pages += part.skipped
            report.thp_pages += int(sum(t.sum() for t in part.thp))
