"""The live file tree of a Simulation: layout, modes, atomic replace, write-back, lock, bad input."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from sysfs_emu import Simulation
from sysfs_emu.rootlock import filesystem_type
from sysfs_emu import tree as tree_module
from sysfs_emu.tree import KSM_ATTRS, KSM_DIR, PROC_FILES, Tree, TreeError
from tests.emutree import SYSFS_EMU, cli, read, served, small_scenario, stop, wait_for

KSM = KSM_DIR
# The files' layout is Linux 6.18's; compare with the running kernel only when it is that one.
REFERENCE_KERNEL = os.uname().release.startswith("6.18")


@pytest.fixture
def sim():
    return Simulation(small_scenario())


@pytest.fixture
def fast_tmp(tmp_path):
    """A scratch directory on tmpfs when there is one (replacing files on a disk costs milliseconds)."""
    if os.path.isdir("/dev/shm") and filesystem_type("/dev/shm") == "tmpfs":
        path = Path(tempfile.mkdtemp(prefix="test-tree-", dir="/dev/shm"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path


@pytest.fixture
def tree(sim, fast_tmp):
    t = Tree(sim, fast_tmp / "host")
    (fast_tmp / "host").mkdir()
    t.create()
    return t


def test_every_ksm_file_with_kernel_text_and_mode(tree, sim):
    root = tree.root
    names = sorted(os.listdir(root / KSM))
    assert names == sorted(KSM_ATTRS)
    # The same 24 files as the machine's kernel, when it is the reference (6.18) with KSM.
    if REFERENCE_KERNEL and os.path.isdir("/sys/kernel/mm/ksm"):
        assert names == sorted(os.listdir("/sys/kernel/mm/ksm"))
    for name in names:
        path = root / KSM / name
        assert read(path) == sim.kernel.read_attr(name)
        mode = stat.S_IMODE(path.stat().st_mode)
        real = Path("/sys/kernel/mm/ksm", name)
        expected = 0o644 if KSM_ATTRS[name] else 0o444
        if REFERENCE_KERNEL and real.exists():
            assert stat.S_IMODE(real.stat().st_mode) == expected, name
        assert mode == expected, name
    assert read(root / KSM / "advisor_mode") == "[none] scan-time\n"


def test_proc_files_of_each_process(tree, sim):
    root = tree.root
    assert read(root / "proc/meminfo") == sim.meminfo()
    procs = sim.processes
    # the simulated processes, and the ksmd kernel thread just below them
    assert sorted(int(n) for n in os.listdir(root / "proc") if n.isdigit()) == \
        sorted([sim.scenario.host.pid_base - 1, *(p.pid for p in procs)])
    for p in procs:
        d = root / "proc" / str(p.pid)
        assert sorted(os.listdir(d)) == sorted(PROC_FILES)
        assert read(d / "comm") == p.name[:15] + "\n"
        assert (d / "cmdline").read_bytes() == b"".join(a.encode() + b"\0" for a in p.cmdline)
        assert read(d / "ksm_stat") == p.ksm_stat_text()
        assert read(d / "ksm_merging_pages") == f"{p.ksm_merging_pages}\n"
        fields = read(d / "stat").split()
        assert fields[0] == str(p.pid) and fields[1] == f"({p.name[:15]})"
        assert int(fields[23]) == p.rss_pages  # rss, field 24
        assert int(fields[22]) == p.vsz_pages * 4096  # vsize, field 23
        assert int(fields[21]) == round(p.start_time * 100)  # starttime in ticks, field 22
        statm = read(d / "statm").split()
        assert len(statm) == 7 and int(statm[0]) == p.vsz_pages and int(statm[1]) == p.rss_pages
        status = dict(line.split(":\t", 1) for line in read(d / "status").splitlines())
        assert status["VmRSS"] == f"{p.rss_pages * 4:8d} kB"
        anon, file_, shmem = (int(status[k].split()[0]) for k in ("RssAnon", "RssFile", "RssShmem"))
        assert anon + file_ + shmem == p.rss_pages * 4
        assert status["Pid"] == status["Tgid"] == str(p.pid)
        assert status["Name"] == p.name[:15]


@pytest.mark.skipif(not REFERENCE_KERNEL, reason=f"the layout reference is Linux 6.18, this is {os.uname().release}")
def test_proc_layout_matches_the_real_kernel(tree, sim):
    """stat has as many fields, and status the same keys in the same order, as /proc/self here."""
    p = sim.processes[0]
    d = tree.root / "proc" / str(p.pid)
    real_stat = Path("/proc/self/stat").read_text()
    ours = read(d / "stat")
    assert len(ours[ours.rindex(")"):].split()) == len(real_stat[real_stat.rindex(")"):].split())
    assert ours.endswith("\n") and ours.count("\n") == 1
    real_keys = [line.split(":")[0] for line in Path("/proc/self/status").read_text().splitlines()]
    our_keys = [line.split(":")[0] for line in read(d / "status").splitlines()]
    assert our_keys == real_keys
    assert len(Path("/proc/self/statm").read_text().split()) == len(read(d / "statm").split())
    real_rollup = [line.split(":")[0] for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]]
    ours_rollup = read(d / "smaps_rollup").splitlines()
    assert [line.split(":")[0] for line in ours_rollup[1:]] == real_rollup
    assert ours_rollup[0].index("[rollup]") == Path("/proc/self/smaps_rollup").read_text().index("[rollup]")
    real_ksm = [line.split()[0] for line in Path("/proc/self/ksm_stat").read_text().splitlines()]
    assert [line.split()[0] for line in read(d / "ksm_stat").splitlines()] == real_ksm
    # Host files psutil and the daemon read.
    assert any(line.startswith("btime ") for line in read(tree.root / "proc/stat").splitlines())
    up = read(tree.root / "proc/uptime").split()
    assert float(up[0]) == pytest.approx(sim.uptime, abs=0.01)


@pytest.mark.parametrize("nodes, text", [(1, "0\n"), (2, "0-1\n"), (4, "0-3\n")])
def test_numa_node_lists_as_linux_writes_them(fast_tmp, nodes, text):
    """sys/devices/system/node/{online,possible,has_memory}: the node range, "0" on one node (as this host's)."""
    scenario = small_scenario()
    sim = Simulation({**scenario, "host": {**scenario["host"], "nodes": nodes}})
    (fast_tmp / "host").mkdir()
    t = Tree(sim, fast_tmp / "host")
    t.create()
    node_dir = fast_tmp / "host/sys/devices/system/node"
    for name in ("online", "possible", "has_memory"):
        assert read(node_dir / name) == text
        assert stat.S_IMODE(os.stat(node_dir / name).st_mode) == 0o444
        real = Path("/sys/devices/system/node", name)
        if nodes == 1 and real.exists() and real.read_text() == "0\n":
            assert read(node_dir / name) == real.read_text()
    t.remove()
    assert not (fast_tmp / "host/sys").exists()  # its directories go with it


def test_unchanged_files_are_not_rewritten_and_changed_ones_are_replaced(tree, sim):
    root = tree.root
    ino = {n: (root / KSM / n).stat().st_ino for n in KSM_ATTRS}
    meminfo_ino = (root / "proc/meminfo").stat().st_ino
    tree.sync()  # nothing happened in between: no file is touched
    assert {n: (root / KSM / n).stat().st_ino for n in KSM_ATTRS} == ino
    assert (root / "proc/meminfo").stat().st_ino == meminfo_ino
    sim.advance(5.0)  # ksmd scans: counters change
    tree.sync()
    assert read(root / KSM / "pages_scanned") == sim.kernel.read_attr("pages_scanned") != "0\n"
    assert (root / KSM / "pages_scanned").stat().st_ino != ino["pages_scanned"]  # replaced, not rewritten
    assert (root / KSM / "max_page_sharing").stat().st_ino == ino["max_page_sharing"]
    assert not [n for n in os.listdir(root / KSM) if n not in KSM_ATTRS]  # no temporary files in sight


def test_readers_never_see_a_partial_file(tree, sim):
    root = tree.root
    seen: list[str] = []
    done = threading.Event()

    def reader():
        while not done.is_set():
            for name in ("pages_scanned", "full_scans", "pages_volatile"):
                seen.append((root / KSM / name).read_text())
            seen.append(str(len((root / "proc/meminfo").read_text().splitlines())))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(100):
            sim.advance(0.5)
            tree.sync()
    finally:
        done.set()
        t.join()
    lines = len(sim.meminfo().splitlines())
    assert seen and all(s.endswith("\n") and s[:-1].isdigit() or s == str(lines) for s in seen)


def test_outside_write_is_applied(tree, sim):
    root = tree.root
    (root / KSM / "sleep_millisecs").write_text("200\n")
    subprocess.run(["sh", "-c", f"echo +500 > {root / KSM / 'pages_to_scan'}"], check=True)
    tree.sync()
    assert sim.kernel.read_attr("sleep_millisecs") == "200\n"
    assert sim.kernel.read_attr("pages_to_scan") == "500\n"
    assert read(root / KSM / "pages_to_scan") == "500\n"  # read back as the kernel prints it
    # run 2 unmerges and ksmd stops: the counters follow in the tree.
    sim.advance(10)
    tree.sync()
    (root / KSM / "run").write_text("2")
    tree.sync()
    assert read(root / KSM / "run") == "2\n"
    assert read(root / KSM / "pages_sharing") == "0\n"


def test_refused_write_is_reverted_and_logged_with_the_errno(tree, sim, caplog):
    root = tree.root
    caplog.set_level(logging.INFO, logger="sysfs_emu.tree")
    (root / KSM / "run").write_text("3\n")
    (root / KSM / "full_scans").write_text("7\n")  # root can write a 0444 file; the kernel says EACCES
    (root / KSM / "max_page_sharing").write_text("1\n")
    tree.sync()
    assert read(root / KSM / "run") == "1\n" and sim.kernel.read_attr("run") == "1\n"
    assert read(root / KSM / "full_scans") == sim.kernel.read_attr("full_scans")
    assert read(root / KSM / "max_page_sharing") == "256\n"
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == [
        "sys/kernel/mm/ksm/full_scans: write '7\\n' refused with EACCES (Permission denied); value restored to '0'",
        "sys/kernel/mm/ksm/max_page_sharing: write '1\\n' refused with EINVAL (Invalid argument); value restored to '256'",
        "sys/kernel/mm/ksm/run: write '3\\n' refused with EINVAL (Invalid argument); value restored to '1'",
    ]


def test_same_value_written_again_is_still_checked(tree, sim, caplog):
    """advisor scan-time: even rewriting pages_to_scan's own value is EINVAL, as in the kernel."""
    root = tree.root
    (root / KSM / "advisor_mode").write_text("scan-time\n")
    tree.sync()
    assert read(root / KSM / "advisor_mode") == "none [scan-time]\n"
    value = read(root / KSM / "pages_to_scan")
    caplog.set_level(logging.WARNING, logger="sysfs_emu.tree")
    os.utime(root / KSM / "pages_to_scan", ns=(1, 1))  # as if rewritten with the same bytes
    (root / KSM / "pages_to_scan").write_text(value)
    tree.sync()
    assert any("pages_to_scan: write" in r.getMessage() and "EINVAL" in r.getMessage() for r in caplog.records)


def test_process_numbers_follow_ksmd(tree, sim):
    """ksm_merging_pages and ksm_stat of each process catch up with ksmd's merging within a few ticks."""
    root = tree.root
    sim.advance(20.0)

    def caught_up():
        tree.sync()
        return all(read(root / "proc" / str(p.pid) / "ksm_stat") == p.ksm_stat_text() and
                   read(root / "proc" / str(p.pid) / "ksm_merging_pages") == f"{p.ksm_merging_pages}\n"
                   for p in sim.processes)

    wait_for(caught_up, timeout=5, what="the process files to follow ksmd")
    merging = [int(read(root / "proc" / str(p.pid) / "ksm_merging_pages")) for p in sim.processes]
    assert merging[0] > 0 and merging[1] > 0  # the two guests share their OS image
    assert merging[2] == 0  # sshd's memory is not mergeable


def test_processes_come_and_go(tree, sim):
    root = tree.root
    first = sim.processes[0]
    sim.apply({"exit": first.id})
    tree.sync()
    assert not (root / "proc" / str(first.pid)).exists()
    sim.apply({"start": {"name": "qemu-kvm", "id": 7, "regions": [{"pages": 100, "fill": "zero"}]}})
    tree.sync()
    new = [p for p in sim.processes if p.id == 7][0]
    assert read(root / "proc" / str(new.pid) / "comm") == "qemu-kvm\n"
    assert sorted(int(n) for n in os.listdir(root / "proc") if n.isdigit()) == \
        sorted([sim.scenario.host.pid_base - 1, *(p.pid for p in sim.processes)])


def test_a_foreign_pid_directory_is_logged_once_and_its_end_too(tree, sim, caplog):
    """A proc/PID that is not ours hides the process; the log says so once, not every tick."""
    caplog.set_level(logging.INFO, logger="sysfs_emu.tree")
    foreign = tree.root / "proc" / "1007"  # pid_base 1000 + id 7
    foreign.mkdir()
    (foreign / "comm").write_text("someone else\n")
    sim.apply({"start": {"name": "qemu-kvm", "id": 7, "regions": [{"pages": 100, "fill": "zero"}]}})
    for _ in range(5):
        tree.sync()
    said = [r.getMessage() for r in caplog.records if "1007" in r.getMessage()]
    assert said == [f"{foreign} exists and was not made by sysfs-emu; process qemu-kvm (pid 1007) is not shown"]
    assert read(foreign / "comm") == "someone else\n"
    shutil.rmtree(foreign)
    caplog.clear()
    for _ in range(3):
        tree.sync()
    assert read(foreign / "comm") == "qemu-kvm\n"
    assert [r.getMessage() for r in caplog.records if "1007" in r.getMessage()] == [
        f"{foreign} is free again; process qemu-kvm (pid 1007) is shown"]


def test_remove_deletes_only_what_it_made(sim, tmp_path):
    root = tmp_path / "host"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "mine.txt").write_text("keep me")
    (root / "notes").write_text("keep me too")
    t = Tree(sim, root)
    t.create()
    t.remove()
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["notes", "proc", "proc/mine.txt"]


