"""One cycle for every command: status, adjust and simulate decide and write as the daemon does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ksmtuned_py import config as configmod
from sysfs_emu import Simulation
from sysfs_emu.simulate import Simulate
from sysfs_emu.tree import Tree
from tests.emutree import SYSFS_EMU, small_scenario
from tests.test_cli import cli
from tests.test_daemon import daemons, host  # noqa: F401 (fixtures)


def _conf(tmp_path, text: str) -> configmod.Config:
    path = tmp_path / "ksmtuned.conf"
    path.write_text(text)
    return configmod.load(str(path), environ={})


# --- status and adjust without a daemon: a fresh start -------------------------------------------


def test_status_and_adjust_predict_what_a_starting_daemon_writes(host, daemons):
    # pages_to_scan is 100, but a daemon starting now has npages 0: boost 0 + 300.
    assert host.knob("pages_to_scan") == "100\n"
    s = json.loads(cli(host, "status", "--json").stdout)
    assert (s["next"]["action"], s["next"]["level"], s["next"]["npages"]) == ("start", "boost", 300)
    assert (s["next"]["from_npages"], s["next"]["npages_source"]) == (0, "fresh start")
    assert s["next"]["npages_from"] == "a fresh start (no daemon running)"
    assert s["next"]["reason"].endswith("so boost pages_to_scan from 0 to 300")
    predicted = cli(host, "adjust", "--dry-run").stdout.splitlines()
    assert predicted[-2:] == [
        "KSMCTL start 300 167",
        "dry run: nothing written (npages started from 0, taken from a fresh start (no daemon running))",
    ]
    d = daemons(host).wait_ready()
    first = d.kick()
    assert first == predicted[3:-1]  # the daemon's first cycle is the one predicted, line for line
    assert (host.knob("pages_to_scan"), host.knob("run")) == ("300\n", "1\n")
    assert d.finish() == 0


# --- simulate writes what the daemon writes ------------------------------------------------------


def test_simulate_writes_a_clamped_npages_as_configured(tmp_path):
    # 0 + 10 < KSM_NPAGES_MIN: npages=$KSM_NPAGES_MIN, so the reference and the daemon write "+64".
    config = _conf(tmp_path, "KSM_NPAGES_MIN=+64\nKSM_NPAGES_BOOST=10\n")
    sim = Simulation.from_yaml(_shipped("demo"))
    written = []
    write_attr = sim.kernel.write_attr

    def recording(name, data):
        written.append((name, data))
        return write_attr(name, data)

    sim.kernel.write_attr = recording
    run = Simulate(sim, config)
    reports = [run.cycle().report for _ in range(3)]
    assert [r.action for r in reports] == ["stop", "stop", "start"]
    assert written == [("run", "0\n"), ("run", "0\n"),
                       ("pages_to_scan", "+64\n"), ("sleep_millisecs", "53\n"), ("run", "1\n")]
    assert reports[2].writes == ("pages_to_scan=+64", "sleep_millisecs=53", "run=1")
    assert (reports[2].npages, reports[2].pages_to_scan) == (64, 64)
    # The command says so too, in the same words as the daemon's report.
    conf = tmp_path / "ksmtuned.conf"
    r = subprocess.run([SYSFS_EMU, "simulate", "demo", "--duration", "3m", "--json", "--config", str(conf)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["timeline"]
    assert rows[2]["writes"] == ["pages_to_scan=+64", "sleep_millisecs=53", "run=1"]
    assert (rows[2]["npages"], rows[2]["sleep_ms"], rows[2]["free_kb"]) == (64, 53, reports[2].free_kb)


def _shipped(name: str):
    from sysfs_emu.cli import shipped_scenarios

    return shipped_scenarios()[name]


def _long_name_scenario() -> dict:
    scenario = small_scenario(run=1)
    # comm keeps 15 bytes: "qemu:web-frontend" shows as "qemu:web-fronte", which the upstream rule
    # (qemu:.{1,11}) counts as a guest although the full name has 12 characters after the colon.
    scenario["processes"].append({"name": "qemu:web-frontend", "cmdline": ["qemu-system-x86_64"],
                                  "regions": [{"pages": 2000, "fill": "pool", "pool": "debian"}]})
    return scenario


def test_the_simulation_host_reads_what_the_daemon_reads_from_the_served_tree(tmp_path):
    from ksmtuned_py.filehost import FileHost
    from ksmtuned_py.simhost import SimulationHost

    for metric in ("rss", "pss"):
        sim = Simulation(_long_name_scenario())
        tree = Tree(sim, tmp_path / metric)
        tree.create()
        try:
            sim.advance(600)  # ksmd has merged the shared image: Pss differs from RSS
            tree.sync(force=True)
            config = _conf(tmp_path, f"KSM_MEMORY_METRIC={metric}\n")
            files = FileHost.from_config(str(tmp_path / metric), config).read()
            direct = SimulationHost.from_config(sim, config).read()
        finally:
            tree.remove()
        assert [(g.comm, g.kb) for g in direct.guests] == [(g.comm, g.kb) for g in files.guests]
        assert [g.comm for g in direct.guests] == ["qemu-system-x86", "qemu-system-x86", "qemu:web-fronte"]
        assert (direct.meminfo, direct.free_kb, direct.committed_kb) == (files.meminfo, files.free_kb,
                                                                         files.committed_kb)
        assert direct.ksm == files.ksm and direct.ksm.counters["pages_sharing"] > 0
        if metric == "pss":
            assert direct.committed_kb < SimulationHost(sim).read().committed_kb


# --- the daemon without the simulator -----------------------------------------------------------

_NO_SIM = """
import sys

