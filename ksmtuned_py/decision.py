"""The tuning decision, computed exactly as the reference's bash arithmetic does.

Pure: no I/O, no clock, no globals, and no configuration keys (``policies.py``
maps the configuration to :class:`Params`).  All quantities are integers in kB
except the sleep (milliseconds) and ``npages`` (pages per scan).  Arithmetic
wraps at 64 bits and division truncates toward zero, like bash's ``$[ ]``.

:class:`Params` and :class:`Tuning` keep the reference's own names (its
``KSM_*`` settings and its ``total``, ``sleep``, ``thres`` variables, as the
daemon publishes them); a cycle's :class:`Adjustment` uses the names every
cycle's data has in ksmtuned_py (``free_kb``, ``sleep_ms``, see ``cycle.py``).

The numbers decide; the text is what is printed and written.  The reference
copies some values with a plain assignment instead of ``$[ ]``: ``npages`` set
to KSM_NPAGES_MIN or KSM_NPAGES_MAX when clamped, and ``thres`` set to
KSM_THRES_CONST.  Those keep the configuration's spelling (``+64`` stays
``+64``), so :class:`Params` carries the text of those three values and the
results carry the text to print (``npages_text``, ``thres_text``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MASK = (1 << 64) - 1
_SIGN = 1 << 63

START = "start"
STOP = "stop"
BOOST = "boost"
DECAY = "decay"


def wrap(x: int) -> int:
    """x reduced to a signed 64-bit integer, as bash arithmetic overflows."""
    x &= _MASK
    return x - (1 << 64) if x & _SIGN else x


def words(text: str) -> str:
    """``text`` as an unquoted ``$var`` expands in ``echo $var``: split on IFS, joined by spaces."""
    return " ".join(w for w in re.split("[ \t\n]+", text) if w)


def div(a: int, b: int) -> int:
    """a / b as bash computes it: truncated toward zero, then 64-bit."""
    if b == 0:
        raise ZeroDivisionError("division by 0")
    q = abs(a) // abs(b)
    return wrap(q if (a < 0) == (b < 0) else -q)


@dataclass(frozen=True)
class Params:
    """The configuration values the decision uses."""

    sleep_msec: int = 10
    npages_boost: int = 300
    npages_decay: int = -50
    npages_min: int = 64
    npages_max: int = 1250
    thres_coef: int = 20
    thres_const: int = 2048
    # The values as written in the configuration ("" = the number's decimal text).
    npages_min_text: str = ""
    npages_max_text: str = ""
    thres_const_text: str = ""

    def text(self, name: str) -> str:
        """The configured text of ``npages_min``, ``npages_max`` or ``thres_const``."""
        return getattr(self, name + "_text") or str(getattr(self, name))


@dataclass(frozen=True)
class Tuning:
    """Values fixed at start (and reload): total memory, scan sleep, threshold."""

    total: int
    sleep: int
    thres: int
    thres_text: str = ""  # as the reference holds it: KSM_THRES_CONST's text when that wins

    def __post_init__(self):
        if not self.thres_text:
            object.__setattr__(self, "thres_text", str(self.thres))

    @classmethod
    def compute(cls, params: Params, total: int) -> "Tuning":
        if total == 0:
            raise ValueError("MemTotal is 0")
        sleep = div(wrap(params.sleep_msec * 16 * 1024 * 1024), total)
        if sleep <= 10:
            sleep = 10
        thres = div(wrap(total * params.thres_coef), 100)
        thres_text = str(thres)
        if params.thres_const > thres:
            thres, thres_text = params.thres_const, params.text("thres_const")
        return cls(total=total, sleep=sleep, thres=thres, thres_text=thres_text)

    def debug_lines(self) -> list[str]:
        # `debug thres $thres`: unquoted, so the text is split into words
        return [f"total {self.total}", f"sleep {self.sleep}", f"thres {words(self.thres_text)}"]


@dataclass(frozen=True)
class Adjustment:
    """One cycle of the rule (the reference's ``adjust``): the outcome and the numbers behind it."""

    action: str  # START or STOP
    npages: int  # pages_to_scan after the decision (unchanged on STOP)
    sleep_ms: int  # sleep_millisecs to write on START
    free_kb: int
    committed_kb: int
    thres_kb: int
    total_kb: int
    level: str | None  # BOOST or DECAY on START, None on STOP
    previous_npages: int
    # The text written to pages_to_scan and printed (``echo $npages``; MIN/MAX's text when clamped).
    npages_text: str = ""
    # thres as the reference prints it inside quotes (KSM_THRES_CONST's text when that wins).
    thres_text: str = ""

    def __post_init__(self):
        if not self.npages_text:
            object.__setattr__(self, "npages_text", str(self.npages))
        if not self.thres_text:
            object.__setattr__(self, "thres_text", str(self.thres_kb))

    @property
    def load(self) -> int:
        """committed + thres, the number the reference compares with total."""
        return wrap(self.committed_kb + self.thres_kb)

    def reason(self) -> str:
        """Why, in one sentence."""
        free, thres, total = self.free_kb, self.thres_kb, self.total_kb
        if self.action == STOP:
            return (
                f"committed + thres = {self.load} kB < total {total} kB "
                f"and free {free} kB > thres {thres} kB"
            )
        if self.load >= total:
            why = f"committed + thres = {self.load} kB >= total {total} kB"
        else:
            why = f"free {free} kB <= thres {thres} kB"
        cmp = "<" if self.level == BOOST else ">="
        return (
            f"{why}; free {free} kB {cmp} thres {thres} kB, "
            f"so {self.level} pages_to_scan from {self.previous_npages} to {self.npages}"
        )

    # The reference's debug lines, split around its writes to the knobs.
    def debug_lines_before_write(self) -> list[str]:
        lines = [f"committed {self.committed_kb} free {self.free_kb}"]
        if self.action == STOP:
            return lines
        lines.append(f"{self.load} > {self.total_kb}, start ksm")
        if self.level == BOOST:
            lines.append(f"{self.free_kb} < {self.thres_text}, boost")
        else:
            lines.append(f"{self.free_kb} > {self.thres_text}, decay")
        return lines

    def debug_lines_after_write(self) -> list[str]:
        if self.action == STOP:
            return [f"{self.load} < {self.total_kb} and free > {self.thres_text}, stop ksm"]
        return [f"KSMCTL start {self.npages_text} {self.sleep_ms}"]

    def debug_lines(self) -> list[str]:
        """All lines of a cycle, from the ``committed C free F`` one."""
        return self.debug_lines_before_write() + self.debug_lines_after_write()


class Tuner:
    """The decision state: the tuning and the current npages."""

    def __init__(self, params: Params, total: int, npages: int = 0, tuning: Tuning | None = None):
        """``tuning`` given (e.g. a running daemon's) is used as is instead of computed from ``total``."""
        self.params = params
        self.tuning = tuning if tuning is not None else Tuning.compute(params, total)
        self.npages = npages

    def decide(self, free_kb: int, committed_kb: int) -> Adjustment:
        """Decide one cycle and remember the new npages."""
        t = self.tuning
        p = self.params
        before = self.npages
        if wrap(committed_kb + t.thres) < t.total and free_kb > t.thres:
            return Adjustment(STOP, before, t.sleep, free_kb, committed_kb, t.thres, t.total, None, before,
                              thres_text=t.thres_text)
        if free_kb < t.thres:
            level, delta = BOOST, p.npages_boost
        else:
            level, delta = DECAY, p.npages_decay
        npages = wrap(before + delta)
        text = str(npages)
        # A clamp copies the configured text (npages=$KSM_NPAGES_MIN), echoed unquoted.
        if npages < p.npages_min:
            npages, text = p.npages_min, words(p.text("npages_min"))
        elif npages > p.npages_max:
            npages, text = p.npages_max, words(p.text("npages_max"))
        self.npages = npages
        return Adjustment(START, npages, t.sleep, free_kb, committed_kb, t.thres, t.total, level, before,
                          npages_text=text, thres_text=t.thres_text)
