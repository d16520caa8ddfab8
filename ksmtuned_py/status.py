"""``status`` and ``adjust``: a snapshot of KSM and the decision the next cycle would make."""

from __future__ import annotations

from ksmtuned_py import config as configmod
import os
import time
from dataclasses import dataclass

from ksmtuned_py.decision import Params, Tuner, Tuning
from ksmtuned_py.errors import UserError
from ksmtuned_py.knobs import Knobs, read_int, read_knob, require_ksm
from ksmtuned_py.pidfile import read_state, running_pid, state_path
from ksmtuned_py.readings import PAGE_SIZE, GuestScanner, read_meminfo
from ksmtuned_py.report import human_bytes

KNOBS = ("run", "pages_to_scan", "sleep_millisecs")
COUNTERS = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
    "pages_scanned",
    "pages_skipped",
    "ksm_zero_pages",
    "stable_node_chains",
    "stable_node_dups",
    "general_profit",
)
RUN_STATES = {0: "stopped", 1: "running", 2: "unmerging"}


@dataclass
class Basis:
    """What the prediction starts from: the running daemon's state, or the kernel's pages_to_scan."""

    npages: int
    source: str  # "daemon" or "pages_to_scan"
    why: str  # for people: where npages came from
    daemon: dict  # the daemon's entry of the status snapshot
    params: Params | None = None  # the daemon's, when its state is used
    tuning: Tuning | None = None


def _basis(cfg: configmod.Config, root: str, pages_to_scan: int | None) -> Basis:
    """Find the running daemon and its published state; fall back to pages_to_scan."""
    fallback = pages_to_scan or 0
    try:
        pid = running_pid(cfg.pidfile)
    except UserError as e:
        daemon = {"running": False, "reason": str(e), "pidfile": cfg.pidfile}
        return Basis(fallback, "pages_to_scan", "pages_to_scan (no daemon running)", daemon)
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
            params = Params(**state["params"])
            tuning = Tuning(**state["tuning"])
            npages = int(state["npages"])
        except (KeyError, TypeError, ValueError):
            problem = f"the state in {path} is not understood"
    if problem:
        return Basis(fallback, "pages_to_scan", f"pages_to_scan ({problem})", daemon)
    daemon.update(state=path, config=state.get("config"), last_decision=state.get("last_decision"))
    return Basis(npages, "daemon", f"the running daemon (pid {pid}, {path})", daemon, params, tuning)


def _decide(cfg: configmod.Config, root: str, basis: Basis):
    """Read the host and decide as the next cycle would, from ``basis``."""
    mem = read_meminfo(root)
    scanner = GuestScanner(root, cfg.process_regex, cfg.memory_metric)
    guests = scanner.scan()
    free = mem.free_kb(cfg.free_metric)
    committed = sum(g.kb for g in guests)
    # The daemon keeps the settings and tuning of its last start or reload: use those.
    params = basis.params or Params.from_config(cfg)
    tuner = Tuner(params, mem.total, npages=basis.npages, tuning=basis.tuning)
    return tuner.tuning, guests, tuner.decide(free, committed)


def collect(cfg: configmod.Config, root: str = "/") -> dict:
    """Everything ``status`` shows, as plain data."""
    d = require_ksm(root)
    ksm: dict = {name: read_int(d, name) for name in KNOBS}
    mode = read_knob(d, "advisor_mode")
    ksm["advisor_mode"] = None
    if mode:
        chosen = [w.strip("[]") for w in mode.split() if w.startswith("[")]
        ksm["advisor_mode"] = chosen[0] if chosen else mode
    counters = {name: read_int(d, name) for name in COUNTERS}
    counters = {k: v for k, v in counters.items() if v is not None}
    sharing = counters.get("pages_sharing")
    saved = {
        "bytes": sharing * PAGE_SIZE if sharing is not None else None,
        "pages_sharing": sharing,
        "page_size": PAGE_SIZE,
        "general_profit": counters.get("general_profit"),
    }
    # The running daemon publishes its npages; without it, pages_to_scan is the
    # best guess (it equals npages after any cycle that started KSM).
    basis = _basis(cfg, root, ksm["pages_to_scan"])
    tuning, guests, dec = _decide(cfg, root, basis)
    return {
        "ksm": ksm,
        "counters": counters,
        "saved": saved,
        "memory": {
            "total_kb": tuning.total,
            "free_kb": dec.free,
            "free_metric": cfg.free_metric,
            "committed_kb": dec.committed,
            "memory_metric": cfg.memory_metric,
            "thres_kb": dec.thres,
            "sleep_ms": dec.sleep,
        },
        "guests": [{"pid": g.pid, "comm": g.comm, "kb": g.kb} for g in guests],
        "next": {
            "action": dec.action,
            "level": dec.level,
            "npages": dec.npages,
            "sleep_ms": dec.sleep,
            "advisor": ksm["advisor_mode"] == "scan-time",
            "reason": dec.reason(),
            "from_npages": basis.npages,
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
    d = require_ksm(root)
    basis = _basis(cfg, root, read_int(d, "pages_to_scan"))
    tuning, guests, dec = _decide(cfg, root, basis)
    lines = tuning.debug_lines() + dec.debug_lines()
    if not apply:
        lines.append(f"dry run: nothing written (npages started from {basis.npages}, taken from {basis.why})")
        return lines, True
    knobs = Knobs(root)
    ok = knobs.apply(dec)
    if dec.action == "start":
        written = [] if knobs.advisor else [f"pages_to_scan={dec.npages_text}"]
        written += [f"sleep_millisecs={dec.sleep}", "run=1"]
    else:
        written = ["run=0"]
    lines.append(("wrote " if ok else "tried to write ") + ", ".join(written))
    return lines, ok
