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
    assert r.stdout.rstrip().endswith("Demo ended (8 decisions shown); the temporary host was removed.")
    tree = _tree_dir(r.stdout)
    assert not tree.parent.exists()
    assert pids_with_arg(str(tree)) == []


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
