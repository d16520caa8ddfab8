"""``sysfs-emu run`` and ``ksmtuned-py --root`` as real subprocesses, talking only through files."""

from __future__ import annotations

import subprocess

import yaml

from tests.emutree import KSMTUNED_PY, cli, read, served, stop, wait_for

KSM = "sys/kernel/mm/ksm"

# 2 GiB host (2097152 kB): thres = 20% = 419430 kB, sleep = 10*16 MiB // total = 80 ms.
HOST = {
    "description": "end-to-end test host",
    "host": {"memory": "2GiB", "cpus": 2},
    "processes": [
        {"name": "qemu-system-x86", "id": 0,
         "cmdline": "qemu-system-x86_64 -enable-kvm -name guest=small",
         "regions": [{"pages": 20000, "fill": "pool", "pool": "debian"}]},
    ],
}
# 400000 pages = 1600000 kB: committed 1680000 + thres 419430 > total, free < thres: start, boost.
BIG_GUEST = ("start: {name: qemu-system-x86, id: 1, cmdline: qemu-system-x86_64 -enable-kvm -name guest=big, "
             "regions: [{pages: 20000, fill: pool, pool: debian}, {pages: 200000, fill: same, tag: zeroed}, "
             "{pages: 180000, fill: unique}]}")


def _memfree(root) -> int:
    for line in read(root / "proc/meminfo").splitlines():
        if line.startswith("MemFree:"):
            return int(line.split()[1])
    raise AssertionError("no MemFree")


def test_daemon_tunes_the_simulated_host(tmp_path):
    root = tmp_path / "host"
    scenario = tmp_path / "host.yaml"
    scenario.write_text(yaml.safe_dump(HOST))
    debug = tmp_path / "debug.log"
    pidfile = tmp_path / "ksmtune.pid"
    conf = tmp_path / "ksmtuned.conf"
    # A long interval: every cycle in this test is one we asked for with retune.
    conf.write_text(f"KSM_MONITOR_INTERVAL=3600\nDEBUG=1\nLOGFILE={debug}\nPIDFILE={pidfile}\n")
    daemon_err = open(tmp_path / "daemon.err", "wb")
    with served(root, str(scenario), "--speed", "50", stderr_path=tmp_path / "emu.err"):
        daemon = subprocess.Popen([KSMTUNED_PY, "--root", str(root), "--config", str(conf), "run"],
                                  stdout=daemon_err, stderr=daemon_err)
        try:
            wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() == str(daemon.pid),
                     what="the daemon's pidfile")
            wait_for(lambda: debug.exists() and "thres 419430" in debug.read_text(), what="the daemon to start")

            def retune_and_wait(marker: str) -> str:
                before = debug.read_text().count(marker)
                r = subprocess.run([KSMTUNED_PY, "--config", str(conf), "retune"], capture_output=True, text=True)
                assert r.returncode == 0, r.stderr
                wait_for(lambda: debug.read_text().count(marker) > before, what=f"a cycle ending in {marker!r}")
                return debug.read_text()

            # One small guest: plenty free, KSM stays stopped.
            retune_and_wait("stop ksm")
            assert read(root / KSM / "run") == "0\n"
            assert read(root / KSM / "pages_to_scan") == "100\n"

            # A big guest starts in the running simulation; MemFree drops.
            free_before = _memfree(root)
            r = cli("event", "--root", str(root), BIG_GUEST)
            assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
            free_started = _memfree(root)
            assert free_started < free_before - 1_500_000

            # Retune: the daemon sees it and starts ksmd, as the reference would.
            log = retune_and_wait("KSMCTL start")
            assert "KSMCTL start 300 80" in log.splitlines()[-1]
            wait_for(lambda: read(root / KSM / "run") == "1\n", timeout=5, what="run = 1 in the tree")
            assert read(root / KSM / "pages_to_scan") == "300\n"
            assert read(root / KSM / "sleep_millisecs") == "80\n"

            # ksmd merges the big guest's identical pages: simulated free memory rises.
            wait_for(lambda: int(read(root / KSM / "pages_sharing")) > 100_000, timeout=90,
                     what="ksmd to merge")
            # meminfo is replaced just after the KSM files in the same tick: a read between the
            # two saw the new pages_sharing with the old MemFree (seen once in a full run)
            wait_for(lambda: _memfree(root) > free_started + 100_000 * 4, timeout=30, what="MemFree to rise")
        finally:
            stop(daemon)
            daemon_err.close()
    assert daemon.returncode == 0
    assert not pidfile.exists()
