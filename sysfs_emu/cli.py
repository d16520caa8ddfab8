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


def load_scenario_arg(scenario: str | None):
    """(Scenario, name) for a scenario file, a shipped scenario's name, or the idle host."""
    from sysfs_emu.scenario import load_scenario, load_yaml

    if scenario is None:
        return load_scenario(idle_scenario()), "idle host (this machine's size)"
    path = Path(scenario)
    if not path.exists():
        shipped = shipped_scenarios()
        if scenario not in shipped:
            raise CliError(f"no scenario file {scenario} (and no shipped scenario of that name; "
                           "see 'sysfs-emu scenarios')")
        path = shipped[scenario]
    if path.is_dir():
        raise CliError(f"{scenario} is a directory, not a scenario file")
    return load_yaml(path), path.stem


def load_simulation(scenario: str | None, costs: str | None = None):
    """(Simulation, name) for a scenario file, a shipped scenario's name, or the idle host; ``costs``
    a cost profile file (default: the reference profile)."""
    from sysfs_emu import Simulation
    from sysfs_emu.costs import resolve

    model = resolve(costs)  # a bad profile is refused before the scenario is built
    spec, name = load_scenario_arg(scenario)
    return Simulation(spec, costs=model), name


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
@click.option("--costs", default=None, metavar="FILE",
              help="ksmd's cost profile (from 'sysfs-emu calibrate'; default: the reference profile).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def run(scenario, root, speed, duration, clean, costs, verbose):
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
    sim, name = load_simulation(scenario, costs)
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


@main.command(short_help="Run tuning policies on a scenario in simulated time.")
@click.argument("scenario")
@click.option("--policy", "policy_specs", multiple=True, metavar="NAME",
              help="A policy to run: ksmtuned (the default), adaptive, always, off, advisor, or one with settings "
                   "such as always:pages_to_scan=1000,sleep_millisecs=20 or adaptive:max_cpu=5. Give several to "
                   "compare them.")
@click.option("--config", "config_paths", multiple=True, metavar="FILE",
              help="A ksmtuned.conf for ksmtuned's rule (default: /etc/ksmtuned.conf, as every ksmtuned-py "
                   "command reads it). Give several to compare them.")
@click.option("--duration", default="1h", show_default=True, metavar="T",
              help="Simulated time to run (seconds, or 30s, 5m, 2h, 1d).")
@click.option("--every", default=None, metavar="T",
              help="Show a row of each run's table every T of simulated time (default: a row per change of decision).")
@click.option("--out", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write summary.json, timeline.csv and timeline.png into DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document: the summary and the timeline.")
@click.option("--costs", default=None, metavar="FILE",
              help="ksmd's cost profile (from 'sysfs-emu calibrate'; default: the reference profile).")
def simulate(scenario, policy_specs, config_paths, duration, every, out, as_json, costs):
    """Run SCENARIO under ksmtuned-py's policies in simulated time: their decisions, what KSM saves, how soon,
    and ksmd's CPU time; several runs side by side."""
    from sysfs_emu.simcommand import Request
    from sysfs_emu.simcommand import simulate as run_simulate

    seconds = _duration(duration)
    if not seconds > 0:
        raise CliError(f"--duration must be more than 0, got {duration}")
    period = _every(every)
    from sysfs_emu.costs import resolve

    model = resolve(costs)
    spec, name = load_scenario_arg(scenario)
    request = Request(name, seconds, tuple(policy_specs), tuple(config_paths), period, out, as_json, model)
    try:
        run_simulate(request, spec)
    except KeyboardInterrupt:
        raise CliError("interrupted") from None


@main.command(short_help="Capture this host as a scenario (read-only).")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="The scenario to write (YAML); its content ids go beside it (host.yaml: host.ids.npy).")
@click.option("--sample", default=1, show_default=True, type=int, metavar="N",
              help="Read one page in N and infer the others (for big hosts).")
@click.option("--guests-only", is_flag=True, help="Only the guests the tuner counts, no other mergeable process.")
@click.option("--config", "config_path", default=None, metavar="FILE",
              help="The ksmtuned.conf whose KSM_PROCESS_REGEX says which processes are guests "
                   "(default: /etc/ksmtuned.conf).")
def capture(out, sample, guests_only, config_path):
    """Write a scenario of this host as it is now: its memory, KSM settings, and every process ksmd would scan
    with the contents of its mergeable memory as content ids (root; it only reads)."""
    from sysfs_emu.capture import capture as capture_host
    from sysfs_emu.capture.scenario import counted
    from sysfs_emu.units import format_bytes
    from sysfs_emu.whatif import load_config

    config, _ = load_config(config_path)
    report = capture_host(out, sample=sample, guests_only=guests_only, guest_regex=config.process_regex)
    sampled = "" if sample == 1 else f", {report.read_pages:,} of them read (1 in {sample})"
    click.echo(f"captured {counted(report.processes, 'process')} ({counted(report.guests, 'guest')}): "
               f"{format_bytes(report.pages * 4096)} of mergeable memory in {report.pages:,} pages{sampled}; "
               f"{report.empty_pages:,} empty, {report.thp_pages:,} in transparent huge pages")
    click.echo(f"skipped {report.skipped_pages:,} pages that changed or vanished while read"
               + (f"; {counted(report.exited, 'process')} exited while read" if report.exited else ""))
    click.echo(f"{report.seconds:.1f} s ({format_bytes(report.bytes_per_second)}/s); "
               f"wrote {report.yaml_path} and {report.ids_path}")


def _every(value: str | None) -> float | None:
    from sysfs_emu.units import UnitError, parse_duration

    if value is None:
        return None
    try:
        period = parse_duration(value)
    except UnitError as exc:
        raise CliError(f"--every: {exc}") from None
    if not period > 0:
        raise CliError(f"--every must be more than 0, got {value}")
    return period


def _check_writable(path: Path) -> None:
    """CliError unless a file can be written at ``path`` (its directory exists and is writable)."""
    if path.is_dir():
        raise CliError(f"--out {path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise CliError(f"--out {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CliError(f"--out {path}: the directory {parent} is not writable")


@main.command(short_help="Measure this machine's ksmd costs into a cost profile (root).")
@click.option("--out", "out", default=None, metavar="FILE",
              help="Write the cost profile to FILE (default: print it on standard output).")
@click.option("-v", "--verbose", is_flag=True, help="Log each measurement.")
def calibrate(out, verbose):
    """Measure this machine's ksmd costs on the real KSM (root) and write a cost profile.

    Real processes with known page contents are scanned by the real ksmd for a
    few seconds; every KSM setting is put back afterwards and run left at 0.
    Give the profile to 'run' and 'simulate' with --costs FILE.
    """
    from sysfs_emu import costs
    from sysfs_emu.realksm.calibrate import calibrate as measure

    _setup_logging(verbose)
    if not verbose:
        logging.getLogger().setLevel(logging.WARNING)
    if out is not None:
        _check_writable(Path(out))  # before the seconds of measuring, not after
    model, measured = measure()
    text = costs.to_json(model, measured)
    summary = "\n".join(f"{name:>14}  {getattr(model, name) * 1e6:10.3f} us  (reference "
                         f"{getattr(costs.reference(), name) * 1e6:.3f})" for name in costs.COSTS)
    if out is None:
        click.echo(text, nl=False)
        click.echo(f"{model.origin}\n{summary}", err=True)
        return
    costs.save(model, out, measured)
    click.echo(f"{model.origin}\n{summary}\nwrote {out}; use it with --costs {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
