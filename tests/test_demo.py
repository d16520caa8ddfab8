"""``ksmtuned-py demo``: decisions on a simulated host, ended by its cycle limit or by Ctrl-C, leaving nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.emutree import KSMTUNED_PY, pids_with_arg

ROW = re.compile(r"^\s*(\d\d:\d\d:\d\d)\s+(\d+)\s+\S+ \S+\s+\S+ \S+\s+(start|stop): .*?(\d+(?:\.\d)? [KMG]?i?B)\s*$")


def _tree_dir(out: str) -> Path:
    m = re.search(r"Simulated /sys and /proc in (\S+);", out)
    assert m, out
    return Path(m.group(1))


def test_demo_shows_decisions_and_memory_saved(tmp_path):
    r = subprocess.run([KSMTUNED_PY, "demo", "--cycles", "8", "--speed", "60"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    rows = [ROW.match(line) for line in r.stdout.splitlines()]
    rows = [m for m in rows if m]
    assert len(rows) == 8, r.stdout
    # The guests start a minute apart; with all four up the rule starts KSM.
    assert rows[0].group(3) == "stop"
    assert "start" in [m.group(3) for m in rows]
    assert [int(m.group(2)) for m in rows] == sorted(int(m.group(2)) for m in rows)
    assert "daemon at start: total 3145728" in r.stdout
    assert "\nDemo ended (8 decisions shown); the temporary host was removed.\n" in r.stdout
    tree = _tree_dir(r.stdout)
    assert not tree.parent.exists()
    assert pids_with_arg(str(tree)) == []


def test_the_demo_ends_by_itself_says_how_long_and_how_to_do_it_by_hand(tmp_path):
    r = subprocess.run([KSMTUNED_PY, "demo"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ksmtuned-py demo: a 3 GiB host where four 1 GiB Debian guests start")
    assert lines[0].count("demo") == 1, lines[0]
    assert lines[2] == ("The daemon (ksmtuned-py run) decides every 1 s = 60 simulated seconds: "
                        "8 decisions, about 8 s (Ctrl-C ends it sooner).")
    rows = [m for m in map(ROW.match, lines) if m]
    assert len(rows) == 8
    # the story: stops while the guests start, then KSM starts and saves memory (the wall clock
    # paces the decisions, so on a busy machine one comes a little earlier or later)
    actions = [m.group(3) for m in rows]
    assert actions[0] == "stop" and "start" in actions, actions
    hand = lines[lines.index("By hand, in two terminals (the README's 'Two terminals'):") + 1:]
    assert len(hand) == 3 and not any("ksmtuned_py.cli" in line for line in hand)
    _run_by_hand([line.replace("/dev/shm/ksm-demo", str(tmp_path / "h")).replace(
        "/tmp/ksm-demo", str(tmp_path / "h")) for line in hand], tmp_path / "h")


def _run_by_hand(commands: list[str], tree: Path) -> None:
    """The printed commands work as printed: the tree is served, and the daemon tunes it."""
    import shlex

    server = subprocess.Popen(shlex.split(commands[0]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = None
    try:
        deadline = time.monotonic() + 60
        while not (tree / ".sysfs-emu/state.json").exists():
            assert server.poll() is None and time.monotonic() < deadline, "the tree did not appear"
            time.sleep(0.05)
        subprocess.run(["sh", "-c", commands[1]], check=True)
        daemon = subprocess.Popen(shlex.split(commands[2]), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True)
        assert daemon.stdout.readline().endswith(": total 3145728\n")
    finally:
        for proc in (daemon, server):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
                if proc.stdout:
                    proc.stdout.close()
    assert not tree.exists()  # --clean
    for leftover in (Path(f"{tree}.conf"), Path(f"{tree}.pid")):
        leftover.unlink(missing_ok=True)


def test_ctrl_c_ends_the_demo_cleanly(tmp_path):
    proc = subprocess.Popen([KSMTUNED_PY, "demo", "--speed", "60"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if ROW.match(line):
                break
        assert any(ROW.match(x) for x in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert "the temporary host was removed" in out
    tree = _tree_dir(out)
    assert not tree.parent.exists()
    assert pids_with_arg(str(tree)) == []
    assert os.path.exists("/tmp")
