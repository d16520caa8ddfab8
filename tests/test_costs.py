"""Cost profiles: the file format, --costs on the commands, and outputs that name the profile (no real kernel)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from sysfs_emu import Simulation, costs
from sysfs_emu.costs import CostProfileError
from sysfs_emu.ksmd import CostModel

SCENARIO = {
    "host": {"memory": "1GiB"},
    "ksm": {"pages_to_scan": 1000, "sleep_millisecs": 20, "run": 1},
    "processes": [{"name": "g", "regions": [{"pages": 4000, "fill": "unique"}]}],
}


def profile(tmp_path, **costs_us) -> str:
    model = replace(CostModel(), **{k: v * 1e-6 for k, v in costs_us.items()}, origin="calibrated on testhost")
    path = tmp_path / "costs.json"
    costs.save(model, path, {"note": "test"})
    return str(path)


def test_a_profile_round_trips_and_names_its_file(tmp_path):
    path = profile(tmp_path, tree_base=9.5, split=123.0)
    model = costs.load(path)
    want = replace(CostModel(), tree_base=9.5e-6, split=123e-6)
    assert {n: getattr(model, n) for n in costs.COSTS} == pytest.approx({n: getattr(want, n) for n in costs.COSTS})
    assert model.origin == f"calibrated profile {path} (calibrated on testhost)"
    data = json.loads(open(path).read())
    assert data["format"] == "sysfs-emu cost profile" and data["version"] == 1
    assert set(data["costs_us"]) == set(costs.COSTS) and data["measured"] == {"note": "test"}


def test_the_reference_profile_says_so():
    assert "reference profile" in costs.reference().origin and costs.resolve(None) == CostModel()
    assert Simulation(SCENARIO).costs.origin == costs.reference().origin


@pytest.mark.parametrize("text, message", [
    ("{", "not a cost profile (not JSON"),
    ("[]", 'not a cost profile (no "format": "sysfs-emu cost profile")'),
    ('{"format": "sysfs-emu cost profile", "version": 2}', "cost profile version 2, this sysfs-emu reads 1"),
    ('{"format": "sysfs-emu cost profile", "version": 1, "costs_us": []}', "costs_us: must be a mapping"),
    ('{"format": "sysfs-emu cost profile", "version": 1, "costs_us": {"tree": 1}}', "costs_us.tree: unknown cost"),
    ('{"format": "sysfs-emu cost profile", "version": 1, "costs_us": {"merge": -1}}',
     "costs_us.merge: must be microseconds from 0 to 1e+06, got -1"),
    ('{"format": "sysfs-emu cost profile", "version": 1, "costs_us": {"merge": "fast"}}', "costs_us.merge: must be"),
])
def test_a_bad_profile_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(CostProfileError) as info:
        costs.load(path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


def test_a_missing_profile(tmp_path):
    with pytest.raises(CostProfileError, match="no such cost profile"):
        Simulation(SCENARIO, costs=tmp_path / "none.json")


def test_the_profile_sets_simulated_time_and_cpu(tmp_path):
    slow = profile(tmp_path, tree_base=20.0)
    times = {}
    for name, c in (("reference", None), ("slow", slow)):
        sim = Simulation(SCENARIO, costs=c)
        times[name] = sim.run_until(full_scans=4), sim.ksmd.cpu_time
    assert times["slow"][0] > times["reference"][0] and times["slow"][1] > 3 * times["reference"][1]


def sysfs_emu(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sysfs_emu.cli", *args], capture_output=True, text=True, timeout=120)


def test_simulate_says_which_profile(tmp_path):
    r = sysfs_emu("simulate", "demo", "--duration", "2m", "--config", "/dev/null")
    assert r.returncode == 0, r.stderr
    assert ("ksmd CPU time is the simulated ksmd's own work at its per-page costs; "
            "costs: reference profile (Linux 6.18, the development machine)") in r.stdout.splitlines()
    path = profile(tmp_path, tree_base=5.0)
    r = sysfs_emu("simulate", "demo", "--duration", "2m", "--config", "/dev/null", "--costs", path, "--json")
    assert r.returncode == 0, r.stderr
    (summary,) = json.loads(r.stdout)["summary"]
    assert summary["cost_origin"] == f"calibrated profile {path} (calibrated on testhost)"


def test_run_and_snapshot_say_which_profile(tmp_path):
    """The served tree's state names the profile; snapshot shows it."""
    path = profile(tmp_path, tree_base=5.0)
    root = tmp_path / "host"
    r = sysfs_emu("run", "idle-host", "--root", str(root), "--duration", "1", "--speed", "1000", "--costs", path)
    assert r.returncode == 0, r.stderr
    assert f"costs: calibrated profile {path} (calibrated on testhost)" in r.stderr
    state = json.loads((root / ".sysfs-emu" / "state.json").read_text())
    assert state["cost_origin"] == f"calibrated profile {path} (calibrated on testhost)"


def test_a_bad_costs_option_is_one_line(tmp_path):
    r = sysfs_emu("simulate", "demo", "--costs", str(tmp_path / "nope.json"))
    assert r.returncode == 1 and r.stderr == f"sysfs-emu: error: {tmp_path / 'nope.json'}: no such cost profile\n"
