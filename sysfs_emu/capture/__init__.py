"""``sysfs-emu capture``: this host as it is now, as a scenario the simulator runs.

What it writes (:mod:`.scenario`): the host's memory (MemTotal, what the host itself
uses, Buffers, Cached, swap), the KSM settings, and every process ksmd would scan
(a mapping with ``mg`` in its VmFlags: MADV_MERGEABLE or prctl's merge-any) plus the
guests the tuner counts (KSM_PROCESS_REGEX of the configuration), each with its comm,
cmdline and memory. The contents of the mergeable mappings (:mod:`.pages`) become
compact content ids (:mod:`.ids`) in a ``.npy`` file beside the YAML, which the
scenario's regions refer to (``fill: captured``); a region backed by transparent huge
pages says ``thp: true``.

It only reads: /proc/PID/smaps, pagemap and mem (no ptrace stop, nothing written to
any process), /proc/kpageflags, /proc/meminfo and /sys/kernel/mm/ksm, which it leaves
as it was. Memory stays bounded: pages are read a chunk at a time and only a 64-bit
hash per page read is kept until the ids are assigned.
"""

from sysfs_emu.capture.run import CaptureError, CaptureReport, capture

__all__ = ["CaptureError", "CaptureReport", "capture"]
