"""Proxmox VE mode (KSM_COMPAT): the decisions of Proxmox's ksmtuned, on real ``kvm`` processes.

Proxmox VE's script (package ksm-control-daemon) cannot run here: it is not in Debian's
archive, and Proxmox's is not reachable from CI.  So the expectations are worked out by
hand from its rules, which are upstream's rule on other readings:

- committed = ``ps -C kvm -o pss= | awk '{ sum += $1 }; END { printf ("%.0f", sum) }'``
  (``rsz`` instead of ``pss`` with KSM_PS_METRIC=rsz): the processes named exactly ``kvm``;
  the test runs that very pipeline (the real ps and awk) to get the figure;
- free = MemFree + Buffers + Cached (also printed with ``%.0f``: the same integer);
- total = MemTotal; sleep = KSM_SLEEP_MSEC (default 100) x 16 x 1024 x 1024 / total, at
  least 10; thres = total x 20 / 100, at least 2048 (bash: integers, truncated);
- the first debug line is ``using pss metric``; then total, sleep, thres;
- a cycle stops KSM when committed + thres < total and free > thres, else boosts
  (free < thres) or decays pages_to_scan by 300 / -50 within [64, 1250] and starts it.

The guests are stand-ins (tests/twins.py) that share memory copy-on-write with a twin,
so the PSS the rule sums differs from the RSS by about half the shared block.  Everything
runs in a fresh PID namespace: ps sees exactly the test's processes, and none outlives it.
The pytest functions check the prerequisites and start this module as the driver
(``python -m tests.test_proxmox``) in that namespace.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import nsharness, twins
from tests.guests import rss_kib
from tests.svc_daemon import FakeHost

REPO = Path(__file__).resolve().parent.parent
DAEMON = Path(sys.executable).parent / "ksmtuned-py"
SHARED_KIB, PRIVATE_KIB = 24576, 2048  # per pair of twins: 24 MiB shared copy-on-write, 2 MiB each own
SINGLE_KIB = 6144  # a kvm guest without a twin
QEMU_KIB = 8192  # a qemu-system guest: upstream counts it, Proxmox's script does not


# --------------------------------------------------------------------------- pytest side

@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    reason = nsharness.skip_reason()
    if reason:
        pytest.skip(reason)
    for tool in ("ps", "awk"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: the expected committed memory is what ps and awk print")
    try:
        return twins.build(tmp_path_factory.mktemp("standin"))
    except twins.Unavailable as exc:
        pytest.skip(str(exc))


def _driver(standin: Path, scenario: str) -> None:
    argv = [sys.executable, "-m", "tests.test_proxmox", "--standin", str(standin), "--scenario", scenario]
    done = nsharness.run_isolated(argv, timeout=120, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
    print(done.stdout)
    assert done.returncode == 0, f"scenario {scenario} failed:\n{done.stdout[-20000:]}"


@pytest.mark.parametrize("scenario", ["pss-boost", "pss-at-the-pivot", "rsz", "auto-on-a-pve-host",
                                      "upstream-beside-kvm"])
def test_decisions_on_real_kvm_processes(standin, scenario):
    _driver(standin, scenario)


# --------------------------------------------------------------------------- driver side

class Failure(Exception):
    pass


def reference_committed(metric: str, comm: str = "kvm") -> int:
    """What Proxmox's committed_memory prints: ps's column summed by awk, printf "%.0f"."""
    pipeline = f"ps -C {comm} -o {metric}= | awk '{{ sum += $1 }}; END {{ printf (\"%.0f\", sum) }}'"
    out = subprocess.run(["sh", "-c", pipeline], capture_output=True, text=True, check=True).stdout
    return int(out)


def thres_of(total: int) -> int:
    return max(total * 20 // 100, 2048)  # KSM_THRES_COEF 20, KSM_THRES_CONST 2048


def sleep_of(total: int, sleep_msec: int) -> int:
    return max(sleep_msec * 16 * 1024 * 1024 // total, 10)


def start_lines(total: int, sleep_msec: int, metric: str | None) -> list[str]:
    lines = [f"using {metric} metric"] if metric else []
    return lines + [f"total {total}", f"sleep {sleep_of(total, sleep_msec)}", f"thres {thres_of(total)}"]


@dataclass
class Host(FakeHost):
    """A --root tree: the real processes (each /proc/PID linked in), a chosen meminfo, KSM files."""

    def prepare(self, total: int, free: int, config: str, pve: bool) -> Path:
        shutil.rmtree(self.base, ignore_errors=True)
        (self.root / "proc").mkdir(parents=True)
        self.ksm.mkdir(parents=True)
        for name, value in nsharness.KSM_FILES.items():
            (self.ksm / name).write_text(value + "\n")
        if pve:
            (self.root / "etc/pve").mkdir(parents=True)  # what every Proxmox VE host has
        (self.root / "proc/meminfo").write_text(nsharness.meminfo_text(total, free, 0, 0))
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                (self.root / "proc" / entry).symlink_to(f"/proc/{entry}")
        conf = self.base / "ksmtuned.conf"
        conf.write_text(f"KSM_MONITOR_INTERVAL=3600\nDEBUG=1\nLOGFILE={self.logfile}\nPIDFILE={self.pidfile}\n"
                        + config)
        return conf

    def lines(self) -> list[str]:
        try:
            text = self.logfile.read_text()
        except FileNotFoundError:
            return []
        return [line.partition(": ")[2] for line in text[:text.rfind("\n") + 1].splitlines()]

    def knobs(self) -> tuple[str, str, str]:
        return tuple((self.ksm / n).read_text().split()[0] for n in ("run", "pages_to_scan", "sleep_millisecs"))


def run_daemon(host: Host, conf: Path, start_count: int) -> tuple[list[str], list[str]]:
    """Start the daemon, let it print its start lines, SIGUSR1 it once; (start lines, cycle lines)."""
    proc = subprocess.Popen([str(DAEMON), "--root", str(host.root), "--config", str(conf), "run"],
                            env=dict(nsharness.CLEAN_ENV), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(host.base / "stderr", "w"))
    try:
        nsharness.wait_until(lambda: len(host.lines()) >= start_count or proc.poll() is not None, 20,
                             "the start lines")
        if proc.poll() is not None:
            raise Failure(f"the daemon exited {proc.returncode}: {(host.base / 'stderr').read_text()}")
        nsharness.wait_until(lambda: nsharness.handles(proc.pid, signal.SIGUSR1), 10, "the SIGUSR1 handler")
        first = host.lines()
        os.kill(proc.pid, signal.SIGUSR1)
        nsharness.wait_until(lambda: host.lines()[-1:] and (host.lines()[-1].endswith("stop ksm")
                                                            or host.lines()[-1].startswith("KSMCTL")),
                             10, "the cycle's lines")
        return first, host.lines()[len(first):]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def expect(what: str, got, wanted) -> None:
    if got != wanted:
        raise Failure(f"{what}:\n  got      {got}\n  expected {wanted}")


def start_case(host: Host, total: int, free: int, config: str, metric: str | None, sleep_msec: int,
               committed: int, pve: bool = False) -> list[str]:
    """One daemon start and one cycle; checks the start lines and the cycle's first line; the rest returned."""
    conf = host.prepare(total, free, config, pve)
    first, cycle = run_daemon(host, conf, 4 if metric else 3)
    expect("start lines", first, start_lines(total, sleep_msec, metric))
    expect("committed and free", cycle[:1], [f"committed {committed} free {free}"])
    return cycle[1:]


