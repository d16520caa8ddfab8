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
from ksmtuned_py import policies, procinfo
from ksmtuned_py.cycle import Cycle, Policy
from ksmtuned_py.errors import UserError
from ksmtuned_py.filehost import FileHost
from ksmtuned_py.knobs import COUNTERS, KNOBS, require_ksm
from ksmtuned_py.ksmlock import KsmBusy, KsmLock
from ksmtuned_py.pidfile import NOT_RUNNING, read_state, running_pid, state_path
from ksmtuned_py.readings import Readings
from ksmtuned_py.report import guest_reports, human_bytes, unmerge_figures

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
    """Everything ``status`` shows, as plain data, in the names of ``cycle.py`` (see the README's JSON)."""
    cycle, basis, before = _cycle(cfg, root)
    readings, dec = cycle.decide()
    ksm = readings.ksm
    files: dict = {name: ksm.knobs.get(name) for name in KNOBS}
    files["advisor_mode"] = ksm.advisor_mode
    files.update(ksm.counters)
    page_size = cycle.host.page_size
    snap = {
        "ksm": files,  # the KSM files, by name (the counters this kernel has)
        "saved_bytes": ksm.saved_bytes(page_size),
        "page_size": page_size,
        "memory": {
            "total_kb": dec.total_kb,
            "free_kb": readings.free_kb,
            "free_metric": cfg.free_metric,
            "committed_kb": readings.committed_kb,
            "memory_metric": cfg.memory_metric,
            "thres_kb": dec.thres_kb,
        },
        "guests": [{"pid": g.pid, "comm": g.comm, "committed_kb": g.committed_kb, **guest_ksm(g)}
                   for g in guest_reports(readings.guests)],
        "next": {
            "action": dec.action,
            "level": dec.level,
            "npages": dec.npages,
            "sleep_ms": dec.sleep_ms,
            "advisor_active": ksm.advisor_active,
            "reason": dec.reason,
            "from_npages": before,
            "npages_source": basis.source,
            "npages_from": basis.why,
            "policy": basis.policy.name,
        },
        "compat": {"mode": cfg.compat.mode, "why": cfg.compat.why},
        "daemon": basis.daemon,
        **insight(readings, root, page_size, basis.daemon.get("last_decision")),
    }
    snap["ksmd"]["cpu_budget_percent"] = cfg.settings["KSM_MAX_CPU"].value if "KSM_MAX_CPU" in cfg.settings else None
    return snap


def guest_ksm(g) -> dict:
    """A guest's name and KSM numbers as status shows them."""
    return {"name": g.name, "ksm_merging_pages": g.ksm_merging_pages, "ksm_process_profit": g.ksm_process_profit,
            "ksm_rmap_items": g.ksm_rmap_items, "ksm_zero_pages": g.ksm_zero_pages, "mergeable": g.mergeable}


def insight(readings: Readings, root: str, page_size: int, last: dict | None) -> dict:
    """ksmd's CPU use, copy-on-write breaks and the unmerge risk: over the daemon's last interval when a
    daemon runs, else since boot."""
    uptime = procinfo.uptime_seconds(os.path.join(root, "proc"))
    cpu, cow = readings.ksmd_cpu_seconds, readings.cow_ksm
    if last and last.get("ksmd_cpu_percent") is not None:
        cpu_percent, basis = last["ksmd_cpu_percent"], "over the daemon's last interval"
    else:
        cpu_percent, basis = (None if cpu is None or not uptime else cpu / uptime * 100), "since boot"
    if last and last.get("cow_ksm_per_second") is not None:
        cow_rate = last["cow_ksm_per_second"]
    else:
        cow_rate = None if cow is None or not uptime else cow / uptime
    need, room = unmerge_figures(readings, page_size)
    return {
        "ksmd": {"cpu_seconds": cpu, "cpu_percent": cpu_percent, "over": basis},
        "cow_ksm": {"total": cow, "per_second": cow_rate, "over": basis},
        "unmerge": {"need_bytes": need, "room_bytes": room,
                    "fits": None if need is None or room is None else need <= room},
    }


LABEL = 12  # "next cycle: " — the width of every line's label
WIDTH = 79


_NBSP = "\u00a0"  # textwrap breaks only at ASCII whitespace


def _field(label: str, *items: str) -> list[str]:
    """``label:`` and the items joined by ", ", wrapped at 79 columns between items, never inside one.

    In the items, a number stays with its unit and with the word before it ("free 100000 kB").
    """
    import re
    import textwrap

    kept = [re.sub(r"(?<=\w) (?=[\d-])|(?<=\d) (?=[kKMGT]i?B\b|B\b)", _NBSP, item) for item in items]
    if len(items) > 1:
        kept = [item.replace(" ", _NBSP) for item in kept]
    lines = textwrap.wrap(", ".join(kept), WIDTH, initial_indent=f"{label + ':':<{LABEL}}",
                          subsequent_indent=" " * LABEL, break_long_words=False, break_on_hyphens=False)
    return [line.replace(_NBSP, " ") for line in lines]


def _size(kb: int | None) -> str:
    return "unknown" if kb is None else human_bytes(kb * 1024)


