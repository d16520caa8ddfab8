"""Guarded access to the real /sys/kernel/mm/ksm for tests written for it (the product's guard).

Every use goes through :func:`real_ksm`: it serialises users across processes
with a lock file, records every writable value, and on exit (even on failure)
unmerges everything (``run`` 2), puts every value back and leaves ``run`` at 0.
``sysfs-emu calibrate`` uses the same guard (sysfs_emu/realksm/guard.py).
"""

from sysfs_emu.realksm.guard import (  # noqa: F401  (the names the tests use)
    KSM_DIR,
    LOCK_PATH,
    RESTORE_ORDER,
    RealKsmError,
    locked,
    read,
    real_ksm,
    restore,
    selected_mode,
    skip_reason,
    snapshot,
    unmerge_all,
    write,
)
