"""What one cycle did (handed to every cycle listener: metrics, the published state, simulate's rows)."""

from __future__ import annotations

from dataclasses import dataclass


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
    saved_bytes: int | None = None  # pages_sharing x page size
    general_profit: int | None = None  # bytes, where the kernel has it
    ksm_zero_pages: int | None = None
    pages_scanned: int | None = None


def human_bytes(n: int | float) -> str:
    """1288490188 -> '1.2 GiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
