"""The Grafana dashboard and Prometheus rules: Debian's promtool checks them, and they name real metrics.

promtool comes from Debian's ``prometheus`` package (fetched into the cache,
never installed).  The metrics that exist are what a real node_exporter
serves from a simulated host: its ksmd collector, and its textfile collector
reading the file a running daemon wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from sysfs_emu import Simulation
from sysfs_emu.tree import Tree
from tests import debpkg, nodeexporter, proctools
from tests.emutree import KSMTUNED_PY, small_scenario

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "etc/prometheus/ksmtuned-py.rules.yml"
DASHBOARD = REPO / "etc/grafana/ksmtuned-py.json"
ALERTS = ["KSMStoppedWhileGuestsDoNotFit", "KSMNegativeProfit", "KSMUnmergeRisk", "KSMKsmdOverCPUBudget",
          "KSMGuestNotMergeable", "KsmtunedMetricsStale", "KsmtunedDown"]

_KEYWORDS = {"and", "or", "unless", "on", "ignoring", "by", "without", "group_left", "group_right",
             "bool", "offset", "inf", "nan"}


@pytest.fixture(scope="module")
def promtool() -> Path:
    return debpkg.file_or_skip("prometheus", "usr/bin/promtool")


@pytest.fixture(scope="module")
def textfile(tmp_path_factory) -> Path:
    """The metrics file a running daemon writes (KSM_METRICS_TEXTFILE) after a cycle on a
    simulated host where KSM merged; copied aside, since the daemon removes it when it stops."""
    base = tmp_path_factory.mktemp("metrics")
    sim = Simulation(small_scenario())
    sim.advance(30.0)
    Tree(sim, base / "host").create()
    (base / "written").mkdir()
    (base / "ksmtuned.conf").write_text(
        "KSM_THRES_COEF=200\nKSM_MONITOR_INTERVAL=3600\n"
        f"PIDFILE={base}/ksmtune.pid\nKSM_METRICS_TEXTFILE={base}/written\n")
    daemon = subprocess.Popen([KSMTUNED_PY, "--root", str(base / "host"), "--config", str(base / "ksmtuned.conf"),
                               "run"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    written = base / "written/ksmtuned-py.prom"
    try:
        proctools.wait_for(lambda: (base / "ksmtune.state").exists() or daemon.poll() is not None,
                           timeout=30, what="the daemon's start")
        assert daemon.poll() is None, daemon.stderr.read().decode()
        os.kill(daemon.pid, signal.SIGUSR1)  # one cycle now
        proctools.wait_for(written.exists, timeout=30, what="the daemon's metrics file")
        (base / "textfile").mkdir()
        shutil.copy(written, base / "textfile/ksmtuned-py.prom")
    finally:
        proctools.stop(daemon, timeout=10)
    return base / "textfile/ksmtuned-py.prom"


@pytest.fixture(scope="module")
def served_metrics(textfile: Path) -> set[str]:
    """Every metric name node_exporter serves with its ksmd and textfile collectors on that host."""
    host = textfile.parent.parent / "host"
    with nodeexporter.running(nodeexporter.binary(), f"--path.sysfs={host / 'sys'}",
                              f"--path.procfs={host / 'proc'}", "--collector.disable-defaults",
                              "--collector.ksmd", "--collector.textfile",
                              f"--collector.textfile.directory={textfile.parent}") as exporter:
        text = exporter.first
    assert 'node_textfile_scrape_error 0\n' in text
    return {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or label names)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)                      # strings
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)                  # matchers, ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        if m.group(2) is None and m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":  # Grafana's label_values(SELECTOR, LABEL): the selector
            selector = re.fullmatch(r"label_values\((.+), *\w+\)", var["query"]["query"]).group(1)
            out.append((f"${var['name']}", selector))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    # The rules file is YAML; every expr is on `expr:` lines (block scalars for multi-line ones).
    text = RULES.read_text()
    out = []
    for m in re.finditer(r"^( +)- alert: (\w+)\n(?:\1  .*\n)*?\1  expr: (\|\n((?:\1    .*\n)+)|(.*)\n)", text, re.M):
        expr = m.group(4) or m.group(5)
        out.append((m.group(2), " ".join(expr.split())))
    return out


def test_promtool_check_metrics_accepts_the_textfile(promtool: Path, textfile: Path):
    text = textfile.read_text()
    assert "ksmtuned_ksm_general_profit_bytes " in text and "ksmtuned_decision{" in text
    got = subprocess.run([str(promtool), "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    assert (got.returncode, got.stdout, got.stderr) == (0, "", "")


def test_promtool_check_metrics_would_report_a_bad_name(promtool: Path, textfile: Path):
    bad = textfile.read_text().replace("ksmtuned_ksm_pages_scanned_total", "ksmtuned_ksm_pages_scanned")
    got = subprocess.run([str(promtool), "check", "metrics"], input=bad, capture_output=True,
                         text=True, timeout=60)
    assert got.returncode != 0 and "counter metrics should have \"_total\" suffix" in got.stdout + got.stderr


def test_promtool_check_rules_accepts_the_rules(promtool: Path):
    got = subprocess.run([str(promtool), "check", "rules", str(RULES)], capture_output=True, text=True,
                         timeout=60)
    assert got.returncode == 0, got.stdout + got.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in got.stdout
    assert [name for name, _ in rule_exprs()] == ALERTS


def test_dashboard_queries_are_valid_promql(promtool: Path, tmp_path: Path):
    """Each query, with the dashboard's variables filled in, as a recording rule promtool must accept."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr.replace("$instance", ".*")}
        for i, (_, expr) in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard.rules.json"
    path.write_text(json.dumps(rules))
    got = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert got.returncode == 0, got.stdout + got.stderr


