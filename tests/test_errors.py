"""sysfs_emu's one error base, its wording helpers, and the atomic file replacement."""

from __future__ import annotations

import errno
import logging
import os
import stat

import pytest

from sysfs_emu import EmuError, ScenarioError, SimulationError, SysfsEmuError
from sysfs_emu.cli import CliError
from sysfs_emu.errors import OnceLog, ServeError, SnapshotError, TreeError, errno_text, one_line
from sysfs_emu.files import replace_file
from sysfs_emu.units import UnitError
from tests.emutree import cli


def test_every_user_facing_error_has_one_base():
    for kind in (ScenarioError, SimulationError, TreeError, ServeError, SnapshotError, UnitError, CliError):
        assert issubclass(kind, EmuError), kind
    assert SysfsEmuError is EmuError
    assert issubclass(SimulationError, ScenarioError) and issubclass(UnitError, ValueError)


def test_errno_text():
    assert errno_text(errno.EINVAL) == "EINVAL (Invalid argument)"
    assert errno_text(errno.EBUSY) == "EBUSY (Device or resource busy)"
    assert errno_text(None) == f"0 ({os.strerror(0)})"


def test_one_line():
    assert one_line(ValueError("a\n  b\tc ")) == "a b c"


def test_once_log_logs_each_change_once_and_the_recovery(caplog):
    log = logging.getLogger("test.oncelog")
    caplog.set_level(logging.INFO, logger="test.oncelog")
    once = OnceLog(log)
    once.ok("disk", "disk is fine again")  # never failed: nothing to say
    for _ in range(3):
        once.fail("disk", "disk is full")
    once.fail("disk", "disk is gone")
    once.fail("net", "net is down")
    once.ok("disk", "disk is fine again")
    once.ok("disk", "disk is fine again")
    once.forget("net")
    once.ok("net", "net is up")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "disk is full"),
        (logging.WARNING, "disk is gone"),
        (logging.WARNING, "net is down"),
        (logging.INFO, "disk is fine again"),
    ]


def test_replace_file_is_atomic_with_the_mode(tmp_path):
    path = tmp_path / "value"
    path.write_text("old\n")
    before = path.stat().st_ino
    st = replace_file(path, b"new\n", 0o444)
    assert path.read_bytes() == b"new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns) != (before, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["value"]  # no temporary file left
    replace_file(path, b"x" * 1_000_000, tmp=tmp_path / "scratch")
    assert path.stat().st_size == 1_000_000 and sorted(p.name for p in tmp_path.iterdir()) == ["value"]


def test_replace_file_leaves_nothing_when_the_rename_fails(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inside").write_text("")
    with pytest.raises(OSError):
        replace_file(tmp_path / "dir", b"data")  # a non-empty directory cannot be replaced by a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def test_deep_nesting_is_one_line_from_every_command(tmp_path):
    deep = "processes: " + "[" * 5000 + "]" * 5000 + "\n"
    path = tmp_path / "deep.yaml"
    path.write_text(deep)
    r = cli("run", str(path), "--root", str(tmp_path / "host"))
    assert (r.returncode, r.stderr) == (1, f"sysfs-emu: error: {path}: malformed YAML: nested too deeply\n")
    r = cli("event", "--root", str(tmp_path / "host"), "start: " + "[" * 5000 + "]" * 5000)
    assert (r.returncode, r.stderr) == (1, "sysfs-emu: error: the event is not valid YAML: nested too deeply\n")
    assert not (tmp_path / "host").exists()


def test_simulate_errors_are_one_line(tmp_path):
    """A simulation error in the middle of `simulate` (here: out of memory) ends it with one line."""
    path = tmp_path / "oom.yaml"
    path.write_text("host: {memory: 64MiB, used: 0, buffers: 0, cached: 0}\n"
                    "processes: [{name: qemu-system-x86, regions: [{size: 48MiB, fill: unique, lazy: true}]}]\n"
                    "events: [{at: 90, touch: {process: 0}}, {at: 90, start: {name: b, regions: "
                    "[{size: 32MiB, fill: unique}]}}]\n")
    r = cli("simulate", str(path), "--duration", "3m")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines() == [
        f"sysfs-emu: error: {path}: events[1].start: starting process 1 at 1m30s brings the guests' resident "
        "memory to 80MiB, more than the host has for them (64MiB): out of memory"]
