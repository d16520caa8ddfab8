"""The systemd units: `systemd-analyze verify` says nothing, `security` rates them safe."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ksmtuned_py import install

REPO = Path(__file__).resolve().parent.parent
UNITS = ("ksmtuned-py.service", "ksmtuned-py-ksm.service")
MAX_EXPOSURE = 1.5

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not found (package systemd)",
)


def _installed_exec() -> str:
    script = Path(sys.executable).parent / "ksmtuned-py"
    if not script.is_file():
        pytest.skip(f"{script} missing: the project is not installed in this Python's environment")
    return str(script)


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The units as `ksmtuned-py install` writes them, naming an ExecStart that exists here."""
    install.install(destdir=tmp_path / "root", exec_path=_installed_exec(), source=REPO)
    return tmp_path / "root" / install.DEFAULT_UNITDIR.lstrip("/")


def _verify(*paths: Path) -> str:
    got = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, paths)],
        capture_output=True, text=True, timeout=60,
    )
    return (got.stdout + got.stderr).strip()


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string((REPO / "systemd" / name).read_text())
    return parser


def test_verify_prints_nothing_for_either_unit(unit_dir: Path):
    assert _verify(*(unit_dir / u for u in UNITS)) == ""


def test_verify_would_report_a_broken_unit(unit_dir: Path):
    """The check above can fail: a misspelt directive is reported."""
    broken = unit_dir / "ksmtuned-py.service"
    broken.write_text(broken.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    assert "WatchdogSecs" in _verify(broken)


@pytest.mark.parametrize("name", UNITS)
def test_security_exposure_at_most_1_5(name: str):
    got = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(REPO / "systemd" / name)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", got.stdout + got.stderr)
    assert match, got.stdout + got.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, got.stdout


def test_service_semantics():
    unit = _unit("ksmtuned-py.service")
    u, s = unit["Unit"], unit["Service"]
    assert s["Type"] == "notify"
    assert s["ExecStart"] == "/usr/sbin/ksmtuned-py run"
    # reload = re-read the config and retune: the daemon's SIGHUP.
    assert s["ExecReload"] == "/bin/sh -c 'kill -HUP $MAINPID'"
    assert u["Requires"] == u["After"] == "ksmtuned-py-ksm.service"
    assert u["ConditionPathExists"] == "/sys/kernel/mm/ksm"
    assert u["Conflicts"] == "ksmtuned.service"
    assert int(s["WatchdogSec"]) > 0 and s["Restart"] == "on-failure"
    assert s["RestartPreventExitStatus"] == "78"  # EX_CONFIG: a broken config is not retried
    assert s["ProtectSystem"] == "strict"


def test_service_writes_exactly_the_documented_paths():
    """The KSM directory, the pidfile's own runtime directory, the log file, the metrics directory."""
    s = _unit("ksmtuned-py.service")["Service"]
    assert s["ReadWritePaths"].split() == [
        "/sys/kernel/mm/ksm", "-/var/log/ksmtuned", "-/var/lib/prometheus/node-exporter"]
    assert s["ReadOnlyPaths"].split() == ["/run", "/dev/shm"]
    assert s["RuntimeDirectory"] == "ksmtuned-py" and s["RuntimeDirectoryMode"] == "0755"
    assert s["Environment"] == "PIDFILE=/run/ksmtuned-py/ksmtune.pid"
    for key in ("ReadWriteDirectories", "BindPaths", "StateDirectory", "LogsDirectory",
                "CacheDirectory", "ConfigurationDirectory"):
        assert key not in s, key
    assert "ReadWritePaths" not in _unit("ksmtuned-py-ksm.service")["Service"] or \
        _unit("ksmtuned-py-ksm.service")["Service"]["ReadWritePaths"] == "/sys/kernel/mm/ksm"


def test_tmpfiles_link_the_reference_pidfile_to_the_service_one():
    lines = [line.split() for line in (REPO / "etc/tmpfiles.d/ksmtuned-py.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == [
        ["L+", "/run/ksmtune.pid", "-", "-", "-", "-", "ksmtuned-py/ksmtune.pid"],
        ["L+", "/run/ksmtune.state", "-", "-", "-", "-", "ksmtuned-py/ksmtune.state"],
        ["f", "/var/log/ksmtuned", "0640", "root", "root", "-"],
    ]


@pytest.mark.parametrize("name", UNITS)
def test_documentation_names_the_man_page(name: str):
    docs = [line.split("=", 1)[1] for line in (REPO / "systemd" / name).read_text().splitlines()
            if line.startswith("Documentation=")]
    assert docs[0].split()[0] == "man:ksmtuned-py(8)"
    for ref in " ".join(docs).split():
        if ref.startswith("man:"):
            page, section = ref[4:].rstrip(")").split("(")
            assert (REPO / "man" / f"{page}.{section}").is_file(), ref


def test_ksm_unit_semantics():
    unit = _unit("ksmtuned-py-ksm.service")
    s = unit["Service"]
    assert s["Type"] == "oneshot" and s["RemainAfterExit"] == "yes"
    assert s["ExecStart"] == "/usr/sbin/ksmtuned-py ksm start"
    assert s["ExecStop"] == "/usr/sbin/ksmtuned-py ksm stop"
    text = (REPO / "systemd" / "ksmtuned-py-ksm.service").read_text()
    assert "EnvironmentFile=-/etc/default/ksm\n" in text
    assert "EnvironmentFile=-/etc/sysconfig/ksm\n" in text
    assert unit["Unit"]["ConditionPathExists"] == "/sys/kernel/mm/ksm"


def test_retune_and_status_follow_the_reference_pidfile_link(tmp_path: Path):
    """As the packaged unit runs it: the daemon's pidfile in its own directory, the old path a link."""
    from tests.svc_daemon import KSMTUNED_PY, make_host, wait_for

    host = make_host(tmp_path)
    link = host.pidfile  # what the CLI's config names, like /run/ksmtune.pid
    (tmp_path / "ksmtuned-py").mkdir()
    link.symlink_to("ksmtuned-py/ksmtune.pid")
    link.with_suffix(".state").symlink_to("ksmtuned-py/ksmtune.state")
    cli_config = host.config.read_text()
    # The daemon gets the unit's PIDFILE: the config's line removed, the environment set.
    host.config.write_text(cli_config.replace(f"PIDFILE={link}\n", ""))
    env = {**os.environ, "PIDFILE": str(tmp_path / "ksmtuned-py/ksmtune.pid")}
    proc = subprocess.Popen([*host.cli(), "run"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (tmp_path / "ksmtuned-py/ksmtune.pid").is_file(), what="the pidfile")
        host.config.write_text(cli_config)
        got = subprocess.run([str(KSMTUNED_PY), "--root", str(host.root), "--config", str(host.config),
                              "retune"], capture_output=True, text=True, timeout=30)
        assert got.returncode == 0, got.stderr
        assert got.stdout == f"asked ksmtuned-py (pid {proc.pid}) to retune\n"
        wait_for(lambda: host.knob("run") == "1", what="the retune's cycle")
        got = subprocess.run([str(KSMTUNED_PY), "--root", str(host.root), "--config", str(host.config),
                              "status", "--json"], capture_output=True, text=True, timeout=30)
        assert got.returncode == 0, got.stderr
        assert f'"pid": {proc.pid}' in got.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=10)
