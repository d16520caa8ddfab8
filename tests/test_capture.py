"""sysfs-emu capture: real processes' memory as a scenario, the captured fill, the content ids."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from sysfs_emu import Simulation
from sysfs_emu.capture.ids import assign_ids
from sysfs_emu.capture.pages import EMPTY, MappingPages, read_hashes
from sysfs_emu.errors import ScenarioError
from sysfs_emu.scenario import load_yaml
from tests import capture_workload, realksm
from tests.emutree import SYSFS_EMU
from tests.proctools import wait_for

KSM = Path("/sys/kernel/mm/ksm")


def needs_root():
    if os.geteuid() != 0:
        pytest.skip("capture needs root (it reads other processes' pagemap and memory)")


# --- the captured fill ----------------------------------------------------------------------------

def _scenario(tmp_path, ids, regions) -> Path:
    np.save(tmp_path / "host.ids.npy", np.asarray(ids))
    path = tmp_path / "host.yaml"
    path.write_text(yaml.safe_dump({
        "host": {"memory": "1GiB"}, "ksm": {"pages_to_scan": 1000, "sleep_millisecs": 0, "run": 1},
        "processes": [{"name": f"p{i}", "regions": rs} for i, rs in enumerate(regions)]}))
    return path


def test_a_captured_region_holds_the_files_contents_and_merges_as_they_say(tmp_path):
    # entries: 0 empty, 1..3 three contents; process 0 holds 1 2 3 1 0, process 1 holds 2 3 (entries 1 and 2)
    path = _scenario(tmp_path, [1, 2, 3, 1, 0], [
        [{"pages": 5, "fill": "captured", "ids": "host.ids.npy"}],
        [{"pages": 2, "fill": "captured", "ids": "host.ids.npy", "index": 1, "thp": True}]])
    spec = load_yaml(path)
    assert spec.processes[1].regions[0].thp is True and spec.processes[0].regions[0].thp is False
    assert spec.processes[0].regions[0].fill.ids == str(tmp_path / "host.ids.npy")  # beside the YAML
    sim = Simulation(spec)
    content = sim.memory.pages.content
    got = [content[sim.memory.regions[r].start: sim.memory.regions[r].stop].tolist() for r in (0, 1)]
    assert got[0][4] == 0 and got[0][0] == got[0][3] and len(set(got[0][:3])) == 3 and got[1] == got[0][1:3]
    sim.run_until(full_scans=3)
    c = sim.kernel.counters()
    # 1 twice, 2 twice, 3 twice: three KSM pages with one more mapping each; the empty page alone
    assert (c["pages_shared"], c["pages_sharing"], c["pages_unshared"]) == (3, 3, 1)


def test_a_captured_fill_that_cannot_be_used_is_one_message(tmp_path):
    def problem(ids, region):
        path = _scenario(tmp_path, ids, [[region]])
        with pytest.raises(ScenarioError) as exc:
            load_yaml(path)
        return str(exc.value).removeprefix(f"{path}: ")

    ids = str(tmp_path / "host.ids.npy")
    assert problem([1, 2], {"pages": 3, "fill": "captured", "ids": "host.ids.npy"}) == (
        f"processes[0].regions[0].index: index + pages must be <= 2, the content ids in {ids}")
    assert problem([1, 2], {"pages": 1, "fill": "captured", "ids": "other.npy"}) == (
        f"processes[0].regions[0].ids: no such file {tmp_path / 'other.npy'}")
    assert problem([1.5, 2], {"pages": 1, "fill": "captured", "ids": "host.ids.npy"}) == (
        f"processes[0].regions[0].ids: {ids} is not a content id file: it must hold one row of whole numbers, "
        "not float64 of shape (2,)")
    assert problem([-1, 2], {"pages": 1, "fill": "captured", "ids": "host.ids.npy"}) == (
        f"processes[0].regions[0].ids: {ids}: content ids must be from 0 to {2**30 - 1}")
    assert problem([1], {"pages": 1, "fill": "captured"}) == (
        "processes[0].regions[0].ids: missing (fill: captured needs the content id file that sysfs-emu capture "
        "wrote)")
    assert problem([1], {"pages": 1, "fill": "zero", "index": 3}) == (
        "processes[0].regions[0].index: only goes with fill: captured")
    (tmp_path / "junk.npy").write_text("not numpy")
    assert problem([1], {"pages": 1, "fill": "captured", "ids": "junk.npy"}).startswith(
        f"processes[0].regions[0].ids: {tmp_path / 'junk.npy'} is not a content id file (a .npy array of page ids): ")


# --- content ids from hashes ------------------------------------------------------------------------

def _part(sample_hash, sample_block, page_sample, page_offset) -> MappingPages:
    part = MappingPages()
    part.sample_hash = [np.array(sample_hash, dtype=np.uint64)]
    part.sample_block = [np.array(sample_block)]
    part.page_sample = [np.array(page_sample)]
    part.page_offset = [np.array(page_offset, dtype=np.uint16)]
    part.thp = [np.zeros(len(page_sample), dtype=bool)]
    part.samples = len(sample_hash)
    return part


def test_ids_are_compact_and_equal_for_equal_pages():
    a = _part([50, 7, 0, 50], [0, 1, 2, 3], [0, 1, 2, 3], [0, 0, 0, 0])
    b = _part([7, 99], [0, 1], [0, 1], [0, 0])
    ids = assign_ids([a, b], 1)
    assert ids.dtype == np.int32
    # 0 stays the empty page; the distinct hashes 7, 50, 99 become 1, 2, 3 (in hash order)
    assert ids.tolist() == [2, 1, 0, 2, 1, 3]


def test_sampled_pages_stand_for_their_neighbours():
    # runs of 4 pages (sample 4): samples of contents A=10, A, B=20, 0, B, in runs 0, 1, 2, 3 and 5
    part = _part([10, 10, 20, 0, 20], [0, 1, 2, 3, 5],
                 page_sample=[0, 0, 1, 1, 2, 2, 3, 3, 4, 4], page_offset=[0, 1, 0, 3, 0, 2, 0, 1, 0, 1])
    other = _part([20], [7], page_sample=[0, 0], page_offset=[0, 2])
    ids = assign_ids([part, other], 4)
    a, b = 1, 2  # the sampled contents; an inferred neighbour j pages after content c is 2 + (c - 1) * 3 + j
    assert ids.tolist() == [
        a, a,  # the next run repeats A: a run of one content
        a, a,  # the previous run had A
        b, 2 + (b - 1) * 3 + 2,  # B's neighbour 2 pages on: content (B, 2)
        0, 0,  # an empty sample's neighbours are empty
        b, 2 + (b - 1) * 3 + 1,  # B again, not after another B: (B, 1)
        b, 2 + (b - 1) * 3 + 2,  # B in another mapping, 2 pages on: the same (B, 2) as in the first
    ]


class _Reader:
    """A page reader whose memory changes between the first and second read of some pages."""

    def __init__(self, pages: dict[int, int], changing: set[int]):
        from sysfs_emu.capture.pages import Hasher

        self.pages, self.changing, self.reads = pages, changing, 0
        self.hasher = Hasher(b"k" * 32, workers=1)

    def read_into(self, rows, first):
        self.reads += 1
        rows[:] = 0
        for i in range(len(rows)):
            rows[i, 0] = self.pages[first + i] + (self.reads if first + i in self.changing else 0)
        return True

    def hashes(self, rows):
        return self.hasher.hashes(rows)


def test_pages_that_change_while_read_are_not_kept():
    # a run of three pages, one of which changes; a page alone; a page alone that changes
    reader = _Reader({10: 5, 11: 0, 12: 5, 20: 8, 30: 9}, changing={12, 30})
    hashes, ok = read_hashes(reader, np.array([10, 11, 12, 20, 30]))
    assert ok.tolist() == [True, True, False, True, False]
    assert hashes[1] == EMPTY and hashes[0] != EMPTY and hashes[0] != hashes[3]


# --- capturing real processes ---------------------------------------------------------------------

POOL = list(range(1000, 1000 + 1024))
THP_POOL = list(range(9000, 9000 + 1024))


def _capture(out: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([SYSFS_EMU, "capture", "--out", str(out), *args], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def _ours(scenario: dict, procs) -> list[dict]:
    pids = {p.pid for p in procs}
    found = [p for p in scenario["processes"] if capture_workload.MARK in p["cmdline"]]
    if len(found) != len(pids):
        pytest.skip("the workload processes were not all captured")
    return found


def _ksm_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in KSM.iterdir()} if KSM.is_dir() else {}


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    needs_root()
    tmp = tmp_path_factory.mktemp("capture")
    regions_a = [{"contents": POOL}, {"contents": [0] * 512}, {"contents": [7] * 300},
                 {"contents": THP_POOL, "thp": True}, {"contents": list(range(50_000, 50_200)), "mergeable": False}]
    regions_b = [{"contents": POOL}, {"contents": THP_POOL, "thp": True}]
    with realksm.locked(), capture_workload.workloads() as procs:  # no test changes KSM meanwhile
        procs.append(capture_workload.start(regions_a))
        procs.append(capture_workload.start(regions_b, name="qemu-system-x86"))
        for p in procs:  # asleep in its read of standard input
            wait_for(lambda: Path(f"/proc/{p.pid}/stat").read_text().split(")")[1].split()[0] == "S", timeout=30,
                     what="the workload to wait on its input")
        before = {p.pid: _status(p.pid) for p in procs}
        thp_kb = {p.pid: _huge_kb(p.pid) for p in procs}
        ksm_before = _ksm_files()
        runs = {n: _capture(tmp / f"{n}.yaml", *args) for n, args in
                (("full", ()), ("sampled", ("--sample", "8")), ("guests", ("--guests-only",)))}
        ksm_after = _ksm_files()
        after = {p.pid: _status(p.pid) for p in procs}
        yield {"tmp": tmp, "procs": procs, "runs": runs, "before": before, "after": after,
               "ksm": (ksm_before, ksm_after), "regions": (regions_a, regions_b), "thp_kb": thp_kb}


def _status(pid: int) -> dict[str, str]:
    """What must not change while capture reads a process: its state, tracer and resident size."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: fields[k].strip() for k in ("TracerPid", "VmRSS", "RssAnon", "voluntary_ctxt_switches")}


