"""Man pages and completions: current with the commands, rendered without warnings, completing."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from ksmtuned_py import config
from ksmtuned_py.cli import main as ksmtuned_main
from sysfs_emu.cli import main as sysfs_emu_main

REPO = Path(__file__).resolve().parent.parent
PAGES = ("ksmtuned-py.8", "ksmtuned.conf.5", "sysfs-emu.1")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_manpages", REPO / "tools/gen_manpages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_pages_and_completions_are_what_the_generator_writes():
    got = subprocess.run([sys.executable, str(REPO / "tools/gen_manpages.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    files = _generator().outputs()
    assert {p.relative_to(REPO).as_posix() for p in files} == {
        *(f"man/{p}" for p in PAGES),
        *(f"completions/{n}" for prog in ("ksmtuned-py", "sysfs-emu")
          for n in (f"{prog}.bash", f"_{prog}", f"{prog}.fish"))}


def test_check_names_a_stale_page(tmp_path: Path, monkeypatch):
    gen = _generator()
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "man", copy / "man")
    shutil.copytree(REPO / "completions", copy / "completions")
    page = copy / "man/ksmtuned-py.8"
    page.write_text(page.read_text().replace("Ask the running daemon", "Ask nicely"))
    monkeypatch.setattr(gen, "REPO", copy)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    assert page.read_text() == (REPO / "man/ksmtuned-py.8").read_text()


def _commands(group: click.Group, prefix: str):
    for name, cmd in group.commands.items():
        yield f"{prefix} {name}"
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{prefix} {name}")


@pytest.mark.parametrize("page,group,prog", [("ksmtuned-py.8", ksmtuned_main, "ksmtuned-py"),
                                             ("sysfs-emu.1", sysfs_emu_main, "sysfs-emu")])
def test_every_command_and_option_is_in_its_page(page: str, group: click.Group, prog: str):
    text = (REPO / "man" / page).read_text().replace("\\-", "-")
    sections = re.findall(r"^\.SS (.+)$", text, re.M)
    assert sections == list(_commands(group, prog))
    for full in sections:
        cmd = group
        for word in full.split()[1:]:
            cmd = cmd.commands[word]
        for param in cmd.params:
            if isinstance(param, click.Option) and param.expose_value:
                assert any(f".B {opt}" in text or f", {opt}" in text for opt in param.opts), (full, param.opts)


def test_written_sections_are_there():
    sections = {page: re.findall(r"^\.SH (.+)$", (REPO / "man" / page).read_text(), re.M) for page in PAGES}
    assert sections["ksmtuned-py.8"] == ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS",
                                         "CONFIGURATION", "SIGNALS", "FILES", "EXIT STATUS",
                                         "ENVIRONMENT", "SEE ALSO"]
    assert sections["sysfs-emu.1"] == ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS",
                                       "SIGNALS", "FILES", "EXIT STATUS", "SEE ALSO"]
    assert sections["ksmtuned.conf.5"] == ["NAME", "SYNOPSIS", "DESCRIPTION", "SYNTAX", "KEYS",
                                           "THE DECISION", "EXAMPLES", "FILES", "SEE ALSO"]
    exit_codes = re.findall(r"^\.TP\n\.B (\d+)$",
                            (REPO / "man/ksmtuned-py.8").read_text().split(".SH EXIT STATUS")[1], re.M)
    assert exit_codes == ["0", "1", "2", "69", "78"]


def test_every_config_key_is_described_with_its_default():
    text = (REPO / "man/ksmtuned.conf.5").read_text().replace("\\-", "-").replace("\\e", "\\")
    keys = re.findall(r"^\.TP\n\.BR (\S+) ?(.*)$", text.split(".SH KEYS")[1].split(".SH ")[0], re.M)
    assert [k for k, _ in keys] == list(config.KEYS)
    for key, default in keys:
        spec = config.KEYS[key]
        assert default.strip('"') == (f"={spec.default}" if spec.default else ""), key


def test_generator_refuses_a_key_without_description(tmp_path: Path, monkeypatch):
    gen = _generator()
    shutil.copytree(REPO / "man", tmp_path / "man")
    template = tmp_path / "man/ksmtuned.conf.5.in"
    template.write_text(re.sub(r"^@KEY DEBUG\n.*?(?=^@KEY )", "", template.read_text(), flags=re.S | re.M)
                        .replace("@END\n", "@KEY KSM_NO_SUCH_KEY\nNothing.\n@END\n"))
    monkeypatch.setattr(gen, "REPO", tmp_path)
    with pytest.raises(gen.GenError, match="no description for DEBUG; describes unknown KSM_NO_SUCH_KEY"):
        gen.render_page("ksmtuned.conf.5")


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_warnings(page: str):
    if shutil.which("groff") is None or shutil.which("man") is None:
        pytest.skip("groff or man not found (packages groff-base, man-db)")
    path = REPO / "man" / page
    got = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert (got.returncode, got.stderr) == (0, "")
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80", "MAN_KEEP_FORMATTING": ""}
    got = subprocess.run(["man", "--warnings", "-l", str(path)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert (got.returncode, got.stderr) == (0, "")
    name = page.rsplit(".", 1)[0].upper()
    assert got.stdout.startswith(name), got.stdout[:200]
    assert "@" not in got.stdout.replace("@FILE", "")  # no placeholder left


def _bash_complete(words: list[str]) -> list[str]:
    bindir = Path(sys.executable).parent
    if not (bindir / "ksmtuned-py").is_file():
        pytest.skip(f"{bindir / 'ksmtuned-py'} missing: the project is not installed here")
    script = (f'source {REPO / "completions" / (words[0] + ".bash")}\n'
              'COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))\n'
              f'_{words[0].replace("-", "_")}_completion "{words[0]}"\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    got = subprocess.run(["bash", "-c", script, "bash", *words], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"})
    assert got.returncode == 0, got.stderr
    return [line for line in got.stdout.splitlines() if line]


def test_bash_completion_completes_commands_and_options():
    assert _bash_complete(["ksmtuned-py", "ch"]) == ["check-config"]
    assert _bash_complete(["ksmtuned-py", "ksm", ""]) == ["start", "stop"]
    assert _bash_complete(["ksmtuned-py", "status", "--j"]) == ["--json"]
    assert _bash_complete(["sysfs-emu", "sc"]) == ["scenarios"]
    assert _bash_complete(["ksmtuned-py", "nosuch"]) == []


@pytest.mark.parametrize("prog", ["ksmtuned-py", "sysfs-emu"])
def test_zsh_and_fish_completions_name_their_program(prog: str):
    var = "_" + prog.replace("-", "_").upper() + "_COMPLETE"
    zsh = (REPO / "completions" / f"_{prog}").read_text()
    assert zsh.startswith(f"#compdef {prog}\n") and f"{var}=zsh_complete" in zsh
    fish = (REPO / "completions" / f"{prog}.fish").read_text()
    assert f"{var}=fish_complete" in fish and f"complete --no-files --command {prog}" in fish
