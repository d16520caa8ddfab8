"""The ``ksmtuned-py`` command line.

To add a command, define it with ``@main.command()`` (or ``main.add_command``);
``ctx.obj`` is an :class:`Options` with the global ``--root`` and ``--config``,
which every command also accepts after its name (``@no_global_options`` opts out).
Raise :class:`ksmtuned_py.errors.UserError` for anything the user can fix: it is
printed as one line and turned into the exit status, never a traceback.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import click

from ksmtuned_py import __version__
from ksmtuned_py import config as configmod
from ksmtuned_py.errors import UserError
from ksmtuned_py.service import configure_logging


@dataclass
class Options:
    root: str
    config_path: str

    def load_config(self) -> configmod.Config:
        return configmod.load(self.config_path)


# The global options, defined once: the group takes them with their defaults, and
# every command (and the `ksm` group) accepts them again after its name, so that
# `ksmtuned-py status --root DIR` works like `ksmtuned-py --root DIR status`.
_GLOBAL_OPTIONS: tuple[tuple[str, str, dict], ...] = (
    ("--root", "root", dict(
        default="/",
        type=click.Path(file_okay=False),
        help="Read /proc and /sys below this directory (e.g. a simulated host).",
    )),
    ("--config", "config_path", dict(
        default=configmod.DEFAULT_PATH,
        metavar="FILE",
        help="The configuration file.",
    )),
)


def _set_global(ctx: click.Context, param: click.Parameter, value):
    """A global option given after a command's name overrides the group's value."""
    if value is not None:
        opts = ctx.find_object(Options)
        if opts is not None:
            setattr(opts, param.name, value)


def global_options(f):
    """Decorator: the global options with their defaults, on the group."""
    for flag, name, kw in reversed(_GLOBAL_OPTIONS):
        f = click.option(flag, name, show_default=True, **kw)(f)
    return f


def _add_global_options(cmd: click.Command) -> None:
    """The global options, as overrides, on a command (unless it opted out)."""
    if getattr(cmd.callback, "no_global_options", False):
        return
    have = {p.name for p in cmd.params}
    for flag, name, kw in _GLOBAL_OPTIONS:
        if name not in have:
            cmd.params.append(click.Option(
                [flag, name], default=None, expose_value=False, callback=_set_global,
                type=kw.get("type"), metavar=kw.get("metavar"),
                help=kw["help"] + " Same as before the command.",
            ))


def no_global_options(f):
    """Decorator (below ``@main.command()``): the command ignores --root/--config, so refuse them after it."""
    f.no_global_options = True
    return f


class _Group(click.Group):
    """A click group that prints UserError as one line with its exit status."""

    group_class = type  # nested groups (ksm) behave the same

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _add_global_options(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"ksmtuned-py: {e}", err=True)
            ctx.exit(e.exit_code)
        except BrokenPipeError:
            ctx.exit(1)


@click.group(cls=_Group, invoke_without_command=True)
@global_options
@click.version_option(__version__, prog_name="ksmtuned-py")
@click.pass_context
def main(ctx: click.Context, root: str, config_path: str) -> None:
    """Tune the kernel's KSM as ksmtuned does. Without a command: run the daemon."""
    ctx.obj = Options(root=root, config_path=config_path)
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


@main.command()
@click.pass_obj
def run(opts: Options) -> None:
    """Run the daemon in the foreground."""
    from ksmtuned_py.daemon import Daemon

    configure_logging()
    raise SystemExit(Daemon(opts.config_path, opts.root).run())


@main.command()
@click.pass_obj
def retune(opts: Options) -> None:
    """Ask the running daemon to retune now (SIGUSR1)."""
    from ksmtuned_py.pidfile import running_pid

    cfg = opts.load_config()
    pid = running_pid(cfg.pidfile)
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        raise UserError(f"no ksmtuned-py daemon is running: pid {pid} from {cfg.pidfile} is gone") from None
    except PermissionError:
        raise UserError(f"not allowed to signal the daemon (pid {pid}); run as root") from None
    click.echo(f"asked ksmtuned-py (pid {pid}) to retune")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(opts: Options, as_json: bool) -> None:
    """Show what KSM is doing now and what the next cycle would decide."""
    import json

    from ksmtuned_py.status import collect, render_text

    snap = collect(opts.load_config(), opts.root)
    if as_json:
        click.echo(json.dumps(snap, indent=2, sort_keys=False))
    else:
        click.echo(render_text(snap), nl=False)