def _huge_kb(pid: int) -> int:
    """AnonHugePages of the process's mapping advised MADV_HUGEPAGE and MADV_MERGEABLE."""
    from sysfs_emu.capture.procs import parse_smaps

    maps = parse_smaps(Path(f"/proc/{pid}/smaps").read_text())
    return sum(m.thp_kb for m in maps if "hg" in m.flags and m.mergeable)


def _ids(tmp: Path, name: str) -> np.ndarray:
    return np.load(tmp / f"{name}.ids.npy")


def test_capture_writes_the_processes_that_ksmd_scans_with_their_pages(captured):
    tmp = captured["tmp"]
    scenario = yaml.safe_load((tmp / "full.yaml").read_text())
    a, b = _ours(scenario, captured["procs"])
    assert a["name"].startswith("python") and b["name"] == "qemu-system-x86"
    assert b["cmdline"][-1] == capture_workload.MARK and b["cmdline"][1] == "-c"
    pages = [(r["pages"], r.get("thp", False)) for r in a["regions"] if r["fill"] == "captured"]
    # the huge pages the kernel gave the region advised MADV_HUGEPAGE (none when it had no 2 MiB pages free)
    thp = captured["thp_kb"][captured["procs"][0].pid] == 4096
    assert pages == [(1024, False), (512, False), (300, False), (1024, thp)]  # the non-mergeable one is not read
    ids = _ids(tmp, "full")
    index = {r["index"]: r["pages"] for p in (a, b) for r in p["regions"] if r["fill"] == "captured"}
    ra = [r for r in a["regions"] if r["fill"] == "captured"]
    rb = [r for r in b["regions"] if r["fill"] == "captured"]

    def region(r):
        return ids[r["index"]:r["index"] + r["pages"]]

    # equal pages have equal ids, others not: the pool in both, empty pages 0, the run of 7s one id
    assert (region(ra[0]) == region(rb[0])).all() and len(set(region(ra[0]).tolist())) == 1024
    assert (region(ra[3]) == region(rb[1])).all() and not set(region(ra[3]).tolist()) & set(region(ra[0]).tolist())
    assert set(region(ra[1]).tolist()) == {0} and len(set(region(ra[2]).tolist())) == 1
    every = [r for p in scenario["processes"] for r in p["regions"] if r["fill"] == "captured"]
    assert sum(r["pages"] for r in every) == ids.size and ids.dtype == np.int32 and len(index) == 6
    # the rest of each process's RSS: one region ksmd does not scan
    rest = [r for r in a["regions"] if r["fill"] == "zero"]
    assert len(rest) == 1 and rest[0]["mergeable"] is False
    sim = Simulation.from_yaml(tmp / "full.yaml")
    proc_a = sim.process(scenario["processes"].index(a))
    assert proc_a.rss_pages * 4 == int(captured["before"][captured["procs"][0].pid]["VmRSS"].split()[0])


