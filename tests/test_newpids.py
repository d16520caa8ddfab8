"""The guest scan without a listing of /proc: new pids from the kernel's cursor, checked by the process count.

On a tree the two readings are files the test writes: /proc/loadavg's last pid, and
/proc's link count, which on a real file system is 2 + its subdirectories (the fake
processes and one non-pid directory), the same shape as procfs's fixed part plus
processes.  On the real /proc (the host's PID namespace) the scanner is checked
against a scan that lists /proc, with real processes that start, exec, end, with
threads, and with a process given a pid below the cursor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ksmtuned_py.guestscan import GuestScanner
from ksmtuned_py.newpids import MIN_PROBES, PROC_PID_INIT_INO, Mark, NewPids
from tests.test_readings import fake_process, make_root

QEMU = "qemu-system-x86"


@pytest.fixture
def base(tmp_path):
    """A directory where a directory's link count is 2 + its subdirectories (ext4, tmpfs; not btrfs)."""
    if _counts_subdirectories(tmp_path):
        yield tmp_path
        return
    if os.path.isdir("/dev/shm") and _counts_subdirectories(Path("/dev/shm")):
        where = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="test-newpids-"))
        try:
            yield where
        finally:
            shutil.rmtree(where)
        return
    pytest.skip("no file system here counts subdirectories in a directory's link count, as procfs counts processes")


def _counts_subdirectories(where: Path) -> bool:
    probe = Path(tempfile.mkdtemp(dir=where))
    try:
        (probe / "a").mkdir()
        return os.stat(probe).st_nlink == 3
    finally:
        shutil.rmtree(probe)


def tree(where: Path, last_pid: int, pids: dict[int, str]) -> Path:
    root = make_root(where)
    (root / "proc" / "sys").mkdir()  # a directory that is not a process, as procfs has
    for pid, comm in pids.items():
        add(root, pid, comm)
    cursor(root, last_pid)
    return root


def add(root: Path, pid: int, comm: str, tgid: int | None = None) -> None:
    d = fake_process(root, pid, comm, 100 + pid, 10, vmrss=40)
    (d / "status").write_text(f"Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{tgid or pid}\n"
                              "VmRSS:\t      40 kB\n")


def thread(root: Path, tid: int, tgid: int) -> None:
    """/proc/TID of a thread: found by a lookup, not counted in /proc's links (a symbolic link here)."""
    d = root / f"thread-{tid}"
    d.mkdir()
    (d / "status").write_text(f"Name:\tworker\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{tgid}\n")
    (d / "stat").write_text(f"{tid} (worker) S 1 {tgid} {tgid} 0 -1 4194368 0 0 0 0 0 0 0 0 20 0 1 0 "
                            "100 123456 10 18446744073709551615 0 0 0\n")
    (root / "proc" / str(tid)).symlink_to(d)


def cursor(root: Path, last_pid: int) -> None:
    (root / "proc" / "loadavg").write_text(f"0.00 0.01 0.05 1/90 {last_pid}\n")


def scanner(root: Path) -> GuestScanner:
    s = GuestScanner(root)
    assert not s.pids.enabled  # a tree is not the host's procfs
    s.pids.enabled = True  # the same rules, over the files the test writes
    return s


def guests(s: GuestScanner) -> list[tuple[int, str]]:
    found = [(g.pid, g.comm) for g in s.scan()]
    assert s._unwatched == s._cache.keys() - s.watch.names()  # what a scan without a listing reads
    return found


def test_no_listing_while_nothing_starts_and_a_new_guest_is_found_by_its_pid(base):
    root = tree(base, 30, {10: "bash", 20: QEMU, 30: "sleep"})
    s = scanner(root)
    assert guests(s) == [(20, QEMU)]
    assert (s.stats.listings, s.stats.probes) == (1, 0)
    assert guests(s) == [(20, QEMU)]
    assert (s.stats.listings, s.stats.probes, s.stats.relisted) == (1, 0, 0)
    add(root, 33, QEMU)
    thread(root, 34, 33)
    cursor(root, 34)  # 31 and 32 came and went, 34 is a thread of 33
    assert guests(s) == [(20, QEMU), (33, QEMU)]
    assert (s.stats.listings, s.stats.probes, s.stats.relisted) == (1, 4, 0)


