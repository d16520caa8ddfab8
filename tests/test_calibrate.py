"""``sysfs-emu calibrate`` as a user runs it: on the real KSM as root, the profile it writes taken by
``simulate --costs``, and the one-line errors when it cannot run (no root, a bad --out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sysfs_emu import costs
from tests import realksm


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sysfs_emu.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr == f"sysfs-emu: error: {text}\n"


@pytest.mark.realksm
def test_calibrate_writes_a_profile_that_simulate_takes(tmp_path):
    reason = realksm.skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "costs.json"
    # the command takes the real KSM's lock itself, so the test must not hold it
    result = cli("calibrate", "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("calibrated on ")
    assert lines[-1] == f"wrote {out}; use it with --costs {out}"
    assert [line.split()[0] for line in lines[1:-1]] == list(costs.COSTS)
    model = costs.load(out)
    assert model.origin.startswith(f"calibrated profile {out} (calibrated on ")
    # a cost no experiment measured is the reference's (positive); a huge page's split took
    # 0.7-1.0 ms on the shared development machine, so the bound is what no machine takes
    assert all(0 < getattr(model, name) < 1e-2 for name in costs.COSTS), model
    data = json.loads(out.read_text())
    assert set(data["measured"]["cpu_seconds_per_scan"]) >= {"4000 unique pages", "2 x 4096 shared pages"}
    with realksm.real_ksm():  # once the lock is free again, KSM is stopped
        assert realksm.read("run") == "0\n"
    sim = cli("simulate", "demo", "--duration", "2m", "--config", "/dev/null", "--costs", str(out), "--json")
    assert sim.returncode == 0, sim.stderr
    assert json.loads(sim.stdout)["summary"][0]["cost_origin"] == model.origin


def test_calibrate_needs_root():
    if os.geteuid() != 0:
        result = cli("calibrate")
    else:  # drop to nobody once the modules are loaded (the interpreter may live under /root)
        code = textwrap.dedent("""
            import os, sys
            import sysfs_emu.cli, sysfs_emu.costs, sysfs_emu.realksm.calibrate, sysfs_emu.realksm.guard
            os.setgid(65534); os.setuid(65534)
            sys.argv = ["sysfs-emu", "calibrate"]
            sysfs_emu.cli.main()
        """)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if not realksm.KSM_DIR.is_dir():
        one_error_line(result, "the real KSM cannot be used: the kernel has no KSM (/sys/kernel/mm/ksm missing)")
    else:
        one_error_line(result, "the real KSM cannot be used: needs root to write /sys/kernel/mm/ksm")


@pytest.mark.parametrize("where, message", [
    ("missing/costs.json", "--out {tmp}/missing/costs.json: the directory {tmp}/missing does not exist"),
    ("", "--out {tmp}: is a directory"),
])
def test_a_bad_out_is_refused_before_measuring(tmp_path, where, message):
    result = cli("calibrate", "--out", f"{tmp_path}/{where}", timeout=60)
    one_error_line(result, message.format(tmp=tmp_path))
    assert list(tmp_path.iterdir()) == []