def test_queries_name_only_metrics_that_exist(served_metrics: set[str]):
    assert "ksmtuned_decision" in served_metrics and "node_ksmd_pages_sharing" in served_metrics
    used = {}
    for where, expr in [*dashboard_exprs(), *rule_exprs()]:
        names = metric_names(expr.replace("$instance", ".*").replace("$__rate_interval", "5m"))
        assert names, (where, expr)
        for name in names:
            used.setdefault(name, where)
    unknown = {name: where for name, where in used.items() if name not in served_metrics}
    assert unknown == {}
    assert metric_names('rate(x_total{a="b"}[5m]) and on (instance) y > bool 3') == {"x_total", "y"}


def test_dashboard_panels():
    dash = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in dash["panels"]]
    assert titles[:5] == ["Memory saved by KSM", "general_profit", "Guests", "Decision", "pages_to_scan"]
    assert dash["uid"] == "ksmtuned-py"
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)
    for p in dash["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]


def _series(**metrics: str) -> list[dict]:
    return [{"series": name, "values": values} for name, values in metrics.items()]


def test_each_alert_fires_exactly_when_it_should(promtool: Path, tmp_path: Path):
    """promtool test rules: for every alert a host where it fires and one where it does not."""
    h = lambda inst, name: f'{name}{{instance="{inst}",job="node"}}'  # noqa: E731
    series = []
    # h1: guests + threshold above total and ksmd stopped; h2 fits; h3 does not fit but KSM runs.
    for inst, committed, running in (("h1", 900, 0), ("h2", 500, 0), ("h3", 900, 1)):
        series += [{"series": h(inst, "ksmtuned_memory_committed_bytes"), "values": f"{committed}x40"},
                   {"series": h(inst, "ksmtuned_threshold_bytes"), "values": "200x40"},
                   {"series": h(inst, "ksmtuned_memory_total_bytes"), "values": "1000x40"},
                   {"series": h(inst, "ksmtuned_ksm_running"), "values": f"{running}x40"},
                   {"series": h(inst, "node_ksmd_run"), "values": f"{running}x40"}]
    # general_profit: h4 negative; h1..h3 and h5 small and positive.
    for inst, profit in (("h1", 10), ("h2", 10), ("h3", 10), ("h4", -4096), ("h5", 10)):
        series += [{"series": h(inst, "ksmtuned_ksm_general_profit_bytes"), "values": f"{profit}x90"}]
    # merged memory: on h5 more than MemAvailable + SwapFree, on h4 less.
    for inst, need, room in (("h4", 4096, 8192), ("h5", 8192, 4096)):
        series += [{"series": h(inst, "ksmtuned_unmerge_need_bytes"), "values": f"{need}x90"},
                   {"series": h(inst, "ksmtuned_unmerge_room_bytes"), "values": f"{room}x90"}]
    # ksmd's CPU seconds: h2 at half a CPU, h3 at a tenth, both with a budget of 20 %.
    for inst, per_minute in (("h2", 30), ("h3", 6)):
        series += [{"series": h(inst, "ksmtuned_ksmd_cpu_seconds_total"), "values": f"0+{per_minute}x90"},
                   {"series": h(inst, "ksmtuned_ksmd_cpu_budget_ratio"), "values": "0.2x90"}]
    # per guest: db on h1 not mergeable, web mergeable
    series += [{"series": f'ksmtuned_guest_mergeable{{guest="db",instance="h1",job="node"}}', "values": "0x90"},
               {"series": f'ksmtuned_guest_mergeable{{guest="web",instance="h1",job="node"}}', "values": "1x90"}]
    # Cycles: h6 stopped at time 0, h7 keeps cycling every minute.
    series += [{"series": h("h6", "ksmtuned_last_cycle_timestamp_seconds"), "values": "0x30"},
               {"series": h("h7", "ksmtuned_last_cycle_timestamp_seconds"), "values": "0+60x30"},
               # h8's metrics vanish after 10 minutes; h9's stay.
               {"series": h("h8", "ksmtuned_info"), "values": "1x10 _x30"},
               {"series": h("h9", "ksmtuned_info"), "values": "1x40"}]

    def fired(alertname, inst, eval_time):
        return {"eval_time": eval_time, "alertname": alertname, "exp_alerts": [
            {"exp_labels": {"severity": "warning", "instance": inst, "job": "node"},
             "exp_annotations": ANNOTATIONS[alertname]}]}

    ANNOTATIONS = {
        "KSMStoppedWhileGuestsDoNotFit": {
            "summary": "KSM is stopped on h1 although its guests do not fit in memory",
            "description": "The guests' memory plus the free-memory threshold come to 1.074kiB, more "
                           "than the host has, so ksmd should run.  Check `ksmtuned-py status` and "
                           "/sys/kernel/mm/ksm/run."},
        "KSMNegativeProfit": {
            "summary": "KSM costs more memory than it saves on h4",
            "description": "general_profit has been -4kiB for an hour: ksmd's metadata outweighs the "
                           "pages it merged.  Consider stopping KSM on this host or marking fewer "
                           "regions mergeable."},
        "KSMUnmergeRisk": {
            "summary": "KSM has merged more memory on h5 than the host could give back",
            "description": "KSM has merged 8kiB that the guests would need again if they wrote it, more than "
                           "MemAvailable + SwapFree: if the merged pages diverge the host has to find that "
                           "memory (swap or OOM)."},
        "KSMKsmdOverCPUBudget": {
            "summary": "ksmd uses more CPU on h2 than KSM_MAX_CPU allows",
            "description": "ksmd has used 50% of a CPU for 30 minutes.  Check `ksmtuned-py status`; "
                           "KSM_POLICY=adaptive scans only while scanning pays."},
        "KsmtunedMetricsStale": {
            "summary": "ksmtuned-py on h6 has not completed a cycle for 20m 0s",
            "description": "Check `systemctl status ksmtuned-py` and `journalctl -u ksmtuned-py`."},
        "KsmtunedDown": {
            "summary": "ksmtuned-py metrics are gone on h8",
            "description": "No ksmtuned-py metrics for 5 minutes.  Check `systemctl status ksmtuned-py` "
                           "and node_exporter's --collector.textfile.directory."},
    }
    tests = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "KSMStoppedWhileGuestsDoNotFit", "exp_alerts": []},  # pending
            fired("KSMStoppedWhileGuestsDoNotFit", "h1", "20m"),
            {"eval_time": "50m", "alertname": "KSMNegativeProfit", "exp_alerts": []},
            fired("KSMNegativeProfit", "h4", "70m"),
            fired("KSMUnmergeRisk", "h5", "35m"),
            {"eval_time": "30m", "alertname": "KSMKsmdOverCPUBudget", "exp_alerts": []},  # pending
            fired("KSMKsmdOverCPUBudget", "h2", "45m"),
            {"eval_time": "75m", "alertname": "KSMGuestNotMergeable", "exp_alerts": [
                {"exp_labels": {"severity": "info", "instance": "h1", "job": "node", "guest": "db"},
                 "exp_annotations": {
                     "summary": "KSM cannot merge guest db on h1",
                     "description": "None of the guest's memory is mergeable.  `ksmtuned-py doctor` says why "
                                    "and what to change, if it should be."}}]},
            fired("KsmtunedMetricsStale", "h6", "20m"),
            {"eval_time": "14m", "alertname": "KsmtunedDown", "exp_alerts": []},
            fired("KsmtunedDown", "h8", "25m"),
        ]}]}
    path = tmp_path / "ksmtuned-py.rules.test.json"
    path.write_text(json.dumps(tests))
    got = subprocess.run([str(promtool), "test", "rules", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert got.returncode == 0, got.stdout + got.stderr


def test_per_guest_ksmd_and_unmerge_metrics_are_served(textfile: Path, served_metrics: set[str]):
    """Each guest by name (a bounded label: one series per guest), ksmd's CPU, cow_ksm, the unmerge risk."""
    text = textfile.read_text()
    guests = re.findall(r'^ksmtuned_guest_resident_bytes\{guest="([^"]+)"\} \d+$', text, re.M)
    assert guests and len(guests) == len(set(guests))
    for name in ("ksmtuned_guest_resident_bytes", "ksmtuned_guest_ksm_merging_pages", "ksmtuned_guest_ksm_profit_bytes",
                 "ksmtuned_guest_mergeable", "ksmtuned_ksmd_cpu_seconds_total", "ksmtuned_ksm_cow_total",
                 "ksmtuned_unmerge_need_bytes", "ksmtuned_unmerge_room_bytes", "ksmtuned_unmerge_risk",
                 "ksmtuned_policy"):
        assert name in served_metrics, name
    assert re.search(r"^ksmtuned_ksmd_cpu_seconds_total \d", text, re.M)
