"""What one cycle did (handed to every cycle listener: metrics, the published state, simulate's rows)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GuestReport:
    """One guest as a cycle saw it: its size and its KSM numbers (None where the kernel has none)."""

    pid: int
    name: str  # libvirt's -name guest=, Proxmox VE's -id, else the pid
    comm: str
    committed_kb: int  # resident (or proportional) size: what it adds to committed_kb
    ksm_merging_pages: int | None = None
    ksm_process_profit: int | None = None  # bytes, can be negative
    ksm_rmap_items: int | None = None
    ksm_zero_pages: int | None = None
    mergeable: bool | None = None  # ksm_stat's ksm_mergeable (Linux >= 6.7), else mg in smaps; None if unknown


@dataclass(frozen=True)
class CycleReport:
    """One cycle: when, what was read, what was decided and written, and KSM right after.

    The names are the cycle's vocabulary (see ``cycle.py``): ``npages`` and ``sleep_ms``
    are the policy's choice; ``run``, ``pages_to_scan`` and ``sleep_millisecs`` are the
    knobs as the kernel shows them after the writes.
    """

    time: float  # the host's clock when the cycle started (epoch seconds; simulated seconds in a simulation)
    duration: float  # wall seconds the cycle took
    cycles: int  # cycles run so far, this one included
    action: str  # "start" or "stop"
    level: str | None  # "boost" or "decay" on start (ksmtuned's rule)
    reason: str  # why, in one sentence
    npages: int | None  # pages_to_scan decided (kept as is on stop)
    sleep_ms: int | None  # sleep_millisecs decided
    free_kb: int
    committed_kb: int
    thres_kb: int | None
    total_kb: int
    guests: int  # processes counted as guests
    advisor_active: bool  # the kernel's advisor sets pages_to_scan
    status: str  # the one-line status sentence sent to systemd
    writes: tuple[str, ...] = ()  # "name=value" in the order written, failed ones included
    writes_ok: bool = True  # every knob write succeeded
    run: int | None = None
    pages_to_scan: int | None = None
    sleep_millisecs: int | None = None
    pages_sharing: int | None = None
    saved_bytes: int | None = None  # (pages_sharing + ksm_zero_pages) x page size
    general_profit: int | None = None  # bytes, where the kernel has it
    ksm_zero_pages: int | None = None
    pages_scanned: int | None = None
    # Beyond ksmtuned: what scanning costs and risks, and who saves what (None where not known).
    policy: str = ""
    ksmd_cpu_seconds: float | None = None  # ksmd's CPU time since boot
    ksmd_cpu_percent: float | None = None  # of one CPU, over the last interval
    cow_ksm: int | None = None  # KSM pages copied on write since boot (/proc/vmstat)
    cow_ksm_per_second: float | None = None  # over the last interval
    unmerge_need_bytes: int | None = None  # (pages_sharing + ksm_zero_pages) x page size: needed if all diverge
    unmerge_room_bytes: int | None = None  # MemAvailable + SwapFree
    per_guest: tuple[GuestReport, ...] = ()
    # Knobs that changed since the last cycle wrote them, not by this cycle: "name old -> new"
    knobs_changed: tuple[str, ...] = ()
    next_cycle_s: float | None = None  # the policy asked for the next cycle this soon (None: after the interval)

    @property
    def unmerge_risk(self) -> bool | None:
        """Would the host lack memory if every merged page were written again?"""
        if self.unmerge_need_bytes is None or self.unmerge_room_bytes is None:
            return None
        return self.unmerge_need_bytes > self.unmerge_room_bytes


def report_dict(report: CycleReport) -> dict:
    """``dataclasses.asdict(report)`` without its deep copy (every field is a number, a string or a
    tuple of them): the daemon publishes one every cycle."""
    d = dict(report.__dict__)
    d["writes"] = list(report.writes)
    d["knobs_changed"] = list(report.knobs_changed)
    d["per_guest"] = [dict(g.__dict__) for g in report.per_guest]
    return d


def guest_reports(guests) -> tuple[GuestReport, ...]:
    """The report's view of ``readings.guests``."""
    out = []
    for g in guests:
        k = g.ksm
        out.append(GuestReport(g.pid, g.name or str(g.pid), g.comm, g.kb,
                               None if k is None else k.merging_pages, None if k is None else k.process_profit,
                               None if k is None else k.rmap_items, None if k is None else k.zero_pages,
                               g.mergeable))
    return tuple(out)


def unmerge_figures(readings, page_size: int) -> tuple[int | None, int | None]:
    """(what merged memory needs back if every merged page were written, MemAvailable + SwapFree), bytes."""
    need = readings.ksm.saved_bytes(page_size)  # each merged page needs its own page back
    m = readings.meminfo
    room = None if m.available is None else (m.available + (m.swap_free or 0)) * 1024
    return need, room


def rates(previous, readings) -> tuple[float | None, float | None]:
    """ksmd's CPU use (percent of one CPU) and copy-on-write breaks per second between two readings."""
    if previous is None or readings.time <= previous.time:
        return None, None
    dt = readings.time - previous.time
    cpu = cow = None
    if readings.ksmd_cpu_seconds is not None and previous.ksmd_cpu_seconds is not None:
        cpu = max(0.0, readings.ksmd_cpu_seconds - previous.ksmd_cpu_seconds) / dt * 100
    if readings.cow_ksm is not None and previous.cow_ksm is not None:
        cow = max(0, readings.cow_ksm - previous.cow_ksm) / dt
    return cpu, cow


def human_bytes(n: int | float) -> str:
    """1288490188 -> '1.2 GiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
