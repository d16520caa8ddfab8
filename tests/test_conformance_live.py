"""Replay the conformance table live: the real kernel and the simulator must answer alike.

Needs root and a kernel with KSM (skips with the reason otherwise). Runs every
row of tests/data/ksm_conformance.json against the real /sys/kernel/mm/ksm,
inside the real_ksm guard, including the rows that need really merged pages,
and the same rows against sysfs_emu.Kernel.
"""

from __future__ import annotations

import platform
import time

import pytest

from tools import probe_ksm_conformance as probe

pytestmark = pytest.mark.realksm


def test_real_kernel_and_simulator_answer_alike(real_ksm):
    table = probe.load_table()
    defaults = table["defaults"]
    rows = [probe.row_from_json(entry) for entry in table["rows"]]
    started = time.monotonic()
    real = probe.run_real(rows, defaults)
    elapsed = time.monotonic() - started

    differ = []
    for row, got in zip(rows, real):
        sim = probe.run_sim(row, got.get("counters_before"), defaults)
        live = {key: got[key] for key in sim}
        if live != sim:
            differ.append(f"{row.file} <- {row.input[:40]!r} setup={row.setup} state={row.state}:"
                          f" real {live} sim {sim}")
    assert not differ, f"{len(differ)} of {len(rows)} rows differ:\n" + "\n".join(differ[:20])

    # the merged-page rows really ran with merged pages
    shared = [got for row, got in zip(rows, real) if row.state == "shared"]
    zero = [got for row, got in zip(rows, real) if row.state == "zero"]
    assert shared[0]["counters_before"]["pages_shared"] > 0
    assert zero[0]["counters_before"]["ksm_zero_pages"] > 0
    assert any(got["errno"] == 16 for got in shared)  # EBUSY was seen live

    if platform.release() == table["kernel"]:
        stale = [f"{row.file} <- {row.input[:40]!r}"
                 for row, got, entry in zip(rows, real, table["rows"])
                 if {k: got[k] for k in ("errno", "written", "readback", "changed")}
                 != {k: entry[k] for k in ("errno", "written", "readback", "changed")}]
        assert not stale, "the committed table no longer matches this kernel: " + ", ".join(stale[:10])
    assert elapsed < 60, f"live replay took {elapsed:.1f}s"
