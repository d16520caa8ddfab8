"""``status`` and ``adjust``: a snapshot of KSM and the decision the next cycle would make.

Both run the daemon's one cycle (``cycle.Cycle``) on the files under the root, with the
policy of the running daemon (rebuilt from the state it publishes next to its pidfile)
or, when no daemon runs or its state cannot be used, the policy of a fresh start: the
configuration on disk, MemTotal now, npages 0 — what a daemon starting now would do.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ksmtuned_py import config as configmod
from ksmtuned_py import policies
from ksmtuned_py.cycle import Cycle, Policy
from ksmtuned_py.errors import UserError
from ksmtuned_py.filehost import FileHost
from ksmtuned_py.knobs import KNOBS, require_ksm
from ksmtuned_py.pidfile import read_state, running_pid, state_path
from ksmtuned_py.report import human_bytes

RUN_STATES = {0: "stopped", 1: "running", 2: "unmerging"}
DAEMON, FRESH = "daemon", "fresh start"


@dataclass
class Basis:
    """What the prediction starts from: the running daemon's policy, or a fresh start."""

    policy: Policy
    source: str  # DAEMON or FRESH
    why: str  # for people: where the policy's state came from
    daemon: dict  # the daemon's entry of the status snapshot


def _basis(cfg: configmod.Config, root: str) -> Basis:
    """The running daemon's published policy; a fresh start when there is none to use."""
    fresh = policies.from_config(cfg)  # started by its first decision, on MemTotal now
    try:
        pid = running_pid(cfg.pidfile)
    except UserError as e:
        daemon = {"running": False, "reason": str(e), "pidfile": cfg.pidfile}
        return Basis(fresh, FRESH, "a fresh start (no daemon running)", daemon)
    path = state_path(cfg.pidfile)
    daemon = {"running": True, "pid": pid, "pidfile": cfg.pidfile}
    state = read_state(path, pid)
    problem = None
    if state is None:
        problem = f"the daemon publishes no state in {path}"
    elif state.get("root") != os.path.realpath(root):
        problem = f"the daemon runs on root {state.get('root')}, not {os.path.realpath(root)}"
    else:
        try:
            # The daemon keeps the settings and tuning of its last start or reload: use those.
            policy = policies.from_state(state)
        except (KeyError, TypeError, ValueError):
            problem = f"the state in {path} is not understood"
    if problem:
        return Basis(fresh, FRESH, f"a fresh start ({problem})", daemon)
    daemon.update(state=path, config=state.get("config"), last_decision=state.get("last_decision"))
    return Basis(policy, DAEMON, f"the running daemon (pid {pid}, {path})", daemon)


def _cycle(cfg: configmod.Config, root: str) -> tuple[Cycle, Basis, int | None]:
    """A cycle on the files under ``root`` with the basis's policy; the basis; npages before the cycle."""
    require_ksm(root)
    basis = _basis(cfg, root)
    return Cycle(FileHost.from_config(root, cfg), basis.policy), basis, basis.policy.npages


def collect(cfg: configmod.Config, root: str = "/") -> dict:
    """Everything ``status`` shows, as plain data."""
    cycle, basis, before = _cycle(cfg, root)
    readings, dec = cycle.decide()
    ksm = readings.ksm
    knobs: dict = {name: ksm.knobs.get(name) for name in KNOBS}
    knobs["advisor_mode"] = ksm.advisor_mode
    page_size = cycle.host.page_size
    saved = {
        "bytes": ksm.saved_bytes(page_size),
        "pages_sharing": ksm.counters.get("pages_sharing"),
        "page_size": page_size,
        "general_profit": ksm.counters.get("general_profit"),
    }
    return {
        "compat": {"mode": cfg.compat.mode, "why": cfg.compat.why},
        "ksm": knobs,
        "counters": dict(ksm.counters),
        "saved": saved,
        "memory": {
            "total_kb": dec.total_kb,
            "free_kb": readings.free_kb,
            "free_metric": cfg.free_metric,
            "committed_kb": readings.committed_kb,
            "memory_metric": cfg.memory_metric,
            "thres_kb": dec.thres_kb,
            "sleep_ms": dec.sleep_ms,
        },
        "guests": [{"pid": g.pid, "comm": g.comm, "kb": g.kb} for g in readings.guests],
        "next": {
            "action": dec.action,
            "level": dec.level,
            "npages": dec.npages,
            "sleep_ms": dec.sleep_ms,
            "advisor": ksm.advisor_active,
            "reason": dec.reason,
            "from_npages": before,
            "npages_source": basis.source,
            "npages_from": basis.why,
        },
        "daemon": basis.daemon,
    }


