"""A one-line progress bar on a terminal, for work of more than a few seconds (nothing elsewhere)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

SHOW_AFTER = 2.0  # seconds of wall time before the bar appears: short work stays quiet
REDRAW_EVERY = 0.2
WIDTH = 30


class Progress:
    """``update(done)`` with ``done`` out of ``total``; ``close()`` clears the line.

    Draws on ``stream`` (standard error by default) only when it is a terminal, and only
    once the work has taken ``SHOW_AFTER`` seconds.
    """

    def __init__(self, total: float, label: str = "", stream: TextIO | None = None, clock=time.monotonic) -> None:
        self.total = max(float(total), 1e-9)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.started = clock()
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._drawn = 0.0
        self._shown = False

    def update(self, done: float, detail: str = "") -> None:
        if not self.enabled:
            return
        now = self.clock()
        if now - self.started < SHOW_AFTER or now - self._drawn < REDRAW_EVERY:
            return
        self._drawn = now
        share = min(max(done / self.total, 0.0), 1.0)
        filled = int(share * WIDTH)
        bar = "#" * filled + "." * (WIDTH - filled)
        text = f"{self.label} [{bar}] {share * 100:3.0f}% {detail}".rstrip()
        self.stream.write("\r" + text[:120] + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
