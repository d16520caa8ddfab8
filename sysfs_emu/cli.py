"""``sysfs-emu``: serve a simulated KSM host as a file tree, inspect it, list scenarios."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from importlib import resources
from pathlib import Path

import click

from sysfs_emu.errors import EmuError, one_line

log = logging.getLogger("sysfs_emu")


class CliError(EmuError):
    """A problem with what was asked on the command line."""


class _Main(click.Group):
    """The command group that reports every EmuError once: one line on stderr, exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EmuError as exc:
            click.echo(f"sysfs-emu: error: {one_line(exc)}", err=True)
            ctx.exit(1)
        except MemoryError:  # past the up-front estimate (sysfs_emu/capacity.py): still one line
            click.echo("sysfs-emu: error: out of memory: the simulation needs more memory than this machine "
                       "gives it; simulate a smaller host", err=True)
            ctx.exit(1)


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sysfs-emu: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


# --- scenarios --------------------------------------------------------------------------


def shipped_scenarios() -> dict[str, Path]:
    """Name -> path of each example scenario that ships with the package."""
    folder = resources.files("sysfs_emu") / "scenarios"
    found = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml"):
            found[entry.name[: -len(".yaml")]] = Path(str(entry))
    return dict(sorted(found.items()))


def scenario_description(path: Path) -> str:
    from sysfs_emu.scenario import parse_yaml

    try:
        data = parse_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, EmuError):
        return "(unreadable)"
    text = data.get("description", "") if isinstance(data, dict) else ""
    return " ".join(str(text).split())


def idle_scenario() -> dict:
    """An idle host the size of this machine, with no guests."""
    from sysfs_emu.host import machine_memory_bytes

    return {
        "description": "An idle host the size of this machine, with no guests.",
        "host": {"memory": machine_memory_bytes()},
    }


def load_simulation(scenario: str | None):
    """(Simulation, name) for a scenario file, a shipped scenario's name, or the idle host."""
    from sysfs_emu import Simulation

    if scenario is None:
        return Simulation(idle_scenario()), "idle host (this machine's size)"
    path = Path(scenario)
    if not path.exists():
        shipped = shipped_scenarios()
        if scenario not in shipped:
            raise CliError(f"no scenario file {scenario} (and no shipped scenario of that name; "
                           "see 'sysfs-emu scenarios')")
        path = shipped[scenario]
    if path.is_dir():
        raise CliError(f"{scenario} is a directory, not a scenario file")
    return Simulation.from_yaml(path), path.stem


def format_speed(ratio: float) -> str:
    """Simulated seconds per wall second: ``1970x``, ``59.8x``, ``0.5x`` (never 1.97e+03x)."""
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.3g}x"


def _duration(value: str | None) -> float | None:
    from sysfs_emu.units import UnitError, parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except UnitError as exc:
        raise CliError(f"--duration: {exc}") from None


# --- commands ---------------------------------------------------------------------------


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ksmtuned-py", prog_name="sysfs-emu")
def main() -> None:
    """A simulated KSM kernel: /sys/kernel/mm/ksm and /proc as a live file tree."""


