"""Prometheus text-format metrics for node_exporter's textfile collector.

node_exporter's own ``ksmd`` collector already exports most of
/sys/kernel/mm/ksm; this file adds what it lacks: the newer kernel counters
(``general_profit``, ``ksm_zero_pages``, ``pages_scanned``) and what the daemon
saw and decided in its last cycle.  The file is replaced atomically (a
temporary file in the same directory, then rename), so a scrape never reads a
half-written file.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ksmtuned_py.errors import UserError
from ksmtuned_py.fileio import replace_file

if TYPE_CHECKING:
    from ksmtuned_py.report import CycleReport

log = logging.getLogger(__name__)

#: File name used when the target is a directory (node_exporter reads *.prom).
DEFAULT_NAME = "ksmtuned-py.prom"

#: The decisions a cycle can take, exported as a Prometheus state set.
DECISIONS = ("stop", "boost", "decay")
#: ... by policy (a policy not listed here: "stop" and its decision of the moment).
POLICY_DECISIONS = {"ksmtuned": DECISIONS, "adaptive": ("stop", "burst", "catch-up", "steady", "advisor")}

KIB = 1024


@dataclass
class Sample:
    """What one metrics file says; None means "not known here" and is left out."""

    # From /sys/kernel/mm/ksm (None where the kernel lacks the file).
    general_profit: int | None = None
    ksm_zero_pages: int | None = None
    pages_scanned: int | None = None
    running: bool | None = None  # run reads 1 (after the daemon's last cycle; now, in the one-shot file)
    # The daemon's last cycle, in the cycle's names (see ksmtuned_py/cycle.py).
    decision: str | None = None  # "stop", "boost" or "decay"
    npages: int | None = None
    sleep_ms: int | None = None
    thres_kb: int | None = None
    total_kb: int | None = None
    committed_kb: int | None = None
    free_kb: int | None = None
    guests: int | None = None
    time: float | None = None  # when the cycle started, seconds since the epoch
    duration: float | None = None  # seconds
    cycles: int | None = None  # cycles run since the daemon started
    # Labels for an info metric (e.g. the version).
    info: dict[str, str] = field(default_factory=dict)
    # Beyond ksmtuned: the policy, what scanning costs and risks, and each guest.
    policy: str | None = None
    ksmd_cpu_seconds: float | None = None  # since boot
    ksmd_cpu_budget: float | None = None  # KSM_MAX_CPU as a share of one CPU
    cow_ksm: int | None = None  # since boot
    unmerge_need_bytes: int | None = None
    unmerge_room_bytes: int | None = None
    guest_list: list[dict] = field(default_factory=list)  # {"name", "committed_kb", "ksm_merging_pages", ...}


@dataclass(frozen=True)
class _Family:
    name: str
    kind: str  # gauge | counter
    help: str


def _families(s: Sample) -> list[tuple[_Family, list[tuple[dict[str, str], float]]]]:
    """Each metric family with its samples, in output order; unknown values skipped."""
    out: list[tuple[_Family, list[tuple[dict[str, str], float]]]] = []

    def add(name: str, kind: str, help_: str, value: float | None, scale: float = 1) -> None:
        if value is not None:
            out.append((_Family(name, kind, help_), [({}, value * scale)]))

    if s.info:
        out.append((_Family("ksmtuned_info", "gauge", "ksmtuned-py build information."),
                    [(dict(s.info), 1)]))
    add("ksmtuned_ksm_general_profit_bytes", "gauge",
        "Memory KSM saves minus what its own metadata costs (general_profit).",
        s.general_profit)
    add("ksmtuned_ksm_zero_pages", "gauge",
        "Empty pages KSM merged with the kernel zero page (ksm_zero_pages).",
        s.ksm_zero_pages)
    add("ksmtuned_ksm_pages_scanned_total", "counter",
        "Pages ksmd has scanned since boot (pages_scanned).",
        s.pages_scanned)
    if s.decision is not None:
        known = POLICY_DECISIONS.get(s.policy or "ksmtuned", ("stop",))
        states = known if s.decision in known else (*known, s.decision)
        out.append((_Family("ksmtuned_decision", "gauge",
                            "The last cycle's decision: 1 for the one taken, 0 for the others."),
                    [({"decision": d}, 1 if d == s.decision else 0) for d in states]))
    if s.running is not None:
        add("ksmtuned_ksm_running", "gauge", "1 when ksmd runs (run is 1), else 0.", int(s.running))
    add("ksmtuned_pages_to_scan", "gauge",
        "Pages per ksmd wake-up the daemon decided (npages).", s.npages)
    add("ksmtuned_sleep_seconds", "gauge",
        "Sleep between ksmd scans the daemon decided (sleep_millisecs).",
        s.sleep_ms, 1 / 1000)
    add("ksmtuned_threshold_bytes", "gauge",
        "Free-memory threshold below which the daemon boosts scanning (thres).",
        s.thres_kb, KIB)
    add("ksmtuned_memory_total_bytes", "gauge",
        "Total memory the daemon works with (MemTotal).", s.total_kb, KIB)
    add("ksmtuned_memory_committed_bytes", "gauge",
        "Memory resident in the guests counted (committed).", s.committed_kb, KIB)
    add("ksmtuned_memory_free_bytes", "gauge",
        "Memory the daemon counts as free (free).", s.free_kb, KIB)
    add("ksmtuned_guests", "gauge", "Guest processes counted.", s.guests)
    add("ksmtuned_cycles_total", "counter", "Tuning cycles run since the daemon started.",
        s.cycles)
    add("ksmtuned_last_cycle_timestamp_seconds", "gauge",
        "When the last cycle ran, in seconds since the Unix epoch.", s.time)
    add("ksmtuned_last_cycle_duration_seconds", "gauge",
        "How long the last cycle took.", s.duration)
    out += _insight_families(s)
    return out


def _insight_families(s: Sample) -> list[tuple[_Family, list[tuple[dict[str, str], float]]]]:
    """The policy, ksmd's CPU time, copy-on-write breaks, the unmerge risk and one series per guest."""
    out: list[tuple[_Family, list[tuple[dict[str, str], float]]]] = []

    def add(name: str, kind: str, help_: str, value: float | None, labels: dict | None = None) -> None:
        if value is not None:
            out.append((_Family(name, kind, help_), [(labels or {}, value)]))

    if s.policy:
        add("ksmtuned_policy", "gauge", "The tuning policy (KSM_POLICY): always 1.", 1, {"policy": s.policy})
    add("ksmtuned_ksmd_cpu_seconds_total", "counter",
        "CPU time the ksmd kernel thread has used since boot (utime + stime).", s.ksmd_cpu_seconds)
    add("ksmtuned_ksmd_cpu_budget_ratio", "gauge",
        "The share of one CPU ksmd may use (KSM_MAX_CPU; the adaptive policy keeps to it).", s.ksmd_cpu_budget)
    add("ksmtuned_ksm_cow_total", "counter",
        "KSM pages copied on write since boot: guests writing to merged pages (vmstat cow_ksm).", s.cow_ksm)
    add("ksmtuned_unmerge_need_bytes", "gauge",
        "Memory the guests would need back if every merged page were written: "
        "(pages_sharing + ksm_zero_pages) x page size.", s.unmerge_need_bytes)
    add("ksmtuned_unmerge_room_bytes", "gauge", "MemAvailable + SwapFree.", s.unmerge_room_bytes)
    if s.unmerge_need_bytes is not None and s.unmerge_room_bytes is not None:
        add("ksmtuned_unmerge_risk", "gauge", "1 when the unmerge need is more than the room, else 0.",
            1 if s.unmerge_need_bytes > s.unmerge_room_bytes else 0)
    out += _guest_families(s.guest_list)
    return out