class NoSimulator:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("numpy", "yaml"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoSimulator())
from ksmtuned_py.cli import main
main()
"""

_SHOW_MODULES = """
import atexit, sys
atexit.register(lambda: print("heavy modules:", sorted(m for m in ("numpy", "yaml") if m in sys.modules),
                              file=sys.stderr))
from ksmtuned_py.cli import main
main()
"""


def test_the_daemon_status_and_adjust_never_import_numpy_or_yaml(host):
    base = [sys.executable, "-c", _SHOW_MODULES, "--root", str(host.root), "--config", str(host.conf)]
    for args in (["status"], ["status", "--json"], ["adjust", "--apply"], ["check-config"]):
        r = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stderr.splitlines()[-1] == "heavy modules: []", args
    daemon = subprocess.Popen([*base, "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        from tests.test_daemon import wait_for

        wait_for(lambda: host.pidfile.exists() and host.pidfile.read_text().strip() == str(daemon.pid))
        os.kill(daemon.pid, __import__("signal").SIGUSR1)
        wait_for(lambda: any(line.startswith("KSMCTL start") for line in host.debug_lines()))
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=10)
    assert daemon.returncode == 0, err
    assert err.splitlines()[-1] == "heavy modules: []"


# What the idle daemon's memory target (bench/bench_idle_rss.py, under 16 MB) rests on: none of
# these is loaded by `ksmtuned-py run` itself (pathlib brings urllib.parse and ipaddress, tempfile
# brings shutil, bz2, lzma and random; click is the other commands' parser).
_DAEMON_AVOIDS = ("pathlib", "urllib.parse", "ipaddress", "tempfile", "shutil", "random", "click", "numpy", "yaml")
_SHOW_DAEMON_MODULES = f"""
import atexit, sys
atexit.register(lambda: print("avoided modules loaded:", sorted(m for m in {_DAEMON_AVOIDS!r} if m in sys.modules),
                              file=sys.stderr))
from ksmtuned_py.entry import main
main()
"""


def test_the_running_daemon_loads_none_of_the_heavy_modules(host, tmp_path):
    """A cycle with the metrics file on, under python -S (no site: a venv's editable-install hook loads pathlib)."""
    host.write_config(f"KSM_METRICS_TEXTFILE={tmp_path / 'ksm.prom'}\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    daemon = subprocess.Popen([sys.executable, "-S", "-c", _SHOW_DAEMON_MODULES, "--root", str(host.root),
                               "--config", str(host.conf), "run"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        from tests.test_daemon import wait_for

        wait_for(lambda: host.pidfile.exists() and host.pidfile.read_text().strip() == str(daemon.pid))
        os.kill(daemon.pid, __import__("signal").SIGUSR1)
        wait_for(lambda: (tmp_path / "ksm.prom").exists() and
                 any(line.startswith("KSMCTL start") for line in host.debug_lines()))
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=10)
    assert daemon.returncode == 0, err
    assert err.splitlines()[-1] == "avoided modules loaded: []"


def test_demo_without_the_simulator_says_how_to_get_it():
    r = subprocess.run([sys.executable, "-c", _NO_SIM, "demo", "--cycles", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    (line,) = r.stderr.splitlines()
    assert line.startswith("ksmtuned-py: the demo needs the simulator, which is not installed (")
    assert line.endswith("): pip install 'ksmtuned-py[sim]'")
    # The daemon itself works without it.
    r = subprocess.run([sys.executable, "-c", _NO_SIM, "check-config", "--config", os.devnull],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_demo_refuses_root_and_config(tmp_path):
    from tests.test_daemon import ksmtuned_py

    for args, message in (
        (["--root", str(tmp_path), "demo", "--cycles", "1"], "it takes no --root"),
        (["--config", str(tmp_path / "x.conf"), "demo", "--cycles", "1"], "it takes no --config"),
        (["demo", "--cycles", "1", "--root", str(tmp_path)], "No such option '--root'"),
    ):
        r = subprocess.run([*ksmtuned_py(), *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr
        assert "Simulated /sys" not in r.stdout  # refused before any host was made
