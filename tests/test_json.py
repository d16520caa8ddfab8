"""One JSON vocabulary: status --json, sysfs-emu snapshot --json and simulate --json name things alike.

The names are ksmtuned_py/cycle.py's: snake case, memory in kB ends in _kb, bytes in _bytes,
milliseconds in _ms; the KSM files keep their names, with the value a program would act on
(advisor_mode: the chosen mode); a process's name is its comm.
"""

from __future__ import annotations

import json
import re
import subprocess

from tests.emutree import KSMTUNED_PY, SYSFS_EMU, cli, served, small_scenario, wait_for

SNAKE = re.compile(r"[a-z][a-z0-9_]*")
UNIT_WORDS = ("memory", "rss", "free", "total", "committed", "thres", "saved", "sleep")


def keys(value, path=""):
    """Every (path, key) of a JSON value's mappings."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path, k
            yield from keys(v, f"{path}.{k}")
    elif isinstance(value, list):
        for v in value:
            yield from keys(v, path + "[]")


def check_vocabulary(document) -> None:
    for path, key in keys(document):
        assert SNAKE.fullmatch(key), f"{path}.{key}: not a snake_case name"
        assert not key.endswith(("_kB", "_KB", "_bytes_kb")), f"{path}.{key}"
        if key in ("kb", "bytes", "ms"):
            raise AssertionError(f"{path}.{key}: a unit is not a name")


def test_status_snapshot_and_simulate_speak_alike(tmp_path):
    root = tmp_path / "host"
    scenario = tmp_path / "s.yaml"
    scenario.write_text(json.dumps(small_scenario(run=0)))  # JSON is YAML
    with served(root, str(scenario), "--speed", "1"):
        wait_for(lambda: len([p for p in (root / "proc").iterdir() if p.name.isdigit()]) == 3,
                 what="the guests")
        status = json.loads(subprocess.run([KSMTUNED_PY, "--root", str(root), "--config", str(tmp_path / "none"),
                                            "status", "--json"], capture_output=True, text=True,
                                           check=True).stdout)
        snapshot = json.loads(cli("snapshot", "--root", str(root), "--json").stdout)
    rows = json.loads(subprocess.run(
        [SYSFS_EMU, "simulate", str(scenario), "--duration", "2m", "--json"], capture_output=True, text=True,
        check=True).stdout)["timeline"]
    for document in (status, snapshot, *rows):
        check_vocabulary(document)
    # the same KSM file, the same name and value
    assert status["ksm"]["advisor_mode"] == snapshot["ksm"]["advisor_mode"] == "none"
    for name in ("run", "pages_to_scan", "sleep_millisecs", "pages_sharing", "general_profit"):
        assert status["ksm"][name] == snapshot["ksm"][name], name
        assert name in rows[0], name
    for document in (status, snapshot, rows[0]):
        assert "saved_bytes" in document
    assert status["page_size"] == snapshot["page_size"]
    # a process: pid and comm; its memory in kB
    assert {g["comm"] for g in status["guests"]} == {"qemu-system-x86"}
    assert {p["comm"] for p in snapshot["processes"]} == {"qemu-system-x86", "sshd"}
    assert all("rss_kb" in p for p in snapshot["processes"])
    assert all("committed_kb" in g for g in status["guests"])
    assert sum(g["committed_kb"] for g in status["guests"]) == status["memory"]["committed_kb"]
    # meminfo in kB, named in snake case; a cycle's memory in the cycle's names
    assert snapshot["memory"]["mem_total_kb"] == status["memory"]["total_kb"] == 1024 * 1024
    for name in ("free_kb", "committed_kb", "thres_kb", "total_kb"):
        assert name in status["memory"] and name in rows[0]
    assert status["next"]["sleep_ms"] > 0 and rows[0]["sleep_ms"] > 0
