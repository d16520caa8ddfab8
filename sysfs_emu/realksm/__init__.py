"""The real kernel's KSM, used with care: the measurements sysfs-emu takes of this machine.

``guard``      exclusive, restoring access to the real /sys/kernel/mm/ksm
               (a lock file; every value put back, ``run`` left at 0)
``workload``   real processes with mergeable memory of known contents
``ksmd_clock`` ksmd's own clock: its CPU time and run-queue wait, full-scan times
``calibrate``  this machine's ksmd costs, written as a cost profile

The tests that compare the simulator with the real kernel use the same
modules (tests/realksm.py, tests/fidelity_workload.py re-export them). Nothing
here is imported by the simulator itself.
"""
