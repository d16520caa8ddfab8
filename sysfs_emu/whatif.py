"""Several runs of one scenario side by side: which runs, with which settings, and running them.

``--policy`` and ``--config`` may each be given several times: every policy that follows
the configuration (ksmtuned's rule, adaptive) runs once per configuration, every other policy
(always, off, advisor) once, with the first configuration's interval and guest rule.
The configuration is read as every ksmtuned-py command reads it: the file
(``/etc/ksmtuned.conf`` unless ``--config``; a missing default file means ksmtuned's
defaults), then the environment's ``KSM_*`` variables, then the defaults.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

from ksmtuned_py import config as configmod
from ksmtuned_py import policies
from ksmtuned_py.errors import UserError
from sysfs_emu.errors import EmuError, one_line
from sysfs_emu.simsummary import summarize
from sysfs_emu.simulate import Simulate


class RunError(EmuError):
    """Runs that cannot be made as asked (a policy or configuration problem); one line."""


@dataclass(frozen=True)
class RunPlan:
    """One run to make: its name, the policy's spec and the configuration it reads."""

    name: str
    policy_spec: str
    config: configmod.Config
    config_label: str  # where the settings come from, in words


def load_config(path: str | None) -> tuple[configmod.Config, str]:
    """The configuration (``path``, or the default file) and where its settings come from, in words."""
    try:
        config = configmod.load(path or configmod.DEFAULT_PATH)
    except UserError as exc:
        raise RunError(one_line(exc)) from None
    if path and not config.file_found:
        raise RunError(f"no config file {path}")
    label = config.path if config.file_found else f"{config.path} (not there: ksmtuned's defaults)"
    from_env = sorted(k for k, s in config.settings.items() if s.origin.kind == "environment")
    if from_env:
        label += f" and the environment ({', '.join(from_env)})"
    return config, label


def plan_runs(policy_specs: list[str], config_paths: list[str]) -> list[RunPlan]:
    """The runs asked for: each policy with each configuration if it follows one, else once."""
    configs = [load_config(p) for p in (config_paths or [None])]
    plans = []
    for spec in policy_specs or [policies.DEFAULT]:
        try:
            name, _ = policies.parse_spec(spec)
            policies.from_spec(spec, configs[0][0])  # a parameter out of range is said now, not mid-run
        except policies.PolicySpecError as exc:
            raise RunError(f"--policy {spec}: {exc}") from None
        uses = policies.POLICIES[name].uses_config
        for config, label in configs if uses else configs[:1]:
            run_name = f"{spec} ({config.path})" if uses and len(configs) > 1 else spec
            plans.append(RunPlan(run_name, spec, config, label))
    names = [p.name for p in plans]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RunError(f"the same run twice: {', '.join(twice)}")
    return plans


def settings_of(plan: RunPlan, scenario, policy) -> dict:
    """The settings a run used, for summary.json: the policy, the configuration and the scenario's KSM files."""
    config = plan.config
    values = {k: s.text for k, s in config.settings.items() if k.startswith("KSM_")} if policy.uses_config else {}
    return {
        "policy": plan.policy_spec,
        "policy_params": dict(getattr(policy, "knobs", {})),
        "config": config.path if config.file_found else None,
        "config_source": plan.config_label,
        "config_values": values,
        "monitor_interval_s": float(config.monitor_interval),
        "scenario_ksm": dict(scenario.ksm),
    }


@dataclass
class RunResult:
    """A run made: its plan, its cycles and its figures."""

    plan: RunPlan
    rows: list
    summary: dict
    advisor_noted: bool


def run_one(scenario, plan: RunPlan, duration: float, on_cycle=None, costs=None) -> RunResult:
    """One run of ``scenario`` for ``duration`` simulated seconds; ``on_cycle(row)`` after each cycle;
    ``costs`` ksmd's cost profile (a CostModel or a file; default: the reference profile)."""
    from sysfs_emu.simulation import Simulation

    sim = Simulation(scenario, costs=costs)
    policy = policies.from_spec(plan.policy_spec, plan.config)
    run = Simulate(sim, plan.config, policy, plan.name)
    rows = []
    for row in run.rows(duration):
        rows.append(row)
        if on_cycle is not None:
            on_cycle(row)
    summary = summarize(rows, settings_of(plan, scenario, policy), sim.ksmd.cost.origin,
                        end_s=duration) if rows else None
    result = RunResult(plan, rows, summary, run.advisor_noted)
    del sim, run
    gc.collect()  # the next run builds its own host: do not hold two at once
    return result

