"""KSM_COMPAT: detecting Proxmox VE, Proxmox's defaults and KSM_PS_METRIC, awk's arithmetic.

The decisions on real kvm processes are in tests/test_proxmox.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ksmtuned_py import compat, config, policies
from ksmtuned_py.config_syntax import ConfigError
from ksmtuned_py.readings import awk_sum_kb
from tests.test_cli import cli
from tests.test_daemon import host  # noqa: F401  (fixture)

PVE_STATUS = """\
Package: libc6
Status: install ok installed
Version: 2.36-9

Package: pve-manager
Status: install ok installed
Priority: optional
Depends: libc6,
 pve-cluster
Version: 8.2.4

"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- detection ------------------------------------------------------------------------------


def test_detects_proxmox_from_its_installed_packages(tmp_path):
    status = write(tmp_path / "var/lib/dpkg/status", PVE_STATUS)
    assert compat.detect(tmp_path) == compat.Compat(
        "proxmox", f"KSM_COMPAT=auto, and this is a Proxmox VE host: package pve-manager is installed ({status})")


@pytest.mark.parametrize("stanza", [
    "Package: pve-manager\nStatus: deinstall ok config-files\n",  # removed, its config kept
    "Package: pve-manager-doc\nStatus: install ok installed\n",  # another package's name
    "Package: foo\nStatus: install ok installed\nDescription: x\n Package: pve-manager\n",  # a description
    "Package: ksmtuned\nStatus: install ok installed\n",  # Debian's ksmtuned is upstream's
])
def test_packages_that_do_not_make_a_proxmox_host(tmp_path, stanza):
    write(tmp_path / "var/lib/dpkg/status", stanza + "\n")
    assert compat.detect(tmp_path).mode == "upstream"


def test_detects_proxmox_from_etc_pve_and_says_why_not(tmp_path):
    assert compat.detect(tmp_path) == compat.Compat(
        "upstream", f"KSM_COMPAT=auto, and this is not a Proxmox VE host (no Proxmox VE package in "
                    f"{tmp_path}/var/lib/dpkg/status, no {tmp_path}/etc/pve)")
    (tmp_path / "etc/pve").mkdir(parents=True)
    assert compat.detect(tmp_path) == compat.Compat(
        "proxmox", f"KSM_COMPAT=auto, and this is a Proxmox VE host: {tmp_path}/etc/pve exists")


def test_ksm_compat_set_wins_over_detection(tmp_path):
    (tmp_path / "etc/pve").mkdir(parents=True)
    conf = write(tmp_path / "k.conf", "KSM_COMPAT=upstream\n")
    cfg = config.load(str(conf), environ={}, root=tmp_path)
    assert cfg.compat == compat.Compat("upstream", f"KSM_COMPAT=upstream ({conf}:1)")
    cfg = config.load(str(conf), environ={"KSM_COMPAT": "proxmox"}, root=tmp_path)
    assert cfg.compat.mode == "upstream"  # the file wins over the environment, as always
    cfg = config.load("/dev/null", environ={"KSM_COMPAT": "proxmox"}, root=None)
    assert cfg.compat == compat.Compat("proxmox", "KSM_COMPAT=proxmox (environment)")
    # no host to look at (sysfs-emu simulate): auto is upstream
    assert config.load("/dev/null", environ={}).compat.mode == "upstream"


def test_a_bad_ksm_compat_is_a_config_error(tmp_path):
    conf = write(tmp_path / "k.conf", "KSM_COMPAT=pve\n")
    with pytest.raises(ConfigError, match=r"k.conf:1: KSM_COMPAT: invalid value 'pve'; expected auto or "
                                          r"upstream or proxmox$"):
        config.load(str(conf), environ={}, root=tmp_path)


# --- Proxmox's defaults and KSM_PS_METRIC -------------------------------------------------------


def proxmox(tmp_path, text: str = "", environ=None) -> config.Config:
    (tmp_path / "etc/pve").mkdir(parents=True, exist_ok=True)
    return config.load(str(write(tmp_path / "k.conf", text)), environ=environ or {}, root=tmp_path)


