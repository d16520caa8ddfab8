"""`ksmtuned-py install --destdir`: files, modes, the program path, an existing config kept."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ksmtuned_py import install
from ksmtuned_py.errors import UserError

REPO = Path(__file__).resolve().parent.parent
KSMTUNED_PY = Path(sys.executable).parent / "ksmtuned-py"

EXPECTED = {
    "etc/systemd/system/ksmtuned-py.service": (0o644, "systemd/ksmtuned-py.service"),
    "etc/systemd/system/ksmtuned-py-ksm.service": (0o644, "systemd/ksmtuned-py-ksm.service"),
    "etc/ksmtuned.conf": (0o644, "etc/ksmtuned.conf"),
    "etc/logrotate.d/ksmtuned-py": (0o644, "etc/logrotate.d/ksmtuned-py"),
    "etc/libvirt/hooks/qemu.d/ksmtuned-py": (0o755, "etc/libvirt/hooks/qemu.d/ksmtuned-py"),
    "etc/tmpfiles.d/ksmtuned-py.conf": (0o644, "etc/tmpfiles.d/ksmtuned-py.conf"),
    "usr/local/share/man/man8/ksmtuned-py.8": (0o644, "man/ksmtuned-py.8"),
    "usr/local/share/man/man5/ksmtuned.conf.5": (0o644, "man/ksmtuned.conf.5"),
    "usr/local/share/man/man1/sysfs-emu.1": (0o644, "man/sysfs-emu.1"),
    "usr/local/share/bash-completion/completions/ksmtuned-py": (0o644, "completions/ksmtuned-py.bash"),
    "usr/local/share/zsh/site-functions/_ksmtuned-py": (0o644, "completions/_ksmtuned-py"),
    "usr/local/share/fish/vendor_completions.d/ksmtuned-py.fish": (0o644, "completions/ksmtuned-py.fish"),
    "usr/local/share/bash-completion/completions/sysfs-emu": (0o644, "completions/sysfs-emu.bash"),
    "usr/local/share/zsh/site-functions/_sysfs-emu": (0o644, "completions/_sysfs-emu"),
    "usr/local/share/fish/vendor_completions.d/sysfs-emu.fish": (0o644, "completions/sysfs-emu.fish"),
}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def cli(*args: str) -> subprocess.CompletedProcess:
    if not KSMTUNED_PY.is_file():
        pytest.skip(f"{KSMTUNED_PY} missing: the project is not installed in this environment")
    return subprocess.run([str(KSMTUNED_PY), *args], capture_output=True, text=True, timeout=60)


def test_cli_installs_every_file_with_its_mode(tmp_path: Path):
    dest = tmp_path / "dest"
    got = cli("install", "--destdir", str(dest), "--exec", "/usr/sbin/ksmtuned-py")
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == [f"installed {dest / p}" for p in EXPECTED]
    assert files_under(dest) == set(EXPECTED)  # and no temporary files left
    for rel, (mode, source) in EXPECTED.items():
        path = dest / rel
        assert stat.S_IMODE(path.stat().st_mode) == mode, rel
        # --exec /usr/sbin/ksmtuned-py is the shipped path: files are copied unchanged.
        assert path.read_bytes() == (REPO / source).read_bytes(), rel


def test_program_path_is_written_into_units_and_hook(tmp_path: Path):
    install.install(tmp_path, exec_path="/opt/ksmtuned-py/bin/ksmtuned-py", source=REPO)
    unit = (tmp_path / "etc/systemd/system/ksmtuned-py.service").read_text()
    assert "ExecStart=/opt/ksmtuned-py/bin/ksmtuned-py run\n" in unit
    assert "/usr/sbin/ksmtuned-py" not in unit
    ksm = (tmp_path / "etc/systemd/system/ksmtuned-py-ksm.service").read_text()
    assert "ExecStart=/opt/ksmtuned-py/bin/ksmtuned-py ksm start\n" in ksm
    assert "ExecStop=/opt/ksmtuned-py/bin/ksmtuned-py ksm stop\n" in ksm
    hook = (tmp_path / "etc/libvirt/hooks/qemu.d/ksmtuned-py").read_text()
    assert 'KSMTUNED_PY="${KSMTUNED_PY:-/opt/ksmtuned-py/bin/ksmtuned-py}"\n' in hook
    # The config and the logrotate file (copytruncate, no signal) name no program: copied unchanged.
    assert (tmp_path / "etc/ksmtuned.conf").read_bytes() == (REPO / "etc/ksmtuned.conf").read_bytes()
    rotate = tmp_path / "etc/logrotate.d/ksmtuned-py"
    assert rotate.read_bytes() == (REPO / "etc/logrotate.d/ksmtuned-py").read_bytes()


def test_existing_config_is_never_overwritten_but_the_rest_is_updated(tmp_path: Path):
    conf = tmp_path / "etc/ksmtuned.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("KSM_MONITOR_INTERVAL=30\n")
    conf.chmod(0o600)
    unit = tmp_path / "etc/systemd/system/ksmtuned-py.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("old unit\n")
    actions = install.install(tmp_path, exec_path="/usr/sbin/ksmtuned-py", source=REPO)
    assert [str(a) for a in actions if a.verb == "kept"] == [
        f"kept {conf} (exists, not overwritten)"]
    assert conf.read_text() == "KSM_MONITOR_INTERVAL=30\n"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert unit.read_text() == (REPO / "systemd/ksmtuned-py.service").read_text()
    assert files_under(tmp_path) == set(EXPECTED)


def test_unitdir_for_packages(tmp_path: Path):
    install.install(tmp_path, unitdir="/usr/lib/systemd/system", exec_path="/usr/sbin/ksmtuned-py",
                    source=REPO)
    assert (tmp_path / "usr/lib/systemd/system/ksmtuned-py.service").is_file()
    assert (tmp_path / "usr/lib/systemd/system/ksmtuned-py-ksm.service").is_file()
    assert not (tmp_path / "etc/systemd").exists()


def test_bad_arguments_are_one_line_errors(tmp_path: Path):
    with pytest.raises(UserError, match="--unitdir lib/systemd: must be an absolute path"):
        install.install(tmp_path, unitdir="lib/systemd", source=REPO)
    got = cli("install", "--destdir", str(tmp_path), "--exec", "bin/ksmtuned-py")
    assert got.returncode == 1
    assert got.stderr == "ksmtuned-py: --exec bin/ksmtuned-py: must be an absolute path\n"


def test_unwritable_destination_is_a_one_line_error(tmp_path: Path):
    blocker = tmp_path / "etc"
    blocker.write_text("a file where a directory should be\n")
    got = cli("install", "--destdir", str(tmp_path), "--exec", "/usr/sbin/ksmtuned-py")
    assert got.returncode == 1
    assert got.stderr.startswith("ksmtuned-py: cannot install ")
    assert "Traceback" not in got.stderr and len(got.stderr.splitlines()) == 1


def test_warns_when_the_sandbox_would_hide_the_program():
    assert install.hidden_by_sandbox("/home/admin/venv/bin/ksmtuned-py") == [
        "/home/admin/venv/bin/ksmtuned-py"]
    assert install.hidden_by_sandbox("/opt/nowhere/ksmtuned-py") == []


def test_modes_do_not_depend_on_the_umask(tmp_path: Path):
    got = subprocess.run(
        ["sh", "-c", 'umask 077 && exec "$0" install --destdir "$1" --exec /usr/sbin/ksmtuned-py',
         str(KSMTUNED_PY), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    for rel, (mode, _) in EXPECTED.items():
        assert stat.S_IMODE((tmp_path / rel).stat().st_mode) == mode, rel
    for d in ("etc", "etc/systemd/system", "etc/libvirt/hooks/qemu.d", "etc/logrotate.d",
              "etc/tmpfiles.d", "usr/local/share/man/man8", "usr/local/share/zsh/site-functions"):
        assert stat.S_IMODE((tmp_path / d).stat().st_mode) == 0o755, d


def test_the_libvirt_hook_can_be_left_out(tmp_path: Path):
    dest = tmp_path / "dest"
    got = cli("install", "--destdir", str(dest), "--exec", "/usr/bin/ksmtuned-py", "--no-libvirt-hook")
    assert got.returncode == 0, got.stderr
    hook = dest / "etc/libvirt/hooks/qemu.d/ksmtuned-py"
    assert f"skipped {hook} (--no-libvirt-hook)" in got.stdout.splitlines()
    assert not (dest / "etc/libvirt").exists()  # not even the directory
    assert files_under(dest) == set(EXPECTED) - {"etc/libvirt/hooks/qemu.d/ksmtuned-py"}


def test_on_the_live_system_the_hook_goes_only_where_libvirt_is(tmp_path: Path):
    """`install` on / without /etc/libvirt says it skipped the hook; below a --destdir it ships it."""
    libvirt = tmp_path / "etc-libvirt"
    assert install.libvirt_hook_skipped("/", None, str(libvirt)) == (
        f"no {libvirt}: libvirt is not installed; --libvirt-hook installs the hook anyway")
    libvirt.mkdir()
    assert install.libvirt_hook_skipped("/", None, str(libvirt)) is None
    assert install.libvirt_hook_skipped(tmp_path, None, str(tmp_path / "none")) is None  # packaging
    assert install.libvirt_hook_skipped("/", True, str(tmp_path / "none")) is None
    assert install.libvirt_hook_skipped(tmp_path, False, str(libvirt)) == "--no-libvirt-hook"
