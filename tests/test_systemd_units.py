"""The systemd units: `systemd-analyze verify` says nothing, `security` rates them safe."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ksmtuned_py import install

REPO = Path(__file__).resolve().parent.parent
UNITS = ("ksmtuned-py.service", "ksmtuned-py-ksm.service")
MAX_EXPOSURE = 2.5

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
def test_security_exposure_at_most_2_5(name: str):
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
    assert s["ExecStart"] == "/usr/bin/ksmtuned-py run"
    # reload = re-read the config and retune: the daemon's SIGHUP.
    assert s["ExecReload"] == "/bin/sh -c 'kill -HUP $MAINPID'"
    assert u["Requires"] == u["After"] == "ksmtuned-py-ksm.service"
    assert u["ConditionPathExists"] == "/sys/kernel/mm/ksm"
    assert u["Conflicts"] == "ksmtuned.service"
    assert int(s["WatchdogSec"]) > 0 and s["Restart"] == "on-failure"
    assert s["RestartPreventExitStatus"] == "78"  # EX_CONFIG: a broken config is not retried
    assert "/sys/kernel/mm/ksm" in s["ReadWritePaths"].split()
    assert s["ProtectSystem"] == "strict"


def test_ksm_unit_semantics():
    unit = _unit("ksmtuned-py-ksm.service")
    s = unit["Service"]
    assert s["Type"] == "oneshot" and s["RemainAfterExit"] == "yes"
    assert s["ExecStart"] == "/usr/bin/ksmtuned-py ksm start"
    assert s["ExecStop"] == "/usr/bin/ksmtuned-py ksm stop"
    text = (REPO / "systemd" / "ksmtuned-py-ksm.service").read_text()
    assert "EnvironmentFile=-/etc/default/ksm\n" in text
    assert "EnvironmentFile=-/etc/sysconfig/ksm\n" in text
    assert unit["Unit"]["ConditionPathExists"] == "/sys/kernel/mm/ksm"
