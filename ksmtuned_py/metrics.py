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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ksmtuned_py.errors import UserError

if TYPE_CHECKING:
    from ksmtuned_py.report import CycleReport

log = logging.getLogger(__name__)

#: File name used when the target is a directory (node_exporter reads *.prom).
DEFAULT_NAME = "ksmtuned-py.prom"

#: The decisions a cycle can take, exported as a Prometheus state set.
DECISIONS = ("stop", "boost", "decay")

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
        states = DECISIONS if s.decision in DECISIONS else (*DECISIONS, s.decision)
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


def target_path(target: str | os.PathLike) -> Path:
    """The .prom file for ``target``: DIR/ksmtuned-py.prom for a directory, else the path."""
    path = Path(target)
    if path.is_dir():
        return path / DEFAULT_NAME
    if path.suffix != ".prom":
        raise UserError(f"metrics textfile {path}: not a directory, and node_exporter "
                        "only reads files ending in .prom")
    if not path.parent.is_dir():
        raise UserError(f"metrics textfile {path}: directory {path.parent} does not exist")
    return path


def write_textfile(target: str | os.PathLike, sample: Sample) -> Path:
    """Write ``sample`` to ``target`` atomically; returns the file written.

    The temporary file starts with a dot and does not end in .prom, so
    node_exporter never reads it; it is made world-readable (node_exporter
    usually runs as its own user) and renamed over the old file.
    """
    path = target_path(target)
    text = render(sample)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(f"metrics textfile {path}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), 0o644)
        os.rename(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
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

    def __init__(self, target: str | os.PathLike):
        self.target = target
        self._last_error: str | None = None

    def __call__(self, report: "CycleReport") -> None:
        sample = sample_from_report(report)
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

    def path(self) -> Path | None:
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
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("cannot remove the metrics textfile %s: %s", path, err.strerror)
        else:
            log.info("removed the metrics textfile %s", path)

    def __repr__(self) -> str:
        return f"TextfileWriter({str(self.target)!r})"