def test_new_pids_are_looked_at_once_and_threads_are_not_processes(base):
    root = tree(base, 30, {10: "bash", 30: "sleep"})
    s = scanner(root)
    guests(s)
    thread(root, 34, 30)
    cursor(root, 36)
    add(root, 36, "bash")
    assert guests(s) == []
    assert (s.stats.listings, s.stats.probes, s.stats.relisted) == (1, 6, 0)
    assert "36" in s._cache
    assert guests(s) == [] and s.stats.probes == 6  # the cursor did not move: nothing looked at


def test_an_ended_process_leaves_without_a_listing(base):
    root = tree(base, 30, {10: "bash", 20: QEMU, 30: "sleep"})
    s = scanner(root)
    guests(s)
    shutil.rmtree(root / "proc" / "20")
    shutil.rmtree(root / "proc" / "10")
    assert guests(s) == []
    assert (s.stats.listings, s.stats.relisted) == (1, 0)
    assert set(s._cache) == {"30"}


def test_a_process_with_a_pid_before_the_cursor_is_found_by_the_count(base):
    """As CRIU restores (clone3 set_tid, ns_last_pid): the cursor does not show it, the link count does."""
    root = tree(base, 30, {10: "bash", 30: "sleep"})
    s = scanner(root)
    guests(s)
    add(root, 15, QEMU)
    assert guests(s) == [(15, QEMU)]
    assert (s.stats.listings, s.stats.relisted) == (2, 1)
    assert guests(s) == [(15, QEMU)] and s.stats.listings == 2  # and the count agrees again


@pytest.mark.parametrize("last_pid, why", [(5, "the cursor went back (it wrapped at pid_max)"),
                                           (30 + MIN_PROBES + 1, "more new pids than a listing costs")])
def test_the_scan_lists_proc_when_the_cursor_cannot_say(base, last_pid, why):
    root = tree(base, 30, {10: "bash", 30: "sleep"})
    s = scanner(root)
    guests(s)
    add(root, 3, QEMU)
    cursor(root, last_pid)
    assert guests(s) == [(3, QEMU)], why
    assert (s.stats.listings, s.stats.probes) == (2, 0), why


def test_the_count_is_learnt_only_from_a_listing_that_nothing_changed_under():
    pids = NewPids("/nowhere", live=False)
    marks = iter([Mark(30, 14)])  # what the second reading, after the listing, says
    pids.mark = lambda: next(marks)
    pids.listed(Mark(30, 13), 3)  # a process started while /proc was listed
    assert pids.since(Mark(30, 14), 3) is None  # so the next scan lists again
    pids.mark = lambda: Mark(31, 14)
    pids.listed(Mark(31, 14), 4)
    assert pids.since(Mark(33, 14), 4) == range(32, 34)
    assert pids.complete(Mark(33, 14), 4) and not pids.complete(Mark(33, 15), 4)


def test_without_the_hosts_procfs_every_scan_lists():
    assert not NewPids("/nowhere", live=True).enabled
    assert NewPids("/nowhere", live=True).mark() is None


# --- the real /proc ---------------------------------------------------------------------------

def _host_ns() -> None:
    if os.stat("/proc/self/ns/pid").st_ino != PROC_PID_INIT_INO:
        pytest.skip("needs the host's PID namespace (here in another one: every scan lists /proc)")


def _listed() -> list[tuple[int, str]]:
    """The guests as a scan that lists /proc finds them."""
    s = GuestScanner("/")
    s.pids.enabled = False
    try:
        return [(g.pid, g.comm) for g in s.scan()]
    finally:
        s.close()