def test_refuses_to_overwrite_a_file_it_did_not_make(sim, tmp_path):
    root = tmp_path / "host"
    (root / "proc").mkdir(parents=True)
    (root / "proc/meminfo").write_text("MemTotal: 1 kB\n")
    with pytest.raises(TreeError, match="proc/meminfo exists and was not made by sysfs-emu"):
        Tree(sim, root).create()
    assert (root / "proc/meminfo").read_text() == "MemTotal: 1 kB\n"


def test_a_second_run_takes_over_its_own_leftovers(sim, tmp_path):
    root = tmp_path / "host"
    root.mkdir()
    Tree(sim, root).create()  # left in place, as after a run without --clean
    sim.apply({"exit": sim.processes[0].id})
    gone = [n for n in os.listdir(root / "proc")
            if n.isdigit() and int(n) not in {p.pid for p in sim.processes} | {sim.scenario.host.pid_base - 1}]
    assert gone
    Tree(sim, root).create()
    assert sorted(int(n) for n in os.listdir(root / "proc") if n.isdigit()) == \
        sorted([sim.scenario.host.pid_base - 1, *(p.pid for p in sim.processes)])


# --- the command line ------------------------------------------------------------------------


def _one_error_line(result, expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"sysfs-emu: error: {expected}"]


