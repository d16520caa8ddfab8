"""``ksmtuned-py doctor``: why KSM is not saving (more) here, as findings.

Each finding has a stable id (scripts and tests match on it), a severity, one sentence of
evidence with the numbers, and what to do.  Everything is read below the root (``/`` or a
tree under ``--root``), nothing is written.  The checks are small functions over one
:class:`~ksmtuned_py.doctorhost.Host` survey (``doctorhost.py``), in the order :data:`CHECKS`
lists them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict

from ksmtuned_py import procinfo
# survey: the command reads the host with it, then calls diagnose (cli.py)
from ksmtuned_py.doctorhost import (GUEST_LIKE_PROGRAMS, INFO, OTHER_TUNERS, WARNING, Finding, Host,  # noqa: F401
                                    Process, survey)
from ksmtuned_py.knobs import ksm_dir
from ksmtuned_py.report import human_bytes


def _mib(kb: int) -> str:
    return human_bytes(kb * 1024)


# --- the checks ---------------------------------------------------------------------------


def no_ksm(host: Host) -> list[Finding]:
    if host.has_ksm:
        return []
    return [Finding("no-ksm", WARNING, f"{ksm_dir(host.root)} does not exist: this kernel was built without KSM "
                    "(CONFIG_KSM), so nothing can be merged.",
                    "Use a kernel with CONFIG_KSM=y (every major distribution's has it).")]


def stopped_by_rule(host: Host) -> list[Finding]:
    s = host.status
    nxt, mem = s["next"], s["memory"]
    if nxt["action"] != "stop" or mem["thres_kb"] is None:
        return []
    total, committed, free, thres = mem["total_kb"], mem["committed_kb"], mem["free_kb"], mem["thres_kb"]
    need = min(total - committed, free)  # thres that would start KSM now
    coef = math.ceil(100 * need / total)
    now = host.config.settings["KSM_THRES_COEF"].text
    return [Finding(
        "ksm-stopped-by-rule", INFO,
        f"The rule stops ksmd: committed + thres = {committed + thres} kB < total {total} kB and free {free} kB "
        f"> thres {thres} kB (KSM runs when the guests plus the threshold do not fit, or free memory falls "
        "to the threshold).",
        f"Nothing to do if memory is plentiful; to merge anyway, KSM_THRES_COEF={coef} (now {now}) or "
        f"KSM_THRES_CONST={need} would start it now.")]


def ksm_not_running(host: Host) -> list[Finding]:
    """ksmd merges nothing: unmerging (run 2), or stopped while the rule would run it and nothing tunes."""
    s = host.status
    run = s["ksm"].get("run")
    if run == 2:
        return [Finding("ksm-not-running", WARNING,
                        "run is 2: ksmd is unmerging every merged page and merges nothing until run is 1 again.",
                        "Write 1 to run (or let the tuner's next cycle do it) once unmerging was what you wanted.")]
    if run != 0 or s["next"]["action"] != "start" or s["daemon"].get("running") or \
            any(_other_tuner(p) for p in host.processes):
        return []
    return [Finding("ksm-not-running", WARNING,
                    f"ksmd is stopped (run 0) although the rule would start it now ({s['next']['reason']}), and no "
                    f"tuner runs ({s['daemon'].get('reason', 'no daemon')}).",
                    "Start the tuner: systemctl enable --now ksmtuned-py (its first cycle starts KSM); "
                    "ksmtuned-py adjust --apply starts it once, by the same rule.")]


def no_mergeable_memory(host: Host) -> list[Finding]:
    users = [p for p in host.processes if not p.kthread]
    known = [p for p in users if p.ksm is not None and p.ksm.mergeable is not None]
    if not known or any(p.ksm.mergeable for p in known):
        return []
    return [Finding("no-mergeable-memory", WARNING,
                    f"None of the {len(known)} processes has mergeable memory (ksm_mergeable: no in every "
                    "/proc/PID/ksm_stat), so ksmd has nothing to scan.",
                    "KSM merges only memory a program marks with madvise(MADV_MERGEABLE) or "
                    "prctl(PR_SET_MEMORY_MERGE); qemu does so for guest RAM unless -machine mem-merge=off.")]


def guests_not_mergeable(host: Host) -> list[Finding]:
    out = []
    for g in host.guests():
        mergeable = g["mergeable"]
        maps = None
        if mergeable is None:  # a kernel before 6.7: smaps' VmFlags say it
            maps = procinfo.read_smaps(host.proc, g["pid"])
            mergeable = None if maps is None else any(m.mergeable for m in maps)
        if mergeable is not False:
            continue
        why, action = _why_not_mergeable(host, g["pid"], host.argv(g["pid"]), maps)
        out.append(Finding("guest-not-mergeable", WARNING,
                           f"Guest {g['name']} (pid {g['pid']}, {_mib(g['committed_kb'])} resident) has no mergeable memory: "
                           f"{why}.", action, g["name"]))
    return out


def _why_not_mergeable(host: Host, pid: int, argv: list[str], maps) -> tuple[str, str]:
    if any("mem-merge=off" in a for a in argv):
        return ("qemu runs with -machine mem-merge=off (what libvirt's <memoryBacking><nosharepages/> and "
                "Proxmox VE's allow-ksm: 0 set)",
                "If KSM should merge this guest, remove <nosharepages/> from its libvirt XML, set allow-ksm: 1 "
                "in Proxmox VE, or drop mem-merge=off, then restart the guest.")
    maps = maps if maps is not None else procinfo.read_smaps(host.proc, pid) or []
    biggest = max(maps, key=lambda m: m.rss_kb, default=None)
    if biggest is not None and "ht" in biggest.flags:
        return (f"its biggest mapping ({_mib(biggest.size_kb)}) is hugetlbfs memory (VmFlags ht), which KSM "
                "cannot merge", "Back the guest with ordinary memory (no <hugepages/>, no memory-backend-file on "
                "hugetlbfs) if merging matters more than huge pages.")
    if biggest is not None and ("sh" in biggest.flags or biggest.name.startswith(("/", "memfd:"))):
        return (f"its biggest mapping ({_mib(biggest.rss_kb)} resident, {biggest.name or 'anonymous'}) is shared "
                "(VmFlags sh) or file-backed memory, which KSM cannot merge (it merges private anonymous pages "
                "only)", "Use private memory for the guest (memory-backend-ram, or share=off; no "
                "<access mode='shared'/> in libvirt) unless another process must share it (vhost-user, virtiofs).")
    return ("its memory was never madvised (MADV_MERGEABLE) nor the process set to merge everything",
            "qemu madvises guest RAM unless -machine mem-merge=off; check how this guest was started.")


#: qemu's confidential-guest objects and options (AMD SEV, SEV-SNP, Intel TDX).
ENCRYPTION = re.compile(r"\b(sev-snp-guest|sev-guest|tdx-guest)\b|\b(confidential-guest-support|memory-encryption)=")


def encrypted_guests(host: Host) -> list[Finding]:
    """Guests whose memory the CPU encrypts: every page differs as the host sees it."""
    out = []
    for g in host.guests():
        found = next((m.group(0) for a in host.argv(g["pid"]) if (m := ENCRYPTION.search(a))), None)
        if found is None or g["mergeable"] is False:  # guest-not-mergeable says that one
            continue
        out.append(Finding("encrypted-guest", WARNING,
                           f"Guest {g['name']} (pid {g['pid']}, {_mib(g['committed_kb'])} resident) runs with "
                           f"encrypted memory (qemu {found.rstrip('=')}): its pages differ as the host sees "
                           f"them, so KSM cannot merge them ({g['ksm_merging_pages'] or 0} merged now).",
                           "Nothing can merge it; to spare ksmd scanning it, start it with -machine mem-merge=off "
                           "(libvirt <memoryBacking><nosharepages/>).", g["name"]))
    return out


def near_miss_guests(host: Host) -> list[Finding]:
    counted = {g["pid"] for g in host.guests()}
    pattern = re.compile(host.config.process_regex)
    out = []
    for p in host.processes:
        if p.kthread or p.pid in counted or pattern.search(p.comm):
            continue
        kvm = any(a in ("-enable-kvm",) or "accel=kvm" in a or a == "kvm" for a in p.argv[1:])
        if not (GUEST_LIKE_PROGRAMS.match(p.comm) or GUEST_LIKE_PROGRAMS.match(p.program) or kvm):
            continue
        hint = ("Proxmox VE names its guests kvm: set KSM_COMPAT=proxmox or KSM_PROCESS_REGEX='^kvm$'"
                if p.comm == "kvm" else f"set KSM_PROCESS_REGEX to a pattern that matches {p.comm!r} too")
        out.append(Finding("near-miss-guest", WARNING,
                           f"Process {p.comm} (pid {p.pid}, {p.program or 'no command line'}) looks like a guest but "
                           f"is not counted: its name does not match KSM_PROCESS_REGEX {pattern.pattern!r}, so its "
                           "memory is not in committed and the rule may never start KSM for it.",
                           hint + ".", p.comm))
    return out


def advisor_owns_pages_to_scan(host: Host) -> list[Finding]:
    if host.status["ksm"]["advisor_mode"] != "scan-time":
        return []
    target = host.knob_text("advisor_target_scan_time")
    cpu = host.knob_text("advisor_max_cpu")
    return [Finding("advisor-owns-pages-to-scan", INFO,
                    f"advisor_mode is scan-time: the kernel sets pages_to_scan (now "
                    f"{host.status['ksm']['pages_to_scan']}) to finish a full scan in {target} s within "
                    f"{cpu}% of a CPU, and refuses writes to it.",
                    "ksmtuned-py leaves pages_to_scan to the advisor and keeps run and sleep_millisecs; to tune "
                    "it yourself, write none to advisor_mode.")]


def another_writer(host: Host) -> list[Finding]:
    out = []
    daemon = host.status.get("daemon", {})
    last = daemon.get("last_decision") if daemon.get("running") else None
    if last:
        knobs = host.status["ksm"]
        names = ["run", "sleep_millisecs"] + ([] if knobs["advisor_mode"] == "scan-time" else ["pages_to_scan"])
        changed = [f"{n} {last[n]} -> {knobs[n]}" for n in names if last.get(n) is not None and knobs[n] != last[n]]
        if changed:
            out.append(Finding("another-writer", WARNING,
                               f"Since the daemon's last cycle another program changed {'; '.join(changed)}.",
                               _OTHER_WRITER_ACTION))
    for p in host.processes:
        if _other_tuner(p):
            out.append(Finding("another-writer", WARNING,
                               f"{OTHER_TUNERS[p.comm]} runs (pid {p.pid}) and may write /sys/kernel/mm/ksm too.",
                               _OTHER_WRITER_ACTION, p.comm))
    return out


def _other_tuner(p: Process) -> bool:
    """A program other than ksmtuned-py known to write the KSM knobs (ksmtuned-py's own comm may be ksmtuned)."""
    return p.comm in OTHER_TUNERS and not (p.comm == "ksmtuned" and any("ksmtuned-py" in a for a in p.argv))


_OTHER_WRITER_ACTION = ("Let one program tune KSM: stop the other (systemctl disable --now ksmtuned, a tuned profile "
                        "without [ksm], KubeVirt's ksm configuration) or this one.")


def negative_profit(host: Host) -> list[Finding]:
    profit = host.status["ksm"].get("general_profit")
    if profit is None or profit >= 0:
        return []
    worst = sorted((g for g in host.guests() if (g["ksm_process_profit"] or 0) < 0),
                   key=lambda g: g["ksm_process_profit"])[:3]
    who = "; worst: " + ", ".join(f"{g['name']} {human_bytes(g['ksm_process_profit'])}" for g in worst) if worst else ""
    evidence = (f"general_profit is {human_bytes(profit)}: KSM's metadata (an rmap item per scanned page) costs "
                f"more than the {host.status['ksm'].get('pages_sharing', 0)} merged pages save{who}")
    scans = host.status["ksm"].get("full_scans")
    if scans is not None and scans < 2:
        # The first pass only checksums: every page scanned has its rmap item, none has merged yet.
        return [Finding("negative-profit", INFO,
                        f"{evidence}, but ksmd has made {scans} full scan{'' if scans == 1 else 's'} since boot, "
                        "and a page merges only on its second visit.",
                        "Nothing to do yet: look again after ksmd's second full scan (full_scans 2).")]
    return [Finding("negative-profit", WARNING, evidence + ".",
                    "Mark less memory mergeable, or stop KSM on this host: its guests share too little.")]


def huge_pages_split(host: Host) -> list[Finding]:
    out = []
    for g in host.guests():
        if g["mergeable"] is False:
            continue
        huge = _anon_huge_kb(host.proc, g["pid"])
        if huge:
            out.append(Finding("huge-pages-split", INFO,
                               f"Guest {g['name']} (pid {g['pid']}) has {_mib(huge)} of its {_mib(g['committed_kb'])} in "
                               "transparent huge pages (AnonHugePages), which KSM splits into 4 KiB pages to merge "
                               "them, undoing the huge pages' speed-up where it merges.",
                               "Choose per guest: KSM's saving (leave it) or huge pages (mem-merge=off for that "
                               "guest); transparent_hugepage=madvise limits THP to memory that asks for it.",
                               g["name"]))
    return out


def _anon_huge_kb(proc: str, pid: int) -> int:
    text = procinfo.read_bytes(f"{proc}/{pid}/smaps_rollup", 8192) or b""
    for line in text.splitlines():
        if line.startswith(b"AnonHugePages:"):
            value = line.split()[1]
            return int(value) if value.isdigit() else 0
    return 0


def merge_across_nodes(host: Host) -> list[Finding]:
    nodes = _numa_nodes(host.root)
    value = host.knob_text("merge_across_nodes")
    if nodes < 2 or value is None:
        return []
    what = ("KSM merges identical pages of guests on different nodes: more saving, but a guest may then read "
            "a merged page from another node's memory") if value == "1" else \
        "KSM merges only pages on the same node: node-local memory, less saving"
    return [Finding("merge-across-nodes", INFO, f"This host has {nodes} NUMA nodes and merge_across_nodes is "
                    f"{value}: {what}.",
                    "To change it safely: write 2 to run (unmerges everything), then the new value to "
                    "merge_across_nodes (refused with EBUSY while pages are merged), then 1 to run.")]


def _numa_nodes(root: str) -> int:
    text = procinfo.read_bytes(os.path.join(root, "sys/devices/system/node/online"), 4096)
    if not text:
        return 1
    count = 0
    for part in text.decode("ascii", errors="replace").strip().split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            count += int(high or low) - int(low) + 1
    return count


def unmerge_risk(host: Host) -> list[Finding]:
    u = host.status["unmerge"]
    if u["fits"] is not False:
        return []
    return [Finding("unmerge-risk", WARNING,
                    f"KSM has merged {human_bytes(u['need_bytes'])} that the guests would need back if they wrote "
                    f"it, more than MemAvailable + SwapFree ({human_bytes(u['room_bytes'])}).",
                    "Keep room for it: fewer guests, more swap, or less merging (this host depends on KSM to stay "
                    "out of the OOM killer).")]


#: (check, needs KSM) in report order.
CHECKS = ((no_ksm, False), (stopped_by_rule, True), (ksm_not_running, True), (no_mergeable_memory, False),
          (guests_not_mergeable, True), (encrypted_guests, True), (near_miss_guests, False),
          (advisor_owns_pages_to_scan, True), (another_writer, True), (negative_profit, True),
          (huge_pages_split, True), (merge_across_nodes, True), (unmerge_risk, True))


def diagnose(host: Host) -> list[Finding]:
    out: list[Finding] = []
    for check, needs_ksm in CHECKS:
        if host.has_ksm or not needs_ksm:
            out += check(host)
    return out


def render_text(findings: list[Finding]) -> str:
    if not findings:
        return "no findings: KSM is set up to merge what it can here\n"
    lines = []
    for f in findings:
        lines.append(f"{f.severity}: [{f.id}] {f.evidence}")
        lines.append(f"    what to do: {f.action}")
    warnings = sum(f.severity == WARNING for f in findings)
    lines.append(f"{len(findings)} finding{'s' if len(findings) != 1 else ''}, {warnings} warning"
                 f"{'s' if warnings != 1 else ''}")
    return "\n".join(lines) + "\n"


def as_json(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]
