"""Readings: /proc/meminfo and guest processes, with real stand-in guests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ksmtuned_py.guestscan import GuestScanner
from ksmtuned_py.readings import (
    MemInfo,
    ReadingError,
    parse_stat,
    read_host,
    read_meminfo,
)
from tests.guests import rss_kib, stand_in_guests

MEMINFO = """MemTotal:       16384000 kB
MemFree:         1000000 kB
MemAvailable:    2500000 kB
Buffers:          100000 kB
Cached:           500000 kB
SwapCached:            0 kB
"""


def make_root(tmp_path: Path, meminfo: str = MEMINFO) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text(meminfo)
    return tmp_path


def link_process(root: Path, pid: int) -> None:
    """Make a real process visible below a test root."""
    (root / "proc" / str(pid)).symlink_to(f"/proc/{pid}")


def fake_process(
    root: Path, pid: int, comm: str, start: int, rss_pages: int, vmrss: int | None = None,
    flags: int = 4194560,
) -> Path:
    d = root / "proc" / str(pid)
    d.mkdir(exist_ok=True)
    if vmrss is not None:
        (d / "status").write_text(f"Name:\t{comm}\nVmRSS:\t{vmrss:8d} kB\nThreads:\t1\n")
    (d / "stat").write_text(
        f"{pid} ({comm}) S 1 {pid} {pid} 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 "
        f"{start} 123456 {rss_pages} 18446744073709551615 0 0 0\n"
    )
    (d / "comm").write_text(comm + "\n")
    return d


# --- meminfo ----------------------------------------------------------------------------


def test_meminfo_classic_and_available(tmp_path):
    mem = read_meminfo(make_root(tmp_path))
    assert mem == MemInfo(total=16384000, free=1000000, buffers=100000, cached=500000, available=2500000)
    assert mem.free_kb("classic") == 1600000
    assert mem.free_kb("available") == 2500000


def test_meminfo_of_the_real_host_has_the_fields():
    mem = read_meminfo("/")
    assert mem.total > 0 and mem.available is not None


def test_meminfo_errors(tmp_path):
    root = make_root(tmp_path, "MemTotal: 100 kB\nMemFree: 5 kB\n")
    with pytest.raises(ReadingError) as e:
        read_meminfo(root)
    assert str(e.value) == f"{root}/proc/meminfo has no Buffers, Cached"
    (root / "proc" / "meminfo").unlink()
    with pytest.raises(ReadingError) as e:
        read_meminfo(root)
    assert str(e.value) == f"cannot read {root}/proc/meminfo: No such file or directory"
    mem = MemInfo(total=1, free=1, buffers=0, cached=0, available=None)
    with pytest.raises(ReadingError, match="has no MemAvailable"):
        mem.free_kb("available")


def test_parse_stat_with_odd_names():
    text = "42 (qemu:a) b)) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 1000 55 0\n"
    assert parse_stat(text) == ("qemu:a) b)", 777, 55)


# --- guests on the real /proc -----------------------------------------------------------


def test_guests_are_found_by_name_with_their_rss():
    specs = [
        {"comm": "qemu-system-x86", "resident_kib": 8192},
        {"comm": "qemu-kvm", "resident_kib": 4096},
        {"comm": "qemu:vm1", "resident_kib": 0},
        {"comm": "qemu-img", "resident_kib": 4096},  # not a guest
        {"comm": "kvm", "resident_kib": 4096},  # Proxmox: only with KSM_PROCESS_REGEX
        {"comm": "qemu:twelve-char", "resident_kib": 0},  # "qemu:" + 11 chars max (comm is 15)
    ]
    with stand_in_guests(*specs) as procs:
        pids = {p.comm: p.pid for p in procs}
        found = {g.pid: g for g in GuestScanner("/").scan()}
        for comm in ("qemu-system-x86", "qemu-kvm", "qemu:vm1", "qemu:twelve-char"):
            pid = pids[comm]
            assert pid in found, comm
            assert found[pid].kb == rss_kib(pid)
        assert found[pids["qemu-system-x86"]].kb >= 8192
        assert found[pids["qemu-system-x86"]].comm == "qemu-system-x86"
        assert found[pids["qemu:twelve-char"]].comm == "qemu:twelve-cha"  # cut at 15
        assert pids["qemu-img"] not in found and pids["kvm"] not in found
        proxmox = {g.pid for g in GuestScanner("/", regex="^kvm$").scan()}
        assert pids["kvm"] in proxmox and pids["qemu-kvm"] not in proxmox


@pytest.mark.skipif(shutil.which("ps") is None, reason="ps (procps) is not installed")
def test_rss_is_what_ps_rsz_reports(tmp_path):
    root = make_root(tmp_path)
    with stand_in_guests({"resident_kib": 16384}, {"comm": "qemu-kvm", "resident_kib": 2048}) as procs:
        for p in procs:
            link_process(root, p.pid)
        guests = GuestScanner(root).scan()
        out = subprocess.run(
            ["ps", "-o", "rsz=", "-p", ",".join(str(p.pid) for p in procs)],
            capture_output=True, text=True, check=True,
        ).stdout
        helper = sorted(rss_kib(p.pid) for p in procs)  # the tests' own figure, tests/guests.py
    assert sorted(g.kb for g in guests) == sorted(int(x) for x in out.split()) == helper
    assert sum(g.kb for g in guests) >= 16384 + 2048


def test_pss_metric_reads_smaps_rollup(tmp_path):
    root = make_root(tmp_path)
    def pss_kib(pid: int) -> int:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))

    with stand_in_guests({"resident_kib": 8192}) as (guest,):
        link_process(root, guest.pid)
        # A process's PSS moves whenever another process maps or unmaps a page it shares
        # (a shared library, as other programs start and end): compare with a reading
        # that did not move across the scan.
        for _ in range(100):
            before = pss_kib(guest.pid)
            (g,) = GuestScanner(root, metric="pss").scan()
            if pss_kib(guest.pid) == before:
                break
        assert g.kb == before
        assert 8192 <= g.kb <= rss_kib(guest.pid)


SMAPS_MAPPING = (
    "7f0000000000-7f0000400000 rw-p 00000000 00:00 0 \n"
    "Size:               4096 kB\nRss:                2048 kB\nAnonymous:          2048 kB\n"
    "AnonHugePages:         0 kB\nVmFlags: rd wr mr mw me ac{mg} \n"
)


def test_whether_a_guest_is_mergeable_comes_from_ksm_stat_else_from_smaps_vmflags(tmp_path):
    """Linux 6.7 and later say it in ksm_stat; before, the guest's smaps mappings do (VmFlags mg)."""
    root = make_root(tmp_path)
    old_ksm_stat = "ksm_rmap_items 0\nksm_merging_pages 0\nksm_process_profit 0\n"  # Linux 6.1-6.6
    for pid, ksm_stat, mg in ((41, old_ksm_stat, " mg"), (42, old_ksm_stat, ""), (43, None, " mg"),
                              (44, old_ksm_stat + "ksm_merge_any: no\nksm_mergeable: no\n", " mg"),
                              (45, old_ksm_stat, None)):
        d = fake_process(root, pid, "qemu-kvm", 1, rss_pages=512, vmrss=2048)
        if ksm_stat is not None:
            (d / "ksm_stat").write_text(ksm_stat)
        if mg is not None:
            (d / "smaps").write_text(SMAPS_MAPPING.format(mg=mg))
    scanner = GuestScanner(root)
    assert [(g.pid, g.mergeable) for g in scanner.scan()] == [
        (41, True), (42, False), (43, True), (44, False), (45, None)]  # ksm_stat wins where it says
    # The report and so status, --json and the metrics carry it.
    from ksmtuned_py.report import guest_reports

    assert [r.mergeable for r in guest_reports(scanner.scan())] == [True, False, True, False, None]
    # Once mergeable, smaps is not read again; a guest not mergeable yet is read every scan.
    (root / "proc/41/smaps").write_text(SMAPS_MAPPING.format(mg=""))
    (root / "proc/42/smaps").write_text(SMAPS_MAPPING.format(mg=" mg"))
    assert [g.mergeable for g in scanner.scan()][:2] == [True, True]


