"""ksmtuned-py doctor: each finding, made real where the condition can be made on this machine
(real processes, the real kernel), on simulated trees otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from sysfs_emu import Simulation
from sysfs_emu.tree import Tree
from tests import realksm
from tests.emutree import KSMTUNED_PY, small_scenario
from tests.guests import stand_in_guests
from tests.ksm_guests import ksm_guests
from tests.proctools import stop, wait_for

PAGE = os.sysconf("SC_PAGE_SIZE")


def doctor(root: Path | str, conf: Path, *args: str) -> list[dict]:
    r = subprocess.run([KSMTUNED_PY, "--root", str(root), "--config", str(conf), "doctor", "--json", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def ids(findings: list[dict], subject: str | None = None) -> list[str]:
    return [f["id"] for f in findings if subject is None or f["subject"] == subject]


def one(findings: list[dict], id_: str, subject: str | None = None) -> dict:
    found = [f for f in findings if f["id"] == id_ and (subject is None or f["subject"] == subject)]
    assert len(found) == 1, (id_, subject, findings)
    return found[0]


@pytest.fixture
def conf(tmp_path) -> Path:
    path = tmp_path / "ksmtuned.conf"
    path.write_text(f"PIDFILE={tmp_path / 'ksmtune.pid'}\n")
    return path


def tree(tmp_path, scenario: dict, advance: float = 0.0, until_scans: int | None = None) -> Path:
    sim = Simulation(scenario)
    if until_scans is not None:
        sim.run_until(full_scans=until_scans)
    sim.advance(advance)
    root = tmp_path / "host"
    Tree(sim, root).create()
    return root


# --- real processes on the real kernel ------------------------------------------------------------


def test_guests_whose_memory_ksm_cannot_merge_and_why(conf):
    """Not madvised, mem-merge=off, MAP_SHARED memory: each named with its cause; a mergeable one not."""
    big = [int.from_bytes(os.urandom(7), "little") + 1 for _ in range(8192)]  # 32 MiB, its biggest mapping
    with ksm_guests({"name": "fine"}, {"name": "plain", "mergeable": False},
                    {"name": "nomerge", "mergeable": False,
                     "args": ("-name", "guest=nomerge", "-machine", "pc,mem-merge=off", "-enable-kvm")},
                    {"name": "shm", "shared": True, "contents": big}):
        found = doctor("/", conf)
    assert "guest-not-mergeable" not in ids(found, "fine")
    plain = one(found, "guest-not-mergeable", "plain")
    assert plain["severity"] == "warning"
    assert "has no mergeable memory: its memory was never madvised" in plain["evidence"]
    assert "mem-merge=off" in one(found, "guest-not-mergeable", "nomerge")["evidence"]
    assert "remove <nosharepages/>" in one(found, "guest-not-mergeable", "nomerge")["action"]
    shm = one(found, "guest-not-mergeable", "shm")
    assert "is shared (VmFlags sh) or file-backed memory" in shm["evidence"] and "32.0 MiB resident" in shm["evidence"]


def test_a_kvm_named_process_is_a_near_miss_under_the_upstream_rule(conf):
    with stand_in_guests({"comm": "kvm", "argv0": "/usr/bin/kvm", "extra_args": ("-id", "100", "-enable-kvm")}) as (g,):
        found = doctor("/", conf)
        conf.write_text(conf.read_text() + "KSM_PROCESS_REGEX='^kvm$'\n")
        counted = doctor("/", conf)
    miss = one(found, "near-miss-guest", "kvm")
    assert f"Process kvm (pid {g.pid}, kvm) looks like a guest but is not counted" in miss["evidence"]
    assert "KSM_COMPAT=proxmox or KSM_PROCESS_REGEX='^kvm$'" in miss["action"]
    assert "near-miss-guest" not in ids(counted, "kvm")


def test_transparent_huge_pages_in_a_mergeable_guest(conf):
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[never]" in thp.read_text():
        pytest.skip("transparent huge pages are off on this kernel")
    pages = [int.from_bytes(os.urandom(7), "little") + 1 for _ in range(2048)]  # 8 MiB: whole huge pages
    with ksm_guests({"name": "huge", "thp": True, "contents": pages}, {"name": "small"}):
        found = doctor("/", conf)
    huge = one(found, "huge-pages-split", "huge")
    assert "in transparent huge pages (AnonHugePages), which KSM splits" in huge["evidence"]
    assert "huge-pages-split" not in ids(found, "small")


@pytest.mark.realksm
def test_a_second_writer_on_the_real_kernel(real_ksm, tmp_path, conf):
    """The daemon tunes the real KSM; another program changes a knob: the daemon says so once, doctor too."""
    conf.write_text(conf.read_text() + "KSM_MONITOR_INTERVAL=3600\n")
    log = tmp_path / "stderr"
    with open(log, "w") as err:
        daemon = subprocess.Popen([KSMTUNED_PY, "--config", str(conf), "run"], stderr=err)
    try:
        state = tmp_path / "ksmtune.state"
        wait_for(state.exists, what="the daemon's state")
        os.kill(daemon.pid, 10)  # SIGUSR1: one cycle now
        wait_for(lambda: json.loads(state.read_text()).get("last_decision"), what="a cycle")
        assert ids(doctor("/", conf)).count("another-writer") == 0
        last = json.loads(state.read_text())["last_decision"]
        realksm.write("sleep_millisecs", last["sleep_millisecs"] + 7)  # the second writer
        found = doctor("/", conf)
        changed = one(found, "another-writer")
        assert f"another program changed sleep_millisecs {last['sleep_millisecs']} -> " \
               f"{last['sleep_millisecs'] + 7}" in changed["evidence"]
        os.kill(daemon.pid, 10)
        wait_for(lambda: "another program changed sleep_millisecs" in log.read_text(), what="the daemon's warning")
    finally:
        stop(daemon)


# --- simulated trees --------------------------------------------------------------------------


def test_no_ksm(tmp_path, conf):
    (tmp_path / "bare/proc").mkdir(parents=True)
    (tmp_path / "bare/proc/meminfo").write_text("MemTotal: 1000 kB\nMemFree: 500 kB\nBuffers: 0 kB\nCached: 0 kB\n")
    found = doctor(tmp_path / "bare", conf)
    assert ids(found) == ["no-ksm"] and "CONFIG_KSM" in found[0]["evidence"]
    # A root that is not there is a mistyped --root, said as every command says it, not "no KSM".
    r = subprocess.run([KSMTUNED_PY, "--root", str(tmp_path / "nowhere"), "--config", str(conf), "doctor"],
                       capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (66, "")
    assert r.stderr == f"ksmtuned-py: the root directory {tmp_path / 'nowhere'} does not exist (--root)\n"


def test_stopped_by_the_rule_with_the_setting_that_would_start_it(tmp_path, conf):
    root = tree(tmp_path, small_scenario())
    found = one(doctor(root, conf), "ksm-stopped-by-rule")
    assert found["severity"] == "info" and found["evidence"].startswith("The rule stops ksmd: committed + thres = ")
    coef = int(found["action"].split("KSM_THRES_COEF=")[1].split()[0])
    conf.write_text(conf.read_text() + f"KSM_THRES_COEF={coef}\n")
    assert "ksm-stopped-by-rule" not in ids(doctor(root, conf))  # the setting it names starts KSM
    conf.write_text(conf.read_text() + f"KSM_THRES_COEF={coef - 1}\n")
    assert "ksm-stopped-by-rule" in ids(doctor(root, conf))  # and no less would


def test_no_mergeable_memory_anywhere(tmp_path, conf):
    scenario = small_scenario(run=0)
    for p in scenario["processes"]:
        for r in p["regions"]:
            r["mergeable"] = False
    found = doctor(tree(tmp_path, scenario, advance=3), conf)
    assert "None of the 3 processes has mergeable memory" in one(found, "no-mergeable-memory")["evidence"]
    assert ids(found).count("guest-not-mergeable") == 2


def test_the_advisor_owns_pages_to_scan(tmp_path, conf):
    scenario = small_scenario()
    scenario["ksm"] = {"advisor_mode": "scan-time", "run": 1}
    found = one(doctor(tree(tmp_path, scenario), conf), "advisor-owns-pages-to-scan")
    assert "advisor_mode is scan-time: the kernel sets pages_to_scan (now 500) to finish a full scan in 200 s " \
           "within 70% of a CPU" in found["evidence"]


@contextlib.contextmanager
def daemon_after_a_cycle(root: Path, conf: Path):
    """The daemon on ``root`` (an hour between cycles), once its retuned cycle is published."""
    conf.write_text(conf.read_text() + "KSM_MONITOR_INTERVAL=3600\n")
    daemon = subprocess.Popen([KSMTUNED_PY, "--root", str(root), "--config", str(conf), "run"],
                              stderr=subprocess.DEVNULL)
    try:
        state = conf.parent / "ksmtune.state"  # next to the pidfile the conf fixture names
        wait_for(state.exists, what="the daemon's state")
        os.kill(daemon.pid, 10)  # retune: a cycle now
        wait_for(lambda: json.loads(state.read_text()).get("last_decision"), what="a cycle")
        yield daemon
    finally:
        stop(daemon)


def test_another_writer_while_the_daemon_runs_on_a_tree(tmp_path, conf):
    root = tree(tmp_path, small_scenario())
    with daemon_after_a_cycle(root, conf):
        assert "another-writer" not in ids(doctor(root, conf))
        (root / "sys/kernel/mm/ksm/run").write_text("1\n")  # the daemon stopped it; another starts it
        assert "run 0 -> 1" in one(doctor(root, conf), "another-writer")["evidence"]


def test_negative_profit(tmp_path, conf):
    scenario = {"host": {"memory": "1GiB"}, "ksm": {"pages_to_scan": 10000, "sleep_millisecs": 0, "run": 1},
                "processes": [{"name": "qemu-system-x86", "cmdline": "qemu-system-x86_64 -name guest=lonely",
                               "regions": [{"pages": 20000, "fill": "unique"}]}]}
    found = one(doctor(tree(tmp_path, scenario, until_scans=2), conf), "negative-profit")
    assert found["evidence"].startswith("general_profit is -1.2 MiB: KSM's metadata")
    assert "worst: lonely -1.2 MiB" in found["evidence"]


def test_negative_profit_in_the_first_full_scan_is_only_the_start(tmp_path, conf):
    """Before the second full scan nothing can have merged: the negative profit is said to be expected, not a fault."""
    scenario = {"host": {"memory": "1GiB"}, "ksm": {"pages_to_scan": 1000, "sleep_millisecs": 20, "run": 1},
                "processes": [{"name": "qemu-system-x86", "cmdline": "qemu-system-x86_64 -name guest=twin-1",
                               "regions": [{"pages": 20000, "fill": "pool", "pool": "os"}]},
                              {"name": "qemu-system-x86", "cmdline": "qemu-system-x86_64 -name guest=twin-2",
                               "regions": [{"pages": 20000, "fill": "pool", "pool": "os"}]}]}
    found = one(doctor(tree(tmp_path, scenario, advance=0.5), conf), "negative-profit")
    assert found["severity"] == "info"
    assert found["evidence"].startswith("general_profit is -")
    assert found["evidence"].endswith("but ksmd has made 0 full scans since boot, and a page merges only on "
                                      "its second visit.")
    assert found["action"] == "Nothing to do yet: look again after ksmd's second full scan (full_scans 2)."


def test_merge_across_nodes_on_a_two_node_host(tmp_path, conf):
    root = tree(tmp_path / "one", small_scenario())
    assert "merge-across-nodes" not in ids(doctor(root, conf))  # one node: sys/devices/system/node/online is "0"
    two_nodes = {**small_scenario(), "host": {**small_scenario()["host"], "nodes": 2}}
    found = one(doctor(tree(tmp_path / "two", two_nodes), conf), "merge-across-nodes")
    assert found["evidence"].startswith("This host has 2 NUMA nodes and merge_across_nodes is 1")
    assert "write 2 to run (unmerges everything), then the new value to merge_across_nodes" in found["action"]
    local = {**two_nodes, "ksm": {**two_nodes.get("ksm", {}), "merge_across_nodes": 0}}
    found = one(doctor(tree(tmp_path / "local", local), conf), "merge-across-nodes")
    assert found["evidence"].startswith("This host has 2 NUMA nodes and merge_across_nodes is 0: "
                                        "KSM merges only pages on the same node")


def test_unmerge_risk_after_memory_freed_by_merging_was_given_to_a_new_guest(tmp_path, conf):
    """Merging freed memory; a guest that starts later takes it: the merged pages would no longer fit back."""
    sim = Simulation({"host": {"memory": "1GiB"}, "ksm": {"pages_to_scan": 50000, "sleep_millisecs": 0, "run": 1},
                      "processes": [{"name": "qemu-system-x86", "cmdline": "qemu-system-x86_64 -name guest=zeros",
                                     "regions": [{"pages": 200000, "fill": "zero"}]}]})
    sim.run_until(full_scans=3)
    sim.apply({"start": {"name": "qemu-system-x86", "cmdline": "qemu-system-x86_64 -name guest=late",
                         "regions": [{"pages": 180000, "fill": "unique", "mergeable": False}]}})
    Tree(sim, tmp_path / "host").create()
    risk = one(doctor(tmp_path / "host", conf), "unmerge-risk")
    assert risk["evidence"].startswith("KSM has merged 778.2 MiB that the guests would need back")  # 200000 - 782 KSM pages
    assert "more than MemAvailable + SwapFree (" in risk["evidence"]


def test_the_text_report(tmp_path, conf):
    r = subprocess.run([KSMTUNED_PY, "--root", str(tree(tmp_path, small_scenario())), "--config", str(conf), "doctor"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("info: [ksm-stopped-by-rule] The rule stops ksmd: ")
    assert lines[1].startswith("    what to do: Nothing to do if memory is plentiful; to merge anyway, KSM_THRES_COEF=")
    assert lines[-1] == "1 finding, 0 warnings"


def crowded(run: int) -> dict:
    """small_scenario on a host its guests nearly fill: the rule starts KSM."""
    scenario = small_scenario(run=run)
    scenario["host"]["memory"] = "36MiB"
    return scenario


def test_ksm_stopped_while_the_rule_would_run_it_and_nothing_tunes(tmp_path, conf):
    root = tree(tmp_path, crowded(run=0), advance=3)
    found = one(doctor(root, conf), "ksm-not-running")
    assert found["severity"] == "warning"
    assert found["evidence"].startswith("ksmd is stopped (run 0) although the rule would start it now (committed "
                                        "+ thres = ")
    assert found["evidence"].endswith(f"and no tuner runs (no ksmtuned-py daemon is running: {tmp_path}/ksmtune.pid "
                                      "does not exist).")
    assert "systemctl enable --now ksmtuned-py" in found["action"]
    assert "ksm-stopped-by-rule" not in ids(doctor(root, conf))
    # What it says to do clears it: a cycle by the rule starts KSM.
    r = subprocess.run([KSMTUNED_PY, "--root", str(root), "--config", str(conf), "adjust", "--apply"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (root / "sys/kernel/mm/ksm/run").read_text() == "1\n"
    assert "ksm-not-running" not in ids(doctor(root, conf))


def test_ksm_stopped_by_the_rule_or_with_a_daemon_running_is_not_a_stopped_tuner(tmp_path, conf):
    assert "ksm-not-running" not in ids(doctor(tree(tmp_path, small_scenario(run=0), advance=3), conf))  # the rule
    root = tree(tmp_path / "b", crowded(run=0), advance=3)
    with daemon_after_a_cycle(root, conf):
        assert (root / "sys/kernel/mm/ksm/run").read_text() == "1\n"
        (root / "sys/kernel/mm/ksm/run").write_text("0\n")  # stopped under it: another writer, not a missing tuner
        found = ids(doctor(root, conf))
        assert "ksm-not-running" not in found and "another-writer" in found


def test_ksm_unmerging(tmp_path, conf):
    root = tree(tmp_path, small_scenario(run=1), until_scans=2)
    (root / "sys/kernel/mm/ksm/run").write_text("2\n")
    found = one(doctor(root, conf), "ksm-not-running")
    assert found["evidence"] == "run is 2: ksmd is unmerging every merged page and merges nothing until run is 1 again."


def test_ksm_stopped_with_another_tuner_running_is_that_tuners_to_start(tmp_path, conf):
    scenario = crowded(run=0)
    scenario["processes"].append({"name": "ksmtuned", "cmdline": ["/bin/bash", "/usr/sbin/ksmtuned"],
                                  "regions": [{"pages": 50, "fill": "unique", "mergeable": False}]})
    found = doctor(tree(tmp_path, scenario, advance=3), conf)
    assert "ksm-not-running" not in ids(found)
    assert one(found, "another-writer")["evidence"].startswith("the reference ksmtuned runs (pid ")


@pytest.mark.parametrize("args, what", [
    (["-object", "sev-guest,id=sev0,cbitpos=47,reduced-phys-bits=1", "-machine", "q35,confidential-guest-support=sev0"],
     "sev-guest"),
    (["-object", "sev-snp-guest,id=sev0", "-machine", "q35,memory-backend=ram1"], "sev-snp-guest"),
    (["-machine", "q35,kernel-irqchip=split,confidential-guest-support=tdx0"], "confidential-guest-support"),
    (["-machine", "pc,memory-encryption=sev0"], "memory-encryption"),
])
def test_a_guest_with_encrypted_memory(tmp_path, conf, args, what):
    scenario = small_scenario()
    scenario["processes"].append({"name": "qemu-system-x86", "cmdline": ["qemu-system-x86_64", "-enable-kvm", "-name",
                                                                        "guest=secret", *args],
                                  "regions": [{"pages": 2000, "fill": "unique"}]})
    found = one(doctor(tree(tmp_path, scenario, advance=3), conf), "encrypted-guest", "secret")
    assert found["evidence"].startswith("Guest secret (pid ")
    assert f"runs with encrypted memory (qemu {what}): its pages differ as the host sees them, so KSM cannot " \
           "merge them (0 merged now)." in found["evidence"]
    assert "-machine mem-merge=off" in found["action"]


def test_no_encrypted_guest_finding_for_plain_guests_or_unmergeable_ones(tmp_path, conf):
    scenario = small_scenario()
    scenario["processes"].append({"name": "qemu-system-x86", "cmdline": ["qemu-system-x86_64", "-name", "guest=off",
                                                                        "-object", "sev-guest,id=s",
                                                                        "-machine", "q35,mem-merge=off"],
                                  "regions": [{"pages": 2000, "fill": "unique", "mergeable": False}]})
    found = doctor(tree(tmp_path, scenario, advance=3), conf)
    assert "encrypted-guest" not in ids(found)  # web-1 and web-2 are plain; "off" is not mergeable at all
    assert ids(found, "off") == ["guest-not-mergeable"]