@main.command(short_help="Serve a simulated host as a live file tree.")
@click.argument("scenario", required=False)
@click.option("--root", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Directory to build the tree in (sys/ and proc/ appear below it).")
@click.option("--speed", default=1.0, show_default=True, type=float, metavar="X",
              help="Simulated seconds per wall second (60 = a simulated minute per second).")
@click.option("--duration", default=None, metavar="T",
              help="Stop after T of simulated time (seconds, or 30s, 5m, 2h, 1d).")
@click.option("--clean", is_flag=True, help="Remove the tree when stopping.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def run(scenario, root, speed, duration, clean, verbose):
    """Serve SCENARIO (a YAML file or a shipped name; default: an idle host) under --root."""
    from sysfs_emu.runner import Server

    _setup_logging(verbose)
    if not speed > 0 or speed != speed or speed == float("inf"):
        raise CliError(f"--speed must be a positive number, got {speed}")
    seconds = _duration(duration)
    server = None
    stop_early = []

    def on_signal(signum, frame):
        log.info("%s received, stopping", signal.Signals(signum).name)
        if server is not None:
            server.stop()
        else:
            stop_early.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sim, name = load_simulation(scenario)
    if stop_early:
        raise SystemExit(0)
    server = Server(sim, root, speed=speed, duration=seconds, clean=clean, scenario_name=name)
    started, sim_start = time.monotonic(), sim.now
    try:
        server.run()
    except OSError as exc:
        raise CliError(f"cannot keep the tree under {root}: {exc.strerror}: {exc.filename}") from None
    wall = time.monotonic() - started
    pace = f", {format_speed((sim.now - sim_start) / wall)} on average" if wall > 0 else ""
    log.info("stopped at simulated time %.1fs after %.1fs%s; tree %s", sim.now, wall, pace,
             "removed" if clean else f"left in {root}")


@main.command(short_help="Show the KSM counters and memory under --root.")
@click.option("--root", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="The tree's root (/ for this machine).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see the README).")
def snapshot(root, as_json):
    """The current KSM counters, memory saved, memory and KSM-using processes of the host under
    --root, read from its files."""
    from sysfs_emu.snapshot import format_snapshot, take_snapshot

    snap = take_snapshot(root)
    if as_json:
        click.echo(json.dumps(snap, indent=2, sort_keys=True))
    else:
        click.echo(format_snapshot(snap), nl=False)


@main.command(short_help="List the shipped scenarios.")
def scenarios():
    """List the example scenarios shipped with sysfs-emu."""
    items = shipped_scenarios()
    width = max((len(n) for n in items), default=0)
    for name, path in items.items():
        click.echo(f"{name:<{width}}  {scenario_description(path)}")


@main.command(short_help="Apply an event in a running sysfs-emu.")
@click.argument("event")
@click.option("--root", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="The served tree's root.")
@click.option("--timeout", default=10.0, show_default=True, type=float, metavar="SECONDS",
              help="Seconds to wait for the answer.")
def event(event, root, timeout):
    """Apply EVENT now in the running sysfs-emu under --root.

    EVENT is a scenario event in YAML (docs/scenario-format.md, without `at`), or @FILE
    holding one; a process's id is a whole number, its pid is host.pid_base + id.  For
    example:

    \b
      'start: {name: qemu-kvm, id: 9, regions: [{pages: 25600, fill: unique}]}'
      'exit: 9'
    """
    from sysfs_emu.runner import send_event
    from sysfs_emu.scenario import parse_yaml

    if event.startswith("@"):
        try:
            data = Path(event[1:]).read_bytes()  # the user's own file: /dev/stdin is fine
        except OSError as exc:
            raise CliError(f"cannot read {event[1:]}: {exc.strerror}") from None
        where = event[1:]
    else:
        data, where = os.fsencode(event), "the event"  # argv's bytes, as the shell passed them
    try:
        event = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    try:
        parsed = parse_yaml(event)
    except EmuError as exc:
        raise CliError(f"the event is not valid YAML: {exc}") from None
    if not isinstance(parsed, dict):
        raise CliError("an event is a mapping such as 'start: {...}' or 'exit: ID'")
    try:
        answer = send_event(root, event, timeout=timeout)
    except OSError as exc:
        raise CliError(f"cannot queue the event under {root}: {exc.strerror}") from None
    if answer != "ok":
        raise CliError(answer.removeprefix("error: "))
    click.echo("ok")


@main.command(short_help="Run ksmtuned-py's cycle on a scenario, fast.")
@click.argument("scenario")
@click.option("--config", "config_path", default=None, metavar="FILE",
              help="A ksmtuned.conf to take the settings from (default: ksmtuned's defaults).")
@click.option("--duration", default="1h", show_default=True, metavar="T",
              help="Simulated time to run (seconds, or 30s, 5m, 2h, 1d).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per cycle (see the README).")
def simulate(scenario, config_path, duration, as_json):
    """Drive ksmtuned-py's tuning cycle over SCENARIO in simulated time, without files or a daemon;
    print each decision and the memory saved."""
    from ksmtuned_py import config as configmod
    from ksmtuned_py.errors import UserError
    from sysfs_emu.simulate import Simulate, json_row
    from sysfs_emu.units import format_bytes, format_clock

    seconds = _duration(duration)
    try:
        config = configmod.load(config_path or os.devnull)
    except UserError as exc:
        raise CliError(one_line(exc)) from None
    if config_path and not config.file_found:
        raise CliError(f"no config file {config_path}")
    sim, name = load_simulation(scenario)
    run = Simulate(sim, config)
    where = config_path or "ksmtuned's defaults"
    if not as_json:
        click.echo(f"simulating {name} for {format_clock(seconds)} with the settings of {where} "
                   f"(a decision every {run.interval:g} s)")
        click.echo(f"{'time':>8}  {'guests':>6}  {'committed':>10}  {'free':>10}  {'decision':<46} {'saved':>10}")
    started = time.monotonic()
    first_saving = None
    peak = (0, 0.0)
    last = None
    try:
        while sim.now + run.interval <= seconds + 1e-9:
            c = run.cycle()
            last = c
            if c.saved_bytes and first_saving is None:
                first_saving = c.time
            if c.saved_bytes > peak[0]:
                peak = (c.saved_bytes, c.time)
            if as_json:
                click.echo(json.dumps(json_row(c)))
                continue
            what = (f"start, {c.level}: pages_to_scan {c.pages_to_scan}, sleep {c.sleep_millisecs} ms"
                    if c.action == "start" else "stop")
            click.echo(f"{format_clock(c.time):>8}  {c.guests:>6}  {format_bytes(c.committed_kb * 1024):>10}  "
                       f"{format_bytes(c.free_kb * 1024):>10}  {what:<46} {format_bytes(c.saved_bytes):>10}")
    except KeyboardInterrupt:
        raise CliError("interrupted") from None
    wall = time.monotonic() - started
    if as_json:
        return
    if last is None:
        click.echo(f"no decision: --duration {duration} is shorter than the interval ({run.interval:g} s)")
        return
    if first_saving is None:
        saving = f"KSM saved nothing (general_profit {format_bytes(last.general_profit)})"
    else:
        saving = (f"KSM saves {format_bytes(last.saved_bytes)} (general_profit {format_bytes(last.general_profit)}); "
                  f"first saving at {format_clock(first_saving)}; peak {format_bytes(peak[0])} at "
                  f"{format_clock(peak[1])}")
    click.echo(f"after {format_clock(last.time)}: {saving}; {wall:.1f} s of wall time")
    if run.advisor_noted:
        click.echo("note: advisor_mode is scan-time, so the kernel's advisor set pages_to_scan")


if __name__ == "__main__":  # pragma: no cover
    main()