def test_a_fifo_as_smaps_does_not_hang_the_scan(tmp_path):
    root = make_root(tmp_path)
    d = fake_process(root, 41, "qemu-kvm", 1, rss_pages=512, vmrss=2048)
    os.mkfifo(d / "smaps")
    (g,) = GuestScanner(root).scan()  # a FIFO without a writer reads as empty: no mappings
    assert g.mergeable is False


def test_read_host_sums_committed_memory(tmp_path):
    root = make_root(tmp_path)
    with stand_in_guests({"resident_kib": 4096}, {"comm": "qemu:db", "resident_kib": 4096}) as procs:
        for p in procs:
            link_process(root, p.pid)
        scanner = GuestScanner(root)
        reading = read_host(root, scanner, "classic")
        assert reading.free_kb == 1600000
        assert reading.committed_kb == sum(rss_kib(p.pid) for p in procs)
        assert [g.pid for g in reading.guests] == sorted(p.pid for p in procs)
        assert read_host(root, scanner, "available").free_kb == 2500000


def test_a_root_without_processes_has_no_guests(tmp_path):
    assert GuestScanner(make_root(tmp_path)).scan() == []
    assert GuestScanner(tmp_path / "nowhere").scan() == []


# --- processes that vanish ----------------------------------------------------------------