def render_text(s: dict) -> str:
    """The human form of :func:`collect`'s snapshot."""
    k, c, saved, m, n = s["ksm"], s["counters"], s["saved"], s["memory"], s["next"]
    run = k["run"]
    lines = [
        f"KSM:        {RUN_STATES.get(run, 'unknown')} (run={run}), pages_to_scan {k['pages_to_scan']}, "
        f"sleep_millisecs {k['sleep_millisecs']}"
        + (f", advisor {k['advisor_mode']}" if k["advisor_mode"] else ""),
    ]
    if c:
        lines.append("counters:   " + ", ".join(f"{name} {v}" for name, v in c.items()))
    if saved["bytes"] is not None:
        text = (
            f"saved:      {human_bytes(saved['bytes'])} "
            f"(pages_sharing {saved['pages_sharing']} x {saved['page_size']} B)"
        )
        if saved["general_profit"] is not None:
            text += f"; general_profit {human_bytes(saved['general_profit'])}"
        lines.append(text)
    guests = s["guests"]
    lines.append(
        f"memory:     total {m['total_kb']} kB, free {m['free_kb']} kB ({m['free_metric']}), "
        f"committed {m['committed_kb']} kB ({m['memory_metric']}, {len(guests)} guests), "
        f"thres {m['thres_kb']} kB"
    )
    for g in guests:
        lines.append(f"guest:      {g['pid']} {g['comm']} {g['kb']} kB")
    if n["action"] == "start":
        scan = "pages_to_scan left to the kernel advisor" if n["advisor"] else f"pages_to_scan {n['npages']}"
        what = f"start ksm ({n['level']}): {scan}, sleep_millisecs {n['sleep_ms']}"
    else:
        what = "stop ksm"
    lines.append(f"next cycle: {what}, because {n['reason']}")
    lines.append(f"npages:     {n['from_npages']} now, from {n['npages_from']}")
    lines.append(f"compat:     {s['compat']['mode']} ({s['compat']['why']})")
    d = s["daemon"]
    if d["running"]:
        text = f"daemon:     running (pid {d['pid']})"
        last = d.get("last_decision")
        if last:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["time"]))
            text += f", last cycle at {when}: {last['action']} ksm"
            if last["action"] == "start":
                text += f" ({last['level']}, pages_to_scan {last['npages']})"
        elif "state" in d:
            text += ", no cycle yet"
        lines.append(text)
    else:
        lines.append(f"daemon:     not running ({d['reason']})")
    return "\n".join(lines) + "\n"


def adjust_once(cfg: configmod.Config, root: str = "/", apply: bool = False) -> tuple[list[str], bool]:
    """One decision now: the reference's debug lines, plus what was written. Returns (lines, ok)."""
    cycle, basis, before = _cycle(cfg, root)
    if not apply:
        _, dec = cycle.decide()
        lines = [*basis.policy.start_lines(), *dec.debug_before, *dec.debug_after]
        lines.append(f"dry run: nothing written (npages started from {before}, taken from {basis.why})")
        return lines, True
    cycle_lines: list[str] = []
    cycle.debug = lambda *new: cycle_lines.extend(new)
    report = cycle.run()
    lines = [*basis.policy.start_lines(), *cycle_lines]
    lines.append(("wrote " if report.writes_ok else "tried to write ") + ", ".join(report.writes))
    return lines, report.writes_ok