def test_capture_only_reads(captured):
    # never traced, memory as it was, and not even woken up (it sleeps reading its standard input)
    assert captured["before"] == captured["after"]
    assert all(s["TracerPid"] == "0" for s in captured["after"].values())
    before, after = captured["ksm"]
    volatile = {"full_scans", "pages_scanned", "pages_skipped", "pages_volatile", "pages_unshared", "pages_shared",
                "pages_sharing", "general_profit", "ksm_zero_pages", "stable_node_chains", "stable_node_dups"}
    assert {k: v for k, v in before.items() if k not in volatile} == {
        k: v for k, v in after.items() if k not in volatile}
    scenario = yaml.safe_load((captured["tmp"] / "full.yaml").read_text())
    for name, value in scenario["ksm"].items():
        text = before[name].strip()
        assert str(value) == (text[text.index("[") + 1:text.index("]")] if "[" in text else text), name


def test_the_files_tell_which_pages_are_equal_not_what_they_hold(captured):
    tmp = captured["tmp"]
    ids = _ids(tmp, "full")
    assert ids.max() <= ids.size  # dense ids, not the page values nor hashes
    scenario = yaml.safe_load((tmp / "full.yaml").read_text())
    pool = [r for r in _ours(scenario, captured["procs"])[0]["regions"] if r["fill"] == "captured"][0]
    assert not np.isin(ids[pool["index"]:pool["index"] + pool["pages"]], POOL).all()
    text = (tmp / "full.yaml").read_text()
    assert "# Page contents are content ids in full.ids.npy" in text
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("full")) == ["full.ids.npy", "full.yaml"]


