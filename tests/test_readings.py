"""Readings: /proc/meminfo and guest processes, with real stand-in guests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ksmtuned_py.readings import (
    CLOCK_TICKS,
    YOUNG_SECONDS,
    GuestScanner,
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
    root: Path, pid: int, comm: str, start: int, rss_pages: int, vmrss: int | None = None
) -> Path:
    d = root / "proc" / str(pid)
    d.mkdir(exist_ok=True)
    if vmrss is not None:
        (d / "status").write_text(f"Name:\t{comm}\nVmRSS:\t{vmrss:8d} kB\nThreads:\t1\n")
    (d / "stat").write_text(
        f"{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 "
        f"{start} 123456 {rss_pages} 18446744073709551615 0 0 0\n"
    )
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
    with stand_in_guests({"resident_kib": 8192}) as (guest,):
        link_process(root, guest.pid)
        (g,) = GuestScanner(root, metric="pss").scan()
        with open(f"/proc/{guest.pid}/smaps_rollup") as f:
            pss = next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        assert g.kb == pss
        assert 8192 <= g.kb <= rss_kib(guest.pid)


def test_read_host_sums_committed_memory(tmp_path):
    root = make_root(tmp_path)
    with stand_in_guests({"resident_kib": 4096}, {"comm": "qemu:db", "resident_kib": 4096}) as procs:
        for p in procs:
            link_process(root, p.pid)
        scanner = GuestScanner(root)
        reading = read_host(root, scanner, "classic")
        assert reading.free == 1600000
        assert reading.committed == sum(rss_kib(p.pid) for p in procs)
        assert [g.pid for g in reading.guests] == sorted(p.pid for p in procs)
        assert read_host(root, scanner, "available").free == 2500000


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
    uptime = 100000.0
    (root / "proc" / "uptime").write_text(f"{uptime:.2f} 5.00\n")
    old = 100  # started 1 s after boot
    fake_process(root, 10, "bash", old, 1)
    fake_process(root, 11, "sshd", old, 1)
    fake_process(root, 12, "qemu-kvm", old, 256)
    scanner = GuestScanner(root)
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    assert [(g.pid, g.kb) for g in scanner.scan()] == [(12, 256 * page_kb)]
    assert (scanner.stats.stat_reads, scanner.stats.regex_checks) == (3, 3)

    # The guest's memory grows; the non-guests are not read again.
    fake_process(root, 12, "qemu-kvm", old, 512)
    assert [(g.pid, g.kb) for g in scanner.scan()] == [(12, 512 * page_kb)]
    assert (scanner.stats.stat_reads, scanner.stats.regex_checks) == (4, 4)

    # A cached non-guest's name change is not seen (that is what the cache saves)...
    fake_process(root, 10, "qemu-kvm", old, 1)
    assert [g.pid for g in scanner.scan()] == [12]
    # ...but a new process with the same pid (a new directory) is read again.
    # (made before the old one is removed, so the file system cannot reuse its inode)
    fresh = tmp_path / "fresh"
    (fresh / "proc").mkdir(parents=True)
    new = fake_process(fresh, 11, "qemu-system-x86", old + 5, 1)
    shutil.rmtree(root / "proc" / "11")
    new.rename(root / "proc" / "11")
    assert [g.pid for g in scanner.scan()] == [11, 12]
    assert scanner.stats.stat_reads == 7  # the guest twice more, pid 11 once


def test_young_processes_are_rechecked_until_they_settle(tmp_path):
    """libvirt forks, then execs qemu: the name changes, pid and start time do not."""
    root = make_root(tmp_path)
    uptime = 1000.0
    (root / "proc" / "uptime").write_text(f"{uptime:.2f} 5.00\n")
    young = int((uptime - 10) * CLOCK_TICKS)  # started 10 s ago
    fake_process(root, 20, "rpc-libvirtd", young, 1)
    fake_process(root, 21, "bash", young, 1)
    scanner = GuestScanner(root)
    assert scanner.scan() == []
    assert scanner.stats.stat_reads == 2
    fake_process(root, 20, "qemu-system-x86", young, 300)  # after exec
    assert [g.pid for g in scanner.scan()] == [20]
    assert scanner.stats.stat_reads == 4  # both young: both read again
    # Time passes: once seen at YOUNG_SECONDS or older, a non-guest settles.
    (root / "proc" / "uptime").write_text(f"{uptime + YOUNG_SECONDS:.2f} 5.00\n")
    scanner.scan()
    assert scanner.stats.stat_reads == 6
    scanner.scan()
    scanner.scan()
    assert scanner.stats.stat_reads == 8  # only the guest is read each cycle now


def test_exited_pids_leave_the_cache(tmp_path):
    root = make_root(tmp_path)
    fake_process(root, 30, "bash", 1, 1)
    scanner = GuestScanner(root)
    scanner.scan()
    assert 30 in scanner._cache
    shutil.rmtree(root / "proc" / "30")
    scanner.scan()
    assert 30 not in scanner._cache


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
    with caplog.at_level("INFO", logger="ksmtuned_py.readings"):
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