@main.command()
@click.option("--dry-run/--apply", "dry_run", default=True, help="Only print (default), or write the knobs.")
@click.pass_obj
def adjust(opts: Options, dry_run: bool) -> None:
    """Make one decision now and print it (written only with --apply)."""
    from ksmtuned_py.status import adjust_once

    configure_logging()
    lines, ok = adjust_once(opts.load_config(), opts.root, apply=not dry_run)
    for line in lines:
        click.echo(line)
    if not ok:
        raise UserError("some KSM knobs could not be written (see above)")


@main.command("check-config")
@click.pass_obj
def check_config(opts: Options) -> None:
    """Validate the configuration and show every effective value and its origin."""
    import shlex

    cfg = opts.load_config()
    for w in cfg.warnings:
        click.echo(f"warning: {w}", err=True)
    if not cfg.file_found:
        click.echo(f"{cfg.path} does not exist; using the environment and defaults", err=True)
    for key, s in cfg.settings.items():
        click.echo(f"{key + '=' + shlex.quote(s.text):<40} # {s.origin}")


@main.group()
def ksm() -> None:
    """Start or stop KSM itself (the ksm.service helper)."""


@ksm.command("start")
@click.pass_obj
def ksm_start(opts: Options) -> None:
    """Write 1 to run (and max_kernel_pages on kernels that have it)."""
    from ksmtuned_py.ksmctl import start

    configure_logging()
    for line in start(opts.root):
        click.echo(line)


@ksm.command("stop")
@click.pass_obj
def ksm_stop(opts: Options) -> None:
    """Write 0 to run."""
    from ksmtuned_py.ksmctl import stop

    for line in stop(opts.root):
        click.echo(line)


@main.command()
@click.option("--textfile", "textfile", required=True, type=click.Path(),
              help="node_exporter's textfile directory (or a .prom file) to write.")
@click.pass_obj
def metrics(opts: Options, textfile: str) -> None:
    """Write Prometheus metrics of the current state once, atomically."""
    from ksmtuned_py import metrics as metricsmod
    from ksmtuned_py.status import collect

    sample = metricsmod.sample_from_status(collect(opts.load_config(), opts.root))
    click.echo(f"wrote {metricsmod.write_textfile(textfile, sample)}")


@main.command()
@no_global_options
@click.option("--destdir", default="/", show_default=True, type=click.Path(file_okay=False),
              help="Install below this directory (packaging).")
@click.option("--unitdir", default="/etc/systemd/system", show_default=True,
              help="Where the systemd units go (packages: /usr/lib/systemd/system).")
@click.option("--exec", "exec_path", default=None,
              help="The ksmtuned-py path the units and hook run [default: this ksmtuned-py].")
def install(destdir: str, unitdir: str, exec_path: str | None) -> None:
    """Install the systemd units, default config, logrotate file and libvirt hook."""
    from ksmtuned_py import install as installmod

    exec_path = exec_path or installmod.default_exec()
    for action in installmod.install(destdir, unitdir, exec_path):
        click.echo(str(action))
    for path in installmod.hidden_by_sandbox(exec_path):
        click.echo(f"warning: the service cannot run {path}: its sandbox (ProtectHome=yes) hides "
                   "/home, /root and /run/user; install ksmtuned-py elsewhere (e.g. a venv in /opt)",
                   err=True)
    if destdir in ("/", ""):
        click.echo(installmod.NEXT_STEPS)


SIM_EXTRA_HINT = "pip install 'ksmtuned-py[sim]'"


@main.command()
@no_global_options
@click.option("--speed", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Simulated seconds per second.")
@click.option("--cycles", type=click.IntRange(min=1), default=None, help="Stop after this many decisions.")
@click.pass_context
def demo(ctx: click.Context, speed: float, cycles: int | None) -> None:
    """Show the daemon at work on a simulated host (no root, no KSM needed)."""
    for name, flag in (("root", "--root"), ("config_path", "--config")):
        if ctx.parent.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError(f"demo makes its own simulated host and configuration; it takes no {flag}")
    try:
        from ksmtuned_py.demo import run_demo
        import sysfs_emu.simulation  # noqa: F401  (numpy, pyyaml: the [sim] extra)
    except ImportError as e:
        raise UserError(f"the demo needs the simulator, which is not installed ({e.name or e}): "
                        f"{SIM_EXTRA_HINT}") from None
    raise SystemExit(run_demo(speed=speed, cycles=cycles))


if __name__ == "__main__":  # pragma: no cover
    main()
