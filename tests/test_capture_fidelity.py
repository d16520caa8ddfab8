"""A capture predicts what the real ksmd merges: the same processes, captured with KSM off, simulated to a
settled state and merged by the real ksmd to a settled state, give the same counters.

Real processes with known contents (tests/capture_workload.py): a pool shared by three processes, empty
pages, pages duplicated inside one process (a run of one content longer than max_page_sharing, and a small
pool mapped twice), unique pages, and a region advised MADV_HUGEPAGE (backed by transparent huge pages when
the kernel has them). Without sampling pages_shared, pages_sharing and ksm_zero_pages must be identical; with
--sample 8 within 2 %. Both use_zero_pages settings. Needs root and KSM (through tests/realksm.py); skipped
otherwise.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from sysfs_emu import Simulation
from tests import capture_workload, realksm
from tests.emutree import SYSFS_EMU
from tests.fidelity_workload import read_counter, wait_full_scans
from tests.test_fidelity import foreign_mergeable

pytestmark = pytest.mark.realksm

COUNTERS = ("pages_shared", "pages_sharing", "ksm_zero_pages")
KNOBS = {"pages_to_scan": 100000, "sleep_millisecs": 0, "max_page_sharing": 256, "smart_scan": 1}
SETTLE_SCANS = 6  # full scans to a settled state (two to merge, more for chains and the zero page)


def pool(first: int, n: int, base: int = 1000) -> list[int]:
    return list(range(base + first, base + first + n))


WORKLOAD = [
    [{"contents": pool(0, 2048)}, {"contents": [0] * 1024}, {"contents": [7] * 600},
     {"contents": pool(0, 256, base=500_000)}, {"contents": pool(0, 256, base=500_000)},
     {"contents": pool(0, 1024, base=100_000)}, {"contents": pool(0, 1024, base=900_000), "thp": True}],
    [{"contents": pool(0, 2048)}, {"contents": pool(0, 512, base=200_000)},
     {"contents": pool(0, 1024, base=900_000), "thp": True}],
    [{"contents": pool(0, 1024)}, {"contents": [0] * 256}],
]


def _settled_real() -> dict[str, int]:
    """Let the real ksmd scan until two more full scans change none of the counters."""
    realksm.write("run", 1)
    try:
        wait_full_scans(read_counter("full_scans") + SETTLE_SCANS, timeout=120)
        for _ in range(10):
            before = {k: read_counter(k) for k in COUNTERS}
            wait_full_scans(read_counter("full_scans") + 2, timeout=120)
            if {k: read_counter(k) for k in COUNTERS} == before:
                return before
    finally:
        realksm.write("run", 0)
    raise AssertionError("the real ksmd did not settle")


def _settled_sim(path, use_zero_pages: int) -> dict[str, int]:
    sim = Simulation.from_yaml(path)
    for name, value in {**KNOBS, "use_zero_pages": use_zero_pages, "run": 1}.items():
        sim.kernel.write_attr(name, f"{value}\n")
    sim.run_until(full_scans=SETTLE_SCANS)
    for _ in range(10):
        before = {k: int(sim.kernel.read_attr(k)) for k in COUNTERS}
        sim.run_until(full_scans=int(sim.kernel.read_attr("full_scans")) + 2)
        if {k: int(sim.kernel.read_attr(k)) for k in COUNTERS} == before:
            return before
    raise AssertionError("the simulation did not settle")


def _capture(path, *args) -> None:
    r = subprocess.run([SYSFS_EMU, "capture", "--out", str(path), *args], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr


def test_a_capture_predicts_what_the_real_ksmd_merges(real_ksm, tmp_path):
    realksm.write("run", 2)
    realksm.write("run", 0)
    for name, value in KNOBS.items():
        realksm.write(name, value)
    with capture_workload.workloads() as procs:
        others = set(foreign_mergeable())
        if others:
            pytest.skip(f"other processes use KSM (pids {sorted(others)}): the global counters would not be ours")
        procs.extend(capture_workload.start(regions) for regions in WORKLOAD)
        _capture(tmp_path / "full.yaml")  # KSM off, nothing merged
        _capture(tmp_path / "sampled.yaml", "--sample", "8")
        for path in (tmp_path / "full.yaml", tmp_path / "sampled.yaml"):
            captured = yaml.safe_load(path.read_text())["processes"]
            assert sorted(p["cmdline"][-1] for p in captured if p["regions"][0]["fill"] == "captured") == \
                [capture_workload.MARK] * 3, "only our processes are mergeable"
        results = {}
        for use_zero_pages in (0, 1):
            realksm.write("run", 2)
            realksm.write("run", 0)
            realksm.write("use_zero_pages", use_zero_pages)
            results[use_zero_pages] = {
                "real": _settled_real(),
                "full": _settled_sim(tmp_path / "full.yaml", use_zero_pages),
                "sampled": _settled_sim(tmp_path / "sampled.yaml", use_zero_pages),
            }
    for use_zero_pages, r in results.items():
        assert r["full"] == r["real"], (use_zero_pages, results)
        for k in COUNTERS:
            assert abs(r["sampled"][k] - r["real"][k]) <= 0.02 * r["real"][k], (use_zero_pages, k, results)
    # what the workload makes: the pools and duplicates merge, empty pages too (as the zero page with 1)
    assert results[0]["real"]["pages_sharing"] > 4000 and results[0]["real"]["ksm_zero_pages"] == 0
    assert results[1]["real"]["ksm_zero_pages"] == 1024 + 256
