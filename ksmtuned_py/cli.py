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
from ksmtuned_py.errors import EX_NOINPUT, UserError
from ksmtuned_py.service import configure_logging


@dataclass
class Options:
    root: str
    config_path: str

    def load_config(self) -> configmod.Config:
        return configmod.load(self.config_path, root=self.root)


# The global options, defined once: the group takes them with their defaults, and
# every command (and the `ksm` group) accepts them again after its name, so that
# `ksmtuned-py status --root DIR` works like `ksmtuned-py --root DIR status`.
_GLOBAL_OPTIONS: tuple[tuple[str, str, dict], ...] = (
    ("--root", "root", dict(
        default="/",
        type=click.Path(file_okay=False),
        metavar="DIR",
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


# Metavars: DIR for a directory, FILE for a file, PATH for either; -h is --help, as in sysfs-emu.
CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(cls=_Group, invoke_without_command=True, context_settings=CONTEXT)
@global_options
@click.version_option(__version__, prog_name="ksmtuned-py")
@click.pass_context
def main(ctx: click.Context, root: str, config_path: str) -> None:
    """Tune the kernel's KSM as ksmtuned does. Without a command: run the daemon.

    Every command accepts --root and --config after its name too.
    """
    ctx.obj = Options(root=root, config_path=config_path)
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


RUN_HELP = """Run the daemon in the foreground (what ksmtuned-py does without a command).

Every KSM_MONITOR_INTERVAL seconds it reads the host, decides as ksmtuned does and writes
/sys/kernel/mm/ksm; with DEBUG set it logs the reference's lines. Operational messages go
to the journal under systemd, else to standard error.

\b
Signals:
  SIGUSR1          retune now (`ksmtuned-py retune` sends it)
  SIGHUP           re-read the configuration (a broken one is refused,
                   the old one kept), reopen LOGFILE, retune
                   (`ksmtuned-py reload`, `systemctl reload`)
  SIGTERM, SIGINT  stop: exit status 0, KSM left as it is

\b
Files:
  PIDFILE          written and locked while it runs (a second daemon is
                   refused), removed at exit (default /var/run/ksmtune.pid)
  ksmtune.state    next to PIDFILE (.pid becomes .state): the daemon's state,
                   which status and adjust read; removed at exit
  LOGFILE          the debug log, when DEBUG is set
  KSM_METRICS_TEXTFILE  Prometheus metrics after every cycle, removed at exit

\b
Exit status:
  0   stopped by SIGTERM or SIGINT
  1   another daemon holds PIDFILE, PIDFILE cannot be written, or
      /proc/meminfo cannot be read
  69  no KSM in this kernel (/sys/kernel/mm/ksm missing: CONFIG_KSM)
  78  the configuration is invalid (the file and line are named)
"""


@main.command(help=RUN_HELP, short_help="Run the daemon in the foreground (the default).")
@click.pass_obj
def run(opts: Options) -> None:
    from ksmtuned_py.daemon import Daemon

    configure_logging()
    raise SystemExit(Daemon(opts.config_path, opts.root).run())


def _signal_daemon(opts: Options, sig: signal.Signals) -> int:
    """Send ``sig`` to the daemon holding the configured PIDFILE; its pid.  UserError when none runs."""
    from ksmtuned_py.pidfile import running_pid

    cfg = opts.load_config()
    pid = running_pid(cfg.pidfile)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise UserError(f"no ksmtuned-py daemon is running: pid {pid} from {cfg.pidfile} is gone") from None
    except PermissionError:
        raise UserError(f"not allowed to signal the daemon (pid {pid}); run as root") from None
    return pid


@main.command(short_help="Ask the running daemon to retune now.")
@click.pass_obj
def retune(opts: Options) -> None:
    """Ask the running daemon to retune now (SIGUSR1): what the libvirt hook does when a guest
    starts or stops.  The daemon is found through PIDFILE; exit status 1 when none runs."""
    pid = _signal_daemon(opts, signal.SIGUSR1)
    click.echo(f"asked ksmtuned-py (pid {pid}) to retune")


@main.command(short_help="Ask the running daemon to reload its config.")
@click.pass_obj
def reload(opts: Options) -> None:
    """Ask the running daemon to re-read its configuration, reopen LOGFILE and retune (SIGHUP),
    as `systemctl reload` and the logrotate file do.  The daemon is found through PIDFILE (the
    reference ksmtuned, which SIGHUP would kill, is refused); exit status 1 when none runs."""
    pid = _signal_daemon(opts, signal.SIGHUP)
    click.echo(f"asked ksmtuned-py (pid {pid}) to reload")


@main.command(short_help="Show KSM now and the next cycle's decision.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see the README).")
@click.pass_obj
def status(opts: Options, as_json: bool) -> None:
    """Show what KSM is doing now, the memory it saves, the guests counted, and what the next
    cycle would decide and why (from the running daemon's state, or as a daemon starting now)."""
    import json

    from ksmtuned_py.status import collect, render_text

    snap = collect(opts.load_config(), opts.root)
    if as_json:
        click.echo(json.dumps(snap, indent=2, sort_keys=False))
    else:
        click.echo(render_text(snap), nl=False)


@main.command(short_help="Say why KSM is not saving (more) here, and what to do.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of findings.")
@click.pass_obj
def doctor(opts: Options, as_json: bool) -> None:
    """Say why KSM is not saving (more) here: findings, their evidence, and what to do."""
    import json

    from ksmtuned_py import doctor as doctormod

    findings = doctormod.diagnose(doctormod.survey(opts.load_config(), opts.root))
    if as_json:
        click.echo(json.dumps(doctormod.as_json(findings), indent=2))
    else:
        click.echo(doctormod.render_text(findings), nl=False)


@main.command(short_help="Decide once now; --apply also writes it.")
@click.option("--dry-run/--apply", "dry_run", default=True, help="Only print (default), or write the knobs.")
@click.pass_obj
def adjust(opts: Options, dry_run: bool) -> None:
    """Make one decision now and print the reference's debug lines for it; the knobs are
    written only with --apply."""
    from ksmtuned_py.status import adjust_once

    configure_logging()
    lines, ok = adjust_once(opts.load_config(), opts.root, apply=not dry_run)
    for line in lines:
        click.echo(line)
    if not ok:
        raise UserError("some KSM knobs could not be written (see above)")


@main.command("check-config", short_help="Check the config; print every value in effect.")
@click.pass_obj
def check_config(opts: Options) -> None:
    """Validate the configuration and print every value in effect with where it came from
    (the output is itself a configuration file).  Exit status 0 when the file is valid,
    78 when it is not, 66 when it does not exist (the defaults are printed)."""
    import shlex

    cfg = opts.load_config()
    for w in cfg.warnings:
        click.echo(f"warning: {w}", err=True)
    if cfg.file_found:
        click.echo(f"# the settings in effect with {cfg.path}")
    else:
        click.echo(f"# {cfg.path} does not exist: the settings in effect without it")
    click.echo(f"# compatibility: {cfg.compat.mode} ({cfg.compat.why})")
    for key, s in cfg.settings.items():
        click.echo(f"{key + '=' + shlex.quote(s.text):<40} # {s.origin}")
    if not cfg.file_found:
        raise SystemExit(EX_NOINPUT)


@main.group(short_help="Start or stop KSM itself (ksm.service).")
def ksm() -> None:
    """Start or stop KSM itself (the ksm.service helper)."""


@ksm.command("start", short_help="Write 1 to run (and max_kernel_pages).")
@click.pass_obj
def ksm_start(opts: Options) -> None:
    """Write 1 to run (and max_kernel_pages on kernels that have it)."""
    from ksmtuned_py.ksmctl import start

    configure_logging()
    for line in start(opts.root):
        click.echo(line)


@ksm.command("stop", short_help="Write 0 to run.")
@click.pass_obj
def ksm_stop(opts: Options) -> None:
    """Write 0 to run."""
    from ksmtuned_py.ksmctl import stop

    for line in stop(opts.root):
        click.echo(line)


@main.command(short_help="Write the Prometheus metrics file once.")
@click.option("--textfile", "textfile", required=True, type=click.Path(), metavar="PATH",
              help="node_exporter's textfile directory, or a .prom file, to write.")
@click.pass_obj
def metrics(opts: Options, textfile: str) -> None:
    """Write Prometheus metrics of the current state once, atomically (e.g. from cron, without
    the daemon): what is true now, and the running daemon's last decision when one runs."""
    from ksmtuned_py import metrics as metricsmod
    from ksmtuned_py.status import collect

    sample = metricsmod.sample_from_status(collect(opts.load_config(), opts.root))
    click.echo(f"wrote {metricsmod.write_textfile(textfile, sample)}")


@main.command(short_help="Install the units, config, logrotate file and hook.")
@no_global_options
@click.option("--destdir", default="/", show_default=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Install below this directory (packaging).")
@click.option("--unitdir", default="/etc/systemd/system", show_default=True, metavar="DIR",
              help="Where the systemd units go (packages: /usr/lib/systemd/system).")
@click.option("--exec", "exec_path", default=None, metavar="FILE",
              help="The ksmtuned-py program the units and hook run [default: this ksmtuned-py].")
@click.option("--libvirt-hook/--no-libvirt-hook", "libvirt_hook", default=None,
              help="Install the libvirt hook or not [default: on this system only when /etc/libvirt "
                   "exists; always below another --destdir].")
def install(destdir: str, unitdir: str, exec_path: str | None, libvirt_hook: bool | None) -> None:
    """Install the systemd units, the default config (never over an existing one), the logrotate
    file and the libvirt hook; print what was done with each."""
    from ksmtuned_py import install as installmod

    exec_path = exec_path or installmod.default_exec()
    for action in installmod.install(destdir, unitdir, exec_path, libvirt_hook=libvirt_hook):
        click.echo(str(action))
    for path in installmod.hidden_by_sandbox(exec_path):
        click.echo(f"warning: the service cannot run {path}: its sandbox (ProtectHome=yes) hides "
                   "/home, /root and /run/user; install ksmtuned-py elsewhere (e.g. a venv in /opt)",
                   err=True)
    if destdir in ("/", ""):
        click.echo(installmod.NEXT_STEPS)


SIM_EXTRA_HINT = "pip install 'ksmtuned-py[sim]'"


@main.command(short_help="Watch the daemon tune a simulated host.")
@no_global_options
@click.option("--speed", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              metavar="X", help="Simulated seconds per second.")
@click.option("--cycles", type=click.IntRange(min=0), default=8, show_default=True, metavar="N",
              help="Stop after N decisions (one per second); 0: until Ctrl-C.")
@click.pass_context
def demo(ctx: click.Context, speed: float, cycles: int) -> None:
    """Show the daemon at work on a simulated host (no root, no KSM needed): four guests start on
    a 3 GiB host, the daemon starts KSM, KSM merges their OS images.  It ends after --cycles
    decisions (about 8 s by default) and says how to do the same by hand."""
    for name, flag in (("root", "--root"), ("config_path", "--config")):
        if ctx.parent.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError(f"demo makes its own simulated host and configuration; it takes no {flag}")
    try:
        from ksmtuned_py.demo import run_demo
        import sysfs_emu.simulation  # noqa: F401  (numpy, pyyaml: the [sim] extra)
    except ImportError as e:
        raise UserError(f"the demo needs the simulator, which is not installed ({e.name or e}): "
                        f"{SIM_EXTRA_HINT}") from None
    raise SystemExit(run_demo(speed=speed, cycles=cycles or None))


if __name__ == "__main__":  # pragma: no cover
    main()