def _ksm_lines(s: dict) -> list[str]:
    k = s["ksm"]
    run = k["run"]
    items = [f"{RUN_STATES.get(run, 'unknown')} (run={run})", f"pages_to_scan {k['pages_to_scan']}",
             f"sleep_millisecs {k['sleep_millisecs']}"]
    if k["advisor_mode"]:
        items.append(f"advisor {k['advisor_mode']}")
    lines = _field("KSM", *items)
    counters = [f"{name} {k[name]}" for name in COUNTERS if name in k]
    if counters:
        lines += _field("counters", *counters)
    if s["saved_bytes"] is not None:
        zero = f" + ksm_zero_pages {k['ksm_zero_pages']}" if k.get("ksm_zero_pages") else ""
        text = f"{human_bytes(s['saved_bytes'])} (pages_sharing {k['pages_sharing']}{zero} x {s['page_size']} B)"
        if k.get("general_profit") is not None:
            text += f"; general_profit {human_bytes(k['general_profit'])}"
        lines += _field("saved", text)
    return lines


def _memory_lines(s: dict) -> list[str]:
    m, guests = s["memory"], s["guests"]
    lines = _field("memory", f"total {_size(m['total_kb'])}", f"free {_size(m['free_kb'])} ({m['free_metric']})",
                   f"committed {_size(m['committed_kb'])} ({m['memory_metric']}, {len(guests)} guests)",
                   f"thres {_size(m['thres_kb'])}")
    for g in guests:
        lines += _guest_lines(g)
    return lines


def _guest_lines(g: dict) -> list[str]:
    """``guest:      1234 web-1 (qemu-system-x86) 2.0 GiB, merging 1200 pages, profit 4.5 MiB, mergeable``."""
    items = [f"{g['pid']} {g['name']} ({g['comm']}) {_size(g['committed_kb'])}"]
    if g["ksm_merging_pages"] is not None:
        items.append(f"merging {g['ksm_merging_pages']} pages")
    if g["ksm_process_profit"] is not None:
        items.append(f"profit {human_bytes(g['ksm_process_profit'])}")
    if g["mergeable"] is not None:
        items.append("mergeable" if g["mergeable"] else "NOT mergeable (see ksmtuned-py doctor)")
    return _field("guest", *items)


def _insight_lines(s: dict) -> list[str]:
    """ksmd's CPU use, copy-on-write breaks and the unmerge risk, for people."""
    lines = []
    k, c, u = s["ksmd"], s["cow_ksm"], s["unmerge"]
    if k["cpu_percent"] is not None:
        budget = "" if k["cpu_budget_percent"] is None else f" (KSM_MAX_CPU {k['cpu_budget_percent']}%)"
        lines += _field("ksmd", f"{k['cpu_percent']:.2f}% of one CPU {k['over']}{budget}",
                        f"{k['cpu_seconds']:.1f} s of CPU since boot")
    if c["total"] is not None:
        items = [f"{c['total']} KSM pages copied on write since boot"]
        if c["per_second"] is not None:
            items.append(f"{c['per_second']:.2f}/s {c['over']}")
        lines += _field("cow breaks", *items)
    if u["need_bytes"] is not None and u["room_bytes"] is not None:
        verdict = "fits" if u["fits"] else "DOES NOT FIT: the host could run out of memory"
        lines += _field("unmerge", f"merged {human_bytes(u['need_bytes'])} needed back if the guests wrote it all",
                        f"MemAvailable + SwapFree {human_bytes(u['room_bytes'])}: {verdict}")
    return lines


def _daemon_text(d: dict) -> str:
    if not d["running"]:
        return f"not running ({d['reason'].removeprefix(NOT_RUNNING + ': ')})"
    text = f"running (pid {d['pid']})"
    last = d.get("last_decision")
    if last:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["time"]))
        text += f", last cycle at {when}: {last['action']} ksm"
        if last["action"] == "start":
            text += f" ({last['level']}, pages_to_scan {last['npages']})"
    elif "state" in d:
        text += ", no cycle yet"
    return text


def render_text(s: dict) -> str:
    """The human form of :func:`collect`'s snapshot: sizes human-readable, lines of at most 79 columns.

    The reason keeps kB: they are the numbers the rule compares.
    """
    n = s["next"]
    if n["action"] == "start":
        scan = "pages_to_scan left to the kernel advisor" if n["advisor_active"] else f"pages_to_scan {n['npages']}"
        what = f"start ksm ({n['level']}): {scan}, sleep_millisecs {n['sleep_ms']}"
    else:
        what = "stop ksm"
    lines = [*_ksm_lines(s), *_memory_lines(s), *_insight_lines(s),
             *_field("next cycle", f"{what}, because {n['reason']}"),
             *_field("npages", f"{n['from_npages']} now, from {n['npages_from']}"),
             *([] if n["policy"] == policies.DEFAULT else _field("policy", n["policy"])),
             *_field("compat", f"{s['compat']['mode']} ({s['compat']['why']})"),
             *_field("daemon", _daemon_text(s["daemon"]))]
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
    lock = KsmLock(require_ksm(root))
    try:
        lock.acquire()  # one tuner at a time: not beside a running daemon
    except KsmBusy:
        raise UserError(f"a ksmtuned-py daemon tunes {lock.directory} and would undo this at its next "
                        "cycle; `ksmtuned-py retune` makes it decide now (or stop it first)") from None
    try:
        report = cycle.run()
    finally:
        lock.release()
    lines = [*basis.policy.start_lines(), *cycle_lines]
    lines.append(("wrote " if report.writes_ok else "tried to write ") + ", ".join(report.writes))
    return lines, report.writes_ok
