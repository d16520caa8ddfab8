"""fileio.replace_file: the daemon's state file and metrics textfile are replaced through it."""

from __future__ import annotations

import os
import stat

import pytest

from ksmtuned_py.fileio import aside_path, replace_file


def test_replaces_atomically_with_the_mode_whatever_the_umask(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old\n")
    before = target.stat().st_ino
    old_umask = os.umask(0o077)
    try:
        written = replace_file(target, b"new\n", 0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new\n"
    assert target.stat().st_ino != before  # renamed over, not rewritten in place
    assert written.st_ino == target.stat().st_ino  # the stat of the file now in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_file_aside_left_by_a_killed_process_with_this_pid_is_replaced(tmp_path):
    target = tmp_path / "ksmtuned-py.prom"
    stale = tmp_path / f".ksmtuned-py.prom.{os.getpid()}.tmp"
    assert aside_path(target) == str(stale)
    stale.write_text("half a file")
    replace_file(target, b"ok\n")
    assert target.read_bytes() == b"ok\n"
    assert not stale.exists()


def test_a_symbolic_link_in_the_place_aside_is_not_followed(tmp_path):
    target = tmp_path / "state.json"
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    os.symlink(victim, aside_path(target))
    replace_file(target, b"{}\n")
    assert victim.read_text() == "keep me\n"
    assert target.read_bytes() == b"{}\n" and not target.is_symlink()


def test_a_failed_rename_leaves_the_old_file_and_nothing_aside(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("x")
    with pytest.raises(OSError):
        replace_file(target, b"data\n")  # a directory cannot be renamed over with a file
    assert (target / "inside").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_missing_directory_is_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        replace_file(tmp_path / "none" / "state.json", b"{}\n")
