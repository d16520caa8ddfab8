"""sysfs-emu simulate for decisions: runs under policies, the cycles, the summary, the files and the table."""

from __future__ import annotations

import os
import re

import pytest

from ksmtuned_py import config as configmod
from ksmtuned_py.simhost import SimulationHost
from sysfs_emu import Simulation

DEFAULTS = configmod.load(os.devnull, environ={})


def _churning_scenario() -> dict:
    """Guests that start, exit, rewrite and touch memory while ksmd maps empty pages to the zero page."""
    guest = "qemu-system-x86"
    return {
        "host": {"memory": "1GiB"},
        "ksm": {"pages_to_scan": 1000, "sleep_millisecs": 200, "use_zero_pages": 1, "run": 1},
        "processes": [
            {"name": guest, "regions": [{"pages": 2000, "fill": "pool", "pool": "os"},
                                        {"pages": 1500, "fill": "zero"}]},
            {"name": guest, "start": "90s", "exit": "400s", "regions": [
                {"pages": 2000, "fill": "pool", "pool": "os"}, {"pages": 800, "fill": "zero", "lazy": True}]},
            {"name": "other", "regions": [{"pages": 300, "fill": "zero"}]},
        ],
        "events": [
            {"at": "150s", "touch": {"process": 1, "region": 1, "pages": 500}},
            {"at": "200s", "rewrite": {"process": 0, "region": 1, "first": 0, "pages": 700, "fill": "unique"}},
            {"at": "260s", "rewrite": {"process": 0, "region": 1, "first": 0, "pages": 300, "fill": "zero"}},
        ],
    }


@pytest.mark.parametrize("metric", ["rss", "pss"])
def test_the_simulation_host_counts_guests_again_exactly_when_their_size_can_change(metric):
    sim = Simulation(_churning_scenario())
    cached = SimulationHost(sim, memory_metric=metric)
    seen = set()
    for _ in range(60):
        sim.advance(10)
        fresh = SimulationHost(sim, memory_metric=metric).read()
        got = cached.read()
        assert [(g.pid, g.kb) for g in got.guests] == [(g.pid, g.kb) for g in fresh.guests], sim.now
        seen.add(got.committed_kb)
    assert len(seen) >= 5  # sizes did move: zero pages mapped, guests started, touched, rewrote, exited


# --- when cycles come ---------------------------------------------------------------------------

from sysfs_emu.simulate import GUEST_STARTED, GUEST_STOPPED, INTERVAL, Simulate  # noqa: E402


def _conf(tmp_path, text: str) -> configmod.Config:
    path = tmp_path / "ksmtuned.conf"
    path.write_text(text)
    return configmod.load(str(path), environ={})


def test_a_cycle_comes_every_interval_and_at_once_when_a_guest_starts_or_stops(tmp_path):
    scenario = _churning_scenario()
    scenario["processes"].append({"name": "backup", "start": "100s", "exit": "200s",
                                  "regions": [{"pages": 10, "fill": "unique"}]})  # not a guest: no retune
    run = Simulate(Simulation(scenario), DEFAULTS)
    rows = list(run.rows(600))
    assert [(r.time_s, r.cause) for r in rows] == [
        (60, INTERVAL), (90, GUEST_STARTED), (150, INTERVAL), (210, INTERVAL), (270, INTERVAL),
        (330, INTERVAL), (390, INTERVAL), (400, GUEST_STOPPED), (460, INTERVAL), (520, INTERVAL),
        (580, INTERVAL)]
    assert [r.report.guests for r in rows[:2]] == [1, 2]  # the retune sees the guest that started
    assert rows[7].report.guests == 1
    # Which processes are guests is the configuration's rule: with "backup" one, it retunes too.
    config = _conf(tmp_path, "KSM_PROCESS_REGEX='^(qemu-system-x86|backup)$'\nKSM_MONITOR_INTERVAL=45\n")
    rows = list(Simulate(Simulation(scenario), config).rows(250))
    assert [(r.time_s, r.cause) for r in rows] == [
        (45, INTERVAL), (90, GUEST_STARTED), (100, GUEST_STARTED), (145, INTERVAL), (190, INTERVAL),
        (200, GUEST_STOPPED), (245, INTERVAL)]


