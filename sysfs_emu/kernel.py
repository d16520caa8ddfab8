"""The 24 files of /sys/kernel/mm/ksm (Linux 6.18, CONFIG_NUMA=y) as a Python object.

``Kernel`` holds the tunables as plain attributes, answers reads with the exact
text of the file and applies writes with the kernel's parsing rules, errno for
errno (see tests/data/ksm_conformance.json, recorded on the real kernel).
Counters and the effects of unmerging come from an optional ``engine`` (the
memory/ksmd model); without one the kernel has no memory: every counter is 0
and pages are never shared.

Write rules, as measured (parsers in :mod:`sysfs_emu.kstrto`):

============================== ============ ===========================================
file (default)                 parser       rule
============================== ============ ===========================================
run (0)                        kstrtouint   0, 1 or 2, else EINVAL (every error EINVAL);
                                            a change to 2 unmerges everything
pages_to_scan (100)            kstrtouint   EINVAL while advisor_mode is scan-time (even
                                            before parsing); every error EINVAL
sleep_millisecs (20)           kstrtouint   any u32, 0 allowed; every error EINVAL
stable_node_chains_prune_      kstrtouint   any u32, 0 allowed; every error EINVAL
millisecs (2000)
max_page_sharing (256)         kstrtoint    EINVAL/ERANGE as parsed; < 2 EINVAL; same
                                            value accepted; else EBUSY while shared
merge_across_nodes (1)         kstrtoul     EINVAL/ERANGE as parsed; > 1 EINVAL; same
                                            value accepted; else EBUSY while shared
use_zero_pages (0),            kstrtobool   first character decides; error EINVAL
smart_scan (1)
advisor_mode ([none])          sysfs_streq  "none" or "scan-time", one trailing newline;
                                            a change sets pages_to_scan to 100 (none) or
                                            to advisor_min_pages_to_scan's low 32 bits
advisor_max_cpu (70)           kstrtoul     every error EINVAL; keeps the low 32 bits
advisor_min_pages_to_scan      kstrtoul     every error EINVAL; any u64, 0 allowed
(500), advisor_max_pages_to_
scan (30000)
advisor_target_scan_time (200) kstrtoul     every error EINVAL; 0 is EINVAL
============================== ============ ===========================================

For every file: an empty write is accepted (0 bytes) and changes nothing; only
the first 4096 bytes of a write reach the store, which then reports 4096 bytes
written; the store reads the data as a C string (it ends at the first NUL, and
the bytes after it are accepted unread). Unknown names answer ENOENT; the 11
read-only counters answer EACCES to any write, even an empty one.
"""

from __future__ import annotations

import errno
import logging
from typing import Callable, Protocol

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

COUNTERS = (
    "full_scans",
    "general_profit",
    "ksm_zero_pages",
    "pages_scanned",
    "pages_shared",
    "pages_sharing",
    "pages_skipped",
    "pages_unshared",
    "pages_volatile",
    "stable_node_chains",
    "stable_node_dups",
)

TUNABLES = (
    "advisor_max_cpu",
    "advisor_max_pages_to_scan",
    "advisor_min_pages_to_scan",
    "advisor_mode",
    "advisor_target_scan_time",
    "max_page_sharing",
    "merge_across_nodes",
    "pages_to_scan",
    "run",
    "sleep_millisecs",
    "smart_scan",
    "stable_node_chains_prune_millisecs",
    "use_zero_pages",
)

FILES = tuple(sorted(COUNTERS + TUNABLES))

ADVISOR_MODES = ("none", "scan-time")

RUN_STOP, RUN_MERGE, RUN_UNMERGE = 0, 1, 2


class Engine(Protocol):
    """What the kernel needs from the memory/ksmd model."""

    def counters(self) -> dict[str, int]: ...

    def busy(self) -> bool: ...

    def unmerge_all(self) -> None: ...

    def advisor_reset(self) -> None: ...


