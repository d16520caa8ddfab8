"""scripts/build-packages: the Debian packages (lintian-clean, files, relations) and the RPM.

The packages are built once per session from this checkout (tests/debbuild.py).
Installing the Debian package under a real systemd is tests/test_systemd_container.py.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import debbuild
from tests.debbuild import deb_control_file, deb_field, deb_file_text, deb_files, rpm_query

REPO = debbuild.REPO
VERSION = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)

# Where the daemon package puts each file of the repository.
DAEMON_FILES = {
    "/usr/sbin/ksmtuned-py": None,  # the console script pybuild writes
    "/lib/systemd/system/ksmtuned-py.service": "systemd/ksmtuned-py.service",
    "/lib/systemd/system/ksmtuned-py-ksm.service": "systemd/ksmtuned-py-ksm.service",
    "/usr/lib/tmpfiles.d/ksmtuned-py.conf": "etc/tmpfiles.d/ksmtuned-py.conf",
    "/etc/ksmtuned.conf": "etc/ksmtuned.conf",
    "/etc/logrotate.d/ksmtuned-py": "etc/logrotate.d/ksmtuned-py",
    "/etc/libvirt/hooks/qemu.d/ksmtuned-py": "etc/libvirt/hooks/qemu.d/ksmtuned-py",
    "/usr/share/man/man8/ksmtuned-py.8.gz": "man/ksmtuned-py.8",
    "/usr/share/man/man5/ksmtuned.conf.5.gz": "man/ksmtuned.conf.5",
    "/usr/share/bash-completion/completions/ksmtuned-py": "completions/ksmtuned-py.bash",
    "/usr/share/zsh/vendor-completions/_ksmtuned-py": "completions/_ksmtuned-py",
    "/usr/share/fish/vendor_completions.d/ksmtuned-py.fish": "completions/ksmtuned-py.fish",
    "/usr/share/ksmtuned-py/grafana/ksmtuned-py.json": "etc/grafana/ksmtuned-py.json",
    "/usr/share/ksmtuned-py/prometheus/ksmtuned-py.rules.yml": "etc/prometheus/ksmtuned-py.rules.yml",
    "/usr/share/doc/ksmtuned-py/changelog.gz": None,
    "/usr/share/doc/ksmtuned-py/copyright": "debian/copyright",
}
SIM_FILES = {
    "/usr/bin/sysfs-emu": None,
    "/usr/share/man/man1/sysfs-emu.1.gz": "man/sysfs-emu.1",
    "/usr/share/bash-completion/completions/sysfs-emu": "completions/sysfs-emu.bash",
    "/usr/share/zsh/vendor-completions/_sysfs-emu": "completions/_sysfs-emu",
    "/usr/share/fish/vendor_completions.d/sysfs-emu.fish": "completions/sysfs-emu.fish",
}


@pytest.fixture(scope="module")
def built() -> debbuild.Built:
    try:
        return debbuild.built()
    except debbuild.Unavailable as err:
        pytest.skip(str(err))


def _modules(package: str) -> set[str]:
    return {f"/usr/lib/python3/dist-packages/{p.relative_to(REPO)}"
            for p in (REPO / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_lintian_reports_no_errors_and_no_warnings(built):
    report = built.lintian
    assert not [line for line in report.splitlines() if line.startswith(("E:", "W:"))], report


def test_versions_agree():
    assert subprocess.run(["dpkg-parsechangelog", "-l", str(REPO / "debian/changelog"), "-S", "Version"],
                          capture_output=True, text=True, check=True).stdout.strip() == VERSION
    spec = (REPO / "packaging/rpm/ksmtuned-py.spec").read_text()
    assert re.search(r"^Version:\s+(\S+)$", spec, re.M).group(1) == VERSION


def test_daemon_package_holds_exactly_its_files(built):
    deb = built.deb("ksmtuned-py")
    assert deb_files(deb) == set(DAEMON_FILES)
    for path, source in DAEMON_FILES.items():
        if source is None:
            continue
        text = deb_file_text(deb, path) if not path.endswith(".gz") else gzip.decompress(
            subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -xOf - .{path}", shell=True,
                           capture_output=True, check=True).stdout).decode()
        assert text == (REPO / source).read_text(), path
    assert "/usr/bin/ksmtuned-py" not in deb_files(deb)  # the reference is in /usr/sbin
    script = deb_file_text(deb, "/usr/sbin/ksmtuned-py")
    assert script.startswith("#!/usr/bin/python3\n") and "from ksmtuned_py.entry import main" in script


def test_modules_and_simulator_are_packages_of_their_own(built):
    modules = deb_files(built.deb("python3-ksmtuned-py"))
    ours = {f for f in modules if not f.startswith("/usr/share/doc/")}
    dist_info = {f for f in ours if ".dist-info/" in f}
    assert ours - dist_info == _modules("ksmtuned_py")
    assert dist_info and all(f.startswith(f"/usr/lib/python3/dist-packages/ksmtuned_py-{VERSION}.dist-info/")
                             for f in dist_info)
    sim = {f for f in deb_files(built.deb("sysfs-emu")) if not f.startswith("/usr/share/doc/")}
    assert sim == set(SIM_FILES) | _modules("sysfs_emu")


def test_conffiles_are_the_files_in_etc(built):
    conffiles = deb_control_file(built.deb("ksmtuned-py"), "conffiles").split()
    assert sorted(conffiles) == ["/etc/ksmtuned.conf", "/etc/libvirt/hooks/qemu.d/ksmtuned-py",
                                 "/etc/logrotate.d/ksmtuned-py"]


def test_it_replaces_ksmtuned_and_the_daemon_never_pulls_in_numpy(built):
    daemon = built.deb("ksmtuned-py")
    for field in ("Conflicts", "Replaces", "Provides"):
        assert deb_field(daemon, field) == "ksmtuned", field
    assert deb_field(daemon, "Depends") == f"python3-ksmtuned-py (= {VERSION}), python3:any"
    assert deb_field(built.deb("python3-ksmtuned-py"), "Depends") == (
        "python3-click (>= 8.1), python3:any")  # the journal and sd_notify without python3-systemd
    sim = deb_field(built.deb("sysfs-emu"), "Depends")
    for dep in ("python3-numpy", "python3-yaml", f"python3-ksmtuned-py (= {VERSION})"):
        assert dep in sim
    assert "sysfs-emu" in deb_field(daemon, "Suggests")


def test_preinst_carries_the_shipped_config_verbatim(built):
    """The conffile take-over (see debian/ksmtuned-py.preinst.in) writes exactly the package's file."""
    preinst = deb_control_file(built.deb("ksmtuned-py"), "preinst")
    body = preinst.split("<<'KSMTUNED_PY_DEFAULT_CONF'\n", 1)[1].split("\nKSMTUNED_PY_DEFAULT_CONF\n", 1)[0]
    assert body + "\n" == (REPO / "etc/ksmtuned.conf").read_text()
    assert subprocess.run(["sh", "-n"], input=preinst, text=True).returncode == 0
    # The tmpfiles entries are created before the units start (postinst order).
    postinst = deb_control_file(built.deb("ksmtuned-py"), "postinst")
    assert postinst.index("systemd-tmpfiles") < postinst.index("deb-systemd-invoke")


