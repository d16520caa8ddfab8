"""Replay the conformance table live: the real kernel and the simulator must answer alike.

Needs root and a kernel with KSM (skips with the reason otherwise). Runs every
row of tests/data/ksm_conformance.json against the real /sys/kernel/mm/ksm,
inside the real_ksm guard, including the rows that need really merged pages,
and the same rows against sysfs_emu.Kernel.
"""

from __future__ import annotations

import platform
import random

import pytest

from sysfs_emu.kernel import Kernel
from tools import probe_ksm_conformance as probe

pytestmark = pytest.mark.realksm


def test_real_kernel_and_simulator_answer_alike(real_ksm):
    table = probe.load_table()
    defaults = table["defaults"]
    rows = [probe.row_from_json(entry) for entry in table["rows"]]
    real = probe.run_real(rows, defaults)

    differ = probe.sim_differences(rows, real, defaults)
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


def _random_rows(seed: int, count: int) -> list[probe.Row]:
    """Inputs the table does not list: random mixes of digits, signs, spaces, words, NULs."""
    rng = random.Random(seed)
    tokens = ["+", "-", "\n", " ", "\t", "0x", "\0", "y", "n", "on", "off", "O", "none",
              "scan-time", "abc", "1", "0", "2"]

    def number() -> str:
        return str(rng.choice([rng.randrange(0, 300), rng.randrange(0, 2**32 + 10),
                               rng.randrange(2**31 - 5, 2**31 + 5), rng.randrange(0, 2**66),
                               rng.randrange(2**64 - 3, 2**64 + 3)]))

    setups = [[], [("advisor_mode", "scan-time")], [("run", "1")], [("run", "2")],
              [("pages_to_scan", "1234")], [("use_zero_pages", "1"), ("smart_scan", "0")],
              [("advisor_min_pages_to_scan", number())]]
    writable = [name for name in probe.TUNABLES]
    rows = []
    for _ in range(count):
        parts = [rng.choice(tokens) if rng.random() < 0.5 else number()
                 for _ in range(rng.randint(1, 4))]
        setup = rng.choice(setups)
        if setup and setup[0][0] == "advisor_min_pages_to_scan":
            setup = [setup[0], ("advisor_mode", "scan-time")] if rng.random() < 0.5 else setup
        rows.append(probe.Row(rng.choice(writable), "".join(parts), list(setup)))
    return rows


def test_random_inputs_answer_alike(real_ksm):
    """A seeded fuzz: 3000 writes the table does not list, real kernel vs simulator."""
    defaults = probe.load_table()["defaults"]
    rows = _random_rows(seed=20261122, count=3000)
    real = probe.run_real(rows, defaults)
    assert all(row.state == "none" for row in rows)  # so the answers hold no counters to project away
    differ = probe.sim_differences(rows, real, defaults)
    assert not differ, f"{len(differ)} of {len(rows)} differ:\n" + "\n".join(differ[:20])


def test_buffered_writes_longer_than_a_page_answer_alike(real_ksm):
    """Path.write_text re-writes what the kernel did not take; write_all does the same."""
    kernel = Kernel()
    for data in ("0" * 4095 + "7" + "junk", "0" * 4095 + "7" + "9", "0" * 8191 + "3\n", "42\n"):
        path = real_ksm / "sleep_millisecs"
        try:
            path.write_text(data)
            real = 0
        except OSError as exc:
            real = exc.errno
        try:
            kernel.write_all("sleep_millisecs", data)
            sim = 0
        except OSError as exc:
            sim = exc.errno
        assert (real, path.read_text()) == (sim, kernel.read_attr("sleep_millisecs")), data[-8:]