def test_proxmox_defaults(tmp_path):
    cfg = proxmox(tmp_path)
    assert cfg.warnings == []
    assert (cfg["KSM_SLEEP_MSEC"], cfg.process_regex, cfg.memory_metric, cfg["KSM_PS_METRIC"]) == (
        100, "^kvm$", "pss", "pss")
    assert str(cfg.settings["KSM_SLEEP_MSEC"].origin) == "default (Proxmox VE)"
    assert str(cfg.settings["KSM_MEMORY_METRIC"].origin) == "default (KSM_PS_METRIC=pss, Proxmox VE)"
    # the rest are upstream's defaults
    assert (cfg["KSM_NPAGES_BOOST"], cfg["KSM_THRES_COEF"], cfg.pidfile) == (300, 20, "/var/run/ksmtune.pid")
    assert policies.from_config(cfg).preamble == ("using pss metric",)


def test_proxmox_values_set_by_the_admin_win(tmp_path):
    cfg = proxmox(tmp_path, "KSM_SLEEP_MSEC=10\nKSM_PS_METRIC=rsz\nKSM_PROCESS_REGEX='^(kvm|qemu)$'\n")
    assert (cfg["KSM_SLEEP_MSEC"], cfg.process_regex, cfg.memory_metric) == (10, "^(kvm|qemu)$", "rss")
    assert policies.from_config(cfg).preamble == ("using rsz metric",)
    cfg = proxmox(tmp_path, "", environ={"KSM_PS_METRIC": "rss"})
    assert cfg.memory_metric == "rss"


def test_a_bad_ps_metric_is_an_error_in_proxmox_mode(tmp_path):
    with pytest.raises(ConfigError) as err:
        proxmox(tmp_path, "KSM_PS_METRIC=vsz\n")
    assert str(err.value) == (f"{tmp_path}/k.conf:1: KSM_PS_METRIC: invalid value 'vsz'; expected pss, rsz "
                              "or rss (the ps column Proxmox VE's ksmtuned sums)")
    assert err.value.exit_code == 78


def test_memory_metric_against_ps_metric(tmp_path):
    cfg = proxmox(tmp_path, "KSM_MEMORY_METRIC=rss\n")
    assert cfg.memory_metric == "pss"
    assert cfg.warnings == [f"{tmp_path}/k.conf:1: KSM_MEMORY_METRIC=rss has no effect in proxmox mode: "
                            "KSM_PS_METRIC=pss decides how guests are counted"]
    cfg = proxmox(tmp_path, "KSM_MEMORY_METRIC=pss\n")  # the same: nothing to say
    assert (cfg.memory_metric, cfg.warnings) == ("pss", [])


def test_ps_metric_in_upstream_mode_is_a_warning(tmp_path):
    conf = write(tmp_path / "k.conf", "KSM_PS_METRIC=pss\n")
    cfg = config.load(str(conf), environ={}, root=tmp_path)
    assert cfg.memory_metric == "rss"
    assert cfg.warnings == [
        f"{conf}:1: KSM_PS_METRIC is Proxmox VE's setting and has no effect in upstream mode "
        f"({cfg.compat.why}); count guests by PSS with KSM_MEMORY_METRIC=pss, or set KSM_COMPAT=proxmox"]


def test_the_daemons_published_policy_keeps_the_metric_line(tmp_path):
    policy = policies.from_config(proxmox(tmp_path))
    policy.start(config_meminfo())
    again = policies.from_state(policy.state())
    assert again.start_lines() == policy.start_lines() == [
        "using pss metric", "total 4194304", "sleep 400", "thres 838860"]


def config_meminfo():
    from ksmtuned_py.readings import MemInfo

    return MemInfo(total=4194304, free=1, buffers=0, cached=0, available=None)


# --- awk's arithmetic -----------------------------------------------------------------------------

AWK_CASES = [
    [],  # no guest: printf "%.0f" of an unset sum prints 0
    [5],
    [2**53, 1],  # the double cannot hold 2**53 + 1: the 1 is lost
    [2**53, 1, 1],  # each lost in turn
    [1, 1, 2**53],  # 2 is added before: kept
    [2**62, 2**62],  # past 2**63: printf prints 9223372036854775808, bash wraps it
    [123456789012, 987654321098, 42],
]
AWK_EXPECTED = [0, 5, 2**53, 2**53, 2**53 + 2, -(2**63), 1111111110152]


@pytest.mark.parametrize("sizes, expected", list(zip(AWK_CASES, AWK_EXPECTED)))
def test_awk_sum_by_hand(sizes, expected):
    assert awk_sum_kb(sizes) == expected