def test_vanished_processes_are_skipped(tmp_path):
    root = make_root(tmp_path)
    with stand_in_guests({"resident_kib": 1024}, {"resident_kib": 1024}) as (a, b):
        link_process(root, a.pid)
        link_process(root, b.pid)
        scanner = GuestScanner(root)
        assert len(scanner.scan()) == 2
        a.stop()  # exits between listing and reading: its /proc entry is gone
        guests = scanner.scan()
        assert [g.pid for g in guests] == [b.pid]
        assert scanner.stats.vanished == 1
        # a pid whose directory disappears before its stat is read
        (root / "proc" / "999999999").symlink_to("/proc/999999999")
        assert [g.pid for g in scanner.scan()] == [b.pid]


def test_a_guest_that_exits_during_pss_read_is_skipped(tmp_path):
    root = make_root(tmp_path)
    # a stat file but no smaps_rollup and no live process behind it: the PSS
    # read fails, the process directory still exists, RSS is used
    fake_process(root, 4242, "qemu-kvm", start=1, rss_pages=10)
    (g,) = GuestScanner(root, metric="pss").scan()
    assert g.kb == 10 * os.sysconf("SC_PAGE_SIZE") // 1024


# --- the cache keyed by pid and start time --------------------------------------------------


def test_cache_skips_known_non_guests_and_rereads_guests(tmp_path):
    root = make_root(tmp_path)
    old = 100  # started 1 s after boot
    fake_process(root, 10, "bash", old, 1)
    fake_process(root, 11, "sshd", old, 1)
    fake_process(root, 12, "qemu-kvm", old, 256)
    scanner = GuestScanner(root)
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    assert [(g.pid, g.kb) for g in scanner.scan()] == [(12, 256 * page_kb)]
    assert (scanner.stats.stat_reads, scanner.stats.comm_reads, scanner.stats.regex_checks) == (3, 0, 3)

    # The guest's memory grows; of the non-guests only the name is read again.
    fake_process(root, 12, "qemu-kvm", old, 512)
    assert [(g.pid, g.kb) for g in scanner.scan()] == [(12, 512 * page_kb)]
    assert (scanner.stats.stat_reads, scanner.stats.comm_reads, scanner.stats.regex_checks) == (4, 2, 4)

    # A new process with the same pid (a new directory) is read again.
    # (made before the old one is removed, so the file system cannot reuse its inode)
    fresh = tmp_path / "fresh"
    (fresh / "proc").mkdir(parents=True)
    new = fake_process(fresh, 11, "qemu-system-x86", old + 5, 1)
    shutil.rmtree(root / "proc" / "11")
    new.rename(root / "proc" / "11")
    assert [g.pid for g in scanner.scan()] == [11, 12]
    # the guest once more, the new pid 11 in full (its inode differs), pid 10's comm only
    assert (scanner.stats.stat_reads, scanner.stats.comm_reads) == (6, 3)


