"""Faults and bad input for sysfs-emu: a live tree damaged while served, its queue fed any bytes,
a full file system under it, a scenario too big for the machine.

Every test serves a real tree (``sysfs-emu run`` as a subprocess) and damages it as
another program would; the server must repair the damage or say it once, naming the
path that was damaged, and keep serving.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from sysfs_emu.tree import KSM_ATTRS
from tests import faultns
from tests.emutree import SYSFS_EMU, cli, served, small_scenario
from tests.proctools import wait_for

KSM = "sys/kernel/mm/ksm"

needs_namespaces = pytest.mark.skipif(faultns.skip_reason() is not None, reason=str(faultns.skip_reason()))


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "host.yaml"
    path.write_text(json.dumps(small_scenario(run=1)))  # JSON is YAML
    return path


def _sim_time(root: Path) -> float:
    return json.loads((root / ".sysfs-emu/state.json").read_text())["now"]


def _ticks(root: Path, n: int = 5) -> None:
    """Wait until the server has done ``n`` more ticks (its simulated time moved n times)."""
    for _ in range(n):
        before = wait_for(lambda: _alive_time(root), what="the state file")
        wait_for(lambda: _alive_time(root) not in (None, before), what="a tick")


def _alive_time(root: Path) -> float | None:
    try:
        return _sim_time(root)
    except (OSError, ValueError, KeyError):
        return None


def _remove(path: Path, tmp_path: Path) -> None:
    """``rm -rf path`` at one instant (a rename), so that no tick sees it half removed."""
    gone = tmp_path / f"gone-{path.name}"
    os.rename(path, gone)
    shutil.rmtree(gone)


def _warnings(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if ": WARNING: " in x or ": error: " in x]


def test_damage_to_a_served_tree_is_repaired_or_said_once(tmp_path):
    root, err = tmp_path / "root", tmp_path / "stderr"
    with served(root, str(_scenario(tmp_path)), "--speed", "20", stderr_path=err) as proc:
        ksm = root / KSM
        # a counter that changes every tick, and a knob that never changes, become directories
        for name in ("pages_scanned", "advisor_max_cpu"):
            (ksm / name).unlink()
            (ksm / name).mkdir()
        _ticks(root, 10)
        # a knob becomes a FIFO (never read: it would block), a process directory and the
        # whole KSM directory are removed, the server's own state directory too
        faultns.make_fifo(ksm / "max_page_sharing")
        _remove(root / "proc/1000", tmp_path)
        _remove(root / ".sysfs-emu", tmp_path)
        _ticks(root, 5)
        for name in ("pages_scanned", "advisor_max_cpu"):
            (ksm / name).rmdir()
        _remove(ksm, tmp_path)
        _ticks(root, 5)
        assert proc.poll() is None
        assert (ksm / "max_page_sharing").read_text() == "256\n"
        assert (ksm / "advisor_max_cpu").read_text() == "70\n"
        assert int((ksm / "pages_scanned").read_text()) > 0
        assert (root / "proc/1000/comm").read_text() == "qemu-system-x86\n"
        assert sorted(os.listdir(ksm)) == sorted(KSM_ATTRS)
        # its lock is held again: a second server is refused
        second = cli("run", "--root", str(root))
        assert second.returncode == 1 and "is already served by another sysfs-emu" in second.stderr
    # one line per damage, naming the damaged path (the order within a tick may vary)
    assert sorted(_warnings(err)) == sorted([
        *[f"sysfs-emu: WARNING: {ksm / n} was replaced by a directory by another program; "
          "it is not updated until that is removed" for n in ("advisor_max_cpu", "pages_scanned")],
        f"sysfs-emu: WARNING: {ksm}/max_page_sharing was replaced by a FIFO by another program; restoring the file",
        f"sysfs-emu: WARNING: {root}/.sysfs-emu was removed by another program; recreating it",
        f"sysfs-emu: WARNING: {root}/.sysfs-emu/lock was removed or replaced by another program; locked again",
        f"sysfs-emu: WARNING: {root}/proc/1000 was removed by another program; recreating it",
        f"sysfs-emu: WARNING: {ksm} was removed by another program; recreating it",
    ])
    assert not any(".sysfs-emu/tmp" in x for x in err.read_text().splitlines())  # never the internal name


def test_the_event_queue_takes_any_bytes(tmp_path):
    root, err = tmp_path / "root", tmp_path / "stderr"
    with served(root, str(_scenario(tmp_path)), stderr_path=err) as proc:
        events = root / ".sysfs-emu/events"
        (events / "a.yaml").write_bytes(b"exit: \xff\n")
        faultns.make_fifo(events / "b.yaml")  # not an event file: never read, said once
        (events / "c.yaml").mkdir()
        wait_for(lambda: (events / "a.result").exists(), what="the result of a.yaml")
        assert (events / "a.result").read_text() == \
            "error: the event is not UTF-8 text (byte 0xff at offset 6)\n"
        _ticks(root, 5)
        bad = tmp_path / "event.yaml"
        bad.write_bytes(b"start: {name: \xe9t\xe9}\n")
        r = cli("event", "--root", str(root), f"@{bad}")
        assert (r.returncode, r.stderr) == (1, f"sysfs-emu: error: {bad} is not UTF-8 text (byte 0xe9 at offset 14)\n")
        r = subprocess.run([SYSFS_EMU, "event", "--root", str(root), os.fsencode("exit: \udcff")],
                           capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stderr) == (1, "sysfs-emu: error: the event is not UTF-8 text (byte 0xff at offset 6)\n")
        assert cli("event", "--root", str(root), "exit: 2").stdout == "ok\n"  # and it still works
        assert proc.poll() is None
    text = err.read_text()
    assert "Traceback" not in text
    assert text.count(f"ignoring {events}/b.yaml: is a FIFO, not a regular file") == 1
    assert text.count(f"ignoring {events}/c.yaml: Is a directory") == 1


@needs_namespaces
def test_a_full_file_system_under_the_tree_keeps_every_file_whole(tmp_path):
    root, err = tmp_path / "root", tmp_path / "stderr"
    root.mkdir()
    scenario = _scenario(tmp_path)
    with faultns.MountNamespace() as ns:
        ns.mount_tmpfs(root, "512k")
        out = open(err, "wb")
        proc = ns.popen([SYSFS_EMU, "run", str(scenario), "--root", str(root), "--speed", "20"],
                        stdout=subprocess.DEVNULL, stderr=out)
        out.close()
        inside = ns.path(root)
        wait_for(lambda: _alive_time(inside) is not None or proc.poll() is not None, what="the tree")
        filler = ns.fill(root)
        wait_for(lambda: "No space left on device" in err.read_text() or proc.poll() is not None,
                 what="a tick on the full file system")
        assert proc.poll() is None, err.read_text()
        for name in ("pages_scanned", "full_scans", "run"):  # old or new, never half a number
            assert (inside / KSM / name).read_text().rstrip("\n").isdigit()
        filler.unlink()
        before = _alive_time(inside)
        wait_for(lambda: (_alive_time(inside) or 0) > (before or 0), what="the tree to move again")
        # whichever failed first says it is over: a file, the manifest, or a process directory
        # (a guest starting while the file system was full; it needs a page per file)
        wait_for(lambda: any("is kept up to date again" in x or "is written again" in x or x.endswith(") is shown")
                             for x in err.read_text().splitlines()), what="the tree to say the fault is over")
        proc.terminate()
        assert proc.wait(timeout=60) == 0
        assert [p.name for p in (inside / ".sysfs-emu/tmp").iterdir()] == []  # no half file kept aside
    text = err.read_text()
    assert "Traceback" not in text and ": error: " not in text
    full = [x for x in text.splitlines() if "No space left on device" in x]
    assert full and len(full) == len(set(full))  # each file said once
    assert any("is kept up to date again" in x or "is written again" in x for x in text.splitlines())


def test_a_scenario_bigger_than_the_machine_is_refused_up_front(tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_text("host: {memory: 1TiB}\nprocesses:\n  - name: qemu-system-x86\n"
                    "    regions: [{size: 1000GiB, fill: unique}]\n")

    def limit_address_space():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    for argv in (["simulate", str(huge), "--duration", "2m"], ["run", str(huge), "--root", str(tmp_path / "r")]):
        r = subprocess.run([SYSFS_EMU, *argv], capture_output=True, text=True, timeout=120,
                           preexec_fn=limit_address_space)
        assert r.returncode == 1
        assert r.stderr.startswith(
            f"sysfs-emu: error: {huge}: simulating 262144000 pages needs about 22GiB of this machine's memory "
            "(90 bytes per simulated page while ksmd scans), more than the ")
        assert r.stderr.endswith(" it can have (RLIMIT_AS, the address-space limit of 4096 MiB (ulimit -v))\n")
        assert len(r.stderr.splitlines()) == 1