@pytest.mark.parametrize("sizes", AWK_CASES)
def test_awk_sum_matches_the_real_awk(sizes):
    """What this machine's awk prints for the same column (before bash reads it as 64 bits)."""
    if shutil.which("awk") is None:
        pytest.skip("awk not found")
    text = "".join(f"{n}\n" for n in sizes)
    out = subprocess.run(["awk", '{ sum += $1 }; END { printf ("%.0f", sum) }'], input=text,
                         capture_output=True, text=True, check=True).stdout
    printed = int(out)
    wrapped = (printed + 2**63) % 2**64 - 2**63
    assert awk_sum_kb(sizes) == wrapped


# --- what status and check-config say -------------------------------------------------------------


def test_status_and_check_config_say_which_mode_and_why(host):
    (host.root / "etc/pve").mkdir(parents=True)
    host.conf.write_text("")
    why = f"KSM_COMPAT=auto, and this is a Proxmox VE host: {host.root}/etc/pve exists"
    r = cli(host, "check-config")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1] == f"# compatibility: proxmox ({why})"
    assert "KSM_SLEEP_MSEC=100                       # default (Proxmox VE)" in lines
    assert "KSM_PROCESS_REGEX='^kvm$'                # default (Proxmox VE)" in lines
    r = cli(host, "status", "--json")
    assert r.returncode == 0, r.stderr
    import json

    assert json.loads(r.stdout)["compat"] == {"mode": "proxmox", "why": why}
    from tests.test_cli import status_fields

    assert status_fields(cli(host, "status").stdout)["compat"] == f"proxmox ({why})"


def test_simulate_in_proxmox_mode_counts_the_kvm_processes_by_pss(tmp_path):
    """sysfs-emu simulate has no host to detect: KSM_COMPAT=proxmox asks for Proxmox's readings."""
    pytest.importorskip("numpy")
    from sysfs_emu import Simulation
    from sysfs_emu.simulate import Simulate

    def scenario():
        image = {"pages": 3000, "fill": "pool", "pool": "debian"}
        return {"host": {"memory": "256MiB"}, "ksm": {"run": 1, "pages_to_scan": 5000, "sleep_millisecs": 10},
                "processes": [{"name": "kvm", "regions": [image, {"pages": 500, "fill": "unique"}]},
                              {"name": "kvm", "regions": [image]},
                              {"name": "qemu-system-x86", "regions": [{"pages": 700, "fill": "unique"}]}]}

    conf = write(tmp_path / "k.conf", "KSM_COMPAT=proxmox\nKSM_MONITOR_INTERVAL=30\n")
    proxmox_run = Simulate(Simulation(scenario()), config.load(str(conf), environ={}))
    upstream_run = Simulate(Simulation(scenario()), config.load("/dev/null", environ={}))
    assert proxmox_run.tuning_cycle.policy.start_lines()[0] == "using pss metric"
    page_kb = proxmox_run.sim.page_size // 1024
    first, second = proxmox_run.cycle(), proxmox_run.cycle()
    assert (first.report.guests, upstream_run.cycle().report.guests) == (2, 1)
    # after a minute of merging the shared image counts once between the two kvm guests
    assert second.report.committed_kb < (3000 + 500 + 3000) * page_kb
    assert upstream_run.cycle().report.committed_kb == 700 * page_kb


def test_guests_debians_script_misses_are_counted(tmp_path):
    """Debian's ksmtuned matches `pgrep -f '^qemu-system.*-enable-kvm'`: libvirt's absolute path or
    -accel kvm hide a guest from it; ksmtuned-py goes by the process name and counts it."""
    if shutil.which("pgrep") is None:
        pytest.skip("pgrep not found")
    from ksmtuned_py.guestscan import GuestScanner
    from tests.guests import stand_in_guests

    specs = [dict(comm="qemu-system-x86", argv0="/usr/bin/qemu-system-x86_64", resident_kib=1024,
                  extra_args=("-name", "guest=web", "-enable-kvm")),
             dict(comm="qemu-system-x86", argv0="qemu-system-x86_64", resident_kib=1024,
                  extra_args=("-name", "guest=db", "-accel", "kvm"))]
    with stand_in_guests(*specs) as guests:
        debian = subprocess.run(["pgrep", "-f", "^qemu-system.*-enable-kvm"], capture_output=True,
                                text=True).stdout.split()
        counted = {g.pid for g in GuestScanner("/").scan()}
        for guest in guests:
            assert str(guest.pid) not in debian
            assert guest.pid in counted