def _until_unlisted(s: GuestScanner) -> list[tuple[int, str]]:
    """Scan until one scan needed no listing (other processes on the host may start meanwhile)."""
    for _ in range(50):
        before = s.stats.listings
        found = [(g.pid, g.comm) for g in s.scan()]
        assert s._unwatched == s._cache.keys() - s.watch.names()
        if s.stats.listings == before:
            return found
        time.sleep(0.01)
    pytest.fail("every scan listed /proc")


def test_on_the_real_proc_the_scan_without_a_listing_finds_what_a_listing_finds(tmp_path):
    _host_ns()
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.symlink_to(shutil.which("sleep"))
    s = GuestScanner("/")
    assert s.pids.enabled
    procs = []
    try:
        s.scan()
        _until_unlisted(s)
        # A guest started, a launcher that execs qemu later, a process with threads.
        procs.append(subprocess.Popen([str(qemu), "600"]))
        launcher = subprocess.Popen(["sh", "-c", 'read line; exec "$0" 600', str(qemu)], stdin=subprocess.PIPE)
        procs.append(launcher)
        stop = threading.Event()
        workers = [threading.Thread(target=stop.wait) for _ in range(3)]
        for t in workers:
            t.start()
        mine = lambda found: [(pid, comm) for pid, comm in found if pid in {p.pid for p in procs}]  # noqa: E731
        found = mine(_until_unlisted(s))
        assert found == [(procs[0].pid, QEMU)] == mine(_listed())
        launcher.stdin.write(b"go\n")
        launcher.stdin.flush()
        for _ in range(500):
            if Path(f"/proc/{launcher.pid}/comm").read_text() == QEMU + "\n":
                break
            time.sleep(0.01)
        found = mine(_until_unlisted(s))
        assert found == [(procs[0].pid, QEMU), (launcher.pid, QEMU)] == mine(_listed())
        assert not {t.native_id for t in workers} & set(s._cache)  # threads are not processes
        assert not any(s.pids.is_process(t.native_id) for t in workers) and s.pids.is_process(os.getpid())
        stop.set()
        for t in workers:
            t.join()
        procs[0].kill()
        procs[0].wait()
        found = mine(_until_unlisted(s))
        assert found == [(launcher.pid, QEMU)] == mine(_listed())
    finally:
        for p in procs:
            p.kill()
            p.wait()
        s.close()


def test_on_the_real_proc_a_process_given_a_pid_before_the_cursor_is_found(tmp_path):
    """ns_last_pid, as CRIU uses it: a pid below the cursor, the cursor put back; the count shows it."""
    _host_ns()
    last_pid = Path("/proc/sys/kernel/ns_last_pid")
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.symlink_to(shutil.which("sleep"))
    s = GuestScanner("/")
    child = None
    try:
        s.scan()
        _until_unlisted(s)
        listings = s.stats.listings
        now = int(Path("/proc/loadavg").read_text().split()[4])
        low = now - 300
        while Path(f"/proc/{low + 1}").exists() or Path(f"/proc/{low + 2}").exists():
            low -= 2
        try:
            try:
                last_pid.write_text(str(low))
            except OSError as e:
                pytest.skip(f"cannot write {last_pid} here ({e.strerror}): needs root in the host's PID namespace")
            child = subprocess.Popen([str(qemu), "600"])
        finally:
            if int(Path("/proc/loadavg").read_text().split()[4]) < now:
                last_pid.write_text(str(now))  # the cursor back, unless the host moved it on since
        assert child.pid <= now
        assert (child.pid, QEMU) in [(g.pid, g.comm) for g in s.scan()]
        # Found by a listing: the count's (relisted), or one because the host started many processes meanwhile.
        assert s.stats.listings > listings
    finally:
        if child is not None:
            child.kill()
            child.wait()
        s.close()