def test_a_sampled_capture_reads_one_page_in_n_and_infers_the_same_sharing(captured):
    tmp, runs = captured["tmp"], captured["runs"]
    full, sampled = _ids(tmp, "full"), _ids(tmp, "sampled")
    assert "of them read (1 in 8)" in runs["sampled"].stdout
    assert full.size == sampled.size
    # laid out alike at the same offsets: the same pages are equal (one-to-one ids)
    ours = [yaml.safe_load((tmp / f"{n}.yaml").read_text()) for n in ("full", "sampled")]
    spans = [[(r["index"], r["pages"]) for p in _ours(s, captured["procs"]) for r in p["regions"]
              if r["fill"] == "captured"] for s in ours]
    assert spans[0] == spans[1]
    f = np.concatenate([full[i:i + n] for i, n in spans[0]])
    s = np.concatenate([sampled[i:i + n] for i, n in spans[0]])
    assert len(set(zip(f.tolist(), s.tolist()))) == len(set(f.tolist())) == len(set(s.tolist()))


def test_guests_only_captures_the_guests_the_tuner_counts(captured):
    import re

    from ksmtuned_py.config import UPSTREAM_PROCESS_REGEX

    scenario = yaml.safe_load((captured["tmp"] / "guests.yaml").read_text())
    assert all(re.search(UPSTREAM_PROCESS_REGEX, p["name"]) for p in scenario["processes"])
    ours = [p for p in scenario["processes"] if capture_workload.MARK in p["cmdline"]]
    assert [p["name"] for p in ours] == ["qemu-system-x86"]  # the python one is mergeable, not a guest
    guests = len(scenario["processes"])
    assert f"({guests} guest{'s' if guests > 1 else ''})" in captured["runs"]["guests"].stdout


