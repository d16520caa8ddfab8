"""The 24 files of /sys/kernel/mm/ksm (Linux 6.18, CONFIG_NUMA=y) as a Python object.

The files are one declarative table, :data:`ATTRS`, as mm/ksm.c lists its
attributes: each row is a file's name, its default, the parser its store uses
and the store's rule; a row without a default is a read-only counter. Most
stores follow one rule (:func:`_store_number`): parse, answer EINVAL for any
parse error, check a bound, keep the variable's width. Only ``run``,
``advisor_mode``, ``max_page_sharing`` and ``merge_across_nodes`` have stores
of their own, because the kernel gives them rules of their own.

``Kernel`` holds the tunables as plain attributes, answers reads with the exact
text of the file and applies writes with the kernel's parsing rules, errno for
errno (see tests/data/ksm_conformance.json, recorded on the real kernel).
Counters and the effects of unmerging come from an optional ``engine`` (the
memory/ksmd model); without one the kernel has no memory: every counter is 0
and pages are never shared.

For every file: an empty write is accepted (0 bytes) and changes nothing; only
the first 4096 bytes of a write reach the store, which then reports 4096 bytes
written; the store reads the data as a C string (it ends at the first NUL, and
the bytes after it are accepted unread). Unknown names answer ENOENT; the 11
read-only counters answer EACCES to any write, even an empty one.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

from sysfs_emu.kstrto import (
    U32_MAX,
    kernel_error,
    kstrtobool,
    kstrtoint,
    kstrtoul,
    kstrtouint,
    sysfs_streq,
)

log = logging.getLogger(__name__)

SYSFS_WRITE_MAX = 4096
"""Bytes of one write a sysfs store sees (one page of the kernel's buffer); the rest is left unwritten."""

DEFAULT_PAGES_TO_SCAN = 100
ADVISOR_MODES = ("none", "scan-time")
RUN_STOP, RUN_MERGE, RUN_UNMERGE = 0, 1, 2


class Engine(Protocol):
    """What the kernel needs from the memory/ksmd model."""

    def counters(self) -> dict[str, int]: ...

    def busy(self) -> bool: ...

    def unmerge_all(self) -> None: ...

    def advisor_reset(self) -> None: ...


Store = Callable[["Kernel", "Attr", bytes], None]


@dataclass(frozen=True)
class Attr:
    """One file of /sys/kernel/mm/ksm: a counter (``default`` None) or a tunable and its store rule.

    The common rule, for a tunable without its own ``store``: ``parse`` the
    data, any parse error is EINVAL; a value below ``minimum`` is EINVAL; keep
    the low 32 bits when ``u32`` (an unsigned int the kernel fills from a
    kstrtoul); refuse the write (EINVAL, before parsing) while the advisor is
    on when ``advisor_owns``. A read shows the value in decimal and a newline
    unless ``show`` says otherwise.
    """

    name: str
    default: int | str | None = None
    parse: Callable[[bytes], int | bool] | None = None
    minimum: int | None = None
    u32: bool = False
    advisor_owns: bool = False
    store: Store | None = None
    show: Callable[["Kernel"], str] | None = None  # the text of a read, when it is not the value in decimal

    @property
    def counter(self) -> bool:
        return self.default is None


# ---- the stores ------------------------------------------------------------------------


def _parsed(attr: Attr, raw: bytes) -> int:
    """``attr.parse(raw)``, every parse error answered as EINVAL (as most KSM stores do)."""
    assert attr.parse is not None
    try:
        return int(attr.parse(raw))
    except OSError:
        raise kernel_error(errno.EINVAL) from None


def _store_number(kernel: "Kernel", attr: Attr, raw: bytes) -> None:
    if attr.advisor_owns and kernel.advisor_mode != "none":
        raise kernel_error(errno.EINVAL)
    value = _parsed(attr, raw)
    if attr.minimum is not None and value < attr.minimum:
        raise kernel_error(errno.EINVAL)
    setattr(kernel, attr.name, value & U32_MAX if attr.u32 else value)


def _store_run(kernel: "Kernel", attr: Attr, raw: bytes) -> None:
    """0, 1 or 2; a change to 2 unmerges every KSM page."""
    flags = _parsed(attr, raw)
    if flags > RUN_UNMERGE:
        raise kernel_error(errno.EINVAL)
    if kernel.run != flags:
        kernel.run = flags
        if flags == RUN_UNMERGE and kernel.engine is not None:
            kernel.engine.unmerge_all()


def _change_while_idle(kernel: "Kernel", attr: Attr, knob: int) -> None:
    """Set the knob; a change (not a rewrite of the same value) is EBUSY while pages are merged."""
    if knob == getattr(kernel, attr.name):
        return
    if kernel.engine is not None and kernel.engine.busy():
        raise kernel_error(errno.EBUSY)
    setattr(kernel, attr.name, knob)


def _store_max_page_sharing(kernel: "Kernel", attr: Attr, raw: bytes) -> None:
    """At least 2; the parser's EINVAL and ERANGE pass through; EBUSY on a change while shared."""
    knob = kstrtoint(raw)
    if knob < 2:
        raise kernel_error(errno.EINVAL)
    _change_while_idle(kernel, attr, knob)


def _store_merge_across_nodes(kernel: "Kernel", attr: Attr, raw: bytes) -> None:
    """0 or 1; the parser's EINVAL and ERANGE pass through; EBUSY on a change while shared."""
    knob = kstrtoul(raw)
    if knob > 1:
        raise kernel_error(errno.EINVAL)
    _change_while_idle(kernel, attr, knob)


def _store_advisor_mode(kernel: "Kernel", attr: Attr, raw: bytes) -> None:
    """``none`` or ``scan-time``; a change resets pages_to_scan and the advisor."""
    for mode in ADVISOR_MODES:
        if sysfs_streq(mode.encode(), raw):
            break
    else:
        raise kernel_error(errno.EINVAL)
    if mode == kernel.advisor_mode:
        return
    kernel.advisor_mode = mode
    if mode == "none":
        kernel.pages_to_scan = DEFAULT_PAGES_TO_SCAN
    else:
        # pages_to_scan is an unsigned int: only the low 32 bits survive.
        kernel.pages_to_scan = kernel.advisor_min_pages_to_scan & U32_MAX
    if kernel.engine is not None:
        kernel.engine.advisor_reset()


def _show_advisor_mode(kernel: "Kernel") -> str:
    return " ".join(f"[{m}]" if m == kernel.advisor_mode else m for m in ADVISOR_MODES) + "\n"


# ---- the table -------------------------------------------------------------------------

# In the order of the directory listing. A row without a default is a counter.
ATTRS: tuple[Attr, ...] = (
    Attr("advisor_max_cpu", 70, kstrtoul, u32=True),
    Attr("advisor_max_pages_to_scan", 30000, kstrtoul),
    Attr("advisor_min_pages_to_scan", 500, kstrtoul),
    Attr("advisor_mode", "none", store=_store_advisor_mode, show=_show_advisor_mode),
    Attr("advisor_target_scan_time", 200, kstrtoul, minimum=1),
    Attr("full_scans"),
    Attr("general_profit"),
    Attr("ksm_zero_pages"),
    Attr("max_page_sharing", 256, store=_store_max_page_sharing),
    Attr("merge_across_nodes", 1, store=_store_merge_across_nodes),
    Attr("pages_scanned"),
    Attr("pages_shared"),
    Attr("pages_sharing"),
    Attr("pages_skipped"),
    Attr("pages_to_scan", DEFAULT_PAGES_TO_SCAN, kstrtouint, advisor_owns=True),
    Attr("pages_unshared"),
    Attr("pages_volatile"),
    Attr("run", RUN_STOP, kstrtouint, store=_store_run),
    Attr("sleep_millisecs", 20, kstrtouint),
    Attr("smart_scan", 1, kstrtobool),
    Attr("stable_node_chains"),
    # The kernel parses a kstrtoul and refuses more than UINT_MAX: the same answers as kstrtouint.
    Attr("stable_node_chains_prune_millisecs", 2000, kstrtouint),
    Attr("stable_node_dups"),
    Attr("use_zero_pages", 0, kstrtobool),
)

BY_NAME: Mapping[str, Attr] = {a.name: a for a in ATTRS}
FILES = tuple(a.name for a in ATTRS)
COUNTERS = tuple(a.name for a in ATTRS if a.counter)
TUNABLES = tuple(a.name for a in ATTRS if not a.counter)


def saved_bytes(pages_sharing: int, page_size: int, ksm_zero_pages: int = 0) -> int:
    """What KSM saves, as its documentation counts it: a page for each extra mapping of a KSM page,
    and one for each empty page merged into the zero page (``use_zero_pages``)."""
    return (int(pages_sharing) + int(ksm_zero_pages)) * int(page_size)


# ---- the kernel ------------------------------------------------------------------------


class Kernel:
    """Linux's KSM sysfs attributes with their defaults, read text and write rules."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine
        for attr in ATTRS:
            if not attr.counter:
                setattr(self, attr.name, attr.default)

    # The tunables, for readers and type checkers (set from the table above).
    run: int
    pages_to_scan: int
    sleep_millisecs: int
    max_page_sharing: int
    merge_across_nodes: int
    use_zero_pages: int
    smart_scan: int
    stable_node_chains_prune_millisecs: int
    advisor_mode: str
    advisor_max_cpu: int
    advisor_min_pages_to_scan: int
    advisor_max_pages_to_scan: int
    advisor_target_scan_time: int

    # ---- reading -------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The 11 read-only counters (all 0 without an engine)."""
        if self.engine is None:
            return dict.fromkeys(COUNTERS, 0)
        return self.engine.counters()

    def read_attr(self, name: str) -> str:
        """The exact text a read of /sys/kernel/mm/ksm/<name> returns."""
        attr = BY_NAME.get(name)
        if attr is None:
            raise kernel_error(errno.ENOENT)
        return self._show(attr, self.counters() if attr.counter else {})

    def read_all(self) -> dict[str, str]:
        """Every file's text, with one read of the engine's counters."""
        counters = self.counters()
        return {attr.name: self._show(attr, counters) for attr in ATTRS}

    def _show(self, attr: Attr, counters: Mapping[str, int]) -> str:
        if attr.counter:
            return f"{int(counters[attr.name])}\n"
        if attr.show is not None:
            return attr.show(self)
        return f"{int(getattr(self, attr.name))}\n"

    # ---- writing -------------------------------------------------------------

    def write_attr(self, name: str, data: bytes | str) -> int:
        """Apply one write(2) of ``data``; returns the bytes accepted or raises OSError.

        Unknown files answer ENOENT and read-only files EACCES (the open for
        writing fails). An empty write is accepted and changes nothing. Only the
        first page of a longer write reaches the store, which then accepts exactly
        that page (a short write). The store sees the data as a C string, so it
        ends at the first NUL.
        """
        attr = BY_NAME.get(name)
        if attr is None:
            raise kernel_error(errno.ENOENT)
        if attr.counter:
            raise kernel_error(errno.EACCES)
        if isinstance(data, str):
            raw = data.encode()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        else:
            raise TypeError(f"write_attr({name!r}): data must be str or bytes, not {type(data).__name__}")
        raw = raw[:SYSFS_WRITE_MAX]
        if not raw:
            return 0
        (attr.store or _store_number)(self, attr, raw)
        log.debug("ksm %s <- %r", name, raw)
        return len(raw)

    def write_all(self, name: str, data: bytes | str) -> None:
        """Write like a buffered writer (``echo``, Python's ``write_text``) does.

        When the kernel accepts only the first page, the writer writes the rest
        again; the store parses each piece on its own (the file offset is ignored).
        """
        raw = data.encode() if isinstance(data, str) else bytes(data)
        done = self.write_attr(name, raw)
        while 0 < done < len(raw):
            raw = raw[done:]
            done = self.write_attr(name, raw)