def test_a_non_guest_that_execs_or_renames_a_day_later_is_seen(tmp_path):
    """A launcher may exec qemu (or a process rename itself) long after it started."""
    root = make_root(tmp_path)
    (root / "proc" / "uptime").write_text("86500.00 5.00\n")  # a day after these started
    fake_process(root, 20, "rpc-libvirtd", 100, 1)
    fake_process(root, 21, "bash", 100, 1)
    scanner = GuestScanner(root)
    assert scanner.scan() == [] and scanner.scan() == []
    assert (scanner.stats.stat_reads, scanner.stats.comm_reads) == (2, 2)
    fake_process(root, 20, "qemu-system-x86", 100, 300)  # after exec: same pid, same start
    assert [g.pid for g in scanner.scan()] == [20]
    assert (scanner.stats.stat_reads, scanner.stats.comm_reads) == (3, 4)  # 20 read in full again
    fake_process(root, 21, "qemu:vm1", 100, 300)  # prctl(PR_SET_NAME): only comm changes
    assert [g.pid for g in scanner.scan()] == [20, 21]
    fake_process(root, 20, "bash", 100, 1)  # a guest that execs something else
    assert [g.pid for g in scanner.scan()] == [21]


def test_kernel_threads_are_not_reread(tmp_path):
    root = make_root(tmp_path)
    fake_process(root, 2, "kthreadd", 1, 0, flags=0x208040)  # PF_KTHREAD set
    fake_process(root, 40, "bash", 100, 1)
    scanner = GuestScanner(root)
    scanner.scan()
    scanner.scan()
    scanner.scan()
    assert (scanner.stats.stat_reads, scanner.stats.comm_reads) == (2, 2)  # bash's comm twice


def test_a_real_process_that_execs_a_qemu_binary_later_is_counted(tmp_path):
    """The real kernel: exec changes comm (to the file's name) but not the pid or start time."""
    root = make_root(tmp_path)
    (root / "proc" / "uptime").write_text("999999.00 5.00\n")  # as if the process were old
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.symlink_to(shutil.which("sleep"))
    proc = subprocess.Popen(["sh", "-c", 'read line; exec "$0" 600', str(qemu)], stdin=subprocess.PIPE)
    try:
        link_process(root, proc.pid)
        scanner = GuestScanner(root)
        assert scanner.scan() == [] and scanner.scan() == []
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/comm").read_text() != "qemu-system-x86\n":
            assert time.monotonic() < deadline, "the shell did not exec"
            time.sleep(0.01)
        (guest,) = scanner.scan()
        assert (guest.pid, guest.comm, guest.kb) == (proc.pid, "qemu-system-x86", rss_kib(proc.pid))
    finally:
        proc.kill()
        proc.wait()


def test_exited_pids_leave_the_cache(tmp_path):
    root = make_root(tmp_path)
    fake_process(root, 30, "bash", 1, 1)
    scanner = GuestScanner(root)
    scanner.scan()
    assert "30" in scanner._cache
    shutil.rmtree(root / "proc" / "30")
    scanner.scan()
    assert "30" not in scanner._cache


