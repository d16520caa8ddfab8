"""What one daemon cycle did, handed to every cycle listener (metrics, status)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CycleReport:
    """One cycle: when, how long, what was decided and on which readings."""

    time: float  # seconds since the epoch when the cycle started
    duration: float  # seconds the cycle took
    action: str  # "start" or "stop"
    npages: int  # pages_to_scan decided (kept as is on stop)
    sleep_ms: int  # sleep_millisecs decided
    free_kb: int
    committed_kb: int
    thres_kb: int
    total_kb: int
    guests: int  # processes counted as guests
    advisor_active: bool  # the kernel's advisor sets pages_to_scan
    status: str  # the one-line status sentence sent to systemd
    level: str | None = None  # "boost" or "decay" on start
    pages_sharing: int | None = None
    saved_bytes: int | None = None  # pages_sharing x page size
    general_profit: int | None = None  # bytes, where the kernel has it
    writes_ok: bool = True  # every knob write succeeded

    def as_dict(self) -> dict:
        return asdict(self)


def human_bytes(n: int | float) -> str:
    """1288490188 -> '1.2 GiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
