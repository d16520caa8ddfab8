"""--help of both commands: -h works, summaries are whole sentences, metavars say what a path is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from ksmtuned_py.cli import main as ksmtuned_main
from sysfs_emu.cli import main as sysfs_emu_main

BIN = Path(sys.executable).parent


def commands(group: click.Group, prefix: tuple[str, ...] = ()):
    """(argv, command) for every command and subcommand of ``group``."""
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from commands(cmd, (*prefix, name))


ALL = [("ksmtuned-py", ksmtuned_main), ("sysfs-emu", sysfs_emu_main)]
EVERY_COMMAND = [(prog, argv) for prog, group in ALL for argv, _ in commands(group)]


def run(prog: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / prog), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("prog", ["ksmtuned-py", "sysfs-emu"])
def test_dash_h_is_help(prog):
    short, long = run(prog, "-h"), run(prog, "--help")
    assert (short.returncode, short.stderr) == (0, "")
    assert short.stdout == long.stdout and short.stdout.startswith(f"Usage: {prog} ")


@pytest.mark.parametrize("prog, argv", EVERY_COMMAND)
def test_every_command_takes_dash_h(prog, argv):
    got = run(prog, *argv, "-h")
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith(f"Usage: {prog} {' '.join(argv)} ")


@pytest.mark.parametrize("prog, group", ALL)
def test_command_summaries_are_not_cut(prog, group):
    """Each command's line in --help is its own short help, whole (click cuts a long docstring with ...)."""
    listing = run(prog, "--help").stdout
    for argv, cmd in commands(group):
        assert cmd.short_help, f"{prog} {' '.join(argv)} has no short help"
        assert not cmd.short_help.endswith("..."), cmd.short_help
    for line in listing.split("Commands:\n")[1].splitlines():
        assert not line.rstrip().endswith("..."), line
        assert len(line) <= 79, line


@pytest.mark.parametrize("prog, argv", EVERY_COMMAND)
def test_metavars_say_what_a_path_is(prog, argv):
    """DIR for a directory, FILE for a file, PATH for either; never click's DIRECTORY or TEXT."""
    text = run(prog, *argv, "--help").stdout
    options = text.split("Options:\n")[1]
    assert not re.search(r"--\S+ (DIRECTORY|TEXT|FLOAT)\b", options), options
    for flag in ("--root", "--destdir", "--unitdir"):
        for m in re.finditer(rf"{flag} (\S+)", options):
            assert m.group(1) == "DIR", (flag, options)
    for m in re.finditer(r"--(config|exec) (\S+)", options):
        assert m.group(2) == "FILE", options


def test_run_help_tells_signals_files_and_exit_status():
    text = run("ksmtuned-py", "run", "--help").stdout
    for needed in ("SIGUSR1", "SIGHUP", "SIGTERM", "PIDFILE", "/var/run/ksmtune.pid", "LOGFILE",
                   "KSM_METRICS_TEXTFILE", "Exit status:", "  78  ", "  69  ", "  0   "):
        assert needed in text, needed
    assert max(len(line) for line in text.splitlines()) <= 79