def pss_boost(host: Host) -> None:
    """8 GiB host, free just under thres: start KSM, boost 0 -> 300, Proxmox's sleep default 100."""
    committed = reference_committed("pss")
    total = 8 * 1024 * 1024
    thres, sleep = thres_of(total), sleep_of(total, 100)
    assert committed + thres < total  # the start comes from free < thres alone
    rest = start_case(host, total, thres - 1, "KSM_COMPAT=proxmox\n", "pss", 100, committed)
    expect("decision", rest, [f"{committed + thres} > {total}, start ksm", f"{thres - 1} < {thres}, boost",
                              f"KSMCTL start 300 {sleep}"])
    expect("knobs", host.knobs(), ("1", "300", str(sleep)))


def pivot_total(committed: int) -> int:
    """The least total at which committed + thres < total (a stop when free > thres)."""
    total = committed
    while committed + thres_of(total) >= total:
        total += 1
    return total


def pss_at_the_pivot(host: Host) -> None:
    """At the smallest total with committed + thres < total: stop; one kB less: start and decay to 64."""
    committed = reference_committed("pss")
    total = pivot_total(committed)
    thres = thres_of(total)
    rest = start_case(host, total, thres + 1, "KSM_COMPAT=proxmox\n", "pss", 100, committed)
    expect("decision at the pivot", rest, [f"{committed + thres} < {total} and free > {thres}, stop ksm"])
    expect("knobs", host.knobs()[0], "0")
    total -= 1
    thres = thres_of(total)
    rest = start_case(host, total, thres + 1, "KSM_COMPAT=proxmox\n", "pss", 100, committed)
    expect("decision below the pivot", rest, [f"{committed + thres} > {total}, start ksm",
                                              f"{thres + 1} > {thres}, decay",
                                              f"KSMCTL start 64 {sleep_of(total, 100)}"])