def test_packaged_program_runs_from_the_unpacked_packages(built, tmp_path: Path):
    for package in ("python3-ksmtuned-py", "ksmtuned-py"):
        subprocess.run(["dpkg-deb", "-x", str(built.deb(package)), str(tmp_path)], check=True)
    env = {"PYTHONPATH": str(tmp_path / "usr/lib/python3/dist-packages"), "PATH": "/usr/bin:/bin"}
    got = subprocess.run([sys.executable, str(tmp_path / "usr/sbin/ksmtuned-py"), "--version"],
                         capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert got.returncode == 0 and got.stdout == f"ksmtuned-py, version {VERSION}\n", got.stderr
    got = subprocess.run([sys.executable, "-c", "import ksmtuned_py; print(ksmtuned_py.__file__)"],
                         capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert got.stdout.startswith(str(tmp_path)), got
    got = subprocess.run([sys.executable, str(tmp_path / "usr/sbin/ksmtuned-py"), "check-config",
                          "--config", str(tmp_path / "etc/ksmtuned.conf")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert got.returncode == 0 and got.stderr == "", got.stderr
    settings = [line for line in got.stdout.splitlines() if not line.startswith("#")]
    assert settings and all(line.endswith("# default") for line in settings), got.stdout


# --- the RPM ---------------------------------------------------------------------------

def _rpm_files(rpm: Path) -> set[str]:
    return {f for f in rpm_query(rpm, "-l").split()
            if "__pycache__" not in f and not f.startswith(("/usr/share/doc/", "/usr/share/licenses/"))}


def test_rpm_packages_hold_the_same_files_in_fedora_places(built):
    daemon = _rpm_files(built.rpm("ksmtuned-py"))
    expected = {p.replace("/lib/systemd/system/", "/usr/lib/systemd/system/")
                 .replace("/zsh/vendor-completions/", "/zsh/site-functions/").removesuffix(".gz")
                for p in DAEMON_FILES if not p.startswith("/usr/share/doc/")}
    dirs = {"/etc/libvirt/hooks/qemu.d", "/usr/share/ksmtuned-py", "/usr/share/ksmtuned-py/grafana",
            "/usr/share/ksmtuned-py/prometheus", "/var/log/ksmtuned"}
    assert daemon == expected | dirs
    sitelib = next(f for f in _rpm_files(built.rpm("python3-ksmtuned-py")) if f.endswith("/ksmtuned_py"))
    assert re.fullmatch(r"/usr/lib/python3\.\d+/site-packages/ksmtuned_py", sitelib)
    sim = _rpm_files(built.rpm("sysfs-emu"))
    assert "/usr/bin/sysfs-emu" in sim and "/usr/share/man/man1/sysfs-emu.1" in sim
    assert not any("ksmtuned_py/" in f for f in sim)


def test_rpm_relations_config_and_scriptlets(built):
    daemon = built.rpm("ksmtuned-py")
    assert rpm_query(daemon, "--conflicts").split() == ["ksmtuned"]
    assert "ksmtuned" in rpm_query(daemon, "--provides").split()
    assert sorted(rpm_query(daemon, "--configfiles").split()) == [
        "/etc/ksmtuned.conf", "/etc/libvirt/hooks/qemu.d/ksmtuned-py", "/etc/logrotate.d/ksmtuned-py"]
    scripts = rpm_query(daemon, "--scripts")
    assert "systemd-tmpfiles --create ksmtuned-py.conf" in scripts
    assert "preset ksmtuned-py-ksm.service ksmtuned-py.service" in scripts
    assert "disable --now ksmtuned-py.service ksmtuned-py-ksm.service" in scripts
    modules = rpm_query(built.rpm("python3-ksmtuned-py"), "--requires")
    assert "python3-click >= 8.1" in modules and "python3-systemd" not in modules.split()
    for rpm in (daemon, built.rpm("python3-ksmtuned-py")):
        requires = rpm_query(rpm, "--requires")
        assert "numpy" not in requires and "yaml" not in requires, requires
    sim = rpm_query(built.rpm("sysfs-emu"), "--requires")
    assert "python3-numpy >= 1.24" in sim and "python3-pyyaml >= 6.0" in sim


def test_build_refuses_a_changelog_behind_pyproject(tmp_path: Path):
    """build-packages can fail: a version bump without a changelog entry is one clear error."""
    copy = tmp_path / "src"
    subprocess.run(["cp", "-a", "--", str(REPO / "scripts"), str(REPO / "debian"), str(tmp_path)], check=True)
    copy.mkdir()
    for name in ("scripts", "debian"):
        (tmp_path / name).rename(copy / name)
    (copy / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text().replace(
        f'version = "{VERSION}"', 'version = "99.0"'))
    got = subprocess.run([str(copy / "scripts/build-packages"), "--outdir", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir())
    assert got.returncode == 1
    assert got.stderr == (f"build-packages: pyproject.toml says 99.0, debian/changelog {VERSION}: "
                          "add a changelog entry (dch -v 99.0)\n")
