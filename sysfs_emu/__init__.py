"""sysfs_emu: a simulated KSM kernel backend."""
