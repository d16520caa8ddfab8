"""Prometheus textfile metrics, read back through the real node_exporter."""

from __future__ import annotations

import os
import signal
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from ksmtuned_py import metrics
from ksmtuned_py.errors import UserError
from tests import nodeexporter

SAMPLE = metrics.Sample(
    general_profit=-12288,
    ksm_zero_pages=7,
    pages_scanned=123456789,
    running=True,
    decision="boost",
    npages=364,
    sleep_ms=20,
    thres_kb=419430,
    total_kb=2097152,
    committed_kb=1048576,
    free_kb=300000,
    guests=3,
    time=1700000000.25,
    duration=0.0042,
    cycles=5,
    info={"version": "0.1.0"},
)

#: What SAMPLE must read as through node_exporter: (name, labels) -> value.
EXPECTED = {
    ("ksmtuned_info", 'version="0.1.0"'): 1,
    ("ksmtuned_ksm_general_profit_bytes", ""): -12288,
    ("ksmtuned_ksm_zero_pages", ""): 7,
    ("ksmtuned_ksm_pages_scanned_total", ""): 123456789,
    ("ksmtuned_decision", 'decision="boost"'): 1,
    ("ksmtuned_decision", 'decision="decay"'): 0,
    ("ksmtuned_decision", 'decision="stop"'): 0,
    ("ksmtuned_ksm_running", ""): 1,
    ("ksmtuned_pages_to_scan", ""): 364,
    ("ksmtuned_sleep_seconds", ""): 0.02,
    ("ksmtuned_threshold_bytes", ""): 419430 * 1024,
    ("ksmtuned_memory_total_bytes", ""): 2097152 * 1024,
    ("ksmtuned_memory_committed_bytes", ""): 1048576 * 1024,
    ("ksmtuned_memory_free_bytes", ""): 300000 * 1024,
    ("ksmtuned_guests", ""): 3,
    ("ksmtuned_cycles_total", ""): 5,
    ("ksmtuned_last_cycle_timestamp_seconds", ""): 1700000000.25,
    ("ksmtuned_last_cycle_duration_seconds", ""): 0.0042,
}

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def parse(text: str) -> tuple[dict[tuple[str, str], float], dict[str, str]]:
    """Samples keyed by (name, labels) and the TYPE of each family."""
    values: dict[tuple[str, str], float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            match = _LINE.match(line)
            assert match, f"not a sample line: {line!r}"
            values[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return values, types


def test_render_is_valid_exposition_with_help_and_type():
    text = metrics.render(SAMPLE)
    values, types = parse(text)
    assert values == {k: pytest.approx(v) for k, v in EXPECTED.items()}
    for name in {n for n, _ in EXPECTED}:
        assert f"# HELP {name} " in text
        assert types[name] == ("counter" if name.endswith("_total") else "gauge")
    # HELP and TYPE come once per family, right before its samples.
    assert text.count("# TYPE ksmtuned_decision ") == 1
    assert "ksmtuned_decision{decision=\"stop\"} 0\n" in text


def test_unknown_values_are_left_out():
    text = metrics.render(metrics.Sample(general_profit=None, ksm_zero_pages=0, decision="stop", running=False))
    values, _ = parse(text)
    assert ("ksmtuned_ksm_general_profit_bytes", "") not in values
    assert values[("ksmtuned_ksm_zero_pages", "")] == 0
    assert values[("ksmtuned_ksm_running", "")] == 0
    assert values[("ksmtuned_decision", 'decision="stop"')] == 1
    assert ("ksmtuned_pages_to_scan", "") not in values


def test_write_is_atomic_world_readable_and_leaves_no_temporary(tmp_path: Path):
    old = tmp_path / metrics.DEFAULT_NAME
    old.write_text("old\n")
    inode_before = old.stat().st_ino
    written = Path(metrics.write_textfile(tmp_path, SAMPLE))
    assert written == old
    assert written.read_text() == metrics.render(SAMPLE)
    assert written.stat().st_ino != inode_before  # replaced by rename, not rewritten in place
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [metrics.DEFAULT_NAME]


def test_explicit_prom_path_and_bad_targets(tmp_path: Path):
    assert metrics.write_textfile(tmp_path / "ksm.prom", SAMPLE) == str(tmp_path / "ksm.prom")
    with pytest.raises(UserError, match=r"only reads files ending in \.prom"):
        metrics.write_textfile(tmp_path / ".prom", SAMPLE)  # a hidden file, no suffix (node_exporter skips it)
    with pytest.raises(UserError, match=r"only reads files ending in \.prom"):
        metrics.write_textfile(tmp_path / "ksm.txt", SAMPLE)
    with pytest.raises(UserError, match="does not exist"):
        metrics.write_textfile(tmp_path / "nodir" / "ksm.prom", SAMPLE)


def test_ksm_counters_missing_files_are_none(tmp_path: Path):
    # The cycle reads the KSM files once; a counter this kernel lacks is None, and left out of the metrics.
    from ksmtuned_py.knobs import read_ksm_state

    (tmp_path / "general_profit").write_text("-4096\n")
    (tmp_path / "pages_scanned").write_text("99\n")
    state = read_ksm_state(tmp_path)
    assert {n: state.get(n) for n in ("general_profit", "ksm_zero_pages", "pages_scanned")} == {
        "general_profit": -4096, "ksm_zero_pages": None, "pages_scanned": 99,
    }


# --- the real node_exporter ---------------------------------------------------

@pytest.fixture(scope="module")
def node_exporter_bin() -> Path:
    return nodeexporter.binary()


def scrape_through_node_exporter(binary: Path, textfile_dir: Path) -> str:
    """Start node_exporter reading ``textfile_dir``, fetch /metrics once, stop it."""
    with nodeexporter.running(binary, "--collector.disable-defaults", "--collector.textfile",
                              f"--collector.textfile.directory={textfile_dir}") as exporter:
        return exporter.first


def test_node_exporter_reads_our_textfile(node_exporter_bin: Path, tmp_path: Path):
    written = Path(metrics.write_textfile(tmp_path, SAMPLE))
    values, types = parse(scrape_through_node_exporter(node_exporter_bin, tmp_path))
    assert values[("node_textfile_scrape_error", "")] == 0
    assert values[("node_textfile_mtime_seconds", f'file="{written}"')] == pytest.approx(
        written.stat().st_mtime, abs=1)
    ours = {k: v for k, v in values.items() if k[0].startswith("ksmtuned_")}
    assert ours == {k: pytest.approx(v) for k, v in EXPECTED.items()}
    assert types["ksmtuned_ksm_pages_scanned_total"] == "counter"
    assert types["ksmtuned_memory_free_bytes"] == "gauge"


def test_node_exporter_reports_a_broken_textfile(node_exporter_bin: Path, tmp_path: Path):
    """The scrape-error check above can fail: a malformed file sets it to 1."""
    (tmp_path / "broken.prom").write_text("ksmtuned_guests{ 3\n")
    values, _ = parse(scrape_through_node_exporter(node_exporter_bin, tmp_path))
    assert values[("node_textfile_scrape_error", "")] == 1


# --- the command and the daemon ----------------------------------------------

def test_one_shot_command_through_node_exporter(node_exporter_bin: Path, tmp_path: Path):
    from tests.svc_daemon import KSMTUNED_PY, make_host

    host = make_host(tmp_path / "host")
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    (host.ksm / "pages_scanned").write_text("4242\n")
    before = time.time()
    got = subprocess.run([*host.cli(), "metrics", "--textfile", str(textdir)],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert got.stdout == f"wrote {textdir / metrics.DEFAULT_NAME}\n"
    values, _ = parse(scrape_through_node_exporter(node_exporter_bin, textdir))
    assert values[("node_textfile_scrape_error", "")] == 0
    # What is true now: run reads 0, the memory and the counters. No daemon made a decision,
    # so there is none (not what a cycle would decide), and no last cycle.
    assert values[("ksmtuned_ksm_running", "")] == 0
    assert values[("ksmtuned_memory_free_bytes", "")] == 100000 * 1024
    assert values[("ksmtuned_memory_committed_bytes", "")] == 0
    assert values[("ksmtuned_guests", "")] == 0
    assert values[("ksmtuned_ksm_pages_scanned_total", "")] == 4242
    for name in ("ksmtuned_decision", "ksmtuned_pages_to_scan", "ksmtuned_sleep_seconds",
                 "ksmtuned_threshold_bytes", "ksmtuned_last_cycle_timestamp_seconds", "ksmtuned_cycles_total"):
        assert not [key for key in values if key[0] == name], name
    # One-shot writes nothing to KSM.
    assert host.knob("run") == "0" and host.knob("pages_to_scan") == "100"


def test_one_shot_command_reports_the_running_daemons_last_decision(tmp_path: Path):
    from tests.svc_daemon import RunningDaemon, make_host, wait_for

    host = make_host(tmp_path / "host")
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    prom = textdir / metrics.DEFAULT_NAME
    with RunningDaemon(host) as daemon:
        daemon.proc.send_signal(signal.SIGUSR1)
        # the cycle's closing line, written after its knobs ("committed" comes before them)
        wait_for(lambda: "KSMCTL start" in host.logfile.read_text(), what="the first cycle's writes")
        (host.ksm / "run").write_text("0\n")  # stopped by hand since: the file says so
        got = subprocess.run([*host.cli(), "metrics", "--textfile", str(textdir)],
                             capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        values, _ = parse(prom.read_text())
    assert values[("ksmtuned_decision", 'decision="boost"')] == 1
    assert values[("ksmtuned_pages_to_scan", "")] == 300
    assert values[("ksmtuned_threshold_bytes", "")] == 419430 * 1024
    assert values[("ksmtuned_cycles_total", "")] == 1
    assert values[("ksmtuned_ksm_running", "")] == 0


def test_daemon_writes_after_each_cycle(tmp_path: Path):
    from tests.svc_daemon import RunningDaemon, make_host, wait_for

    textdir = tmp_path / "textfile"
    textdir.mkdir()
    host = make_host(tmp_path / "host", extra_config=f"KSM_METRICS_TEXTFILE={textdir}\n")
    prom = textdir / metrics.DEFAULT_NAME
    with RunningDaemon(host) as daemon:
        assert not prom.exists()  # no cycle yet (the interval is an hour)
        daemon.proc.send_signal(signal.SIGUSR1)
        wait_for(prom.exists, what="the metrics file")
        values, _ = parse(prom.read_text())
        assert values[("ksmtuned_decision", 'decision="boost"')] == 1
        assert values[("ksmtuned_pages_to_scan", "")] == 300
        first = values[("ksmtuned_last_cycle_timestamp_seconds", "")]
        # More free memory than thres and nothing committed: the next cycle stops KSM.
        (host.root / "proc/meminfo").write_text(
            (host.root / "proc/meminfo").read_text().replace("MemFree:          100000",
                                                            "MemFree:         1900000"))
        daemon.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: parse(prom.read_text())[0][("ksmtuned_decision", 'decision="stop"')] == 1,
                 what="the stop decision in the metrics file")
        values, _ = parse(prom.read_text())
        assert values[("ksmtuned_ksm_running", "")] == 0
        assert values[("ksmtuned_pages_to_scan", "")] == 300  # npages is kept on stop
        assert values[("ksmtuned_last_cycle_timestamp_seconds", "")] > first
        assert sorted(p.name for p in textdir.iterdir()) == [metrics.DEFAULT_NAME]


def test_daemon_logs_a_failing_metrics_write_once(tmp_path: Path):
    from tests.svc_daemon import RunningDaemon, make_host, wait_for

    missing = tmp_path / "no-such-dir" / "ksm.prom"
    host = make_host(tmp_path / "host", extra_config=f"KSM_METRICS_TEXTFILE={missing}\n")
    with RunningDaemon(host) as daemon:
        for n in (1, 2, 3):
            daemon.proc.send_signal(signal.SIGUSR1)
            wait_for(lambda: daemon.cycles() == n, what=f"cycle {n}")
        time.sleep(0.2)
        assert daemon.proc.poll() is None
        log = daemon.log_text()
    assert log.count(f"metrics textfile {missing}: directory {missing.parent} does not exist") == 1
    assert "Traceback" not in log


def test_cycles_total_counts_the_daemons_cycles_across_reloads(tmp_path: Path):
    from tests.svc_daemon import RunningDaemon, make_host, wait_for

    textdir = tmp_path / "textfile"
    textdir.mkdir()
    host = make_host(tmp_path / "host", extra_config=f"KSM_METRICS_TEXTFILE={textdir}\n")
    prom = textdir / metrics.DEFAULT_NAME

    def cycles_total() -> float | None:
        return parse(prom.read_text())[0].get(("ksmtuned_cycles_total", "")) if prom.exists() else None

    with RunningDaemon(host) as daemon:
        daemon.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: cycles_total() == 1, what="cycle 1 in the metrics file")
        daemon.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: cycles_total() == 2, what="cycle 2 in the metrics file")
        # A reload retunes (npages back to 0) but the counter goes on: it counts since the start.
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: cycles_total() == 3, what="the reload's cycle in the metrics file")
        assert parse(prom.read_text())[1]["ksmtuned_cycles_total"] == "counter"