def test_vmrss_from_status_wins_over_stat_rss(tmp_path):
    """ps -o rsz= prints VmRSS; stat's rss is an unsummed per-CPU counter."""
    root = make_root(tmp_path)
    fake_process(root, 40, "qemu-kvm", 1, rss_pages=100, vmrss=777)
    fake_process(root, 41, "qemu-kvm", 1, rss_pages=100)  # a tree with stat only
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    assert [(g.pid, g.kb) for g in GuestScanner(root).scan()] == [(40, 777), (41, 100 * page_kb)]


def test_an_unlistable_proc_is_logged_once_per_change(tmp_path, caplog):
    root = tmp_path / "root"
    root.mkdir()
    scanner = GuestScanner(str(root))
    with caplog.at_level("INFO", logger="ksmtuned_py.guestscan"):
        assert scanner.scan() == [] and scanner.scan() == []  # no proc directory
        (root / "proc").mkdir()
        assert scanner.scan() == []
        (root / "proc").rmdir()
        assert scanner.scan() == []
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot list {root}/proc: No such file or directory; counting no guests",
        f"listing {root}/proc works again",
        f"cannot list {root}/proc: No such file or directory; counting no guests",
    ]


# --- the live procfs: comm files kept open ---------------------------------------------------

RENAMER = r"""
import ctypes, sys
print("ready", flush=True)
sys.stdin.readline()
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b"qemu:vm1"), 0, 0, 0)  # PR_SET_NAME
print("renamed", flush=True)
sys.stdin.readline()
"""


def _wait_comm(pid: int, comm: str) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/comm").read_text() != comm + "\n":
        assert time.monotonic() < deadline, f"pid {pid} never got comm {comm}"
        time.sleep(0.01)


def test_on_the_real_proc_known_processes_are_watched_and_an_exec_or_a_rename_is_seen(tmp_path):
    """On a live procfs the comm files stay open; a watched process that execs qemu or renames itself is counted."""
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.symlink_to(shutil.which("sleep"))
    execs = subprocess.Popen(["sh", "-c", 'read line; exec "$0" 600', str(qemu)], stdin=subprocess.PIPE)
    renames = subprocess.Popen([sys.executable, "-c", RENAMER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        # Both have exec'd their programs (a comm that changes after the first scan is read again).
        assert renames.stdout.readline() == b"ready\n"
        _wait_comm(execs.pid, "sh")
        scanner = GuestScanner("/")
        mine = {execs.pid, renames.pid}
        assert not mine & {g.pid for g in scanner.scan()}
        assert str(execs.pid) in scanner.watch and str(renames.pid) in scanner.watch
        entries = {pid: scanner._cache[str(pid)] for pid in mine}
        assert not mine & {g.pid for g in scanner.scan()}
        # Nothing changed: they were not read again (a read makes a new entry), only their comm files.
        assert all(scanner._cache[str(pid)] is entry for pid, entry in entries.items())
        execs.stdin.write(b"go\n")
        execs.stdin.flush()
        _wait_comm(execs.pid, "qemu-system-x86")
        renames.stdin.write(b"go\n")
        renames.stdin.flush()
        assert renames.stdout.readline() == b"renamed\n"
        found = {g.pid: g for g in scanner.scan()}
        assert found[execs.pid].comm == "qemu-system-x86" and found[execs.pid].kb == rss_kib(execs.pid)
        assert found[renames.pid].comm == "qemu:vm1"
        assert str(execs.pid) not in scanner.watch  # a guest is read in full every scan
    finally:
        for p in (execs, renames):
            p.kill()
            p.wait()
    scanner.scan()
    assert str(execs.pid) not in scanner.watch and str(execs.pid) not in scanner._cache
    scanner.close()
    assert len(scanner.watch) == 0


def test_on_the_real_proc_the_ksmd_thread_is_found():
    if not Path("/sys/kernel/mm/ksm").is_dir():
        pytest.skip("the kernel has no KSM, so no ksmd thread")
    scanner = GuestScanner("/")
    scanner.scan()
    assert Path(f"/proc/{scanner.ksmd_pid}/comm").read_text() == "ksmd\n"
    scanner.close()
