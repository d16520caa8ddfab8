"""The ``sysfs-emu simulate`` command: runs planned, made with a progress bar, shown, written."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import click

from ksmtuned_py import policies
from sysfs_emu.ksmd import CostModel
from sysfs_emu.progress import Progress
from sysfs_emu.simfiles import summary_document, timeline_document, write_all
from sysfs_emu.simtable import comparison_table, decision_table
from sysfs_emu.units import format_bytes, format_clock
from sysfs_emu.whatif import RunPlan, plan_runs, run_one


@dataclass(frozen=True)
class Request:
    """What was asked on the command line."""

    scenario_name: str
    duration: float
    policies: tuple[str, ...]
    configs: tuple[str, ...]
    every: float | None = None
    out: Path | None = None
    as_json: bool = False
    costs: CostModel | None = None  # ksmd's cost profile (None: the reference profile)


def describe_plan(plan: RunPlan) -> str:
    """One line: the run and what its policy does with which settings."""
    policy = policies.from_spec(plan.policy_spec, plan.config)
    if policy.uses_config:
        what = f"{policy.describe()}, with the settings of {plan.config_label}"
    else:
        what = f"{policy.describe()} (a cycle every {float(plan.config.monitor_interval):g} s)"
    return f"  {plan.name}: {what}"


def header(req: Request, plans: list[RunPlan]) -> list[str]:
    runs = "1 run" if len(plans) == 1 else f"{len(plans)} runs"
    intervals = sorted({float(p.config.monitor_interval) for p in plans})
    every = " or ".join(f"{i:g} s" for i in intervals)
    return [f"simulating {req.scenario_name} for {format_clock(req.duration)}, {runs}; a cycle every {every} "
            "and whenever a guest starts or stops",
            *(describe_plan(p) for p in plans)]


def run_all(scenario, plans: list[RunPlan], duration: float, costs: CostModel | None = None) -> list:
    """Every run in turn, with a progress bar on a terminal when it takes more than a few seconds."""
    progress = Progress(duration * len(plans), "simulating")
    results = []
    try:
        for i, plan in enumerate(plans):
            def on_cycle(row, base=i * duration, name=plan.name):
                progress.update(base + row.time_s, f"{name} at {format_clock(row.time_s)}")
            results.append(run_one(scenario, plan, duration, on_cycle, costs=costs))
    finally:
        progress.close()
    return results


def simulate(req: Request, scenario) -> None:
    """Plan, run, and show or write the results as ``req`` asks."""
    plans = plan_runs(list(req.policies), list(req.configs))
    if not req.as_json:
        for line in header(req, plans):
            click.echo(line)
    started = time.monotonic()
    results = run_all(scenario, plans, req.duration, req.costs)
    wall = time.monotonic() - started
    summary = summary_document(results, req.scenario_name, req.duration)
    timeline = timeline_document(results)
    if req.as_json:
        click.echo(json.dumps({"summary": summary, "timeline": timeline}, indent=2))
    else:
        show(req, results, summary, wall)
    if req.out is not None:
        written, note = write_all(req.out, summary, timeline)
        if not req.as_json:
            click.echo("written: " + ", ".join(str(p) for p in written))
        if note:
            click.echo(f"note: {note}", err=True)


def show(req: Request, results: list, summary: list[dict], wall: float) -> None:
    """Each run's short table of decisions, then the runs side by side."""
    for r in results:
        click.echo("")
        click.echo(f"{r.plan.name}:")
        if not r.rows:
            click.echo(f"  no cycle: --duration {format_clock(req.duration)} is shorter than the interval "
                       f"({float(r.plan.config.monitor_interval):g} s)")
            continue
        for line in decision_table(r.rows, req.every):
            click.echo(line)
        if r.advisor_noted:
            click.echo("  note: advisor_mode is scan-time, so the kernel's advisor set pages_to_scan")
    if summary:
        click.echo("")
        for line in comparison_table(summary):
            click.echo(line)
        origins = ", ".join(dict.fromkeys(s["cost_origin"] for s in summary))
        click.echo(f"ksmd CPU time is the simulated ksmd's own work at its per-page costs; costs: {origins}")
        for r in results:
            if r.rows and not any(row.saved_bytes for row in r.rows):
                click.echo(nothing_saved(r.rows))
    click.echo(f"simulated in {wall:.1f} s of wall time")


def nothing_saved(rows: list) -> str:
    """Say plainly that a run saved nothing, and the policy's last reason (why ksmd did not merge)."""
    last = rows[-1]
    return (f"{last.run_name}: KSM saved nothing in {format_clock(last.time_s)} "
            f"(general_profit {format_bytes(last.report.general_profit or 0)}); last decision: "
            f"{last.report.action}: {last.report.reason}")