#: One series per guest, labelled with its name: (metric, type, help, the guest's key, scale).
GUEST_METRICS = (
    ("ksmtuned_guest_resident_bytes", "gauge", "A guest's resident (or proportional) memory, as counted.", "committed_kb", KIB),
    ("ksmtuned_guest_ksm_merging_pages", "gauge", "A guest's pages merged by KSM (ksm_merging_pages).",
     "ksm_merging_pages", 1),
    ("ksmtuned_guest_ksm_profit_bytes", "gauge",
     "What KSM saves in a guest less its metadata (ksm_process_profit; can be negative).", "ksm_process_profit", 1),
    ("ksmtuned_guest_mergeable", "gauge",
     "1 when some of a guest's memory is mergeable (ksm_mergeable, else mg in smaps), else 0.", "mergeable", 1),
)


def guest_labels(guests: list[dict]) -> list[str]:
    """Each guest's label: its name, with its pid added when two guests have the same name."""
    names = [g["name"] for g in guests]
    return [f"{g['name']} (pid {g['pid']})" if names.count(g["name"]) > 1 else g["name"] for g in guests]


def _guest_families(guests: list[dict]) -> list[tuple[_Family, list[tuple[dict[str, str], float]]]]:
    out = []
    labels = guest_labels(guests)
    for name, kind, help_, key, scale in GUEST_METRICS:
        points = [({"guest": label}, float(g[key]) * scale) for g, label in zip(guests, labels)
                  if g.get(key) is not None]
        if points:
            out.append((_Family(name, kind, help_), points))
    return out


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()
                                  and abs(value) < 2**53):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(sample: Sample) -> str:
    """The Prometheus text exposition (format 0.0.4) of ``sample``."""
    lines: list[str] = []
    for fam, points in _families(sample):
        lines.append(f"# HELP {fam.name} {fam.help}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for labels, value in points:
            if labels:
                inner = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
                lines.append(f"{fam.name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{fam.name} {_number(value)}")
    return "\n".join(lines) + "\n"


def target_path(target: str | os.PathLike) -> str:
    """The .prom file for ``target``: DIR/ksmtuned-py.prom for a directory, else the path."""
    path = os.fspath(target)
    if os.path.isdir(path):
        return os.path.join(path, DEFAULT_NAME)
    if not path.endswith(".prom") or os.path.basename(path) == ".prom":
        raise UserError(f"metrics textfile {path}: not a directory, and node_exporter "
                        "only reads files ending in .prom")
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise UserError(f"metrics textfile {path}: directory {parent} does not exist")
    return path


def write_textfile(target: str | os.PathLike, sample: Sample) -> str:
    """Write ``sample`` to ``target`` atomically; returns the file written.

    The temporary file starts with a dot and does not end in .prom, so
    node_exporter never reads it; it is made world-readable (node_exporter
    usually runs as its own user) and renamed over the old file.
    """
    path = target_path(target)
    text = render(sample)
    try:
        replace_file(path, text.encode(), 0o644)
    except OSError as err:
        raise UserError(f"metrics textfile {path}: {err.strerror}") from None
    return path


def _decision(action: str, level: str | None) -> str:
    """The exported decision: "stop", else the start's level ("boost"/"decay")."""
    return "stop" if action == "stop" else (level or action)


def sample_from_report(report: "CycleReport") -> Sample:
    """The metrics of one daemon cycle (the kernel counters as read right after its writes)."""
    from ksmtuned_py import __version__

    running = report.action != "stop" if report.run is None else report.run == 1
    return Sample(
        general_profit=report.general_profit,
        ksm_zero_pages=report.ksm_zero_pages,
        pages_scanned=report.pages_scanned,
        running=running,
        decision=_decision(report.action, report.level),
        npages=report.npages,
        sleep_ms=report.sleep_ms,
        thres_kb=report.thres_kb,
        total_kb=report.total_kb,
        committed_kb=report.committed_kb,
        free_kb=report.free_kb,
        guests=report.guests,
        time=report.time,
        duration=report.duration,
        cycles=report.cycles,
        info={"version": __version__},
        policy=report.policy or None,
        ksmd_cpu_seconds=report.ksmd_cpu_seconds,
        cow_ksm=report.cow_ksm,
        unmerge_need_bytes=report.unmerge_need_bytes,
        unmerge_room_bytes=report.unmerge_room_bytes,
        guest_list=[asdict(g) for g in report.per_guest],
    )


def sample_from_status(snap: dict) -> Sample:
    """The metrics of a one-shot evaluation (``status.collect``), which writes nothing to KSM.

    What is true now: the kernel's counters and ``run``, memory, the guests.  A
    decision only when one was made: the running daemon's last cycle, from the
    state it publishes (with its time, duration and cycle count); without a
    daemon there is none, and no decision metric is written.
    """
    from ksmtuned_py import __version__

    counters, mem = snap["ksm"], snap["memory"]
    run = counters.get("run")
    sample = Sample(
        general_profit=counters.get("general_profit"),
        ksm_zero_pages=counters.get("ksm_zero_pages"),
        pages_scanned=counters.get("pages_scanned"),
        running=None if run is None else run == 1,
        total_kb=mem["total_kb"],
        committed_kb=mem["committed_kb"],
        free_kb=mem["free_kb"],
        guests=len(snap["guests"]),
        info={"version": __version__},
        policy=snap["next"].get("policy"),
        ksmd_cpu_seconds=snap["ksmd"]["cpu_seconds"],
        ksmd_cpu_budget=None if snap["ksmd"].get("cpu_budget_percent") is None
        else snap["ksmd"]["cpu_budget_percent"] / 100,
        cow_ksm=snap["cow_ksm"]["total"],
        unmerge_need_bytes=snap["unmerge"]["need_bytes"],
        unmerge_room_bytes=snap["unmerge"]["room_bytes"],
        guest_list=snap["guests"],
    )
    last = snap["daemon"].get("last_decision")
    if isinstance(last, dict) and last.get("action"):
        sample.decision = _decision(last["action"], last.get("level"))
        sample.npages, sample.sleep_ms, sample.thres_kb = last.get("npages"), last.get("sleep_ms"), last.get("thres_kb")
        sample.time, sample.duration, sample.cycles = last.get("time"), last.get("duration"), last.get("cycles")
    return sample


class TextfileWriter:
    """Cycle listener: rewrite the metrics file after every cycle (KSM_METRICS_TEXTFILE).

    A failing write is logged once, and again only when the error changes,
    never every cycle; it never stops the daemon.  :meth:`close` removes the file
    (the daemon calls it when it stops).
    """

    def __init__(self, target: str | os.PathLike, cpu_budget_percent: int | None = None):
        self.target = target
        self.cpu_budget_percent = cpu_budget_percent
        self._last_error: str | None = None

    def __call__(self, report: "CycleReport") -> None:
        sample = sample_from_report(report)
        if self.cpu_budget_percent is not None:
            sample.ksmd_cpu_budget = self.cpu_budget_percent / 100
        try:
            write_textfile(self.target, sample)
        except UserError as err:
            if str(err) != self._last_error:
                log.error("%s; metrics not written", err)
                self._last_error = str(err)
            return
        if self._last_error is not None:
            log.info("metrics textfile %s written again", self.target)
            self._last_error = None

    def path(self) -> str | None:
        """The file this writer writes (None when the target is unusable, e.g. its directory is gone)."""
        try:
            return target_path(self.target)
        except UserError:
            return None

    def close(self) -> None:
        """Remove the file: the daemon stopped (or writes elsewhere now), so its figures are not current.

        node_exporter then stops exporting them, and an alert on ``absent(ksmtuned_info)`` sees
        the daemon gone, where a stale file would look like a healthy daemon.
        """
        path = self.path()
        if path is None:
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("cannot remove the metrics textfile %s: %s", path, err.strerror)
        else:
            log.info("removed the metrics textfile %s", path)

    def __repr__(self) -> str:
        return f"TextfileWriter({str(self.target)!r})"