def test_the_daemon_removes_its_metrics_file_when_it_stops(tmp_path: Path):
    """A stopped daemon's figures are not current: the file goes, so absent(ksmtuned_info) fires."""
    from tests.svc_daemon import RunningDaemon, make_host, wait_for

    textdir = tmp_path / "textfile"
    textdir.mkdir()
    (textdir / "other.prom").write_text("# another exporter's file\n")
    host = make_host(tmp_path / "host", extra_config=f"KSM_METRICS_TEXTFILE={textdir}\n")
    prom = textdir / metrics.DEFAULT_NAME
    with RunningDaemon(host) as daemon:
        daemon.proc.send_signal(signal.SIGUSR1)
        wait_for(prom.exists, what="the metrics file")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=10) == 0
    assert sorted(p.name for p in textdir.iterdir()) == ["other.prom"]
    assert f"removed the metrics textfile {prom}" in daemon.log_text()


def test_a_reload_keeps_the_metrics_file_or_removes_the_one_no_longer_configured(tmp_path: Path):
    from tests.svc_daemon import RunningDaemon, make_host, wait_for

    first, second = tmp_path / "a.prom", tmp_path / "b.prom"
    host = make_host(tmp_path / "host", extra_config=f"KSM_METRICS_TEXTFILE={first}\n")
    with RunningDaemon(host) as daemon:
        daemon.proc.send_signal(signal.SIGUSR1)
        wait_for(first.exists, what="the metrics file")
        inode = first.stat().st_ino
        daemon.proc.send_signal(signal.SIGHUP)  # the same file: kept, then rewritten by the reload's cycle
        wait_for(lambda: daemon.cycles() == 2, what="the reload's cycle")
        wait_for(lambda: first.exists() and first.stat().st_ino != inode, what="the rewritten file")
        host.config.write_text(host.config.read_text().replace(str(first), str(second)))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(second.exists, what="the new metrics file")
        assert not first.exists()


def test_one_name_for_the_metrics_file():
    """The README, the shipped config and the code name the same file (it was ksmtuned.prom in one)."""
    import re

    repo = Path(__file__).resolve().parent.parent
    for doc in ("README.md", "etc/ksmtuned.conf"):
        names = set(re.findall(r"[\w-][\w.-]*\.prom\b", (repo / doc).read_text()))
        assert names <= {metrics.DEFAULT_NAME}, (doc, names)
    assert metrics.DEFAULT_NAME in (repo / "etc/ksmtuned.conf").read_text()
