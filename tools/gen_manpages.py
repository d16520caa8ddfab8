#!/usr/bin/env python3
"""Write the man pages and shell completions from the click command definitions.

    python tools/gen_manpages.py           # rewrite man/*.[158] and completions/*
    python tools/gen_manpages.py --check   # exit 1, naming the stale files, if any differ

Each page is a roff template in man/ (``NAME.SECTION.in``) whose written
sections (configuration, signals, files, exit status, ...) are kept by hand;
the generator fills its placeholders from the code:

- ``@VERSION@``: the project's version;
- ``@OPTIONS@``: the group's own options;
- ``@COMMANDS@``: every command and subcommand with its usage, help text and
  options, in the order they are defined;
- ``@KEYS@`` (ksmtuned.conf(5)): every key of ksmtuned_py.config.KEYS with its
  default, followed by the description written for it between ``@KEY NAME``
  and the next ``@KEY`` or ``@END`` in the template.  A key without a
  description, or a description of no key, is an error, so the page cannot
  fall behind the parser.

The completions are click's own scripts for bash, zsh and fish.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

import click
from click.shell_completion import get_completion_class

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ksmtuned_py import __version__, config  # noqa: E402
from ksmtuned_py.cli import main as ksmtuned_main  # noqa: E402
from sysfs_emu.cli import main as sysfs_emu_main  # noqa: E402

PROGRAMS = {"ksmtuned-py": ksmtuned_main, "sysfs-emu": sysfs_emu_main}
PAGES = {"ksmtuned-py.8": "ksmtuned-py", "sysfs-emu.1": "sysfs-emu", "ksmtuned.conf.5": None}
SHELLS = {"bash": "{prog}.bash", "zsh": "_{prog}", "fish": "{prog}.fish"}


class GenError(Exception):
    """A template that does not fit the code; the message says where."""


def roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def _paragraphs(help_text: str) -> list[str]:
    """A docstring's paragraphs, each joined into one line (click's \\b blocks kept as lines)."""
    out = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(help_text or "")):
        lines = block.split("\n")
        if lines[0].strip() == "\b":
            out.append(".nf\n" + roff("\n".join(lines[1:])) + "\n.fi")
        else:
            out.append(roff(" ".join(line.strip() for line in lines)))
    return [p for p in out if p.strip()]


def _options(cmd: click.Command, ctx: click.Context, skip: set[str]) -> list[str]:
    """``.TP`` entries for the command's options (its hidden and global-override ones left out)."""
    out = []
    help_option = cmd.get_help_option(ctx) if "help" in skip else None
    for param in cmd.get_params(ctx):
        if (not isinstance(param, click.Option) or param.hidden or param.name in skip
                or (help_option is not None and param.name == help_option.name)):
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        out.append(f".TP\n.B {roff(names)}\n{roff(' '.join(help_text.split()))}")
    return out


def _walk(group: click.Group, ctx: click.Context, prefix: str):
    """(full name, command, context) for every command under ``group``, in definition order."""
    for name, cmd in group.commands.items():
        sub = click.Context(cmd, info_name=name, parent=ctx)
        yield f"{prefix} {name}", cmd, sub
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, sub, f"{prefix} {name}")


def commands_section(prog: str) -> str:
    group = PROGRAMS[prog]
    ctx = click.Context(group, info_name=prog)
    globals_ = {p.name for p in group.params}
    parts = []
    for full, cmd, sub in _walk(group, ctx, prog):
        usage = " ".join(cmd.collect_usage_pieces(sub))
        parts.append(f".SS {roff(full)}\n.B {roff(full)}\n{roff(usage)}".rstrip())
        paras = _paragraphs(cmd.help)
        parts.append(".PP\n" + "\n.PP\n".join(paras) if paras else "")
        opts = _options(cmd, sub, globals_ | {"help"})
        if opts:
            parts.append(".PP\nOptions:\n" + "\n".join(opts))
    return "\n".join(p for p in parts if p)


def options_section(prog: str) -> str:
    group = PROGRAMS[prog]
    return "\n".join(_options(group, click.Context(group, info_name=prog), set()))


def keys_section(template: str) -> tuple[str, str]:
    """The @KEYS@ text from the per-key descriptions, and the template without them."""
    match = re.search(r"^@KEY .*?^@END\n", template, flags=re.S | re.M)
    if not match:
        raise GenError("ksmtuned.conf.5.in: no @KEY ... @END block")
    written: dict[str, str] = {}
    for block in re.split(r"^@KEY ", match.group(0)[len("@KEY "):-len("@END\n")], flags=re.M):
        name, _, text = block.partition("\n")
        written[name.strip()] = text.strip()
    missing = [k for k in config.KEYS if k not in written]
    unknown = [k for k in written if k not in config.KEYS]
    if missing or unknown:
        raise GenError("ksmtuned.conf.5.in: " + "; ".join(
            ([f"no description for {', '.join(missing)}"] if missing else [])
            + ([f"describes unknown {', '.join(unknown)}"] if unknown else [])))
    entries = []
    for name, spec in config.KEYS.items():
        default = f"={roff(spec.default)}" if spec.default else ""
        shown = '"' + default.replace('"', '\\(dq') + '"' if " " in default else default
        entries.append(f".TP\n.BR {roff(name)} {shown}".rstrip() + f"\n{written[name]}")
    return "\n".join(entries), template[:match.start()] + template[match.end():]


def render_page(page: str) -> str:
    template = (REPO / "man" / f"{page}.in").read_text()
    prog = PAGES[page]
    if "@KEYS@" in template:
        keys, template = keys_section(template)
        template = template.replace("@KEYS@", keys)
    text = template.replace("@VERSION@", __version__)
    if prog is not None:
        text = text.replace("@OPTIONS@", options_section(prog))
        text = text.replace("@COMMANDS@", commands_section(prog))
    leftover = re.findall(r"@[A-Z]+@", text)
    if leftover:
        raise GenError(f"man/{page}.in: unknown placeholder {leftover[0]}")
    return text


def completion(prog: str, shell: str) -> str:
    cls = get_completion_class(shell)
    var = "_" + prog.replace("-", "_").upper() + "_COMPLETE"
    return cls(PROGRAMS[prog], {}, prog, var).source().rstrip("\n") + "\n"


def outputs() -> dict[Path, str]:
    """Every generated file and its text."""
    files = {REPO / "man" / page: render_page(page) for page in PAGES}
    for prog in PROGRAMS:
        for shell, name in SHELLS.items():
            files[REPO / "completions" / name.format(prog=prog)] = completion(prog, shell)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    try:
        files = outputs()
    except GenError as err:
        print(f"gen_manpages: {err}", file=sys.stderr)
        return 1
    stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(REPO)} (run tools/gen_manpages.py)", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_text(files[path])
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