def test_capture_without_root_is_one_line(tmp_path):
    if os.geteuid() != 0:
        r = subprocess.run([SYSFS_EMU, "capture", "--out", str(tmp_path / "h.yaml")], capture_output=True, text=True)
    else:
        os.chmod(tmp_path, 0o777)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSFS_EMU, "capture",
                            "--out", str(tmp_path / "h.yaml")], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("sysfs-emu: error: capture needs root: it reads other processes' memory through "
                        "/proc/PID/pagemap and /proc/PID/mem\n")
    assert not (tmp_path / "h.yaml").exists()


def test_a_kernel_with_other_page_sizes_is_refused_in_one_line(tmp_path, monkeypatch):
    """This machine has 4 KiB pages, so the page size is the one thing pretended here (an arm64 64 KiB kernel)."""
    from sysfs_emu.capture import run as capture_run
    from sysfs_emu.capture.procs import CaptureError

    real = os.sysconf
    monkeypatch.setattr(capture_run.os, "sysconf", lambda name: 65536 if name == "SC_PAGE_SIZE" else real(name))
    with pytest.raises(CaptureError) as info:
        capture_run.capture(tmp_path / "h.yaml", show_progress=False)
    assert str(info.value) == ("capture reads memory in 4 KiB pages, as the simulator models them; "
                               "this kernel's pages are 64 KiB")
    assert os.listdir(tmp_path) == []


def test_a_merge_any_process_is_captured_by_its_mappings(tmp_path):
    """prctl(PR_SET_MEMORY_MERGE): the kernel marks every anonymous mapping mg; the capture reads them all
    and keeps the rest of the RSS out of ksmd's reach (no mergeable_all)."""
    needs_root()
    with capture_workload.workloads() as procs:
        procs.append(capture_workload.start([{"contents": [5] * 100, "mergeable": False}], name="merge-any-test",
                                            merge_any=True))
        _capture(tmp_path / "h.yaml")
    scenario = yaml.safe_load((tmp_path / "h.yaml").read_text())
    (ours,) = [p for p in scenario["processes"] if p["name"] == "merge-any-test"]
    assert "mergeable_all" not in ours
    captured = [r for r in ours["regions"] if r["fill"] == "captured"]
    assert len(captured) > 1 and sum(r["pages"] for r in captured) > 100  # the heap and stack too
    assert [r for r in ours["regions"] if r["fill"] != "captured"] == [
        {"pages": ours["regions"][-1]["pages"], "fill": "zero", "mergeable": False}]
    spec = load_yaml(tmp_path / "h.yaml")
    assert not spec.processes[scenario["processes"].index(ours)].mergeable_all


@pytest.mark.parametrize("args, message", [
    (["--sample", "0"], "--sample must be from 1 to 512, got 0"),
    (["--out", "/nonexistent/h.yaml"], "cannot write /nonexistent/h.yaml: no directory /nonexistent"),
])
def test_capture_refuses_what_it_cannot_do(tmp_path, args, message):
    needs_root()
    r = subprocess.run([SYSFS_EMU, "capture", "--out", str(tmp_path / "h.yaml"), *args],
                       capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (1, f"sysfs-emu: error: {message}\n")
