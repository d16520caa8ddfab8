"""Real processes with mergeable memory, for the fidelity tests against the real ksmd.

The processes are the product's (sysfs_emu/realksm/workload.py, which
``sysfs-emu calibrate`` uses too): one anonymous area per process, regions of
known page contents (content 0 an empty page, ``c > 0`` a page whose first 8
bytes hold ``c``), ``thp`` regions backed by transparent huge pages. Always use
:func:`workload_processes` (or call ``stop``) so that no process outlives a test.
"""

from sysfs_emu.realksm.guard import KSM_DIR, read_counter  # noqa: F401
from sysfs_emu.realksm.ksmd_clock import wait_full_scans  # noqa: F401
from sysfs_emu.realksm.workload import (  # noqa: F401
    WorkloadProcess,
    foreign_mergeable,
    start_workload,
    thp_unavailable,
    workload_processes,
)