class Kernel:
    """Linux's KSM sysfs attributes with their defaults, read text and write rules."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine
        self.run = RUN_STOP
        self.pages_to_scan = DEFAULT_PAGES_TO_SCAN
        self.sleep_millisecs = 20
        self.max_page_sharing = 256
        self.merge_across_nodes = 1
        self.use_zero_pages = 0
        self.smart_scan = 1
        self.stable_node_chains_prune_millisecs = 2000
        self.advisor_mode = "none"
        self.advisor_max_cpu = 70
        self.advisor_min_pages_to_scan = 500
        self.advisor_max_pages_to_scan = 30000
        self.advisor_target_scan_time = 200
        self._stores: dict[str, Callable[[bytes], None]] = {
            "advisor_max_cpu": self._store_advisor_max_cpu,
            "advisor_max_pages_to_scan": self._store_advisor_max_pages_to_scan,
            "advisor_min_pages_to_scan": self._store_advisor_min_pages_to_scan,
            "advisor_mode": self._store_advisor_mode,
            "advisor_target_scan_time": self._store_advisor_target_scan_time,
            "max_page_sharing": self._store_max_page_sharing,
            "merge_across_nodes": self._store_merge_across_nodes,
            "pages_to_scan": self._store_pages_to_scan,
            "run": self._store_run,
            "sleep_millisecs": self._store_sleep_millisecs,
            "smart_scan": self._store_smart_scan,
            "stable_node_chains_prune_millisecs": self._store_prune_millisecs,
            "use_zero_pages": self._store_use_zero_pages,
        }

    # ---- reading -------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The 11 read-only counters (all 0 without an engine)."""
        if self.engine is None:
            return dict.fromkeys(COUNTERS, 0)
        return self.engine.counters()

    def read_attr(self, name: str) -> str:
        """The exact text a read of /sys/kernel/mm/ksm/<name> returns."""
        if name not in FILES:
            raise kernel_error(errno.ENOENT)
        if name in COUNTERS:
            return f"{int(self.counters()[name])}\n"
        if name == "advisor_mode":
            return " ".join(f"[{m}]" if m == self.advisor_mode else m for m in ADVISOR_MODES) + "\n"
        return f"{int(getattr(self, name))}\n"

    def read_all(self) -> dict[str, str]:
        return {name: self.read_attr(name) for name in FILES}

    # ---- writing -------------------------------------------------------------

    def write_attr(self, name: str, data: bytes | str) -> int:
        """Apply one write(2) of ``data``; returns the bytes accepted or raises OSError.

        Unknown files answer ENOENT and read-only files EACCES (the open for
        writing fails). An empty write is accepted and changes nothing. Only the
        first page of a longer write reaches the store, which then accepts exactly
        that page (a short write). The store sees the data as a C string, so it
        ends at the first NUL.
        """
        if name not in FILES:
            raise kernel_error(errno.ENOENT)
        store = self._stores.get(name)
        if store is None:
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
        store(raw)
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

    def _busy(self) -> bool:
        return self.engine is not None and self.engine.busy()

    def _store_run(self, raw: bytes) -> None:
        try:
            flags = kstrtouint(raw)
        except OSError:
            raise kernel_error(errno.EINVAL) from None
        if flags > RUN_UNMERGE:
            raise kernel_error(errno.EINVAL)
        if self.run != flags:
            self.run = flags
            if flags == RUN_UNMERGE and self.engine is not None:
                self.engine.unmerge_all()

    def _store_pages_to_scan(self, raw: bytes) -> None:
        if self.advisor_mode != "none":
            raise kernel_error(errno.EINVAL)
        try:
            self.pages_to_scan = kstrtouint(raw)
        except OSError:
            raise kernel_error(errno.EINVAL) from None

    def _store_sleep_millisecs(self, raw: bytes) -> None:
        try:
            self.sleep_millisecs = kstrtouint(raw)
        except OSError:
            raise kernel_error(errno.EINVAL) from None

    def _store_prune_millisecs(self, raw: bytes) -> None:
        try:
            self.stable_node_chains_prune_millisecs = kstrtouint(raw)
        except OSError:
            raise kernel_error(errno.EINVAL) from None

    def _change_while_idle(self, name: str, knob: int) -> None:
        """Set ``name``; a change (not a rewrite of the same value) is EBUSY while pages are merged."""
        if knob == getattr(self, name):
            return
        if self._busy():
            raise kernel_error(errno.EBUSY)
        setattr(self, name, knob)

    def _store_max_page_sharing(self, raw: bytes) -> None:
        knob = kstrtoint(raw)  # EINVAL and ERANGE pass through
        if knob < 2:
            raise kernel_error(errno.EINVAL)
        self._change_while_idle("max_page_sharing", knob)

    def _store_merge_across_nodes(self, raw: bytes) -> None:
        knob = kstrtoul(raw)  # EINVAL and ERANGE pass through
        if knob > 1:
            raise kernel_error(errno.EINVAL)
        self._change_while_idle("merge_across_nodes", knob)

    def _store_use_zero_pages(self, raw: bytes) -> None:
        self.use_zero_pages = int(kstrtobool(raw))

    def _store_smart_scan(self, raw: bytes) -> None:
        self.smart_scan = int(kstrtobool(raw))

    def _store_advisor_mode(self, raw: bytes) -> None:
        if sysfs_streq(b"scan-time", raw):
            mode = "scan-time"
        elif sysfs_streq(b"none", raw):
            mode = "none"
        else:
            raise kernel_error(errno.EINVAL)
        if mode == self.advisor_mode:
            return
        self.advisor_mode = mode
        if mode == "none":
            self.pages_to_scan = DEFAULT_PAGES_TO_SCAN
        else:
            # pages_to_scan is an unsigned int: only the low 32 bits survive.
            self.pages_to_scan = self.advisor_min_pages_to_scan & U32_MAX
        if self.engine is not None:
            self.engine.advisor_reset()

    @staticmethod
    def _parse_ulong(raw: bytes) -> int:
        try:
            return kstrtoul(raw)
        except OSError:
            raise kernel_error(errno.EINVAL) from None

    def _store_advisor_max_cpu(self, raw: bytes) -> None:
        # The variable is an unsigned int: the low 32 bits are kept silently.
        self.advisor_max_cpu = self._parse_ulong(raw) & U32_MAX

    def _store_advisor_min_pages_to_scan(self, raw: bytes) -> None:
        self.advisor_min_pages_to_scan = self._parse_ulong(raw)

    def _store_advisor_max_pages_to_scan(self, raw: bytes) -> None:
        self.advisor_max_pages_to_scan = self._parse_ulong(raw)

    def _store_advisor_target_scan_time(self, raw: bytes) -> None:
        value = self._parse_ulong(raw)
        if value < 1:
            raise kernel_error(errno.EINVAL)
        self.advisor_target_scan_time = value
