"""The ``ksmtuned-py`` program: the daemon starts without loading the command-line toolkit.

``ksmtuned-py`` and ``ksmtuned-py run``, with ``--root`` and ``--config`` before or after
``run``, start the daemon directly; every other command line (another command, ``--help``,
``--version``, a mistake) goes to the click application in ``cli.py``, which also
understands these; and so does every command line while the shell completion asks
(``_KSMTUNED_PY_COMPLETE``), which completing ``ksmtuned-py <TAB>`` sends without arguments.  The daemon runs for months, and click with its dependencies is about
2 MB of its resident memory that it would never use again after parsing two options.
"""

from __future__ import annotations

import os
import sys

_OPTIONS = {"--root": "root", "--config": "config_path"}


def daemon_arguments(args: list[str]) -> dict | None:
    """``{"root": ..., "config_path": ...}`` when ``args`` only start the daemon; None for anything else."""
    from ksmtuned_py.config import DEFAULT_PATH

    values = {"root": "/", "config_path": DEFAULT_PATH}
    commands = 0
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg == "run":
            commands += 1
        elif name in _OPTIONS and eq:
            values[_OPTIONS[name]] = value
        elif arg in _OPTIONS and i + 1 < len(args):
            values[_OPTIONS[arg]] = args[i + 1]
            i += 1
        else:
            return None
        i += 1
    root = values["root"]
    if commands > 1 or not root or (os.path.exists(root) and not os.path.isdir(root)) or not values["config_path"]:
        return None  # click says what is wrong
    return values


COMPLETION = "_KSMTUNED_PY_COMPLETE"  # set by the shell completion: click answers, nothing runs


def main() -> None:
    values = None if os.environ.get(COMPLETION) else daemon_arguments(sys.argv[1:])
    if values is None:
        from ksmtuned_py.cli import main as cli_main

        cli_main()
        return
    from ksmtuned_py.daemon import Daemon
    from ksmtuned_py.errors import UserError
    from ksmtuned_py.service import configure_logging

    configure_logging()
    try:
        status = Daemon(values["config_path"], values["root"]).run()
    except UserError as e:  # as cli.py says it: one line and the exit status
        print(f"ksmtuned-py: {e}", file=sys.stderr)
        status = e.exit_code
    except BrokenPipeError:
        status = 1
    raise SystemExit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