def rsz(host: Host) -> None:
    """KSM_PS_METRIC=rsz counts the kvm processes' resident size, twins' shared pages in full."""
    committed = reference_committed("rsz")
    total = pivot_total(committed)
    thres = thres_of(total)
    config = "KSM_COMPAT=proxmox\nKSM_PS_METRIC=rsz\nKSM_SLEEP_MSEC=20\n"
    rest = start_case(host, total, thres + 1, config, "rsz", 20, committed)
    expect("decision", rest, [f"{committed + thres} < {total} and free > {thres}, stop ksm"])


def auto_on_a_pve_host(host: Host) -> None:
    """KSM_COMPAT unset: /etc/pve under the root makes it Proxmox's script (and without it, upstream's)."""
    committed = reference_committed("pss")
    total = 4 * 1024 * 1024
    thres = thres_of(total)
    start_case(host, total, thres - 1, "", "pss", 100, committed, pve=True)
    upstream = sum(rss_kib(pid) for pid in qemu_pids())
    start_case(host, total, thres - 1, "", None, 10, upstream, pve=False)


def upstream_beside_kvm(host: Host) -> None:
    """KSM_COMPAT=upstream on the same processes: the qemu guest by RSS, no kvm one; KSM_PS_METRIC warned about."""
    upstream = sum(rss_kib(pid) for pid in qemu_pids())
    total = 4 * 1024 * 1024
    thres = thres_of(total)
    start_case(host, total, thres - 1, "KSM_COMPAT=upstream\nKSM_PS_METRIC=pss\n", None, 10, upstream, pve=True)
    stderr = (host.base / "stderr").read_text()
    if "KSM_PS_METRIC is Proxmox VE's setting and has no effect in upstream mode" not in stderr:
        raise Failure(f"no warning about KSM_PS_METRIC in upstream mode:\n{stderr}")


SCENARIOS = {"pss-boost": pss_boost, "pss-at-the-pivot": pss_at_the_pivot, "rsz": rsz,
             "auto-on-a-pve-host": auto_on_a_pve_host, "upstream-beside-kvm": upstream_beside_kvm}
QEMU_PIDS: list[int] = []


def qemu_pids() -> list[int]:
    return QEMU_PIDS


def start_guests(standin: Path) -> list[twins.Twins]:
    started = [
        twins.start(standin, "kvm", SHARED_KIB, PRIVATE_KIB, copies=2),
        twins.start(standin, "kvm", 0, SINGLE_KIB, copies=1),
        twins.start(standin, "qemu-system-x86_64", 0, QEMU_KIB, copies=1),  # comm qemu-system-x86
        twins.start(standin, "kvm-helper", 0, 4096, copies=1),  # a name that only starts with kvm
    ]
    QEMU_PIDS[:] = started[2].pids
    pss, rss = reference_committed("pss"), reference_committed("rsz")
    if not rss - pss >= SHARED_KIB // 2 - 1024:  # the twins count their shared block once between them
        raise Failure(f"the twins' PSS ({pss} kB) is not about {SHARED_KIB // 2} kB below their RSS ({rss} kB)")
    print(f"kvm guests: PSS {pss} kB, RSS {rss} kB; qemu guest RSS {sum(rss_kib(p) for p in QEMU_PIDS)} kB")
    return started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--standin", type=Path, required=True)
    parser.add_argument("--scenario", choices=SCENARIOS, required=True)
    args = parser.parse_args()
    started: list[twins.Twins] = []
    with tempfile.TemporaryDirectory(prefix="ksmtuned-py-proxmox-") as tmp:
        try:
            started = start_guests(args.standin)
            SCENARIOS[args.scenario](Host(Path(tmp) / "host"))
        except (Failure, TimeoutError) as exc:
            print(f"FAILED: {exc}")
            return 1
        finally:
            for guest in started:
                guest.stop()
    print("ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