def test_a_run_with_the_scenario_going_on_between_cycles_changes_nothing_of_the_simulation():
    """The cycles only read and write knobs: under "always" the host evolves as the bare Simulation does."""
    scenario = _churning_scenario()
    bare = Simulation(scenario)
    run = Simulate(Simulation(scenario), DEFAULTS, __import__("ksmtuned_py.policies").policies.AlwaysPolicy())
    for row in run.rows(600):
        bare.advance(row.time_s - bare.now)
        assert bare.kernel.counters() == run.sim.kernel.counters(), row.time_s


# --- the command: runs side by side, the files, the figures --------------------------------------

import csv  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from tests.emutree import SYSFS_EMU  # noqa: E402

MIB = 1 << 20
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("KSM_")}  # the settings are the file's


def simulate(*args, env=None, cwd=None):
    return subprocess.run([SYSFS_EMU, "simulate", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


def _from_csv(path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            runs.setdefault(row["run_name"], []).append(row)
    return runs


def _figures_from_timeline(rows: list[dict], end_s: float) -> dict:
    """The summary's figures, worked out again from timeline.csv's rows alone (and the run's end)."""
    saved = [int(r["saved_bytes"]) for r in rows]
    times = [float(r["time_s"]) for r in rows]
    end, peak = saved[-1], max(saved)
    # each cycle's saving holds until the next, the last one to the run's end
    held_t, held = (times + [end_s], saved + [end]) if end_s > times[-1] else (times, saved)
    average = (sum(v * (b - a) for v, a, b in zip(held, held_t, held_t[1:])) / (held_t[-1] - held_t[0])
               if held_t[-1] > held_t[0] else sum(saved) / len(saved))

    def first(at_least):
        return next((t for t, s in zip(times, saved) if s >= at_least), None)

    return {
        "cycles": len(rows), "end_s": times[-1], "saved_bytes_end": end,
        "saved_bytes_avg": round(average),
        "saved_bytes_peak": peak,
        "saved_peak_at_s": first(peak) if peak else None, "time_to_100mib_s": first(100 * MIB),
        "time_to_90pct_s": first(0.9 * end) if end else None,
        "pages_shared_end": int(rows[-1]["pages_shared"]), "pages_sharing_end": int(rows[-1]["pages_sharing"]),
        "general_profit_end": int(rows[-1]["general_profit"]), "pages_scanned": int(rows[-1]["pages_scanned"]),
        "full_scans": int(rows[-1]["full_scans"]), "ksmd_cpu_seconds": float(rows[-1]["ksmd_cpu_seconds"]),
    }


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """demo for 10 minutes under three policies, with the files written."""
    out = tmp_path_factory.mktemp("demo-runs")
    r = simulate("demo", "--duration", "10m", "--policy", "ksmtuned", "--policy", "always",
                 "--policy", "always:pages_to_scan=2000,sleep_millisecs=10", "--policy", "off",
                 "--out", str(out / "out"), "--config", os.devnull, env=CLEAN_ENV)
    assert r.returncode == 0, r.stderr
    return r, out / "out"


def test_the_summary_is_what_the_timeline_says(demo_runs):
    r, out = demo_runs
    summary = json.loads((out / "summary.json").read_text())
    timeline = _from_csv(out / "timeline.csv")
    assert [s["name"] for s in summary] == list(timeline) == [
        "ksmtuned", "always", "always:pages_to_scan=2000,sleep_millisecs=10", "off"]
    for s in summary:
        figures = _figures_from_timeline(timeline[s["name"]], s["duration_s"])
        assert {k: s[k] for k in figures} == figures, s["name"]
        assert (s["scenario"], s["duration_s"]) == ("demo", 600.0)
        assert s["cost_origin"] == "reference profile (Linux 6.18, the development machine)"
        assert s["ksmd_cpu_percent"] == round(100 * s["ksmd_cpu_seconds"] / s["end_s"], 4)


def test_the_runs_figures_are_pinned(demo_runs):
    """Deterministic: the same scenario and policies give these figures on any machine."""
    r, out = demo_runs
    got = {s["name"]: (s["saved_bytes_end"], s["saved_bytes_peak"], s["time_to_100mib_s"], s["time_to_90pct_s"],
                       s["pages_scanned"], round(s["ksmd_cpu_seconds"], 3))
           for s in json.loads((out / "summary.json").read_text())}
    assert got == PINNED_DEMO


PINNED_DEMO = {  # saved at the end and at the peak, first 100 MiB, 90 % of the end, pages scanned, CPU s
    "ksmtuned": (1063677952, 1063677952, 300.0, 360.0, 3096650, 13.551),
    "always": (1063677952, 1063677952, 240.0, 480.0, 2249700, 10.541),
    "always:pages_to_scan=2000,sleep_millisecs=10": (1063677952, 1063677952, 120.0, 240.0, 62060000, 96.28),
    "off": (0, 0, None, None, 0, 0.0),
}


def test_more_aggressive_settings_save_sooner_at_a_higher_cpu_cost(demo_runs):
    r, out = demo_runs
    s = {x["name"]: x for x in json.loads((out / "summary.json").read_text())}
    slow, fast = s["always"], s["always:pages_to_scan=2000,sleep_millisecs=10"]
    assert fast["time_to_100mib_s"] < slow["time_to_100mib_s"]
    assert fast["ksmd_cpu_seconds"] > 2 * slow["ksmd_cpu_seconds"]
    assert fast["pages_scanned"] > 2 * slow["pages_scanned"]
    assert s["off"]["saved_bytes_peak"] == 0 and s["off"]["time_to_100mib_s"] is None



def test_timeline_csv_has_a_row_per_cycle_and_run_with_the_cycles_values(demo_runs):
    r, out = demo_runs
    lines = (out / "timeline.csv").read_text().splitlines()
    assert lines[0] == ("run_name,time_s,cause,decision,level,run,pages_to_scan,sleep_millisecs,npages,sleep_ms,"
                        "pages_shared,pages_sharing,ksm_zero_pages,saved_bytes,general_profit,pages_scanned,"
                        "full_scans,ksmd_cpu_seconds,free_kb,committed_kb,thres_kb,guests,reason")
    timeline = _from_csv(out / "timeline.csv")
    assert [len(rows) for rows in timeline.values()] == [10, 10, 10, 10]  # a cycle a minute; starts on the minute
    ks = timeline["ksmtuned"]
    assert [(row["time_s"], row["cause"], row["decision"], row["level"]) for row in ks[:5]] == [
        ("60.0", "guest started", "stop", ""), ("120.0", "guest started", "stop", ""),
        ("180.0", "guest started", "start", "boost"), ("240.0", "interval", "start", "boost"),
        ("300.0", "interval", "start", "decay")]
    assert [row["pages_to_scan"] for row in ks[2:5]] == ["300", "600", "550"]
    for row in ks:
        assert int(row["saved_bytes"]) == int(row["pages_sharing"]) * 4096
    assert {row["run"] for row in timeline["off"]} == {"0"}
    assert {(row["pages_to_scan"], row["sleep_millisecs"]) for row in timeline[
        "always:pages_to_scan=2000,sleep_millisecs=10"]} == {("2000", "10")}


def test_json_is_the_summary_and_the_timeline_in_one_document(demo_runs, tmp_path):
    r, out = demo_runs
    j = simulate("demo", "--duration", "10m", "--policy", "ksmtuned", "--policy", "always",
                 "--policy", "always:pages_to_scan=2000,sleep_millisecs=10", "--policy", "off",
                 "--config", os.devnull, "--json", env=CLEAN_ENV)
    assert j.returncode == 0, j.stderr
    doc = json.loads(j.stdout)
    assert list(doc) == ["summary", "timeline"]
    assert doc["summary"] == json.loads((out / "summary.json").read_text())
    csv_rows = [row for rows in _from_csv(out / "timeline.csv").values() for row in rows]
    assert len(doc["timeline"]) == len(csv_rows) == 40
    for got, row in zip(doc["timeline"], csv_rows):
        assert {k: "" if got[k] is None else str(got[k]) for k in row} == row
    assert doc["timeline"][2]["writes"] == ["pages_to_scan=300", "sleep_millisecs=53", "run=1"]
    settings = doc["summary"][0]["settings"]
    assert settings["config"] == os.devnull and settings["config_values"]["KSM_NPAGES_BOOST"] == "300"
    assert settings["monitor_interval_s"] == 60.0 and settings["policy"] == "ksmtuned"
    assert doc["summary"][2]["settings"]["policy_params"] == {"pages_to_scan": 2000, "sleep_millisecs": 10}
    assert doc["summary"][2]["settings"]["config_values"] == {}  # "always" does not follow the configuration


def test_the_terminal_shows_each_runs_decisions_and_the_runs_side_by_side(demo_runs):
    r, out = demo_runs
    lines = r.stdout.splitlines()
    assert lines[0] == ("simulating demo for 00:10:00, 4 runs; a cycle every 60 s and whenever a guest starts "
                        "or stops")
    assert lines[1:5] == [
        f"  ksmtuned: ksmtuned's rule, with the settings of {os.devnull}",
        "  always: KSM always on, at the settings as they are (a cycle every 60 s)",
        "  always:pages_to_scan=2000,sleep_millisecs=10: KSM always on, at pages_to_scan 2000, sleep_millisecs 10 "
        "(a cycle every 60 s)",
        "  off: KSM always off (a cycle every 60 s)"]
    off = lines.index("off:")
    assert [line.split()[0] for line in lines[off + 2:off + 4]] == ["00:01:00", "00:10:00"]  # no change between
    comparison = lines[lines.index("off:") + 5:]
    assert comparison[0].split() == ["ksmtuned", "always", "always:pages_to_scan=2000,sleep_millisecs=10", "off"]
    assert comparison[1].split() == ["saved", "at", "the", "end"] + ["1014.4", "MiB"] * 3 + ["0", "B"]
    assert comparison[5].split() == ["first", "100", "MiB", "at", "00:05:00", "00:04:00", "00:02:00", "never"]
    assert comparison[-4:-2] == [
        "ksmd CPU time is the simulated ksmd's own work at its per-page costs; "
        "costs: reference profile (Linux 6.18, the development machine)",
        "off: KSM saved nothing in 00:10:00 (general_profit 0 B); last decision: stop: KSM always off"]
    assert re.fullmatch(r"simulated in \d+\.\d s of wall time", comparison[-2]), comparison[-2]
    assert comparison[-1] == f"written: {out}/summary.json, {out}/timeline.csv, {out}/timeline.png"


def test_every_shows_a_row_per_period():
    r = simulate("demo", "--duration", "10m", "--every", "3m", "--config", os.devnull, env=CLEAN_ENV)
    assert r.returncode == 0, r.stderr
    times = [line.split()[0] for line in r.stdout.splitlines() if line.strip()[:3] == "00:" or line[:4] == "   0"]
    assert times == ["00:01:00", "00:03:00", "00:06:00", "00:09:00", "00:10:00"]


def test_the_picture_has_a_line_per_run_in_both_panels(demo_runs):
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    import matplotlib.image
    import numpy as np
    from matplotlib import colors

    r, out = demo_runs
    data = (out / "timeline.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out / "timeline.png")[:, :, :3]
    assert image.shape == (600, 900, 3)
    top, bottom = image[:330], image[330:]
    # matplotlib's first colours, in run order: every run drew in both panels (off: at 0)
    for i in range(4):
        rgb = np.array(colors.to_rgb(f"C{i}"))
        for panel in (top, bottom):
            assert (np.abs(panel - rgb).max(axis=2) < 0.02).sum() > 50, f"run {i}"


_NO_MATPLOTLIB = """
import sys

class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoMatplotlib())
from sysfs_emu.cli import main
main()
"""


def test_without_matplotlib_everything_but_the_picture_is_written(tmp_path):
    r = subprocess.run([sys.executable, "-c", _NO_MATPLOTLIB, "simulate", "demo", "--duration", "2m",
                        "--config", os.devnull, "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120, env=CLEAN_ENV)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json", "timeline.csv"]
    assert r.stderr == ("note: timeline.png not written: matplotlib is not installed "
                        "(pip install 'ksmtuned-py[plot]')\n")
    assert f"written: {tmp_path}/out/summary.json, {tmp_path}/out/timeline.csv\n" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--policy", "sometimes"], "--policy sometimes: no policy 'sometimes' (one of: ksmtuned, adaptive, always, off, advisor)"),
    (["--policy", "always", "--policy", "always"], "the same run twice: always"),
    (["--duration", "0"], "--duration must be more than 0, got 0"),
    (["--every", "0s"], "--every must be more than 0, got 0s"),
    (["--every", "soon"], "--every: not a duration: 'soon' (write seconds, or e.g. '250ms', '30s', '5m', '2h', "
                          "'1d', '1h30m')"),
])
def test_a_request_that_cannot_be_run_is_one_line(args, message):
    r = simulate("demo", *args, "--config", os.devnull, env=CLEAN_ENV)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"sysfs-emu: error: {message}\n")


def test_results_that_cannot_be_written_are_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    r = simulate("demo", "--duration", "1m", "--config", os.devnull, "--out", str(tmp_path / "file" / "out"),
                 env=CLEAN_ENV)
    assert r.returncode == 1 and r.stderr == (f"sysfs-emu: error: cannot write the results to "
                                              f"{tmp_path}/file/out: Not a directory\n")


def test_without_config_the_settings_are_read_as_every_ksmtuned_py_command_reads_them():
    # /etc/ksmtuned.conf, then the environment (here a KSM_NPAGES_BOOST), then the defaults
    if os.path.exists("/etc/ksmtuned.conf"):
        pytest.skip("this machine has an /etc/ksmtuned.conf: its settings, not the defaults, would apply")
    r = simulate("demo", "--duration", "3m", "--json", env={**CLEAN_ENV, "KSM_NPAGES_BOOST": "900"})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    settings = doc["summary"][0]["settings"]
    assert settings["config_source"] == ("/etc/ksmtuned.conf (not there: ksmtuned's defaults) and the "
                                         "environment (KSM_NPAGES_BOOST)")
    assert settings["config"] is None
    assert doc["timeline"][-1]["npages"] == 900


def test_ksmtuned_runs_once_with_each_configuration_and_the_other_policies_once(tmp_path):
    for name, text in (("a.conf", "KSM_NPAGES_BOOST=100\n"), ("b.conf", "KSM_NPAGES_BOOST=1000\n")):
        (tmp_path / name).write_text(text)
    r = simulate("demo", "--duration", "3m", "--json", "--policy", "ksmtuned", "--policy", "always",
                 "--config", str(tmp_path / "a.conf"), "--config", str(tmp_path / "b.conf"), env=CLEAN_ENV)
    doc = json.loads(r.stdout)
    assert [s["name"] for s in doc["summary"]] == [
        f"ksmtuned ({tmp_path}/a.conf)", f"ksmtuned ({tmp_path}/b.conf)", "always"]
    assert [s["settings"]["config_values"].get("KSM_NPAGES_BOOST") for s in doc["summary"]] == ["100", "1000", None]
    last = {row["run_name"]: row["npages"] for row in doc["timeline"]}
    assert list(last.values()) == [100, 1000, None]


def test_the_progress_bar_shows_on_a_terminal_after_a_few_seconds_only():
    import io

    from sysfs_emu.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    clock = [0.0]
    term = Terminal()
    bar = Progress(100, "simulating", stream=term, clock=lambda: clock[0])
    bar.update(10)  # in the first seconds: nothing
    assert term.getvalue() == ""
    clock[0] = 2.5
    bar.update(40, "always at 00:40:00")
    assert term.getvalue() == "\rsimulating [############..................]  40% always at 00:40:00\x1b[K"
    bar.close()
    assert term.getvalue().endswith("\r\x1b[K")
    pipe = io.StringIO()  # not a terminal: never drawn
    bar = Progress(100, stream=pipe, clock=lambda: clock[0])
    clock[0] = 10.0
    bar.update(50)
    bar.close()
    assert pipe.getvalue() == ""


def test_the_pictures_cpu_line_is_ksmds_cpu_between_decisions():
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    from sysfs_emu.simplot import cpu_percent

    rows = [{"time_s": 60.0, "ksmd_cpu_seconds": 0.0}, {"time_s": 120.0, "ksmd_cpu_seconds": 6.0},
            {"time_s": 130.0, "ksmd_cpu_seconds": 6.5}, {"time_s": 190.0, "ksmd_cpu_seconds": 6.5}]
    # 6 s in a minute: 10 %; 0.5 s in 10 s: 5 %; stopped: 0; the last row keeps the last interval's
    assert cpu_percent(rows) == [10.0, 5.0, 0.0, 0.0]
    assert cpu_percent(rows[:1]) == [0.0]
    assert cpu_percent([{"time_s": 0.0, "ksmd_cpu_seconds": None}, {"time_s": 60.0, "ksmd_cpu_seconds": 1.0}]) == [0.0, 0.0]