def test_second_sysfs_emu_on_the_same_root_is_refused(tmp_path):
    root = tmp_path / "host"
    with served(root) as first:
        again = cli("run", "--root", str(root), timeout=30)
        _one_error_line(again, f"{root} is already served by another sysfs-emu (pid {first.pid})")
        assert first.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly_and_leave_the_tree(tmp_path, sig):
    root = tmp_path / "host"
    log = tmp_path / "err"
    with served(root, "--speed", "10", stderr_path=log) as proc:
        assert stop(proc, sig) == 0
    assert (root / KSM / "run").exists() and (root / "proc/meminfo").exists()
    assert f"{sig.name} received, stopping" in log.read_text()
    assert "Traceback" not in log.read_text()


def test_clean_removes_the_tree_but_not_foreign_files(tmp_path):
    root = tmp_path / "host"
    root.mkdir()
    (root / "README").write_text("mine")
    with served(root, "idle-host", "--clean") as proc:
        assert (root / KSM / "run").exists()
    assert proc.returncode == 0
    assert sorted(os.listdir(root)) == ["README"]


def test_duration_ends_the_run_by_itself(tmp_path):
    root = tmp_path / "host"
    result = cli("run", "--root", str(root), "--speed", "100", "--duration", "5s", timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    state = (root / ".sysfs-emu/state.json").read_text()
    assert '"now": 5.0' in state


@pytest.mark.parametrize("content,expected", [
    ("host: {memory: 1GiB\n", "malformed YAML"),
    ("host: {memory: 1GiB}\nguests: []\n", "guests: unknown key"),
    ("processes: [{name: a, regions: [{pages: -5, fill: zero}]}]\n", "processes[0].regions[0].pages: must be >= 0"),
])
def test_bad_scenarios_give_one_clear_line(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = cli("run", str(path), "--root", str(tmp_path / "host"), timeout=30)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"sysfs-emu: error: {path}: ") and expected in result.stderr
    assert not (tmp_path / "host").exists()


def test_missing_scenario_file(tmp_path):
    result = cli("run", str(tmp_path / "nope.yaml"), "--root", str(tmp_path / "host"))
    _one_error_line(result, f"no scenario file {tmp_path / 'nope.yaml'} (and no shipped scenario of that name; "
                            "see 'sysfs-emu scenarios')")


def test_root_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    result = cli("run", "--root", str(tmp_path / "f"))
    _one_error_line(result, f"{tmp_path / 'f'} is not a directory")


def test_root_not_writable(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    if os.geteuid() == 0:
        # root ignores permission bits; an immutable directory refuses even root.
        if shutil.which("chattr") is None:
            pytest.skip("chattr not found: cannot make a directory root cannot write")
        made = subprocess.run(["chattr", "+i", str(root)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i failed on this file system: {made.stderr.strip()}")
        undo = ["chattr", "-i", str(root)]
    else:
        os.chmod(root, 0o555)
        undo = ["chmod", "755", str(root)]
    try:
        result = cli("run", "--root", str(root))
    finally:
        subprocess.run(undo, check=True)
    _one_error_line(result, f"{root} is not writable (permission denied)")
    assert os.listdir(root) == []


def test_bad_speed_and_duration(tmp_path):
    _one_error_line(cli("run", "--root", str(tmp_path / "h"), "--speed", "0"), "--speed must be a positive number, got 0.0")
    r = cli("run", "--root", str(tmp_path / "h"), "--duration", "soon")
    assert r.returncode != 0 and "--duration: not a duration: 'soon'" in r.stderr and "Traceback" not in r.stderr


def test_events_start_a_guest_in_a_running_emulator(tmp_path):
    root = tmp_path / "host"
    with served(root, "--speed", "10"):
        before = {n for n in os.listdir(root / "proc") if n.isdigit()}
        ok = cli("event", "--root", str(root),
                 "start: {name: qemu-system-x86, id: 5, regions: [{pages: 1000, fill: zero}]}")
        assert ok.returncode == 0 and ok.stdout == "ok\n", ok.stderr
        after = {n for n in os.listdir(root / "proc") if n.isdigit()}
        (new,) = after - before
        assert read(root / "proc" / new / "comm") == "qemu-system-x86\n"
        bad = cli("event", "--root", str(root), "exit: 42")
        assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1
        assert bad.stderr.startswith("sysfs-emu: error: ") and "42" in bad.stderr
        ok = cli("event", "--root", str(root), "exit: 5")
        assert ok.returncode == 0
        wait_for(lambda: not (root / "proc" / new).exists(), what="the exited process to go")
    none = cli("event", "--root", str(root), "exit: 5")
    _one_error_line(none, f"no sysfs-emu is serving {root}")


def test_the_examples_of_event_help_work(tmp_path):
    """`sysfs-emu event --help` shows examples; each must be accepted as written."""
    help_text = cli("event", "--help").stdout
    examples = [line.strip().strip("'") for line in help_text.splitlines() if line.startswith("    '")]
    assert [e.split(":")[0] for e in examples] == ["start", "exit"], help_text
    root = tmp_path / "host"
    with served(root, "--speed", "10"):
        for example in examples:
            got = cli("event", "--root", str(root), example)
            assert (got.returncode, got.stdout, got.stderr) == (0, "ok\n", ""), example


def test_snapshot(tmp_path):
    root = tmp_path / "host"
    with served(root, "study-2-same-os", "--speed", "600"):
        wait_for(lambda: int(read(root / KSM / "pages_scanned")) > 0, what="ksmd to scan")
        result = cli("snapshot", "--root", str(root))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("simulation  study-2-same-os at ")
        assert lines[1] == "costs       reference profile (Linux 6.18, the development machine)"
        assert lines[2].startswith("ksmd        run 1, pages_to_scan 100, sleep_millisecs 200, full_scans ")
        assert any(line.startswith("memory      MemTotal 16.0 GiB") for line in lines)
        js = cli("snapshot", "--root", str(root), "--json")
        import json

        data = json.loads(js.stdout)
        assert data["ksm"]["max_page_sharing"] == 256
        assert data["simulation"]["cost_origin"] == "reference profile (Linux 6.18, the development machine)"
        assert data["memory"]["mem_total_kb"] == 16 * 1024 * 1024
        assert data["ksm"]["advisor_mode"] == "none"  # the chosen one of "[none] scan-time"
        assert len(data["processes"]) == 2
        assert sorted(data["processes"][0]) == ["comm", "ksm_merging_pages", "pid", "rss_kb"]
    missing = cli("snapshot", "--root", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "does not exist: nothing is served under" in missing.stderr


def test_idle_host_is_this_machine_sized(tmp_path):
    root = tmp_path / "host"
    with served(root):
        ours = read(root / "proc/meminfo").splitlines()[0].split()
        real = Path("/proc/meminfo").read_text().splitlines()[0].split()
        assert ours[0] == "MemTotal:" and abs(int(ours[1]) - int(real[1])) < 4
        assert [n for n in os.listdir(root / "proc") if n.isdigit()] == ["999"]  # only ksmd


def test_console_script_is_installed():
    assert Path(SYSFS_EMU).exists(), f"{SYSFS_EMU} missing: reinstall the project"
    assert subprocess.run([SYSFS_EMU, "--help"], capture_output=True).returncode == 0
    assert sys.executable


def test_pgrep_finds_the_simulated_guests(tree, sim):
    """procps pgrep, with the tree bind-mounted over /proc in a private mount namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("pgrep") is None:
        pytest.skip("needs root, unshare and pgrep")
    sim.advance(3.0)  # the second guest starts at 2s
    tree.sync(force=True)
    script = (f"mount --bind {tree.root / 'proc'} /proc && pgrep -l qemu && echo -- "
              "&& pgrep -f 'qemu-system.*-enable-kvm' && echo -- && pgrep -x sshd")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    guests = [p.pid for p in sim.processes if p.name.startswith("qemu")]
    sshd = [p.pid for p in sim.processes if p.name == "sshd"]
    found = [sorted(part.splitlines()) for part in r.stdout.split("--\n")]  # in directory order
    assert found == [
        [f"{pid} qemu-system-x86" for pid in guests],
        [str(pid) for pid in guests],
        [str(pid) for pid in sshd],
    ]


def test_refuses_a_symlinked_proc(sim, tmp_path):
    root = tmp_path / "host"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "proc").symlink_to(elsewhere)
    with pytest.raises(TreeError, match="proc is a symbolic link"):
        Tree(sim, root).create()
    assert os.listdir(elsewhere) == []


def test_a_killed_run_is_taken_over_by_the_next(tmp_path):
    """SIGKILL leaves the tree, the lock file and maybe scratch files; the next run starts cleanly."""
    root = tmp_path / "host"
    with served(root, "demo", "--speed", "60") as first:
        first.kill()
        first.wait()
        (root / ".sysfs-emu/tmp/f1").write_text("half")
    with served(root, "demo", "--speed", "60") as second:
        assert read(root / ".sysfs-emu/lock").strip() == str(second.pid)
        wait_for(lambda: (root / "proc/1000/comm").exists(), what="the first guest")
        assert not (root / ".sysfs-emu/tmp/f1").exists()
    assert second.returncode == 0


def test_a_simulation_error_while_running_is_one_line(tmp_path):
    scenario = tmp_path / "oom.yaml"
    scenario.write_text(
        "host: {memory: 64MiB}\n"
        "processes:\n"
        "  - {name: qemu-kvm, regions: [{pages: 20000, fill: zero, lazy: true}]}\n"
        "events:\n"
        "  - {at: 1s, rewrite: {process: 0, region: 0, fill: unique}}\n"
    )
    r = cli("run", str(scenario), "--root", str(tmp_path / "host"), "--speed", "10", timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("sysfs-emu: error: the simulation stopped at 1.0s: ")
    assert last.endswith("out of memory")


def test_writes_through_the_files_answer_like_the_real_kernel(fast_tmp, caplog, monkeypatch):
    """Replay the recorded conformance table (rows from the default state) through the files.

    Each input is written to the file as one write would put it there; after the tick
    the file must read back what the real kernel read back, and a refused write must
    be logged with the errno the real kernel returned.
    """
    from tools import probe_ksm_conformance as probe

    table = probe.load_table()
    rows = [r for r in table["rows"]
            if not r["setup"] and r["state"] == "none" and not r["changed"] and r["file"] in KSM_ATTRS]
    assert len(rows) > 1500
    defaults = table["defaults"]
    sim = Simulation({"host": {"memory": "1GiB"}})
    root = fast_tmp / "host"
    tree = Tree(sim, root)
    tree.create()
    monkeypatch.setattr(tree_module, "EMPTY_GRACE_S", 0.0)  # an empty file's wait: one tick
    caplog.set_level(logging.WARNING, logger="sysfs_emu.tree")
    for row in rows:
        name = row["file"]
        if sim.kernel.read_attr(name) != defaults[name]:
            sim.kernel.write_attr(name, defaults[name].replace("[", "").split("]")[0].strip() or defaults[name])
            tree.sync()
        caplog.clear()
        data = probe.decode_input(row["input"])
        with open(root / KSM / name, "wb") as f:
            f.write(data)
        tree.apply_writes()
        if not data:
            tree.apply_writes()  # an empty file is given one more tick to be written
        # Read-only rows record no read-back: the counter keeps its value.
        expected = row["readback"] if row["readback"] is not None else defaults[name]
        assert read(root / KSM / name) == expected, row
        warnings = [r.getMessage() for r in caplog.records]
        if row["errno"]:
            assert len(warnings) == 1 and f"refused with {row['errname']} (" in warnings[0], row
        else:
            assert warnings == [], row


def test_speed_paces_simulated_time_against_the_wall_clock(tmp_path):
    """--speed 20 --duration 30s: 30 simulated seconds take 1.5 s, never less."""
    import time

    started = time.monotonic()
    r = cli("run", "idle-host", "--root", str(tmp_path / "host"), "--speed", "20", "--duration", "30s", "--clean")
    wall = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    import re

    served_for = float(re.search(r"stopped at simulated time 30\.0s after (\d+\.\d)s, (\d+(\.\d+)?)x on average",
                                 r.stderr).group(1))
    # 1.5 s, to a tick, never less; the upper bound only catches pacing far too slow
    # (a loaded machine may lag, which the server then reports)
    assert 1.4 <= served_for < 15
    assert wall >= 1.5


@pytest.mark.parametrize("use_zero_pages", [0, 1])
def test_fast_process_numbers_equal_the_simulations(use_zero_pages):
    """The tree's one-pass numbers equal SimProcess.rss_pages and ksm_stats(), through merges and COW."""
    from sysfs_emu import procstats

    scenario = small_scenario()
    scenario["ksm"] = {"use_zero_pages": use_zero_pages, "max_page_sharing": 3, **scenario["ksm"]}
    scenario["processes"][0]["regions"].append({"pages": 700, "fill": "zero"})
    scenario["processes"][1]["mergeable_all"] = True
    sim = Simulation(scenario)
    for step in range(4):
        sim.advance(8.0)
        if step == 2:
            sim.apply({"rewrite": {"process": 0, "region": 0, "first": 0, "pages": 500, "fill": "unique"}})
        for p in sim.processes:
            fast = procstats.numbers(sim.memory, p.pid)
            assert fast is not None
            assert fast.rss_pages == p.rss_pages
            assert fast.ksm_stat_text == p.ksm_stat_text()
            assert fast.ksm_merging_pages == p.ksm_merging_pages
    assert any(p.ksm_merging_pages for p in sim.processes)


def test_fast_process_numbers_leave_out_rmap_items_of_vanished_ksm_pages():
    """Found by bench/bench_soak.py: the tree's ksm_merging_pages counted items of KSM pages ksmd had removed.

    Both guests overwrite the pages they shared: the KSM pages are mapped by nobody, and
    the first rmap item ksmd meets removes its page from the stable tree (as the kernel's
    remove_node_from_stable_tree does, for every mm at once) while the other guest's item
    still points at it until ksmd reaches that guest.
    """
    from sysfs_emu import procstats

    sim = Simulation(small_scenario())
    sim.advance(8.0)
    assert [p.ksm_merging_pages for p in sim.processes][:2] == [3000, 3500]
    sim.apply({"sysfs": {"pages_to_scan": 10}})
    for pid_id in (0, 1):
        sim.apply({"rewrite": {"process": pid_id, "region": 0, "first": 0, "pages": 3000, "fill": "unique"}})
    sim.advance(0.02)
    for p in sim.processes:
        fast = procstats.numbers(sim.memory, p.pid)
        assert (fast.ksm_merging_pages, fast.ksm_stat_text) == (p.ksm_merging_pages, p.ksm_stat_text())
    counters = sim.kernel.counters()
    assert sum(p.ksm_merging_pages for p in sim.processes) == counters["pages_shared"] + counters["pages_sharing"]


def test_event_from_a_file_and_bad_event_text(tmp_path):
    root = tmp_path / "host"
    event = tmp_path / "guest.yaml"
    event.write_text("start:\n  name: qemu-system-x86\n  id: 3\n  regions: [{pages: 10, fill: zero}]\n")
    with served(root, "--speed", "5"):
        ok = cli("event", "--root", str(root), f"@{event}")
        assert ok.returncode == 0 and ok.stdout == "ok\n", ok.stderr
        assert read(root / "proc/1003/comm") == "qemu-system-x86\n"
        bad = cli("event", "--root", str(root), "start: {name: x")
        assert bad.returncode == 1 and bad.stderr.startswith("sysfs-emu: error: the event is not valid YAML: ")
        assert len(bad.stderr.splitlines()) == 1
        unknown = cli("event", "--root", str(root), "reboot: now")
        assert unknown.returncode == 1 and len(unknown.stderr.splitlines()) == 1
        assert "reboot: unknown key" in unknown.stderr
        missing = cli("event", "--root", str(root), f"@{tmp_path / 'none.yaml'}")
        assert missing.stderr == f"sysfs-emu: error: cannot read {tmp_path / 'none.yaml'}: No such file or directory\n"


def test_a_new_truncation_is_waited_for_not_restored_over(tree, sim):
    """A file found empty twice, truncated again in between, is a second writer about to write: not replaced under it."""
    path = tree.root / KSM / "pages_to_scan"
    with open(path, "wb"):  # a writer truncates ...
        pass
    tree.apply_writes()
    time.sleep(0.03)  # past the file system's timestamp granularity (one jiffy)
    with open(path, "wb") as writer:  # ... another truncates, and writes only after the next tick
        tree.apply_writes()
        writer.write(b"345\n")
    tree.apply_writes()
    assert sim.kernel.pages_to_scan == 345
    assert read(path) == "345\n"


def test_a_writer_slow_to_write_after_truncating_is_waited_for(tree, sim, monkeypatch):
    """Found empty at several ticks in a row (its writer descheduled between truncating and writing): not restored."""
    monkeypatch.setattr(tree_module, "EMPTY_GRACE_S", 3600.0)
    path = tree.root / KSM / "pages_to_scan"
    with open(path, "wb") as writer:
        for _ in range(5):
            tree.apply_writes()
            assert read(path) == ""
        writer.write(b"345\n")
    tree.apply_writes()
    assert sim.kernel.pages_to_scan == 345
    assert read(path) == "345\n"


def test_a_file_left_empty_reads_the_kernels_value_again(tree, sim, caplog):
    """Truncated and never written (``: > pages_to_scan``): like sysfs, nothing changes, and nothing is said to be refused."""
    caplog.set_level(logging.WARNING, logger="sysfs_emu.tree")
    before = sim.kernel.read_attr("pages_to_scan")
    path = tree.root / KSM / "pages_to_scan"
    path.write_bytes(b"")
    tree.apply_writes()
    assert read(path) == ""  # the writer's next write is still awaited
    time.sleep(tree_module.EMPTY_GRACE_S)
    tree.apply_writes()
    assert read(path) == before
    assert sim.kernel.read_attr("pages_to_scan") == before
    assert caplog.records == []


def test_rapid_writes_end_on_the_last_value(fast_tmp):
    """A writer hammering a knob while the emulator ticks: the last write wins, none is mangled."""
    from sysfs_emu.runner import Server

    sim = Simulation(small_scenario())
    root = fast_tmp / "host"
    server = Server(sim, root, speed=10, tick=0.02)
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        assert server.ready_event.wait(20)
        seen = set()
        for value in range(101, 400):
            (root / KSM / "pages_to_scan").write_text(f"{value}\n")
            seen.add(sim.kernel.pages_to_scan)
        wait_for(lambda: sim.kernel.pages_to_scan == 399, timeout=5, what="the last write to apply")
        time.sleep(0.1)
        assert read(root / KSM / "pages_to_scan") == "399\n"
        assert seen <= set(range(101, 400)) | {1000}  # only values written, or the scenario's 1000
    finally:
        server.stop()
        thread.join(timeout=20)
    assert not thread.is_alive()
